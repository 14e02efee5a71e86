"""Cost of SCANS (Table 4): generation throughput and peak memory with and without steering, and what σ(q) adds.

Peak memory is `torch.cuda.max_memory_allocated` on a GPU (reset before each measurement) and, on the CPU, the
peak resident set size of this process sampled every 5 ms during the measurement (it includes everything the
process holds, the model weights first of all; garbage is collected and freed heap returned to the OS first).

Two ways to run SCANS on a list of prompts are timed by `make bench`: the project's batched pipeline (σ(q) for all
prompts in batches, then steered batched generation) and a loop that mimics the authors' code (one prompt at a
time: a classification forward pass, then generation).
"""

from __future__ import annotations

import ctypes
import gc
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from scans.models.chat import ChatFormat, encode
from scans.steering import DecodingConfig, Steering, classify, generate, harm_similarity, steer_sign


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_mem_mb: float


class _RssSampler:
    def __init__(self, interval_s: float = 0.005):
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def release_memory() -> None:
    """Collect garbage and, with glibc, hand freed heap pages back to the OS, so that a CPU peak reflects what the
    process holds now rather than what earlier work in it (the organism's training, say) once allocated."""
    gc.collect()
    if platform.system() == "Linux":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def measure(fn: Callable[[], object], device: torch.device) -> Measurement:
    """Wall time and peak memory (MB) of one call."""
    release_memory()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return Measurement(time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**20)
    with _RssSampler() as sampler:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return Measurement(seconds, sampler.peak / 2**20)


@dataclass(frozen=True)
class ScansSpec:
    """What SCANS needs at inference: d_harm, v_r, 𝓛, 𝒯, the steered layers and α."""

    direction: torch.Tensor
    vectors: torch.Tensor
    classify_layers: Sequence[int]
    threshold: float
    steer: Steering
    response: str = "Sure"


def signs_for(model, chat: ChatFormat, queries: Sequence[str], spec: ScansSpec, batch_size: int) -> torch.Tensor:
    sims = classify(model, chat, queries, spec.direction, batch_size, spec.response).layer_similarities
    return steer_sign(harm_similarity(sims, spec.classify_layers), spec.threshold)


def batched_scans(model, tokenizer, chat, queries: Sequence[str], spec: ScansSpec, decoding: DecodingConfig):
    """The project's pipeline: σ(q) for every query in batches, then one steered batched generation."""
    signs = signs_for(model, chat, queries, spec, decoding.batch_size)
    return generate(model, tokenizer, [encode(chat, q) for q in queries], decoding, spec.steer, signs)


def authors_loop(model, tokenizer, chat, queries: Sequence[str], spec: ScansSpec, decoding: DecodingConfig):
    """Like the authors' code: per query, a classification forward pass, then generation at batch size 1."""
    one = DecodingConfig(decoding.max_new_tokens, decoding.repetition_penalty, 1, decoding.min_new_tokens)
    out = []
    for q in queries:
        sign = signs_for(model, chat, [q], spec, 1)
        out += generate(model, tokenizer, [encode(chat, q)], one, spec.steer, sign)
    return out
