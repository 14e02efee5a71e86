"""Dataset registry: one entry per benchmark, read from a local folder or fetched from a pinned source.

Where the data comes from (the project never commits data files):

1. `$SCANS_DATA_DIR/<local path>` when the environment variable SCANS_DATA_DIR is set. The folder has the layout
   of `shared/data` (its MANIFEST.md names every file's repository@commit:path). A missing file is an error,
   never a silent download, so a run with SCANS_DATA_DIR set uses exactly the files in that folder.
2. Otherwise the network: the raw file of the original repository pinned at the commit MANIFEST.md names
   (downloaded once into `$XDG_CACHE_HOME/scans/data`, default `~/.cache/scans/data`), or, where no such file
   exists, a Hugging Face hub dataset pinned at a revision (loaded with `datasets.load_dataset`).

Files are parsed with pandas / json / pyarrow directly. The `datasets` file builders wrap the same parsers but add
a 1.3 s import, an Arrow cache on disk and ~1.5 s for MMLU's 114 files (pandas: 0.14 s); their URL support also
needs aiohttp, which the project does not depend on. `datasets` is used for hub ids only.

Every entry yields a table (`load_table`); entries with a label rule also yield prompts (`load_prompts`), each
labelled `harmful` or `benign` (reference §5.1 gives the sets and counts).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scans.errors import DataError

ENV_DATA_DIR = "SCANS_DATA_DIR"
HARMFUL = "harmful"
BENIGN = "benign"
LABELS = (HARMFUL, BENIGN)
FORMATS = ("csv", "json", "jsonl", "parquet", "text", "json_nested")
# Either variable switches the Hugging Face libraries offline; the URL downloads here honour them too.
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
DOWNLOAD_TIMEOUT_S = 60
_MAX_REASON_CHARS = 200

Transform = Callable[[pd.DataFrame], pd.DataFrame]
HubTransform = Callable[[pd.DataFrame, str], pd.DataFrame]


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset pinned at a revision (a commit sha, so the data cannot change under us)."""

    repo_id: str
    revision: str
    config: str | None = None
    splits: tuple[str, ...] = ("train",)

    def __str__(self) -> str:
        config = f"/{self.config}" if self.config else ""
        return f"hf://datasets/{self.repo_id}@{self.revision}{config}[{'+'.join(self.splits)}]"


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and label one dataset.

    `local` holds paths (or glob patterns, expanded in sorted order) relative to SCANS_DATA_DIR. The remote source
    is `urls` (raw files pinned at a commit, one per local file) or `hub`. `columns` must be present in every file
    read (after `hub_transform` for hub data). `file_columns` is a regex with named groups matched against each
    file's name; every group becomes a column (e.g. the MMLU subject). `transform` runs on the concatenated table.
    A prompt dataset names its `text_column` and a label rule: a fixed `label`, or `label_column` whose values
    `label_values` maps to harmful/benign.
    """

    name: str
    local: tuple[str, ...]
    format: str
    description: str
    urls: tuple[str, ...] = ()
    hub: HubSource | None = None
    columns: tuple[str, ...] = ()
    text_column: str | None = None
    label: str | None = None
    label_column: str | None = None
    label_values: tuple[tuple[str, str], ...] = ()
    read_options: tuple[tuple[str, Any], ...] = ()
    file_columns: str | None = None
    transform: Transform | None = None
    hub_transform: HubTransform | None = None

    def __post_init__(self) -> None:
        # Registry definitions are code: a bad one is a programming error, raised at import time.
        if self.format not in FORMATS:
            raise ValueError(f"{self.name}: format {self.format!r} not in {FORMATS}")
        if bool(self.urls) == (self.hub is not None):
            raise ValueError(f"{self.name}: give exactly one remote source, urls or hub")
        if self.label is not None and self.label not in LABELS:
            raise ValueError(f"{self.name}: label {self.label!r} not in {LABELS}")
        if self.label is not None and self.label_column is not None:
            raise ValueError(f"{self.name}: give a fixed label or a label column, not both")
        if (self.label is not None or self.label_column is not None) and self.text_column is None:
            raise ValueError(f"{self.name}: a labelled dataset needs a text_column")
        if any(v not in LABELS for _, v in self.label_values):
            raise ValueError(f"{self.name}: label_values must map to {LABELS}")

    @property
    def is_prompt_set(self) -> bool:
        """True when the entry has a label rule, so `load_prompts` applies."""
        return self.label is not None or self.label_column is not None

    @property
    def remote(self) -> str:
        """The network source as one string (also what `data_fingerprint` hashes for network loads)."""
        return " ".join(self.urls) if self.urls else str(self.hub)


@dataclass(frozen=True)
class Prompt:
    """One query with its ground-truth label. `meta` (row index, other columns) is not part of equality."""

    text: str
    label: str  # "harmful" | "benign"
    source: str  # registry name
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------------------------------------------
# Transforms (why each exists is in its docstring)


def _repe_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """RepE-Data rows hold a pair of sentences with a boolean array, True = harmless.

    The label array decides, not the position: every test pair happens to be [True, False] (reference §5.1), but
    the train split mixes both orders, so the authors' fixed order would be wrong there.
    """
    rows = []
    for pair, (sentences, harmless) in enumerate(zip(table["sentence"], table["label"], strict=True)):
        if len(sentences) != len(harmless):
            raise DataError(f"dataset 'repe': pair {pair} has {len(sentences)} sentences but {len(harmless)} labels")
        for position, (text, is_harmless) in enumerate(zip(sentences, harmless, strict=True)):
            rows.append(
                {"text": text, "label": BENIGN if bool(is_harmless) else HARMFUL, "pair": pair, "position": position}
            )
    return pd.DataFrame(rows, columns=["text", "label", "pair", "position"])


def _wikitext_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Lines as the hub's `wikitext-2-raw-v1` rows: a non-blank line keeps its "\\n", a blank line is "".

    So `"\\n\\n".join(rows)` (the GPTQ-style perplexity text, reference §5.5) is the same from either source.
    """
    return table.assign(text=[line if line.strip() else "" for line in table["text"]])


