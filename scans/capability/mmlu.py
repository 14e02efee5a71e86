"""MMLU in the original Hendrycks 5-shot format (reference §5.3), scored by lm-eval, steered per row by σ(q).

The prompt: "The following are multiple choice questions (with answers) about {subject}.\n\n", k solved dev
questions ("…\nAnswer: X\n\n"), then the test question ending in "Answer:", no chat template; shots are dropped
one by one while the prompt exceeds `max_length` tokens. The prediction is the most likely of " A", " B", " C",
" D" as the continuation.

Scoring goes through lm-eval's Hugging Face model class (its request sorting, batching and one-token logits
cache). `ScansLM` subclasses it so that every forward pass goes through a method's intervention, each row with
its own coefficient (for SCANS sign·α from its question's σ(q)), its own steering start (the last "\nAnswer:" of
the prompt) and its query start (after BOS, where a method's insertion goes), looked up from the row's *tokens*:
lm-eval reorders requests and merges those that share a context, so batch rows are not documents.
`direct_predictions` is the independent cross-check: one plain forward pass per question, argmax over the four
letters' logits at the last position.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from scans.errors import ConfigError, DataError, ModelError
from scans.models.chat import Llama2Format, VicunaFormat
from scans.models.loading import input_device
from scans.steering.intervention import Intervention, Row, teacher_forced_logits

log = logging.getLogger(__name__)
LETTERS = "ABCD"
# Bumped whenever the prompt or the steering start changes, so that no MMLU artifact of an older protocol is reused
# (2: Hendrycks' two-space header, steering from the marker's last token, BOS for the Llama-2 and Vicuna formats).
PROTOCOL = 2
ANSWER_MARK = "\nAnswer:"

# Hendrycks et al., `categories.py`: subject -> subcategory, subcategory -> category.
SUBCATEGORY = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics", "business_ethics": "business",
    "clinical_knowledge": "health", "college_biology": "biology", "college_chemistry": "chemistry",
    "college_computer_science": "computer science", "college_mathematics": "math", "college_medicine": "health",
    "college_physics": "physics", "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering", "elementary_mathematics": "math",
    "formal_logic": "philosophy", "global_facts": "other", "high_school_biology": "biology",
    "high_school_chemistry": "chemistry", "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics", "high_school_physics": "physics",
    "high_school_psychology": "psychology", "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health", "human_sexuality": "culture",
    "international_law": "law", "jurisprudence": "law", "logical_fallacies": "philosophy",
    "machine_learning": "computer science", "management": "business", "marketing": "business",
    "medical_genetics": "health", "miscellaneous": "other", "moral_disputes": "philosophy",
    "moral_scenarios": "philosophy", "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law", "professional_medicine": "health",
    "professional_psychology": "psychology", "public_relations": "politics", "security_studies": "politics",
    "sociology": "culture", "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}  # fmt: skip
CATEGORIES = {
    "stem": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "humanities": ("history", "philosophy", "law"),
    "social": ("politics", "culture", "economics", "geography", "psychology"),
    "other": ("other", "business", "health"),
}
CATEGORY = {subject: next(c for c, subs in CATEGORIES.items() if sub in subs) for subject, sub in SUBCATEGORY.items()}


@dataclass(frozen=True)
class Question:
    subject: str
    index: int  # row in the subject's test file
    prompt: str  # the k-shot prompt, ending in "Answer:"
    answer: str  # "A".."D"
    shots: int

    @property
    def category(self) -> str:
        return CATEGORY[self.subject]


def _example(row, with_answer: bool) -> str:
    text = row["question"] + "".join(f"\n{letter}. {row[letter]}" for letter in LETTERS) + ANSWER_MARK
    return text + (f" {row['answer']}\n\n" if with_answer else "")


def header(subject: str) -> str:
    """Hendrycks' header: his `format_subject` puts a space before every word of the subject, so "about" is followed
    by two spaces ("... about  abstract algebra.")."""
    words = "".join(" " + word for word in subject.split("_"))
    return f"The following are multiple choice questions (with answers) about {words}.\n\n"


def check_subjects(subjects: list[str]) -> list[str]:
    """`capability.mmlu.subjects` checked against MMLU's 57 (a typo would silently drop a category)."""
    unknown = sorted(set(subjects) - set(SUBCATEGORY))
    if unknown:
        raise ConfigError(
            f"capability.mmlu.subjects: {', '.join(unknown)} is not an MMLU subject (e.g. {next(iter(SUBCATEGORY))})"
        )
    return subjects


