"""Load a causal LM and its tokenizer from any registered source (`scans.models.sources`): hub, folder, GGUF."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scans.artifacts import atomic_dir
from scans.errors import ConfigError, ModelError
from scans.models import sources
from scans.models.chat import ChatFormat, make_chat_format
from scans.models.precision import DTYPES, native_bf16, resolve_device, resolve_dtype  # noqa: F401  (re-exported)
from scans.models.sources import Location
from scans.models.sources.hub import COMMIT, resolve_revision  # noqa: F401  (re-exported for callers and tests)

log = logging.getLogger(__name__)


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


def prepare_tokenizer(tokenizer) -> None:
    """Left padding for batched generation; EOS doubles as pad where the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_model(cfg, cache_dir: str | Path | None = None, *, location: Location | None = None) -> LoadedModel:
    """Load the model described by a `model/` config.

    `cfg.source.kind` names a registered source (`scans.models.sources`: `hub`, `local`, `gguf_wheel`,
    `gguf_split_wheels`, and kinds registered above this layer), which says where `from_pretrained` finds the weights;
    a caller that already materialized the source passes its `location`. A dequantized GGUF model is saved once under
    `cache_dir` as a standard transformers folder named by the GGUF's sha256, since converting the GGUF takes ~30 s on
    two cores.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    keep_freed_buffers()
    dtype_name = resolve_dtype(cfg.dtype, cfg.device)
    dtype = DTYPES[dtype_name]
    device = resolve_device(cfg.device)
    if location is None:
        location = sources.get(cfg.source.kind).materialize(cfg, cache_dir)
    where, kwargs = location.where, dict(location.kwargs)
    provenance: dict[str, Any] = {"name": cfg.name, "source": dict(cfg.source), "dtype": dtype_name}
    provenance["source"].update(location.provenance)
    device_map = device_map_of(cfg)
    placement = {} if device_map is None else {"device_map": device_map, **_offload(cfg)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs, **placement)
    except OSError as exc:
        raise ModelError(f"cannot load model {cfg.name!r} from {where}: {str(exc).splitlines()[0]}") from exc
    if location.cache is not None:
        _save_atomically(model, tokenizer, Path(location.cache))
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
    # The weights are already dequantized; drop the GGUF quantizer so transformers saves them as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("cached dequantized model at %s", target)
