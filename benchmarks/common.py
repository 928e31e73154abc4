"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run (CUDA: synchronised)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cuda_peak_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated by one ``fn()`` beyond what was allocated before, minus what it returns."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    kept = out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0
    return (torch.cuda.max_memory_allocated() - base - kept) / 2**20


def paired_median_times(
    fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int, device: str = "cpu"
) -> tuple[float, float]:
    """Median wall times of ``fn_a()`` and ``fn_b()``, run alternately (a, b, a, b, ...) after one warm-up each, so
    that a machine whose speed drifts (shared hosts) slows both sides alike and their ratio stays meaningful."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn_a()
    fn_b()
    sync()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])