def questions(
    table: pd.DataFrame, tokenizer, shots: int, per_subject: int | None, seed: int, max_length: int
) -> list[Question]:
    """Test questions in their k-shot prompts; `per_subject` draws a seeded subset of every subject (None: all)."""
    unknown = sorted(set(table["subject"]) - set(SUBCATEGORY))
    if unknown:
        raise DataError(f"MMLU subjects without a category: {', '.join(unknown)}")
    out: list[Question] = []
    for subject in sorted(set(table["subject"])):
        dev = table[(table["subject"] == subject) & (table["split"] == "dev")].reset_index(drop=True)
        test = table[(table["subject"] == subject) & (table["split"] == "test")].reset_index(drop=True)
        if test.empty or len(dev) < shots:
            raise DataError(f"MMLU subject {subject}: {len(test)} test and {len(dev)} dev questions ({shots} shots)")
        rows = range(len(test))
        if per_subject is not None and per_subject < len(test):
            rows = sorted(random.Random(f"{seed}-{subject}").sample(range(len(test)), per_subject))
        for i in rows:
            row = test.iloc[i]
            k = shots
            while True:
                prompt = header(subject) + "".join(_example(dev.iloc[j], True) for j in range(k)) + _example(row, False)
                if k == 0 or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= max_length:
                    break
                k -= 1
            out.append(Question(subject, i, prompt, str(row["answer"]).strip(), k))
    return out


def answer_start(tokenizer, context_ids: Sequence[int], context: str) -> tuple[int, int]:
    """Token index of the last token of the last "\\nAnswer:" of `context` (the steering start: the authors' MMLU
    code, like every other steered prompt of this project, steers from the marker's last token on), and the number
    of special tokens (BOS) before the text.

    Found through the text, not by searching for the marker's tokens (those can differ mid-text: reference §5.3).
    """
    end = context.rindex(ANSWER_MARK) + len(ANSWER_MARK)
    head = tokenizer(context[:end], add_special_tokens=False)["input_ids"]
    offset = len(context_ids) - len(tokenizer(context, add_special_tokens=False)["input_ids"])  # BOS, if any
    if not head or list(context_ids[offset : offset + len(head)]) != head:
        raise ModelError("the tokens up to the last '\\nAnswer:' are not a prefix of the prompt's tokens")
    return offset + len(head) - 1, offset


def needs_bos(chat) -> bool | None:
    """True for the chat formats whose prompts start with BOS (Llama-2, Vicuna), so MMLU's prompts do too."""
    return True if isinstance(chat, (Llama2Format, VicunaFormat)) else None


def row_key(tokens: Sequence[int]) -> tuple[int, int]:
    """A compact key for a row of tokens (length and hash), so that 14,042 prompts do not stay in memory twice."""
    return len(tokens), hash(tuple(tokens))


def make_scans_lm(model, tokenizer, batch_size: int, max_length: int, add_bos: bool | None = None):
    """lm-eval's HFLM around an already loaded model, able to steer each row on its own (import deferred:
    lm-eval is only needed for MMLU).

    `add_bos=True` makes lm-eval put BOS before every context whatever the tokenizer's own default (the Llama-2 and
    Vicuna formats: the authors' MMLU encodes with the Llama tokenizer's default, which adds BOS; a tokenizer built
    without `add_bos_token` would silently drop it); None leaves the tokenizer's default (the organism).
    """
    from lm_eval.models.huggingface import HFLM

    class ScansLM(HFLM):
        def __init__(self):
            super().__init__(
                pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=None,
                add_bos_token=add_bos,
            )  # fmt: skip
            self.intervention: Intervention | None = None
            self.plan: dict[tuple[int, int], tuple[float, int, int]] = {}

        def tok_encode(self, string, add_special_tokens=None, left_truncate_len=None, **kwargs):
            # lm-eval's add_bos_token only asks the tokenizer for its special tokens; a tokenizer whose own
            # add_bos_token is off still gives none. The format needs BOS, so it is put here where it is missing.
            ids = super().tok_encode(string, add_special_tokens=add_special_tokens, **kwargs)
            bos = tokenizer.bos_token_id
            if add_bos and add_special_tokens is not False and bos is not None and ids[:1] != [bos]:
                ids = [bos, *ids]
            return ids[-left_truncate_len:] if left_truncate_len else ids

        def set_plan(self, intervention: Intervention | None, rows: dict[tuple[int, int], tuple[float, int, int]]):
            """Score through `intervention`; the row whose input tokens have `row_key` k gets coefficient c, steering
            start s and query start q: {k: (c, s, q)}."""
            self.intervention, self.plan = intervention, rows

        def _row_plan(self, row: torch.Tensor) -> tuple[float, int, int]:
            tokens = row.tolist()
            n = len(tokens)
            while n > 0 and tokens[n - 1] == 0:  # lm-eval right-pads with 0
                n -= 1
            for length in range(n, len(tokens) + 1):
                hit = self.plan.get(row_key(tokens[:length]))
                if hit is not None:
                    return hit
            raise ModelError("a batch row matches no planned request (lm-eval's auto batch size is not supported)")

        def _model_call(self, inps, attn_mask=None, labels=None):
            if self.intervention is None:
                return super()._model_call(inps, attn_mask, labels)
            rows = [Row(s, inps.shape[1], q, c) for c, s, q in (self._row_plan(row) for row in inps)]
            return teacher_forced_logits(self.intervention, self.model, inps, torch.ones_like(inps), rows)

    return ScansLM()