def _harmbench_prompt(table: pd.DataFrame) -> pd.DataFrame:
    """HarmBench contextual behaviours are asked with their context first, as HarmBench formats them."""
    prompts = [
        f"{context}\n\n---\n\n{behavior}" if context.strip() else behavior
        for behavior, context in zip(table["Behavior"], table["ContextString"], strict=True)
    ]
    return table.assign(prompt=prompts)


def _instruction_prompt(table: pd.DataFrame) -> pd.DataFrame:
    """Instruction plus its input when there is one (every input of safety_only_data is empty today)."""
    prompts = [
        f"{instruction}\n\n{extra}" if str(extra).strip() else instruction
        for instruction, extra in zip(table["instruction"], table["input"], strict=True)
    ]
    return table.assign(prompt=prompts)


_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
_MMLU_CHOICES = "ABCD"


def _mmlu_from_hub(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """cais/mmlu rows (question, subject, choices[4], answer index) in the layout of the Hendrycks CSV files."""
    choices = [list(c) for c in table["choices"]]
    out = pd.DataFrame({"question": table["question"]})
    for i, letter in enumerate(_MMLU_CHOICES):
        out[letter] = [c[i] for c in choices]
    out["answer"] = [_MMLU_CHOICES[int(a)] for a in table["answer"]]
    out["subject"] = table["subject"]
    out["split"] = split
    return out


# --------------------------------------------------------------------------------------------------------------
# The registry. Every source below is the repository@commit:path that MANIFEST.md gives for the local file.

_GH = "https://raw.githubusercontent.com"
_SCANS = f"{_GH}/zouyingcao/SCANS/9dc20d2f1ce29d6b26ccd08c2d457c8ad64d5760/datasets"
_XSTEST = f"{_GH}/paul-rottger/exaggerated-safety/d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d"
_OVERKILL = f"{_GH}/InvokerStark/OverKill/9551a7ff7b2cb18d178e64fb5cc95e4684311b3b/data"
# The local JBB files were rebuilt from copies; their sha256 equals the hub files at this revision (MANIFEST).
_HF = "https://huggingface.co/datasets"
_JBB = f"{_HF}/JailbreakBench/JBB-Behaviors/resolve/886acc352a31533ffbcf4ef22c744658688086fc/data"
_REFUSAL_DIRECTION = f"{_GH}/andyrdt/refusal_direction/9d852fae1a9121c78b29142de733cb1340770cc3/dataset"
_ADVERSARIALLM = f"{_GH}/busycalibrating/AdversariaLLM/a4b57364bc2b0785bd0e6f79eec4948e3991b8b0/data/behavior_datasets"
_ROSE = f"{_GH}/WHU-ZQH/ROSE/84be999291346a03bfe5e55c27616754d2c08455/datasets"
_SAFETY_LLAMAS = f"{_GH}/vinid/safety-tuned-llamas/36a4b8d5c2177ed165bf61f59b590161394f7f12/data"
_COCONOT = f"{_GH}/allenai/noncompliance/25bf77cc668814360405cdb8197c4368205806c7/data"
_LOOKBACK_LENS = f"{_GH}/voidism/Lookback-Lens/f2846ef21deecc4c016fc44a1820373e3f255e96/data"
_YXANUL = f"{_GH}/yxanul/yxanul_0.6B/d3ef06095f54f9e2a78c0abca1472a0188a5e1e9/validation"

# The five human-labelled XSTest completion sets (XSTest paper), in sorted order.
XSTEST_COMPLETION_MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
_XSTEST_COMPLETIONS = tuple(f"xstest_v2_completions_{m}_streval.csv" for m in XSTEST_COMPLETION_MODELS)

_SPECS = (
    DatasetSpec(
        name="advbench",
        local=("scans/AdvBench.csv",),
        urls=(f"{_SCANS}/AdvBench.csv",),
        format="csv",
        columns=("goal",),
        text_column="goal",
        label=HARMFUL,
        description=(
            "AdvBench harmful behaviours (520), SCANS authors' copy: zouyingcao/SCANS@9dc20d2f datasets/AdvBench.csv"
        ),
    ),
    DatasetSpec(
        name="truthfulqa",
        local=("scans/TruthfulQA.csv",),
        urls=(f"{_SCANS}/TruthfulQA.csv",),
        format="csv",
        columns=("Question",),
        text_column="Question",
        label=BENIGN,
        description=(
            "TruthfulQA questions (817), the benign anchors and 'TQA': zouyingcao/SCANS@9dc20d2f "
            "datasets/TruthfulQA.csv"
        ),
    ),
    DatasetSpec(
        name="xstest",
        local=("xstest/xstest_prompts.csv",),
        urls=(f"{_XSTEST}/xstest_prompts.csv",),
        format="csv",
        columns=("prompt", "type", "label"),
        text_column="prompt",
        label_column="label",
        label_values=(("safe", BENIGN), ("unsafe", HARMFUL)),
        description=(
            "XSTest v2, 250 safe / 200 unsafe with the official label column: "
            "paul-rottger/exaggerated-safety@d7bb5bd7 xstest_prompts.csv"
        ),
    ),
    DatasetSpec(
        name="oktest",
        local=("scans/OKTest.csv",),
        urls=(f"{_SCANS}/OKTest.csv",),
        format="csv",
        columns=("prompt",),
        text_column="prompt",
        label=BENIGN,
        description=(
            "OKTest (300), byte-identical to InvokerStark/OverKill data/OKTest.csv: zouyingcao/SCANS@9dc20d2f "
            "datasets/OKTest.csv"
        ),
    ),
    DatasetSpec(
        name="oktest_heldout",
        local=("oktest/OKTest_heldout.csv",),
        urls=(f"{_OVERKILL}/OKTest_heldout.csv",),
        format="csv",
        columns=("prompt",),
        text_column="prompt",
        label=BENIGN,
        description="OKTest held-out prompts (50): InvokerStark/OverKill@9551a7ff data/OKTest_heldout.csv",
    ),
    DatasetSpec(
        name="harmfulq",
        local=("scans/HarmfulQ.json",),
        urls=(f"{_SCANS}/HarmfulQ.json",),
        format="json",
        columns=("text",),
        text_column="text",
        label=HARMFUL,
        description=(
            "HarmfulQ (200, JSON list), run with OKTest by the authors: zouyingcao/SCANS@9dc20d2f "
            "datasets/HarmfulQ.json"
        ),
    ),
    DatasetSpec(
        name="repe",
        local=("scans/representation-engineering/data/test-*.parquet",),
        urls=(f"{_SCANS}/representation-engineering/data/test-00000-of-00001-e88521c3da183185.parquet",),
        format="parquet",
        columns=("sentence", "label"),
        transform=_repe_pairs,
        text_column="text",
        label_column="label",
        label_values=((BENIGN, BENIGN), (HARMFUL, HARMFUL)),
        description=(
            "RepE-Data test split (384 pairs), the authors' copy of hub justinphan3110/harmful_harmless_instructions "
            "(unpinned there): zouyingcao/SCANS@9dc20d2f datasets/representation-engineering/data/test-*.parquet"
        ),
    ),
    DatasetSpec(
        name="malicious",
        local=("scans/MaliciousInstruct.txt",),
        urls=(f"{_SCANS}/MaliciousInstruct.txt",),
        format="text",
        columns=("text",),
        text_column="text",
        label=HARMFUL,
        description="MaliciousInstruct (100 lines): zouyingcao/SCANS@9dc20d2f datasets/MaliciousInstruct.txt",
    ),
    DatasetSpec(
        name="heldout_harmless",
        local=("scans/Held-outHarmless.txt",),
        urls=(f"{_SCANS}/Held-outHarmless.txt",),
        format="text",
        columns=("text",),
        text_column="text",
        label=BENIGN,
        description=(
            "Held-out harmless (100 lines, LLM-Safeguard testset.txt): zouyingcao/SCANS@9dc20d2f "
            "datasets/Held-outHarmless.txt"
        ),
    ),
    DatasetSpec(
        name="jbb_harmful",
        local=("jbb_behaviors/harmful-behaviors.csv",),
        urls=(f"{_JBB}/harmful-behaviors.csv",),
        format="csv",
        columns=("Goal",),
        text_column="Goal",
        label=HARMFUL,
        description=(
            "JBB-Behaviors harmful (100), local copy rebuilt from andyrdt/refusal_direction@9d852fae; hub "
            "JailbreakBench/JBB-Behaviors@886acc35"
        ),
    ),
    DatasetSpec(
        name="jbb_benign",
        local=("jbb_behaviors/benign-behaviors.csv",),
        urls=(f"{_JBB}/benign-behaviors.csv",),
        format="csv",
        columns=("Goal",),
        text_column="Goal",
        label=BENIGN,
        description=(
            "JBB-Behaviors benign (100), local copy rebuilt from Baisayan/hack@2b37da1c; hub "
            "JailbreakBench/JBB-Behaviors@886acc35"
        ),
    ),
    DatasetSpec(
        name="mmlu",
        local=("scans/mmlu_dev/*_dev.csv", "scans/mmlu_test/*_test.csv"),
        hub=HubSource("cais/mmlu", "c30699e8356da336a370243923dbaf21066bb9fe", config="all", splits=("dev", "test")),
        hub_transform=_mmlu_from_hub,
        format="csv",
        # Headerless Hendrycks files; keep_default_na=False in the reader keeps options that read "None".
        read_options=(("names", _MMLU_COLUMNS),),
        columns=_MMLU_COLUMNS,
        file_columns=r"^(?P<subject>.+)_(?P<split>dev|test)\.csv$",
        description=(
            "MMLU 57 subjects, dev 285 + test 14042: zouyingcao/SCANS@9dc20d2f datasets/mmlu_{dev,test}/; hub "
            "cais/mmlu@c30699e8 all"
        ),
    ),
    DatasetSpec(
        name="xsum",
        local=("xsum/xsum_test_1000.jsonl",),
        urls=(f"{_LOOKBACK_LENS}/xsum-1000.jsonl",),
        format="jsonl",
        columns=("document", "summary", "id"),
        description=(
            "XSum 1000 pairs, all from the official test split (likely HF test[:1000]): "
            "voidism/Lookback-Lens@f2846ef2 data/xsum-1000.jsonl"
        ),
    ),
    DatasetSpec(
        name="wikitext2",
        local=("wikitext-2/raw/wiki.test.raw.txt",),
        hub=HubSource(
            "Salesforce/wikitext",
            "b08601e04326c79dfdd32d625aee71d232d685c3",
            config="wikitext-2-raw-v1",
            splits=("test",),
        ),
        format="text",
        read_options=(("keep_linebreaks", True),),
        columns=("text",),
        transform=_wikitext_rows,
        description=(
            "WikiText-2 raw test (4358 lines), local file rebuilt with an exact sha256 match (MANIFEST); hub "
            "Salesforce/wikitext@b08601e0"
        ),
    ),
    DatasetSpec(
        name="c4",
        local=("c4/c4_validation_2k.parquet",),
        urls=(f"{_YXANUL}/c4_validation_2k.parquet",),
        format="parquet",
        columns=("text",),
        description=(
            "2000 C4-en validation documents, slice unknown (MANIFEST caveat): yxanul/yxanul_0.6B@d3ef0609 "
            "validation/c4_validation_2k.parquet"
        ),
    ),
    DatasetSpec(
        name="xstest_completions",
        local=tuple(f"xstest/automated_evaluation_labels/{f}" for f in _XSTEST_COMPLETIONS),
        urls=tuple(f"{_XSTEST}/evaluation/automated_evaluation_labels/{f}" for f in _XSTEST_COMPLETIONS),
        format="csv",
        columns=("id", "type", "prompt", "completion", "final_label", "strmatch_label"),
        file_columns=r"^xstest_v2_completions_(?P<model>.+)_streval\.csv$",
        description=(
            "XSTest human-labelled completions of 5 models (5 x 450) with the XSTest string-match label: "
            "paul-rottger/exaggerated-safety@d7bb5bd7 evaluation/automated_evaluation_labels/*_streval.csv"
        ),
    ),
    DatasetSpec(
        name="safety_tuned_llamas",
        local=("safety_tuned_llamas/training/safety_only_data_Instructions.json",),
        urls=(f"{_SAFETY_LLAMAS}/training/safety_only_data_Instructions.json",),
        format="json",
        columns=("instruction", "input", "output"),
        transform=_instruction_prompt,
        text_column="prompt",
        label=HARMFUL,
        description=(
            "Safety-Tuned LLaMAs harmful instruction -> refusal pairs (2483): vinid/safety-tuned-llamas@36a4b8d5 "
            "data/training/safety_only_data_Instructions.json"
        ),
    ),
    DatasetSpec(
        name="harmbench",
        local=("harmbench/harmbench_behaviors_text_all.csv",),
        urls=(f"{_ADVERSARIALLM}/harmbench_behaviors_text_all.csv",),
        format="csv",
        columns=("Behavior", "FunctionalCategory", "ContextString"),
        transform=_harmbench_prompt,
        text_column="prompt",
        label=HARMFUL,
        description=(
            "HarmBench text behaviours, all 400 (vendored copy): busycalibrating/AdversariaLLM@a4b57364 "
            "data/behavior_datasets/harmbench_behaviors_text_all.csv"
        ),
    ),
    DatasetSpec(
        name="tdc2023",
        local=("tdc2023/tdc2023_dev_behaviors.json", "tdc2023/tdc2023_test_behaviors.json"),
        urls=(
            f"{_REFUSAL_DIRECTION}/raw/tdc2023_dev_behaviors.json",
            f"{_REFUSAL_DIRECTION}/raw/tdc2023_test_behaviors.json",
        ),
        format="json",
        columns=("text",),
        file_columns=r"^tdc2023_(?P<split>dev|test)_behaviors\.json$",
        text_column="text",
        label=HARMFUL,
        description=(
            "TDC 2023 red-teaming behaviours, dev 50 + test 50: andyrdt/refusal_direction@9d852fae "
            "dataset/raw/tdc2023_*_behaviors.json"
        ),
    ),
    DatasetSpec(
        name="do_not_answer",
        local=("do_not_answer/do_not_answer_en.csv",),
        urls=(f"{_ROSE}/do-not-answer/do_not_answer_en.csv",),
        format="csv",
        columns=("question",),
        text_column="question",
        label=HARMFUL,
        description="Do-Not-Answer questions (939): WHU-ZQH/ROSE@84be9992 datasets/do-not-answer/do_not_answer_en.csv",
    ),
    DatasetSpec(
        name="harmfulqa",
        local=("harmfulqa/harmfulqa_questions.json",),
        urls=(f"{_ROSE}/harmfulqa/harmfulqs.json",),
        format="json_nested",
        read_options=(("levels", ("topic", "subtopic")), ("leaf", "question")),
        columns=("topic", "subtopic", "question"),
        text_column="question",
        label=HARMFUL,
        description=(
            "HarmfulQA questions (1960, topic -> subtopic -> list): WHU-ZQH/ROSE@84be9992 "
            "datasets/harmfulqa/harmfulqs.json"
        ),
    ),
    DatasetSpec(
        name="strongreject",
        local=("strongreject/strongreject_dataset.csv",),
        urls=(f"{_REFUSAL_DIRECTION}/raw/strongreject.csv",),
        format="csv",
        columns=("forbidden_prompt",),
        text_column="forbidden_prompt",
        label=HARMFUL,
        description=(
            "StrongREJECT forbidden prompts (313): andyrdt/refusal_direction@9d852fae dataset/raw/strongreject.csv"
        ),
    ),
    DatasetSpec(
        name="alpaca",
        local=("refusal_direction/processed/alpaca.json",),
        urls=(f"{_REFUSAL_DIRECTION}/processed/alpaca.json",),
        format="json",
        columns=("instruction",),
        text_column="instruction",
        label=BENIGN,
        description=(
            "Alpaca instructions without outputs (31323): andyrdt/refusal_direction@9d852fae "
            "dataset/processed/alpaca.json"
        ),
    ),
    DatasetSpec(
        name="coconot_contrast",
        local=("coconot/coconot_contrast_eval.jsonl",),
        urls=(f"{_COCONOT}/coconot_contrast_eval.jsonl",),
        format="jsonl",
        columns=("prompt", "category"),
        text_column="prompt",
        label=BENIGN,
        description=(
            "CoCoNot contrast set, benign look-alikes (379): allenai/noncompliance@25bf77cc "
            "data/coconot_contrast_eval.jsonl"
        ),
    ),
    DatasetSpec(
        name="coconot_eval",
        local=("coconot/coconot_eval.jsonl",),
        urls=(f"{_COCONOT}/coconot_eval.jsonl",),
        format="jsonl",
        columns=("prompt", "category"),
        text_column="prompt",
        # Requests a model should not comply with; only 395 of 1001 are safety concerns (see `category`).
        label=HARMFUL,
        description=(
            "CoCoNot original set, requests to refuse (1001): allenai/noncompliance@25bf77cc data/coconot_eval.jsonl"
        ),
    ),
)

# Training data of the baselines (Table 2): never evaluated on, checked against every reported set before use.
_SAFEDECODING = f"{_GH}/uw-nsl/SafeDecoding/5b77507dea95031b6a067e6d5a136831103ae193"
_LLM_SAFEGUARD = f"{_GH}/chujiezheng/LLM-Safeguard/410bfb5c5ae9c17cd73da74a6e648958fd3181cb/code"
_BASELINE_SPECS = (
    DatasetSpec(
        name="safedecoding_seed",
        local=("baselines/safedecoding/seed_reject.json",),
        urls=(f"{_SAFEDECODING}/datasets/seed_reject.json",),
        format="json",
        read_options=(("records", "prompts"),),
        columns=("id", "prompt", "category"),
        text_column="prompt",
        label=HARMFUL,
        description=(
            "SafeDecoding's seed harmful queries (36): uw-nsl/SafeDecoding@5b77507d datasets/seed_reject.json"
        ),
    ),
    DatasetSpec(
        name="dro_harmful",
        local=("baselines/dro/custom_harmful.txt",),
        urls=(f"{_LLM_SAFEGUARD}/data/custom.txt",),
        format="text",
        columns=("text",),
        text_column="text",
        label=HARMFUL,
        description="DRO's synthetic harmful queries (100): chujiezheng/LLM-Safeguard@410bfb5c code/data/custom.txt",
    ),
    DatasetSpec(
        name="dro_harmless",
        local=("baselines/dro/custom_harmless.txt",),
        urls=(f"{_LLM_SAFEGUARD}/data_harmless/custom.txt",),
        format="text",
        columns=("text",),
        text_column="text",
        label=BENIGN,
        description=(
            "DRO's harmless look-alikes, paired line by line with dro_harmful (100): "
            "chujiezheng/LLM-Safeguard@410bfb5c code/data_harmless/custom.txt"
        ),
    ),
)

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (*_SPECS, *_BASELINE_SPECS)}


