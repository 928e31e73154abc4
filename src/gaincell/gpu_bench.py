"""Measuring decode attention on the local CUDA GPU, for comparison with the cost model's GPU figures.

:func:`bench_gpu` times the single-token decode step the paper measured (one query against a full KV cache, batch 64)
and, where NVML is available, reads board power to estimate energy per token: by default under the published
measurement's conditions (``method="paper"``), or with its pitfalls fixed (``method="corrected"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["METHODS", "PowerMeter", "bench_gpu"]


#: What each method does; ``paper`` is the published measurement's conditions, ``corrected`` fixes what misleads in it.
METHODS = {
    "paper": {
        "precision": "fp32",
        "attention": "SDPA with is_causal=True (with one query, PyTorch aligns the causal mask top-left: it sees key 0 only)",
        "timer": "time.time() around each pass of all decode steps, no CUDA synchronisation",
        "power": "one NVML reading after each pass, minus the mean of 10 idle readings; energy = mean power x mean time",
        "source": "[C] tests_divers/test_speed_energy.py (the conditions of the paper's RTX 4090 / Jetson figures)",
    },
    "corrected": {
        "precision": "fp16",
        "attention": "SDPA with is_causal=False (the query attends to every cached key)",
        "timer": "CUDA events around all timed passes",
        "power": "NVML sampled every 5 ms during the timed passes, minus the mean of 10 idle readings",
        "source": "gaincell: the paper's method with its masking and timing pitfalls fixed, in serving precision",
    },
}


def bench_gpu(
    *,
    batch: int = 64,
    heads: int = 12,
    head_dim: int = 64,
    window: int = 1024,
    steps: int = 1024,
    warmup: int = 5,
    repeats: int = 10,
    method: str = "paper",
) -> dict[str, Any] | None:
    """Measure single-token decode attention on the local CUDA GPU; None when there is no CUDA GPU.

    Per step the new K and V are written into ring slot t mod window and one query attends to the cache, ``steps``
    steps per pass, ``warmup`` passes then ``repeats`` timed ones; per-token figures divide by batch x steps, as the
    paper did.  ``method="paper"`` (default) reproduces the published measurement's conditions, ``"corrected"`` fixes
    them; :data:`METHODS` says what each does, and the result carries it under ``"method"``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not torch.cuda.is_available():
        return None
    paper = method == "paper"
    run = _decode_steps(batch, heads, head_dim, window, steps, dtype=torch.float32 if paper else torch.float16, causal=paper)
    meter = PowerMeter()
    idle = meter.read_idle()
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    seconds, power = _time_like_the_paper(run, repeats, meter) if paper else _time_with_events(run, repeats, meter)
    tokens = repeats * steps * batch
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "method": {"name": method, **METHODS[method]},
        "batch": batch,
        "heads": heads,
        "head_dim": head_dim,
        "window": window,
        "latency_per_step_s": seconds / (repeats * steps),
        "latency_s": seconds / tokens,
        "energy_j": None,
        "power_w": power,
        "idle_power_w": idle,
    }
    if power is not None and idle is not None:
        result["energy_j"] = max(power - idle, 0.0) * seconds / tokens
    return result


def _time_like_the_paper(run: Callable[[], None], repeats: int, meter: PowerMeter) -> tuple[float, float | None]:
    """Wall-clock time of each pass (no synchronisation) and one power reading after it, as published."""
    times, readings = [], []
    for _ in range(repeats):
        start = time.time()
        run()
        times.append(time.time() - start)
        if meter.available:
            readings.append(meter.read())
    torch.cuda.synchronize()
    return sum(times), (sum(readings) / len(readings) if readings else None)


def _time_with_events(run: Callable[[], None], repeats: int, meter: PowerMeter) -> tuple[float, float | None]:
    """CUDA-event time of all passes, with power sampled throughout."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with meter:
        start.record()
        for _ in range(repeats):
            run()
        end.record()
        torch.cuda.synchronize()
    power = sum(meter.samples) / len(meter.samples) if meter.samples else None
    return start.elapsed_time(end) / 1000.0, power


def _decode_steps(
    batch: int, heads: int, head_dim: int, window: int, steps: int, *, dtype: torch.dtype, causal: bool
) -> Callable[[], None]:
    """``steps`` decode steps on a ring-buffer KV cache: write the new K and V, attend with one query."""
    dev = torch.device("cuda")
    k = torch.randn(batch, heads, window, head_dim, device=dev, dtype=dtype)
    v = torch.randn_like(k)
    q = torch.randn(batch, heads, 1, head_dim, device=dev, dtype=dtype)
    new = torch.randn(batch, heads, 1, head_dim, device=dev, dtype=dtype)

    def run() -> None:
        for t in range(steps):
            slot = t % window
            k[:, :, slot : slot + 1] = new
            v[:, :, slot : slot + 1] = new
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

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

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read(self) -> float:
        """One power reading now (W)."""
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def _watts(self) -> float:
        return self.read()

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
