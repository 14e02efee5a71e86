"""Tensors meet the weights on their device: layer anchoring with the unembedding elsewhere than the artifact's
vectors, and a model split by accelerate's `device_map` (layers on the CPU and offloaded to disk, i.e. on "meta"
until they run), steered and generated with exactly as the same model in one piece."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from scans.analysis import anchoring
from scans.errors import ConfigError
from scans.models import encode, load_model
from scans.steering import DecodingConfig, Steering, generate
from scans.steering.hook import steering, steering_starts


def _cfg(path, **extra):
    return OmegaConf.create(
        {"name": "tiny", "source": {"kind": "local", "path": str(path)}, "dtype": "float32", "device": "cpu",
         "chat_format": "tokenizer", "system_prompt": None, **extra}
    )  # fmt: skip


def test_vocabulary_logits_move_the_direction_to_the_unembeddings_device(monkeypatch):
    torch.manual_seed(0)
    unembedding, direction, gain = torch.randn(50, 8), torch.randn(8), torch.rand(8)
    moved = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        moved.append(kwargs.get("device", args[0] if args else None))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    logits = anchoring.vocabulary_logits(direction, unembedding, gain)
    monkeypatch.undo()
    assert moved.count(unembedding.device) == 2  # the direction and the norm's gain, both sent to the head's device
    assert logits.device.type == "cpu"
    assert torch.allclose(logits, unembedding @ (direction * gain))


@pytest.fixture(scope="module")
def split(tiny_model_dir, tmp_path_factory):
    """The tiny model in one piece, and split: embeddings and layer 0 on the CPU, layer 1 offloaded to disk."""
    pytest.importorskip("accelerate")
    whole = load_model(_cfg(tiny_model_dir))
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}  # fmt: skip
    parts = load_model(
        _cfg(tiny_model_dir, device_map=device_map, offload_folder=str(tmp_path_factory.mktemp("offload")))
    )
    return whole, parts


def test_a_split_model_keeps_its_layers_where_the_map_says(split):
    _, parts = split
    assert parts.provenance["device_map"]["model.layers.1"] == "disk"
    assert next(parts.layers[1].parameters()).device.type == "meta"  # offloaded: weights arrive when it runs
    assert parts.device.type == "cpu"


def test_steering_a_split_model_equals_steering_it_whole(split):
    whole, parts = split
    torch.manual_seed(1)
    vectors = torch.randn(2, whole.model.config.hidden_size)
    rows = [encode(whole.chat, q) for q in ("Tell me a story.", "How can I kill a Python process?")]
    dec = DecodingConfig(5, 1.1, 2)
    spec = Steering(vectors, [0, 1], 4.0)
    signs = torch.tensor([1.0, -1.0])
    a = generate(whole.model, whole.tokenizer, rows, dec, steer=spec, signs=signs)
    b = generate(parts.model, parts.tokenizer, rows, dec, steer=spec, signs=signs)
    assert a == b and a != generate(whole.model, whole.tokenizer, rows, dec)
    ids = torch.tensor([rows[0].input_ids])
    starts = steering_starts("from_instruction_end", [rows[0].eoi_index], [len(rows[0].input_ids)])
    with steering(parts.model, vectors, [1], torch.tensor([4.0]), starts):
        steered = parts.model(ids).logits
    with steering(whole.model, vectors, [1], torch.tensor([4.0]), starts):
        reference = whole.model(ids).logits
    assert torch.allclose(steered, reference, atol=1e-5)
    assert not torch.allclose(parts.model(ids).logits, steered, atol=1e-3)  # hooks removed, and they did act


def test_a_bad_device_map_is_a_config_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="model.device_map"):
        load_model(_cfg(tiny_model_dir, device_map="everywhere"))


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_loads_bf16_only_where_the_device_computes_it(tiny_model_dir, monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    loaded = load_model(_cfg(tiny_model_dir, dtype="auto"))
    expected = torch.bfloat16 if native else torch.float32
    assert next(loaded.model.parameters()).dtype == expected
    assert loaded.provenance["dtype"] == str(expected).removeprefix("torch.")  # the resolved name, never "auto"


def test_dtype_auto_is_keyed_as_the_precision_it_resolves_to(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from scans.cli import CONFIG_DIR
    from scans.stages import Run

    def identity(dtype):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.artifacts={tmp_path}", "model=qwen2_5_coder_0_5b_instruct",
                                               f"model.dtype={dtype}", "model.device=cpu"])  # fmt: skip
        return Run(cfg).model_identity

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert identity("auto") == identity("bfloat16") != identity("float32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert identity("auto") == identity("float32")
    with pytest.raises(ConfigError, match="model.dtype='float8'"):
        load_model(_cfg(tmp_path, dtype="float8"))


def test_a_bf16_unembedding_gets_contiguous_input(tiny_model_dir):
    """HF `generate`'s prefill hands the head `hidden[:, -1:, :]`; in bf16 a non-contiguous 3-D input makes torch
    materialise the weight per row (out of memory on Qwen's head at 72 rows), so the loader makes it contiguous."""
    model = load_model(_cfg(tiny_model_dir, dtype="bfloat16")).model
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    hidden = torch.randn(3, 5, head.in_features, dtype=torch.bfloat16)
    out = head(hidden[:, -1:, :])
    assert seen == [True]
    torch.testing.assert_close(out, torch.nn.functional.linear(hidden[:, -1:, :].contiguous(), head.weight))
    # The engine adds the same hooks while it generates: nested on the loader's, the logits keep the input's shape.
    from scans.steering.engine import contiguous_head_input

    with contiguous_head_input(model):
        assert torch.equal(head(hidden[:, -1:, :]), out) and head(hidden).shape == (3, 5, head.out_features)
    assert len(head._forward_hooks) == 1  # the loader's restore alone again