# --------------------------------------------------------------------------------------------------------------
# Locating files


def data_dir() -> Path | None:
    """The local data folder from SCANS_DATA_DIR (relative to the working directory), or None when unset."""
    value = os.environ.get(ENV_DATA_DIR, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def get_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; DataError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(REGISTRY))}") from None


def _is_pattern(relative: str) -> bool:
    return any(ch in relative for ch in "*?[")


def _source_for(spec: DatasetSpec, index: int) -> str:
    """The remote source of local entry `index` (its own URL when the files map one-to-one)."""
    if spec.urls and len(spec.urls) == len(spec.local) and not _is_pattern(spec.local[index]):
        return spec.urls[index]
    return spec.remote


def _local_files(spec: DatasetSpec, root: Path) -> list[Path]:
    """Every local file of `spec`, patterns expanded in sorted order; DataError naming the first one missing."""
    files: list[Path] = []
    for index, relative in enumerate(spec.local):
        expected = root / relative
        hint = "" if root.is_dir() else f"; the folder {root} does not exist"
        advice = f"download it from {_source_for(spec, index)}, or unset {ENV_DATA_DIR} to fetch it over the network"
        if _is_pattern(relative):
            matches = sorted(p for p in root.glob(relative) if p.is_file())
            if not matches:
                raise DataError(
                    f"dataset {spec.name!r}: no file matches {expected} ({ENV_DATA_DIR}={root}{hint}); {advice}"
                )
            files.extend(matches)
        elif expected.is_file():
            files.append(expected)
        else:
            raise DataError(
                f"dataset {spec.name!r}: file not found: {expected} ({ENV_DATA_DIR}={root}{hint}); {advice}"
            )
    return files