def lm_eval_scores(
    lm, items: Sequence[Question], intervention: Intervention | None = None, coefs: Sequence[float] | None = None
) -> list[list[float]]:
    """Log-likelihoods of " A".." D" per question through lm-eval; with an intervention, question i gets coefficient
    coefs[i] (default 0) and is steered from its last "\nAnswer:" on."""
    from lm_eval.api.instance import Instance

    requests, plan = [], {}
    for qi, q in enumerate(items):
        for letter in LETTERS:
            requests.append(Instance("loglikelihood", {}, (q.prompt, f" {letter}"), idx=len(requests)))
        if intervention is not None:
            ctx, cont = lm._encode_pair(q.prompt, " A")
            fed = (ctx + cont)[-(lm.max_length + 1) :][:-1]  # what lm-eval feeds the model for this request
            dropped = len(ctx) + len(cont) - 1 - len(fed)  # lm-eval truncates an over-long row from the left
            start, bos = answer_start(lm.tokenizer, ctx, q.prompt)
            coef = 0.0 if coefs is None else float(coefs[qi])
            plan[row_key(fed)] = (coef, max(0, start - dropped), max(0, bos - dropped))
    if intervention is not None:
        lm.set_plan(intervention, plan)
    try:
        scores = lm.loglikelihood(requests, disable_tqdm=False)
    finally:
        lm.set_plan(None, {})
    return [[scores[4 * qi + j][0] for j in range(4)] for qi in range(len(items))]


def lm_eval_predictions(
    lm, items: Sequence[Question], intervention: Intervention | None = None, coefs: Sequence[float] | None = None
) -> list[str]:
    """The most likely letter per question (see `lm_eval_scores`)."""
    scores = lm_eval_scores(lm, items, intervention, coefs)
    return [LETTERS[max(range(4), key=row.__getitem__)] for row in scores]


@torch.no_grad()
def direct_predictions(lm, items: Sequence[Question]) -> list[str]:
    """The cross-check: per question, one unpadded forward pass and argmax over the four letters' logits."""
    letter_ids = []
    for letter in LETTERS:
        _, cont = lm._encode_pair("Answer:", f" {letter}")
        if len(cont) != 1:
            raise ModelError(f"' {letter}' is {len(cont)} tokens for this tokenizer; the direct check needs one")
        letter_ids.append(cont[0])
    out = []
    device = input_device(lm.model)
    for q in tqdm(items, desc="MMLU direct check", leave=False):
        ctx, _ = lm._encode_pair(q.prompt, " A")
        logits = lm.model(torch.tensor([ctx], device=device)).logits[0, -1]
        out.append(LETTERS[int(logits[letter_ids].argmax())])
    return out


def accuracy_table(items: Sequence[Question], predictions: Sequence[str]) -> dict[str, float]:
    """Accuracy (%) per category and the micro-average over all questions (Table 3's "Avg.")."""
    correct = pd.DataFrame(
        {"category": [q.category for q in items], "ok": [p == q.answer for q, p in zip(items, predictions)]}
    )
    out = {f"mmlu_{c}": 100.0 * correct.loc[correct["category"] == c, "ok"].mean() for c in CATEGORIES}
    out["mmlu_avg"] = 100.0 * correct["ok"].mean()
    return out
