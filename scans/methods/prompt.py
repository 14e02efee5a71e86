"""Prompt (Bhalani & Ray 2024, "Mitigating Exaggerated Safety in LLMs"): few-shot prompting.

The examples and their instruction are inserted in the user turn before every query: a few requests that only
sound dangerous, answered in full, and one harmful request, refused. They are written for this project (the
config states them) and pass the disjointness rule against every reported and validation set (`prepare` checks
and records the counts; any overlap is an error). Raw prompts without a chat (MMLU) get the same text in front.
"""

from __future__ import annotations

from dataclasses import dataclass

from scans.errors import DataError
from scans.methods.base import Intervention, Method, check_disjoint
from scans.models.chat import tokenize


@dataclass(frozen=True)
class Insertion(Intervention):
    """Fixed token ids inserted before every query."""

    insertion: tuple[int, ...] = ()


@dataclass(frozen=True)
class FewShot(Method):
    """An instruction and (query, answer) examples, rendered with `template` and inserted before the query."""

    instruction: str = ""
    examples: tuple = ()  # ((query, answer), ...)
    template: str = "Request: {query}\nAnswer: {answer}"
    query_prefix: str = "Request: "

    def __post_init__(self):
        object.__setattr__(self, "examples", tuple(tuple(e) for e in self.examples))

    def text(self) -> str:
        shots = "\n\n".join(self.template.format(query=q, answer=a) for q, a in self.examples)
        return f"{self.instruction}\n\n{shots}\n\n{self.query_prefix}"

    def prepare(self, run) -> dict:
        report = check_disjoint(run, [q for q, _ in self.examples], "few-shot examples")
        if report["exact"] or report["near_duplicate"]:
            bad = [m[0] for m in report["exact_matches"] + report["near_duplicates"]]
            raise DataError(f"{self.name}: few-shot examples overlap a reported or validation set: {bad}")
        return report

    def intervention(self, run) -> Insertion:
        return Insertion(tuple(tokenize(run.lm.tokenizer, self.text())))