def _short(error: BaseException) -> str:
    """An exception as one short line (library messages often span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def _offline() -> bool:
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for var in OFFLINE_ENV_VARS)


def _fetch_error(spec: DatasetSpec, reason: str) -> DataError:
    places = ", ".join(f"${ENV_DATA_DIR}/{relative}" for relative in spec.local)
    return DataError(
        f"dataset {spec.name!r} could not be fetched from {spec.remote} ({reason}); "
        f"place the file(s) at {places} instead (a folder laid out like shared/data) and set {ENV_DATA_DIR}"
    )


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "scans" / "data"


def _download(spec: DatasetSpec, url: str) -> Path:
    """The cached copy of `url`, downloaded atomically on first use (the URL pins a commit, so it never changes)."""
    target = _cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if _offline():
        raise _fetch_error(spec, f"offline: {' or '.join(OFFLINE_ENV_VARS)} is set")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(payload)
        os.replace(tmp.name, target)
    except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        raise _fetch_error(spec, _short(error)) from error
    return target


# --------------------------------------------------------------------------------------------------------------
# Reading


def _flatten_nested(obj: Any, levels: tuple[str, ...], leaf: str, origin: str) -> pd.DataFrame:
    """{level0: {level1: [leaf, ...]}} -> rows (level0, level1, leaf), in the file's key order."""
    rows: list[dict[str, Any]] = []

    def walk(node: Any, keys: tuple[str, ...]) -> None:
        if len(keys) == len(levels):
            if not isinstance(node, list):
                raise DataError(f"{origin}: expected a list under {' / '.join(keys)}, found {type(node).__name__}")
            rows.extend({**dict(zip(levels, keys, strict=True)), leaf: item} for item in node)
        elif isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*keys, key))
        else:
            raise DataError(f"{origin}: expected a JSON object at depth {len(keys)}, found {type(node).__name__}")

    walk(obj, ())
    return pd.DataFrame(rows, columns=[*levels, leaf])


