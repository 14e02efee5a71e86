"""The device and precision a model runs in: the resolved names go into artifact keys and cache folders."""

from __future__ import annotations

import torch

from scans.errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
