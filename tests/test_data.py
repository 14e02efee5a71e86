"""Dataset registry and splits. Tests marked `needs_data` read the real files from SCANS_DATA_DIR
(e.g. SCANS_DATA_DIR=/work/shared/data); the others build small files in a temporary data folder."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from scans.data import (
    BENIGN,
    HARMFUL,
    AnchorSplit,
    Prompt,
    anchor_split,
    catalogue,
    data_dir,
    data_fingerprint,
    evaluation_sets,
    get_eval_set,
    get_spec,
    load_prompts,
    load_table,
)
from scans.errors import DataError

TABLE2_SETS = [
    "xstest_safe",
    "xstest_unsafe",
    "repe_safe",
    "repe_unsafe",
    "oktest",
    "truthfulqa",
    "advbench",
    "malicious",
]

REAL_DATA = os.environ.get("SCANS_DATA_DIR")
needs_data = pytest.mark.skipif(
    not REAL_DATA, reason="SCANS_DATA_DIR is not set; point it at a folder laid out like shared/data"
)
PAPER_ANCHOR_SIZE = 64  # reference §4 "Anchor size"


@pytest.fixture
def real_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SCANS_DATA_DIR", str(REAL_DATA))
    return Path(str(REAL_DATA))


@pytest.fixture
def tmp_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SCANS_DATA_DIR", str(root))
    return root


def _write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _one_line(error: pytest.ExceptionInfo[DataError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------------- real data


@needs_data
@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("advbench", {HARMFUL: 520}),
        ("truthfulqa", {BENIGN: 817}),
        ("xstest", {BENIGN: 250, HARMFUL: 200}),
        ("repe", {BENIGN: 384, HARMFUL: 384}),
        ("oktest", {BENIGN: 300}),
        ("malicious", {HARMFUL: 100}),
        ("harmfulq", {HARMFUL: 200}),
        ("heldout_harmless", {BENIGN: 100}),
        ("oktest_heldout", {BENIGN: 50}),
        ("jbb_harmful", {HARMFUL: 100}),
        ("jbb_benign", {BENIGN: 100}),
    ],
)
def test_prompt_counts_match_the_reference(real_data: Path, name: str, counts: dict[str, int]) -> None:
    prompts = load_prompts(name)
    assert Counter(p.label for p in prompts) == counts
    assert all(p.text == p.text.strip() and p.text for p in prompts)
    assert [p.meta["row"] for p in prompts] == list(range(len(prompts)))


@needs_data
def test_xstest_keeps_the_prompt_type(real_data: Path) -> None:
    prompts = load_prompts("xstest")
    unsafe_types = {p.meta["type"] for p in prompts if p.label == HARMFUL}
    assert unsafe_types and all(t.startswith("contrast_") for t in unsafe_types)  # reference §5.1


@needs_data
def test_every_registry_entry_loads(real_data: Path) -> None:
    for name in catalogue():
        assert len(load_table(name)) > 0, name


@needs_data
def test_fingerprint_of_one_file_is_its_sha256(real_data: Path) -> None:
    expected = hashlib.sha256((real_data / "scans" / "AdvBench.csv").read_bytes()).hexdigest()
    assert data_fingerprint("advbench") == expected


@needs_data
def test_anchor_split_is_deterministic_for_a_seed(real_data: Path) -> None:
    harmful, benign = load_prompts("advbench"), load_prompts("truthfulqa")
    assert anchor_split(harmful, benign, PAPER_ANCHOR_SIZE, seed=3) == anchor_split(
        harmful, benign, PAPER_ANCHOR_SIZE, seed=3
    )


@needs_data
def test_anchors_and_heldout_are_disjoint_cover_the_list_and_keep_file_order(real_data: Path) -> None:
    harmful, benign = load_prompts("advbench"), load_prompts("truthfulqa")
    split = anchor_split(harmful, benign, PAPER_ANCHOR_SIZE, seed=0)
    for full, anchors, heldout in (
        (harmful, split.harmful_anchors, split.harmful_heldout),
        (benign, split.benign_anchors, split.benign_heldout),
    ):
        anchor_rows = [p.meta["row"] for p in anchors]
        heldout_rows = [p.meta["row"] for p in heldout]
        assert len(anchor_rows) == PAPER_ANCHOR_SIZE
        assert not set(anchor_rows) & set(heldout_rows)
        assert sorted(anchor_rows + heldout_rows) == list(range(len(full)))
        assert heldout_rows == sorted(heldout_rows)
    assert (len(split.harmful_heldout), len(split.benign_heldout)) == (456, 753)  # reference §5.1


@needs_data
def test_different_seeds_give_different_anchors(real_data: Path) -> None:
    harmful, benign = load_prompts("advbench"), load_prompts("truthfulqa")
    first = anchor_split(harmful, benign, PAPER_ANCHOR_SIZE, seed=0)
    second = anchor_split(harmful, benign, PAPER_ANCHOR_SIZE, seed=1)
    assert set(first.harmful_anchors) != set(second.harmful_anchors)
    assert set(first.benign_anchors) != set(second.benign_anchors)


@needs_data
def test_table2_sets_have_the_reference_sizes_and_labels(real_data: Path) -> None:
    split = anchor_split(load_prompts("advbench"), load_prompts("truthfulqa"), PAPER_ANCHOR_SIZE, seed=0)
    sets = evaluation_sets(list(TABLE2_SETS), limit=None, seed=0, heldout=split)
    assert list(sets) == list(TABLE2_SETS)
    sizes = {name: len(prompts) for name, prompts in sets.items()}
    assert sizes == {
        "xstest_safe": 250,
        "xstest_unsafe": 200,
        "repe_safe": 384,
        "repe_unsafe": 384,
        "oktest": 300,
        "truthfulqa": 753,
        "advbench": 456,
        "malicious": 100,
    }
    for name, prompts in sets.items():
        assert {p.label for p in prompts} == {get_eval_set(name).label}


@needs_data
def test_limit_keeps_a_seeded_subset_in_file_order(real_data: Path) -> None:
    first = evaluation_sets(["xstest_safe", "oktest"], limit=10, seed=5, heldout=None)
    again = evaluation_sets(["oktest"], limit=10, seed=5, heldout=None)
    assert first["oktest"] == again["oktest"]  # independent of the other sets requested
    for prompts in first.values():
        rows = [p.meta["row"] for p in prompts]
        assert len(rows) == 10 and rows == sorted(rows)
    other = evaluation_sets(["oktest"], limit=10, seed=6, heldout=None)
    assert other["oktest"] != first["oktest"]


# ----------------------------------------------------------------------------------------- errors and small data


def test_anchor_size_must_fit_the_lists() -> None:
    prompts = [Prompt(f"q{i}", HARMFUL, "advbench") for i in range(5)]
    for size in (0, 6):
        with pytest.raises(DataError, match="anchor size"):
            anchor_split(prompts, prompts, size, seed=0)


def test_missing_local_file_names_the_full_path(tmp_data: Path) -> None:
    with pytest.raises(DataError) as error:
        load_prompts("advbench")
    message = _one_line(error)
    assert str(tmp_data / "scans" / "AdvBench.csv") in message
    assert "raw.githubusercontent.com/zouyingcao/SCANS/9dc20d2f1ce29d6b26ccd08c2d457c8ad64d5760" in message


def test_csv_without_the_expected_column_names_it(tmp_data: Path) -> None:
    _write(tmp_data, "scans/AdvBench.csv", "prompt,target\nsomething,else\n")
    with pytest.raises(DataError) as error:
        load_table("advbench")
    message = _one_line(error)
    assert "'goal'" in message and "AdvBench.csv" in message and "'prompt'" in message


def test_empty_table_raises(tmp_data: Path) -> None:
    _write(tmp_data, "scans/AdvBench.csv", "goal,target\n")
    with pytest.raises(DataError, match="no rows"):
        load_table("advbench")


def test_empty_evaluation_set_raises(tmp_data: Path) -> None:
    header = "id,prompt,type,label,focus,note\n"
    _write(tmp_data, "xstest/xstest_prompts.csv", header + "1,How do I kill a process?,homonyms,safe,kill,\n")
    assert len(evaluation_sets(["xstest_safe"], limit=None, seed=0, heldout=None)["xstest_safe"]) == 1
    with pytest.raises(DataError, match="'xstest_unsafe' is empty"):
        evaluation_sets(["xstest_unsafe"], limit=None, seed=0, heldout=None)
    with pytest.raises(DataError, match="'advbench' is empty"):
        evaluation_sets(["advbench"], limit=None, seed=0, heldout=AnchorSplit((), (), (), (), "advbench", "truthfulqa"))


def test_unknown_names_raise() -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'.*advbench"):
        load_table("nope")
    with pytest.raises(DataError, match="unknown evaluation set.*'nope'.*xstest_safe"):
        evaluation_sets(["nope"], limit=None, seed=0, heldout=None)


def test_the_anchor_datasets_sets_are_their_heldout_part_and_other_sets_whole_files(tmp_data: Path) -> None:
    _write(tmp_data, "scans/AdvBench.csv", "goal,target\nfirst goal,x\nsecond goal,y\nthird goal,z\n")
    _write(tmp_data, "scans/TruthfulQA.csv", "Question\nq one?\nq two?\n")
    _write(tmp_data, "scans/MaliciousInstruct.txt", "m one\nm two\n")
    split = anchor_split(load_prompts("advbench"), load_prompts("truthfulqa"), 1, seed=0)
    assert (split.harmful_dataset, split.benign_dataset) == ("advbench", "truthfulqa")
    sets = evaluation_sets(["advbench", "truthfulqa", "malicious"], limit=None, seed=0, heldout=split)
    assert sets["advbench"] == list(split.harmful_heldout) and len(sets["advbench"]) == 2
    assert sets["truthfulqa"] == list(split.benign_heldout) and len(sets["truthfulqa"]) == 1
    assert len(sets["malicious"]) == 2  # not an anchor dataset: the whole file
    assert not set(sets["advbench"]) & set(split.harmful_anchors)


def test_repe_labels_come_from_the_label_array_not_the_position(tmp_data: Path) -> None:
    path = tmp_data / "scans/representation-engineering/data/test-00000-of-00001-x.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame(
        {"sentence": [["kind", "cruel"], ["mean", "nice"]], "label": [[True, False], [False, True]]}
    ).to_parquet(path)
    labels = {p.text: p.label for p in load_prompts("repe")}
    assert labels == {"kind": BENIGN, "cruel": HARMFUL, "mean": HARMFUL, "nice": BENIGN}


def test_text_lines_are_stripped(tmp_data: Path) -> None:
    _write(tmp_data, "scans/MaliciousInstruct.txt", "  first?  \r\nsecond?\n")
    assert [p.text for p in load_prompts("malicious")] == ["first?", "second?"]


def test_fingerprint_follows_the_bytes(tmp_data: Path) -> None:
    path = _write(tmp_data, "scans/OKTest.csv", "prompt\nhello\n")
    before = data_fingerprint("oktest")
    assert before == hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("prompt\nhello!\n", encoding="utf-8")
    assert data_fingerprint("oktest") != before


def test_relative_data_dir_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCANS_DATA_DIR", "some/data")
    assert data_dir() == tmp_path / "some" / "data"
    monkeypatch.delenv("SCANS_DATA_DIR")
    assert data_dir() is None


@pytest.mark.parametrize("name", ["advbench", "mmlu"])  # a pinned raw URL, a pinned hub dataset
def test_without_network_or_data_dir_the_error_says_where_to_put_the_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCANS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no cached download either
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as error:
        load_table(name)
    message = _one_line(error)
    assert "could not be fetched" in message
    assert f"$SCANS_DATA_DIR/{get_spec(name).local[0]}" in message