def _read_file(spec: DatasetSpec, path: Path, origin: str) -> pd.DataFrame:
    """Parse one file. `origin` (local path or URL) names it in errors."""
    options = dict(spec.read_options)
    try:
        if spec.format == "csv":
            names = options.get("names")
            # keep_default_na=False: text stays text ("None", "N/A" and "" are values, not NaN).
            return pd.read_csv(
                path, header=None if names else "infer", names=list(names) if names else None, keep_default_na=False
            )
        if spec.format == "parquet":
            return pd.read_parquet(path)
        if spec.format == "text":
            # Universal newlines, as Python (and the hub's text builders) iterate a file.
            with open(path, encoding="utf-8") as handle:
                lines = list(handle)
            if not options.get("keep_linebreaks", False):
                lines = [line.rstrip("\n") for line in lines]
            return pd.DataFrame({"text": lines})
        if spec.format == "jsonl":
            with open(path, encoding="utf-8") as handle:
                return pd.DataFrame.from_records([json.loads(line) for line in handle if line.strip()])
        data = json.loads(path.read_text(encoding="utf-8"))
        if spec.format == "json_nested":
            return _flatten_nested(data, tuple(options["levels"]), options["leaf"], origin)
        if isinstance(data, dict) and "records" in options:
            data = data.get(options["records"])  # the list of records under one key ({"prompts": [...]})
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            return pd.DataFrame({"text": data})  # a JSON list of prompts
        if isinstance(data, list) and all(isinstance(item, dict) for item in data):
            return pd.DataFrame.from_records(data)
        raise DataError(f"dataset {spec.name!r}: {origin} is not a JSON list of strings or of objects")
    except (ValueError, OSError, UnicodeError) as error:  # parser, JSON, Arrow and decoding errors
        raise DataError(f"dataset {spec.name!r}: could not read {origin} as {spec.format} ({_short(error)})") from error


