"""Every cache key holds what changes its result: the judge's rules, the decoding settings, the weights' commit.
Each test changes one input and checks that every key depending on it changes (no model is loaded)."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from scans import judge as judge_lib
from scans.cli import CONFIG_DIR
from scans.errors import ConfigError
from scans.judge import rules
from scans.methods import Default, load
from scans.models import loading
from scans.stages import Run, align, capability, cost, judge, tune

COMMIT = "f5db02db724555f92da89c216ac04704f23d4590"


def _run(tmp_path, *overrides) -> Run:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.artifacts={tmp_path}", *overrides])
    return Run(cfg)


def test_the_judge_identity_follows_an_edit_of_its_rules(tmp_path, monkeypatch):
    """A copy of rules.py with one phrase changed, registered under the same name, is another judge."""
    source = inspect.getsource(rules)
    assert '"I cannot "' in source
    edited = tmp_path / "edited_rules.py"
    edited.write_text(source.replace('"I cannot "', '"I will not "', 1))
    spec = importlib.util.spec_from_file_location("edited_rules", edited)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "edited_rules", module)
    spec.loader.exec_module(module)
    before = judge_lib.judge_identity("scans_rules")
    monkeypatch.setitem(judge_lib.JUDGES, "scans_rules", module.is_refusal)
    after = judge_lib.judge_identity("scans_rules")
    assert before["name"] == after["name"] and before["rules"] != after["rules"]


def _judge_keys(r: Run) -> dict[str, str]:
    return {
        "align": align.key(r),
        "tune": tune.key(r),
        "judge": judge.key(r, "responses"),
        "safedecoding": load(r, "safedecoding").training_key(r),
        "dro": load(r, "dro").training_key(r),
    }


def test_every_key_that_uses_the_judge_changes_with_its_rules(tmp_path):
    r = _run(tmp_path)
    before = _judge_keys(r)
    edited = _run(tmp_path)
    edited.judge_identity = {**edited.judge_identity, "rules": "edited"}  # what an edit of rules.py gives
    edited.fit_judge_identity = {**edited.fit_judge_identity, "rules": "edited"}
    after = _judge_keys(edited)
    assert {k for k in before if before[k] == after[k]} == set()


def test_another_reporting_judge_judges_again_and_rebuilds_nothing_else(tmp_path):
    """`judge=<name>` re-judges the same responses; the choices (organism, tuning, baselines) keep their keys
    until `judge.fit` names another judge."""
    r, other = _run(tmp_path), _run(tmp_path, "judge=xstest_strmatch")
    before, after = _judge_keys(r), _judge_keys(other)
    assert {k for k in before if before[k] != after[k]} == {"judge"}
    fitted = _judge_keys(_run(tmp_path, "judge=xstest_strmatch", "judge.fit=xstest_strmatch"))
    assert {k for k in before if before[k] == fitted[k]} == set()


def test_xsum_and_cost_keys_change_with_the_decoding(tmp_path):
    rows = "methods=[default,scans_paper,dro]"  # rows whose settings need no artifact (tune's, the ablation's layer)
    r, other = _run(tmp_path, rows), _run(tmp_path, rows, "generation.repetition_penalty=1.3")
    assert capability._xsum_inputs(r, Default())[2] != capability._xsum_inputs(other, Default())[2]
    assert cost.key(r) != cost.key(other)
    assert align.key(r) != align.key(other)  # the base model's answers in the organism's data
    assert load(r, "dro").training_key(r) != load(other, "dro").training_key(other)


def test_a_hub_model_is_keyed_by_its_commit_not_its_branch(tmp_path, monkeypatch):
    def identity(revision):
        r = _run(tmp_path, "model=llama2_7b_chat")
        with open_dict(r.cfg):
            r.cfg.model.source.revision = revision
        return r.model_identity["source"]["revision"]

    assert identity(COMMIT) == COMMIT
    # A branch is resolved through the local hub cache's refs/ file (then the hub); two commits, two keys.
    cache = tmp_path / "hub"
    refs = cache / "models--meta-llama--Llama-2-7b-chat-hf" / "refs"
    refs.mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    (refs / "main").write_text("a" * 40)
    assert identity("main") == "a" * 40
    (refs / "main").write_text("b" * 40)
    assert identity("main") == "b" * 40


def test_the_loaded_weights_are_the_commit_the_keys_hold(tmp_path, monkeypatch):
    """A branch that moves between making the keys and loading the model does not load the newer weights."""
    from scans.stages import context

    refs = tmp_path / "hub" / "models--meta-llama--Llama-2-7b-chat-hf" / "refs"
    refs.mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    (refs / "main").write_text("a" * 40)
    r = _run(tmp_path, "model=llama2_7b_chat", "model.source.revision=main")
    assert r.model_identity["source"]["revision"] == "a" * 40
    (refs / "main").write_text("b" * 40)  # main moves on
    loaded = []
    monkeypatch.setattr(context, "_MODELS", {})
    monkeypatch.setattr(context, "load_model", lambda cfg, cache_dir=None, location=None: loaded.append(location))
    r.lm
    assert [location.kwargs["revision"] for location in loaded] == ["a" * 40]


def test_an_unresolvable_branch_asks_for_a_commit(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", offline)
    with pytest.raises(ConfigError, match="40-hex commit"):
        loading.resolve_revision("meta-llama/Llama-2-7b-chat-hf", "main")


def test_the_papers_hub_models_are_pinned_to_commits():
    for name in ("llama2_7b_chat", "llama2_13b_chat", "vicuna_7b_v1_5"):
        text = (Path(CONFIG_DIR) / "model" / f"{name}.yaml").read_text()
        revision = next(line.split(":", 1)[1].split("#")[0].strip() for line in text.splitlines()
                        if line.strip().startswith("revision:"))  # fmt: skip
        assert loading.COMMIT.fullmatch(revision), name
