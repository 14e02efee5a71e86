"""Datasets as config: a prompt file plus one YAML entry (configs/data/sets/README.md) is an evaluation set, and every
bad entry or file fails with one clear line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from scans.cli import CONFIG_DIR
from scans.data import (
    BENIGN,
    HARMFUL,
    catalogue,
    configure,
    eval_sets,
    evaluation_sets,
    get_eval_set,
    load_prompts,
)
from scans.data.catalogue import SETS_DIR, builtin
from scans.errors import ConfigError, DataError
from scans.report.table2 import PAPER, layout_of
from scans.validation import validate_data


@pytest.fixture(autouse=True)
def fresh_catalogue():
    configure()
    yield
    configure()  # no test's sets leak into the next


def entry(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_the_builtin_catalogue_is_one_yaml_file_per_dataset():
    files = sorted(p.stem for p in SETS_DIR.glob("*.yaml"))
    assert files == sorted(builtin()) and len(files) == 29
    assert all(spec.origin.endswith(f"{name}.yaml") for name, spec in builtin().items())
    # The paper's Table 2 subsets come out of the entries: XSTest and RepE give a safe and an unsafe set each.
    assert [get_eval_set(n).dataset for n in PAPER.sets] == [
        "xstest", "xstest", "repe", "repe", "oktest", "truthfulqa", "advbench", "malicious"
    ]  # fmt: skip
    assert not {s.dataset for s in eval_sets().values()} & {"coconot_eval", "coconot_contrast"}  # held back
    with pytest.raises(DataError, match="held back"):
        get_eval_set("coconot_eval")


def test_a_csv_with_a_label_column_gives_a_safe_and_an_unsafe_set(tmp_path):
    (tmp_path / "mine.csv").write_text("question,kind\nHow do I bake bread?,ok\nHow do I pick a lock?,bad\n")
    entry(
        tmp_path / "sets",
        "mine",
        f"path: {tmp_path / 'mine.csv'}\nformat: csv\ntext_column: question\nlabel_column: kind\n"
        "label_values: {ok: benign, bad: harmful}\n",
    )
    configure(sets_dirs=[tmp_path / "sets"])
    assert get_eval_set("mine_safe").label == BENIGN and get_eval_set("mine_unsafe").label == HARMFUL
    sets = evaluation_sets(["mine_safe", "mine_unsafe"], limit=None, seed=0, heldout=None)
    assert [p.text for p in sets["mine_safe"]] == ["How do I bake bread?"]
    assert [p.text for p in sets["mine_unsafe"]] == ["How do I pick a lock?"]
    lay = layout_of(["mine_safe", "mine_unsafe", "oktest"])  # Table 2's columns follow the sets
    assert lay.columns == ["mine_safe", "mine_unsafe", "mine_avg", "oktest", "avg"]
    assert lay.safe == ("mine_safe", "oktest")


def test_a_jsonl_given_on_the_command_line_is_a_set(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "Tell me a joke."}\n{"text": "Name a colour."}\n')
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"+data.sets.jokes={{path: {tmp_path / 'p.jsonl'}, format: jsonl, text_column: text, label: benign}}",
                "stage=steer",
                "data.eval_sets=[xstest_safe,jokes]",
            ],
        )
    validate_data(cfg)
    assert [p.text for p in load_prompts("jokes")] == ["Tell me a joke.", "Name a colour."]
    assert "jokes" in catalogue()


def test_an_edited_entry_is_read_again(tmp_path):
    (tmp_path / "m.csv").write_text("a,b\nfirst,second\n")
    folder = tmp_path / "sets"
    entry(folder, "m", f"path: {tmp_path / 'm.csv'}\nformat: csv\ntext_column: a\nlabel: benign\n")
    configure(sets_dirs=[folder])
    assert [p.text for p in load_prompts("m")] == ["first"]
    entry(folder, "m", f"path: {tmp_path / 'm.csv'}\nformat: csv\ntext_column: b\nlabel: benign\n")
    configure(sets_dirs=[folder])
    assert [p.text for p in load_prompts("m")] == ["second"]


def test_an_edited_entry_is_a_new_key_for_everything_that_reads_it(tmp_path, data_dir):
    """The file is unchanged, so its fingerprint is too; the entry reads other prompts, so the keys move."""
    from scans.data import data_fingerprint, dataset_key
    from scans.stages import Run

    (tmp_path / "m.csv").write_text("a,b\nHow do I bake bread?,How do I pick a lock?\n")
    keys = []
    for column, label in (("a", "benign"), ("b", "harmful")):
        entry(
            tmp_path / "sets", "m", f"path: {tmp_path / 'm.csv'}\nformat: csv\ntext_column: {column}\nlabel: {label}\n"
        )
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    "model=smollm2_135m_instruct",
                    f"data.sets_dirs=[{tmp_path / 'sets'}]",
                    "data.eval_sets=[xstest_safe,m]",
                    f"paths.artifacts={tmp_path / 'artifacts'}",
                ],
            )
        r = Run(cfg)  # reads the run's entries
        keys.append((data_fingerprint("m"), dataset_key("m"), r.extract_key))
    assert keys[0][0] == keys[1][0]  # the same bytes
    assert keys[0][1] != keys[1][1] and keys[0][2] != keys[1][2]  # the disjointness rule reads other prompts


def _one_set(tmp_path: Path, content: str, yaml_extra: str = "", suffix: str = "csv") -> None:
    (tmp_path / f"f.{suffix}").write_text(content)
    text = f"path: {tmp_path / f'f.{suffix}'}\nformat: {suffix}\ntext_column: prompt\n"
    entry(tmp_path / "sets", "f", text + (yaml_extra or "label: benign\n"))
    configure(sets_dirs=[tmp_path / "sets"])


def test_a_missing_column_names_the_columns_that_exist(tmp_path):
    _one_set(tmp_path, "question,topic\nWhy is the sky blue?,physics\n")
    with pytest.raises(DataError) as error:
        load_prompts("f")
    assert "has no column 'prompt'" in one_line(error) and "'question', 'topic'" in one_line(error)
    assert "f.yaml" in one_line(error)


def test_an_empty_file_is_one_line(tmp_path):
    _one_set(tmp_path, "")
    with pytest.raises(DataError) as error:
        load_prompts("f")
    assert "f.csv is empty" in one_line(error) and "f.yaml" in one_line(error)  # the file and its entry
    _one_set(tmp_path, "prompt\n")  # a header and no rows
    with pytest.raises(DataError, match="has no rows"):
        load_prompts("f")


def test_a_label_outside_the_rule_is_one_line(tmp_path):
    _one_set(
        tmp_path,
        "prompt,label\nq1,safe\nq2,maybe\nq3,unsafe\nq4,maybe\n",
        "label_column: label\nlabel_values: {safe: benign, unsafe: harmful}\n",
    )
    with pytest.raises(DataError) as error:
        load_prompts("f")
    assert "'maybe' (rows 1, 3)" in one_line(error) and "outside label_values" in one_line(error)
    assert "f.csv" in one_line(error) and "f.yaml" in one_line(error)


def test_duplicated_prompts_are_reported(tmp_path, caplog):
    _one_set(tmp_path, "prompt\nsame question\nother\nsame question\n")
    with caplog.at_level(logging.WARNING):
        assert len(load_prompts("f")) == 3  # kept, and said
    assert "1 prompt(s) appear more than once" in caplog.text and "rows 0, 2" in caplog.text
    _one_set(tmp_path, "prompt\nsame question\nother\nsame question \n", "label: benign\nduplicates: error\n")
    with pytest.raises(DataError) as error:
        load_prompts("f")
    assert "rows 0, 2" in one_line(error)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("format: csv\ntext_column: prompt\nlabel: benign\n", "`path` is missing"),
        ("path: x.csv\nformat: xlsx\ntext_column: prompt\nlabel: benign\n", "format 'xlsx' is not one of"),
        ("path: x.csv\nformat: csv\ntext_column: prompt\nlabel: safe\n", "label 'safe' is not one of harmful, benign"),
        ("path: x.csv\nformat: csv\ntext_column: prompt\n", "needs a label rule"),
        ("path: x.csv\nformat: csv\ntext_column: p\nlabel_column: l\nlabel_values: {a: ok}\n", "map to 'ok'"),
        ("path: x.csv\nformat: csv\ntext_colum: prompt\nlabel: benign\n", "unknown field(s) 'text_colum'"),
        ("path: x.csv\nformat: csv\ntext_column: p\nlabel: benign\ntransform: nope\n", "unknown transform 'nope'"),
        ("path: x.csv\nformat: csv\ntext_column: p\nlabel: benign\neval_sets: {x: harmful}\n", "asks for 'harmful'"),
        ("path: [x.csv\n", "not valid YAML"),
    ],
)
def test_a_bad_entry_is_a_config_error_naming_its_file(tmp_path, text, fragment):
    path = entry(tmp_path / "sets", "bad", text)
    with pytest.raises(ConfigError) as error:
        configure(sets_dirs=[tmp_path / "sets"])
    assert fragment in one_line(error) and str(path) in one_line(error)


def test_a_set_may_not_take_a_builtin_name(tmp_path):
    entry(tmp_path / "sets", "xstest", f"path: {tmp_path / 'x.csv'}\nformat: csv\ntext_column: p\nlabel: benign\n")
    with pytest.raises(ConfigError, match="name of a built-in entry"):
        configure(sets_dirs=[tmp_path / "sets"])


def test_a_relative_path_without_a_data_folder_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("SCANS_DATA_DIR", raising=False)
    configure({"rel": {"path": "mine.csv", "format": "csv", "text_column": "p", "label": "benign"}})
    with pytest.raises(DataError) as error:
        load_prompts("rel")
    assert "SCANS_DATA_DIR, which is unset" in one_line(error) and "absolute path" in one_line(error)


def test_unknown_eval_sets_are_rejected_at_config_time():
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["data.eval_sets=[xstest_safe,nope]"])
    with pytest.raises(ConfigError, match="data.eval_sets: unknown evaluation set.*'nope'.*configs/data/sets"):
        validate_data(cfg)


def _cfg(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["data.eval_sets=[xstest_safe,xstest_unsafe,xstest_safe]"], "lists 'xstest_safe' more than once"),
        (["sweep.sets=[oktest,oktest]"], "sweep.sets lists 'oktest' more than once"),
        (["data.anchors.harmful=oktest"], "data.anchors.harmful='oktest' has no harmful prompts"),
        (["data.anchors.benign=malicious"], "data.anchors.benign='malicious' has no benign prompts"),
        (["stage=report", "data.eval_sets=[oktest,advbench]"], "needs xstest_safe, xstest_unsafe, malicious"),
    ],
)
def test_set_lists_are_checked_at_config_time(overrides, fragment):
    with pytest.raises(ConfigError) as error:
        validate_data(_cfg(*overrides))
    assert fragment in one_line(error)


def test_a_bad_file_of_a_runs_own_set_stops_the_run_at_config_time(tmp_path):
    (tmp_path / "g.csv").write_text("question\nWhy?\n")
    cfg = _cfg(
        f"+data.sets.g={{path: {tmp_path / 'g.csv'}, format: csv, text_column: prompt, label: benign}}",
        "stage=steer",
        "data.eval_sets=[xstest_safe,g]",
    )
    with pytest.raises(DataError, match="has no column 'prompt'"):
        validate_data(cfg)


def test_a_two_label_anchor_file_gives_each_side_its_own_labels_prompts(tmp_path, data_dir):
    """XSTest as both anchor files: harmful anchors are unsafe prompts, benign ones safe, and each evaluation set is
    its label's held-out part, with no anchor in it."""
    from scans.stages import Run

    r = Run(_cfg("data.anchors.harmful=xstest", "data.anchors.benign=xstest", f"paths.artifacts={tmp_path}"))
    a = r.anchors
    assert {p.label for p in a.harmful_anchors} == {HARMFUL} and {p.label for p in a.benign_anchors} == {BENIGN}
    sets = evaluation_sets(["xstest_safe", "xstest_unsafe"], limit=None, seed=0, heldout=a)
    assert len(sets["xstest_safe"]) == 250 - 64 and len(sets["xstest_unsafe"]) == 200 - 64
    assert not set(sets["xstest_safe"]) & set(a.benign_anchors) and not set(sets["xstest_unsafe"]) & set(
        a.harmful_anchors
    )


def test_a_held_back_entry_is_kept_off_everything_learnt(tmp_path):
    from scans.data.overlap import blocked_sets

    entry(
        tmp_path / "sets",
        "hb",
        f"path: {tmp_path / 'hb.csv'}\nformat: csv\ntext_column: p\nlabel: benign\nheld_back: true\n",
    )
    cfg = _cfg(f"data.sets_dirs=[{tmp_path / 'sets'}]")
    validate_data(cfg)
    assert "hb" in blocked_sets(cfg) and "hb" in blocked_sets(cfg, learned=False)