def _read_hub(spec: DatasetSpec) -> list[tuple[str, pd.DataFrame]]:
    """(split, table) per hub split, through `datasets.load_dataset` pinned at the revision."""
    assert spec.hub is not None
    if _offline():
        raise _fetch_error(spec, f"offline: {' or '.join(OFFLINE_ENV_VARS)} is set")
    import datasets  # slow import (~1 s), needed only here

    parts = []
    for split in spec.hub.splits:
        try:
            loaded = datasets.load_dataset(spec.hub.repo_id, spec.hub.config, revision=spec.hub.revision, split=split)
        except Exception as error:  # the hub client raises many types (connection, HTTP, offline, not found)
            raise _fetch_error(spec, _short(error)) from error
        table = loaded.to_pandas()
        parts.append((split, spec.hub_transform(table, split) if spec.hub_transform else table))
    return parts


def _checked(spec: DatasetSpec, table: pd.DataFrame, origin: str, filename: str | None) -> pd.DataFrame:
    """Validate one file's table (columns, rows) and add the columns parsed from its name."""
    missing = [c for c in spec.columns if c not in table.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in table.columns) or "none"
        raise DataError(
            f"dataset {spec.name!r}: {origin} has no column {', '.join(map(repr, missing))} (columns found: {found})"
        )
    if table.empty:
        raise DataError(f"dataset {spec.name!r}: {origin} has no rows")
    if spec.file_columns and filename is not None:
        match = re.match(spec.file_columns, filename)
        if match is None:
            raise DataError(
                f"dataset {spec.name!r}: file name {filename!r} does not match {spec.file_columns!r} ({origin})"
            )
        table = table.assign(**match.groupdict())
    return table


