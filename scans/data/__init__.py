"""Datasets: the catalogue of YAML entries (configs/data/sets), read from a local folder via SCANS_DATA_DIR or from
pinned network sources, and the paper's splits."""

from scans.data.catalogue import EvalSet, catalogue, configure, configure_from, eval_sets, get_eval_set, get_spec
from scans.data.fetch import ENV_DATA_DIR, data_dir
from scans.data.fingerprint import data_fingerprint, data_source, dataset_key, files_stamp
from scans.data.registry import Prompt, load_prompts, load_table
from scans.data.spec import BENIGN, HARMFUL, LABELS, DatasetSpec, HubSource
from scans.data.splits import AnchorSplit, anchor_split, evaluation_sets

__all__ = [
    "BENIGN",
    "ENV_DATA_DIR",
    "HARMFUL",
    "LABELS",
    "AnchorSplit",
    "DatasetSpec",
    "EvalSet",
    "HubSource",
    "Prompt",
    "anchor_split",
    "catalogue",
    "configure",
    "configure_from",
    "data_dir",
    "data_fingerprint",
    "data_source",
    "dataset_key",
    "eval_sets",
    "evaluation_sets",
    "files_stamp",
    "get_eval_set",
    "get_spec",
    "load_prompts",
    "load_table",
]
