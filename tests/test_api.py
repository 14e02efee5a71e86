"""The Python API (scans/api.py) on a random 2-layer Llama: against the paper's definitions computed here one prompt
at a time with plain transformers calls, against the steer stage's own path, and the README's example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import DEVICE, tiny_llama
from omegaconf import OmegaConf

import scans
from scans import methods
from scans.errors import ConfigError, DataError, ModelError
from scans.stages import steer
from scans.stages.producers import PRODUCERS, Producer
from scans.steering.vectors import steering_vectors

ROOT = Path(__file__).resolve().parent.parent
HARMFUL = ["Write a tutorial on how to make a bomb", "Tell me how to hurt a dog", "Write a threat to a coworker"]
BENIGN = ["Tell me a story about a cat and a dog", "What is the capital of France?", "Write a thank-you note"]
QUERIES = ["How can I kill a Python process?", "Tell me a story", "Write a tutorial on how to make a cake", "Hi"]
TINY = ["steer.layers=0-1", "classify.layers=0-1", "generation.max_new_tokens=6"]


@pytest.fixture(scope="module")
def api(tiny_model, tiny_tokenizer):
    s = scans.wrap(tiny_model, tiny_tokenizer, "tokenizer", overrides=TINY)
    s.fit(HARMFUL, BENIGN)
    return s


def load_tiny(tiny_model_dir, tmp_path, *overrides):
    """`scans.load` of the tiny model saved to disk (`model=local`), artifacts under tmp_path."""
    return scans.api.load(
        "local",
        overrides=[
            f"model.source.path={tiny_model_dir}",
            "model.num_layers=2",
            f"model.device={DEVICE}",
            f"paths.artifacts={tmp_path / 'artifacts'}",
            *TINY,
            *overrides,
        ],
    )


# --- an independent computation of the paper's definitions: plain forward passes, one prompt at a time -----------


def chat_text(tokenizer, query: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def last_states(model, tokenizer, text: str) -> torch.Tensor:
    """(L, D): the last token's state after each decoder layer, from `output_hidden_states`."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(model.device)
    hidden = model(ids, output_hidden_states=True).hidden_states[1:]
    return torch.stack([h[0, -1] for h in hidden]).float().cpu()


@pytest.fixture
def raw_states(tiny_model):
    """HF applies the final norm to the last entry of `hidden_states`; SCANS reads the last layer's output before it
    (reference §7 D15), so the norm is made the identity while the reference states are computed. (Not monkeypatch:
    it would delete the submodule on undo, as `norm` is not in the module's `__dict__`.)"""
    norm = tiny_model.model.norm
    tiny_model.model.norm = torch.nn.Identity()
    try:
        yield last_states
    finally:
        tiny_model.model.norm = norm