def load_table(name: str) -> pd.DataFrame:
    """The dataset as one table (all files concatenated in order, transformed, validated).

    Raises DataError for an unknown name, a missing local file, a failed download, a file that cannot be parsed,
    a missing expected column (naming the file, the column and the columns found) or an empty table.
    """
    spec = get_spec(name)
    root = data_dir()
    parts: list[pd.DataFrame] = []
    if root is not None:
        for path in _local_files(spec, root):
            parts.append(_checked(spec, _read_file(spec, path, str(path)), str(path), path.name))
    elif spec.urls:
        for url in spec.urls:
            path = _download(spec, url)
            parts.append(_checked(spec, _read_file(spec, path, url), url, url.rsplit("/", 1)[-1]))
    else:
        for split, table in _read_hub(spec):
            parts.append(_checked(spec, table, f"{spec.remote} split {split!r}", None))
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    if spec.transform is not None:
        table = spec.transform(table)
    if table.empty:
        raise DataError(f"dataset {name!r} has no rows after reading {data_source(name)}")
    return table


# load_prompts' results by (name, files_stamp): the disjointness rule reads every blocked set for each pool it
# checks, and parsing the same files again and again cost the tune stage most of its time on a small model.
_PROMPTS: dict[tuple, list[Prompt]] = {}


