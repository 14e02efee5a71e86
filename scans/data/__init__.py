"""Dataset registry (local folder via SCANS_DATA_DIR, or pinned network sources) and the paper's splits."""

from scans.data.registry import (
    BENIGN,
    ENV_DATA_DIR,
    HARMFUL,
    LABELS,
    REGISTRY,
    DatasetSpec,
    HubSource,
    Prompt,
    data_dir,
    data_fingerprint,
    data_source,
    get_spec,
    load_prompts,
    load_table,
)
from scans.data.splits import EVAL_SET_LABELS, TABLE2_SETS, AnchorSplit, anchor_split, evaluation_sets

__all__ = [
    "BENIGN",
    "ENV_DATA_DIR",
    "EVAL_SET_LABELS",
    "HARMFUL",
    "LABELS",
    "REGISTRY",
    "TABLE2_SETS",
    "AnchorSplit",
    "DatasetSpec",
    "HubSource",
    "Prompt",
    "anchor_split",
    "data_dir",
    "data_fingerprint",
    "data_source",
    "evaluation_sets",
    "get_spec",
    "load_prompts",
    "load_table",
]