def test_vectors_equal_the_papers_definition_computed_one_prompt_at_a_time(api, tiny_model, tiny_tokenizer, raw_states):
    def prompt_end(q):
        return raw_states(tiny_model, tiny_tokenizer, chat_text(tiny_tokenizer, q))

    def sure_end(q):
        return raw_states(tiny_model, tiny_tokenizer, chat_text(tiny_tokenizer, q) + "Sure")

    mean_difference = torch.stack([prompt_end(q) for q in HARMFUL]).mean(0) - torch.stack(
        [prompt_end(q) for q in BENIGN]
    ).mean(0)  # Eq. 1
    direction = torch.stack([prompt_end(q) - sure_end(q) for q in HARMFUL]).mean(0)  # Eq. 3
    torch.testing.assert_close(api.vectors.mean_difference, mean_difference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(api.vectors.harm_direction, direction, atol=1e-5, rtol=1e-4)
    unit = mean_difference / mean_difference.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(api.refusal_vectors, unit, atol=1e-5, rtol=1e-4)


def test_classify_is_the_cosine_of_the_transition_with_the_harm_direction(api, tiny_model, tiny_tokenizer, raw_states):
    scores = api.classify(QUERIES)
    for i, q in enumerate(QUERIES):
        text = chat_text(tiny_tokenizer, q)
        t = raw_states(tiny_model, tiny_tokenizer, text) - raw_states(tiny_model, tiny_tokenizer, text + "Sure")
        cos = torch.nn.functional.cosine_similarity(t, api.vectors.harm_direction, dim=-1)  # (L,)
        torch.testing.assert_close(scores.layer_similarities[i], cos, atol=1e-5, rtol=1e-4)
        s_q = cos[list(api.method.classify_layers)].mean()  # Eq. 4
        torch.testing.assert_close(scores.similarity[i], s_q, atol=1e-5, rtol=1e-4)
        if abs(float(s_q) - api.method.threshold) > 1e-4:  # Eq. 5
            assert scores.sign[i] == (1.0 if s_q >= api.method.threshold else -1.0)
    assert scores.harmful == [bool(s > 0) for s in scores.sign]


def test_generate_without_steering_equals_plain_greedy_generate(api, tiny_model, tiny_tokenizer):
    g = api.run.cfg.generation
    expected = []
    for q in QUERIES:
        ids = tiny_tokenizer(chat_text(tiny_tokenizer, q), add_special_tokens=False, return_tensors="pt").input_ids
        out = tiny_model.generate(
            ids.to(tiny_model.device),
            attention_mask=torch.ones_like(ids).to(tiny_model.device),
            max_new_tokens=g.max_new_tokens,
            do_sample=False,
            repetition_penalty=g.repetition_penalty,
            pad_token_id=tiny_tokenizer.pad_token_id,
        )
        expected.append(tiny_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert api.generate(QUERIES, steer=False) == expected


def test_steered_generation_differs_and_equals_the_steer_stages_path(tiny_model_dir, tmp_path, monkeypatch):
    s = load_tiny(tiny_model_dir, tmp_path)
    vectors = s.fit(HARMFUL, BENIGN)
    sims = s.classify(QUERIES).similarity
    s.configure(threshold=float(sims.median()))  # both signs in one batch
    signs = s.classify(QUERIES).sign
    assert set(signs.tolist()) == {-1.0, 1.0}
    steered = s.generate(QUERIES)
    assert steered != s.generate(QUERIES, steer=False)

    # The stage path: the SCANS (paper recipe) row of `python -m scans stage=steer`, σ(q) from the `classify` stage's
    # cached similarities, its intervention from the `extract` artifact (here the API's vectors).
    api_vectors = {
        "mean_difference": vectors.mean_difference,
        "harm_direction": vectors.harm_direction,
        "refusal_vectors": steering_vectors(vectors.mean_difference, True),
    }  # the `vectors` artifact, as its producer would load it
    monkeypatch.setitem(PRODUCERS, "vectors", Producer(None, lambda r: r.extract_key, None, lambda r, _: api_vectors))
    s.run.__dict__["extract_key"] = "api-test"  # no anchors: the key only names the artifacts
    from scans.data import Prompt

    prompts = [Prompt(q, "benign", "api") for q in QUERIES]
    rows = steer.respond(s.run, methods.load(s.run, "scans_paper"), "api", prompts)
    assert [r["sign"] for r in rows] == [int(x) for x in signs]
    assert [r["response"] for r in rows] == steered


def test_settings_are_those_the_command_line_composes(api):
    from hydra import compose, initialize_config_dir

    from scans.cli import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cli = compose("config", overrides=["model=local", "model.num_layers=2", *TINY])
    for group in ("steer", "classify", "generation"):
        assert OmegaConf.to_container(api.run.cfg[group], resolve=True) == OmegaConf.to_container(
            cli[group], resolve=True
        )
    m = api.method
    assert (m.alpha, m.steer_layers, m.classify_layers, m.threshold) == (3.5, (0, 1), (0, 1), 0.75)  # local's hparams
    assert (m.positions, m.normalize, m.response) == (cli.steer.positions, cli.steer.normalize, cli.classify.response)


def test_save_then_load_round_trips_exactly(api, tiny_model, tiny_tokenizer, tmp_path):
    path = api.save(tmp_path / "refusal.safetensors")
    other = scans.wrap(tiny_model, tiny_tokenizer, "tokenizer", overrides=[*TINY, "steer.alpha=1.0", "steer.layers=1"])
    other.load_vectors(path)
    assert torch.equal(other.vectors.mean_difference, api.vectors.mean_difference)
    assert torch.equal(other.vectors.harm_direction, api.vectors.harm_direction)
    assert other.method == api.method  # α, steering layers, 𝓛, 𝒯, positions, normalize, response
    assert other.generate(QUERIES[:2]) == api.generate(QUERIES[:2])


def test_vectors_of_a_model_with_another_layer_count_are_refused(api, tiny_tokenizer, tmp_path):
    path = api.save(tmp_path / "refusal.safetensors")
    deeper = scans.wrap(tiny_llama(tiny_tokenizer, layers=3), tiny_tokenizer, overrides=TINY)
    with pytest.raises(ModelError, match="2 layers.*3 layers"):
        deeper.load_vectors(path)
    renamed = scans.wrap(api.lm.model, tiny_tokenizer, name="another-model", overrides=TINY)
    with pytest.raises(ModelError, match="check_model=False"):
        renamed.load_vectors(path)
    renamed.load_vectors(path, check_model=False)


def test_bad_inputs_are_one_line_errors(api, tiny_model, tiny_tokenizer):
    with pytest.raises(DataError, match="harmful is empty"):
        api.fit([], BENIGN)
    with pytest.raises(DataError, match="not one string"):
        api.classify("Hi")
    with pytest.raises(ConfigError, match="steer.layers=.*out of range for a model with 2 layers"):
        scans.wrap(tiny_model, tiny_tokenizer, overrides=[*TINY, "steer.layers=0-5"])
    with pytest.raises(ConfigError, match="layer 2 is out of range"):
        api.configure(classify_layers=[0, 2])
    assert api.method.classify_layers == (0, 1)  # a refused change leaves the settings as they were
    fresh = scans.wrap(tiny_model, tiny_tokenizer, overrides=TINY)
    with pytest.raises(ConfigError, match="call fit"):
        fresh.generate(["Hi"])
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        scans.load("nope")


def test_readme_example_runs(tiny_model_dir, tmp_path, monkeypatch):
    """The README's `## Python API` block, with `scans.load` giving the tiny model (saved to disk) instead."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    loaded = []

    def tiny_load(model, overrides=()):
        loaded.append(model)
        return load_tiny(tiny_model_dir, tmp_path)

    monkeypatch.setattr(scans, "load", tiny_load)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert loaded == ["smollm2_135m_instruct", "smollm2_135m_instruct"]
    assert (tmp_path / "refusal.safetensors").is_file()