def files_stamp(name: str) -> tuple | None:
    """What identifies the files a dataset would be read from now (path, size, mtime of each local file, or the
    pinned remote source), or None when they cannot be listed (load_table then raises the precise error)."""
    spec = get_spec(name)
    root = data_dir()
    if root is None:
        return ("remote", name)
    try:
        return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in _local_files(spec, root))
    except (DataError, OSError):
        return None


def load_prompts(name: str) -> list[Prompt]:
    """The dataset's prompts in file order, texts stripped, each labelled harmful/benign (read once per process and
    set of files: a changed file or data folder is read again).

    `meta` holds the row index in the table (`row`) and every other column of that row (e.g. XSTest `type`).
    """
    stamp = files_stamp(name)
    if stamp is not None and (name, stamp) in _PROMPTS:
        return list(_PROMPTS[(name, stamp)])
    prompts = _read_prompts(name)
    if stamp is not None:
        _PROMPTS[(name, stamp)] = prompts
    return list(prompts)


def _read_prompts(name: str) -> list[Prompt]:
    spec = get_spec(name)
    if not spec.is_prompt_set:
        prompt_sets = ", ".join(sorted(n for n, s in REGISTRY.items() if s.is_prompt_set))
        raise DataError(f"dataset {name!r} is a table, not a prompt set; use load_table. Prompt sets: {prompt_sets}")
    assert spec.text_column is not None
    table = load_table(name)
    if spec.text_column not in table.columns:
        raise DataError(f"dataset {name!r}: no text column {spec.text_column!r} (columns found: {list(table.columns)})")
    values = dict(spec.label_values)
    prompts = []
    for row, record in enumerate(table.to_dict("records")):
        text = record.pop(spec.text_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"dataset {name!r}: row {row} has an empty {spec.text_column!r} ({data_source(name)})")
        if spec.label is not None:
            label = spec.label
        else:
            raw = record.get(spec.label_column)
            label = values.get(str(raw), "")
            if not label:
                raise DataError(
                    f"dataset {name!r}: row {row} has {spec.label_column}={raw!r}; expected one of {sorted(values)}"
                )
        prompts.append(Prompt(text=text.strip(), label=label, source=name, meta={"row": row, **record}))
    return prompts


# --------------------------------------------------------------------------------------------------------------
# Provenance


def data_source(name: str) -> str:
    """Where `load_table(name)` reads from now: the local file(s), or the pinned remote source."""
    spec = get_spec(name)
    root = data_dir()
    if root is None:
        return spec.remote
    return " ".join(str(root / relative) for relative in spec.local)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(name: str) -> str:
    """sha256 (hex) identifying the data that `load_table(name)` reads, for provenance and artifact keys.

    Local, one file: the file's sha256 (the same value as in shared/data/SHA256SUMS). Local, several files: the
    sha256 of their `<sha256>  <relative path>` lines in sorted path order (SHA256SUMS format). Network: the
    sha256 of the pinned source string (URLs at a commit, or hub id@revision), which fixes the content.
    """
    spec = get_spec(name)
    root = data_dir()
    if root is None:
        return hashlib.sha256(spec.remote.encode()).hexdigest()
    files = sorted(_local_files(spec, root), key=lambda p: p.relative_to(root).as_posix())
    if len(files) == 1:
        return _sha256_file(files[0])
    listing = "".join(f"{_sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()
