"""Measuring decode attention on the local CUDA GPU, for comparison with the cost model's GPU figures.

:func:`bench_gpu` times the single-token decode step the paper measured (one query against a full KV cache, batch 64)
with CUDA events and, where NVML is available, samples board power during the run to estimate energy per token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PowerMeter", "bench_gpu"]


def bench_gpu(
    *,
    batch: int = 64,
    heads: int = 12,
    head_dim: int = 64,
    window: int = 1024,
    steps: int = 1024,
    warmup: int = 5,
    repeats: int = 10,
) -> dict[str, Any] | None:
    """Measure single-token decode attention on the local CUDA GPU the way the paper did, with its pitfall fixed.

    Per step: write the new K, V into ring slot t mod window, then one query attends to *all* cached keys
    (``is_causal=False``: with one query, ``is_causal=True`` would let it see key 0 only).  Latency from CUDA events;
    energy = (mean NVML power during the run - idle power) x time.  Returns None when there is no CUDA GPU.
    """
    if not torch.cuda.is_available():
        return None
    run = _decode_steps(batch, heads, head_dim, window, steps)
    meter = PowerMeter()
    idle = meter.read_idle()
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with meter:
        start.record()
        for _ in range(repeats):
            run()
        end.record()
        torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000.0
    tokens = repeats * steps * batch
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "batch": batch,
        "heads": heads,
        "head_dim": head_dim,
        "window": window,
        "latency_per_step_s": seconds / (repeats * steps),
        "latency_s": seconds / tokens,
        "energy_j": None,
        "power_w": None,
        "idle_power_w": idle,
    }
    if meter.samples and idle is not None:
        mean = sum(meter.samples) / len(meter.samples)
        result.update(power_w=mean, energy_j=max(mean - idle, 0.0) * seconds / tokens)
    return result


def _decode_steps(batch: int, heads: int, head_dim: int, window: int, steps: int) -> Callable[[], None]:
    """``steps`` decode steps on a ring-buffer KV cache in fp16: write the new K and V, attend with one query."""
    dev = torch.device("cuda")
    k = torch.randn(batch, heads, window, head_dim, device=dev, dtype=torch.float16)
    v = torch.randn_like(k)
    q = torch.randn(batch, heads, 1, head_dim, device=dev, dtype=torch.float16)
    new = torch.randn(batch, heads, 1, head_dim, device=dev, dtype=torch.float16)

    def run() -> None:
        for t in range(steps):
            slot = t % window
            k[:, :, slot : slot + 1] = new
            v[:, :, slot : slot + 1] = new
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=False)

    return run


class PowerMeter:
    """Board power of the current GPU through NVML (W): an idle reading, and samples every 5 ms while entered.

    Without NVML (no ``pynvml`` or no driver support) it reads nothing: ``read_idle()`` is None, ``samples`` empty.
    """

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle: Any = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:
            self._nvml = self._handle = None

    def _watts(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def read_idle(self) -> float | None:
        """Mean of 10 readings now (before the load), or None without NVML."""
        return None if self._handle is None else sum(self._watts() for _ in range(10)) / 10

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._watts())
            time.sleep(0.005)

    def __enter__(self) -> PowerMeter:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
