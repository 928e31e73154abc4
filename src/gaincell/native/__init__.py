"""Compiled pieces of gaincell: the analog KV cache's decoding step in C (``decode_step.c``), built on first use.

A decoding step of a small model is dominated by per-operation overhead (dozens of tensor calls per layer, each a few
microseconds for a few hundred multiplications), which no rearrangement of tensor calls removes; one C call per layer
does.  The library is compiled with the system C compiler (``$CC``, else ``cc``) into ``$GAINCELL_NATIVE_DIR``
(default ``$XDG_CACHE_HOME/gaincell/native``, else ``~/.cache/gaincell/native``), named by a hash of the source and
flags, written atomically, and loaded with ctypes.  No Python or PyTorch headers: a plain C function over raw buffers,
so the build takes about a second.

:func:`decode_function` returns the compiled function or raises :class:`NativeUnavailable` saying why (no compiler, a
compile error); the cache decides what to do with that (see :class:`gaincell.cache.AnalogKVCache`'s ``compiled``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from gaincell.config import HardwareConfig
from gaincell.dac import level_step, readout_step

__all__ = ["MAP_NAMES", "DecodeParams", "NativeUnavailable", "decode_function", "run_decode_step", "step_params"]

MAP_NAMES = ("q_scale", "q_bias", "k_scale", "k_bias", "v_scale", "v_bias")  # the per-head maps, in the C call's order
_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-ffp-contract=off")
_REALS = {torch.float32: "float", torch.float64: "double"}


class NativeUnavailable(RuntimeError):
    """The compiled decode step could not be built or loaded; the message says why."""


class DecodeParams(ctypes.Structure):
    """The C struct ``decode_params`` of ``decode_step.c`` (same fields, same order)."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "batch",
            "heads",
            "kv_heads",
            "head_dim",
            "window",
            "terms",
            "array_size",
            "slot",
            "slots",
            "q_batch_stride",
            "q_head_stride",
            "k_batch_stride",
            "k_head_stride",
            "v_batch_stride",
            "v_head_stride",
            "leaks",
            "kv_quantise",
            "q_quantise",
            "out_quantise",
            "out_exact_grid",
        )
    ] + [
        (name, ctypes.c_double)
        for name in (
            "now",
            "tau",
            "kv_max",
            "kv_step",
            "kv_offset",
            "q_step",
            "score_scale",
            "out_scale",
            "out_limit",
            "out_step",
        )
    ]


def _cache_dir() -> Path:
    if os.environ.get("GAINCELL_NATIVE_DIR"):
        return Path(os.environ["GAINCELL_NATIVE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gaincell" / "native"


def _build(source: bytes, real: str) -> Path:
    """Compile ``source`` with REAL = ``real`` into the cache folder (once per source, flags, compiler command and
    machine type); returns the path.  Where the processor-specific clones cannot be built (a C library without GNU
    ifunc), builds the baseline version alone; if that fails too, reports the first compiler error."""
    command = shlex.split(os.environ.get("CC") or "cc")
    if not command or shutil.which(command[0]) is None:
        raise NativeUnavailable(
            f"no C compiler: {command[0] if command else ''!r} is not on PATH (set CC, or install gcc / clang)"
        )
    folder = _cache_dir()
    errors = []
    for extra in ((), ("-DGAINCELL_NO_CLONES",)):
        flags = (*_FLAGS, f"-DREAL={real}", *extra)
        key = " ".join((*command, *flags, platform.machine(), platform.system()))
        target = folder / f"decode_step_{real}_{hashlib.sha256(source + key.encode()).hexdigest()[:16]}.so"
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / "decode_step.c"
            src.write_bytes(source)
            built = Path(tmp) / target.name
            try:
                run = subprocess.run(
                    [*command, *flags, str(src), "-o", str(built), "-lm"],
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=300,
                )
            except subprocess.TimeoutExpired:
                raise NativeUnavailable(f"compiling decode_step.c with {' '.join(command)} took over 300 s") from None
            if run.returncode == 0:
                os.replace(built, target)  # atomic: concurrent builders each write a whole file
                return target
            errors.append(run.stderr.strip())
    raise NativeUnavailable(f"compiling decode_step.c with {' '.join(command)} failed:\n{errors[0]}")


def decode_function(dtype: torch.dtype) -> ctypes._CFuncPtr:
    """The compiled decode step for ``dtype`` (float32 or float64), built on first use; raises
    :class:`NativeUnavailable` with the reason when it cannot be built or loaded (every call, without retrying).

    Called as ``fn(ctypes.byref(params), query, key, value, q_scale, q_bias, k_scale, k_bias, v_scale, v_bias, poly,
    powers, t_write, out)`` with data pointers (see ``decode_step.c``); returns 0, or 1 when out of memory.
    """
    loaded = _load(dtype)
    if isinstance(loaded, NativeUnavailable):
        raise loaded
    return loaded


@functools.cache
def _load(dtype: torch.dtype) -> ctypes._CFuncPtr | NativeUnavailable:
    if dtype not in _REALS:
        return NativeUnavailable(f"the compiled decode step handles float32 and float64, not {dtype}")
    real = _REALS[dtype]
    source = resources.files("gaincell.native").joinpath("decode_step.c").read_bytes()
    try:
        lib = ctypes.CDLL(str(_build(source, real)))
    except NativeUnavailable as exc:
        return exc
    except OSError as exc:  # an unwritable cache folder, a library the loader refuses
        return NativeUnavailable(f"building or loading the compiled decode step failed: {exc}")
    try:
        fn = getattr(lib, f"gaincell_decode_step_{real}")
    except AttributeError as exc:
        return NativeUnavailable(f"the compiled library has no decode step: {exc}")
    fn.argtypes = [ctypes.POINTER(DecodeParams)] + [ctypes.c_void_p] * 13
    fn.restype = ctypes.c_int
    return fn


def step_params(hw: HardwareConfig, heads: int, powers_shape: torch.Size) -> DecodeParams:
    """The step-independent parameters of the compiled step for ring buffers of ``powers_shape`` (batch, kv heads, 2,
    window, terms, head dim), with every constant computed in Python floats as the tensor path passes it to PyTorch."""
    batch, kv_heads, _, window, terms, head_dim = powers_shape
    step = readout_step(hw.out_levels)
    return DecodeParams(
        batch=batch,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        window=window,
        terms=terms,
        array_size=hw.array_size,
        leaks=int(not math.isinf(hw.retention_time)),
        kv_quantise=int(hw.kv_levels is not None),
        q_quantise=int(hw.q_levels is not None),
        out_quantise=int(hw.out_levels is not None),
        out_exact_grid=int(hw.out_quantizer == "exact"),
        tau=hw.retention_time,
        kv_max=hw.kv_max,
        kv_step=level_step(0.0, hw.kv_max, hw.kv_levels) if hw.kv_levels is not None else 0.0,
        kv_offset=hw.kv_offset,
        q_step=level_step(0.0, 1.0, hw.q_levels) if hw.q_levels is not None else 0.0,
        score_scale=1.0 / hw.score_saturation,
        out_scale=1.0 / hw.output_saturation / step,
        out_limit=1.0 / step,
        out_step=step,
    )


def run_decode_step(
    fn: ctypes._CFuncPtr,
    params: DecodeParams,
    *,
    slot: int,
    slots: int,
    now: float,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    maps: tuple[Tensor, ...],
    poly: Tensor,
    powers: Tensor,
    t_write: Tensor,
) -> Tensor:
    """One compiled step: write ``key``/``value`` (B, Hkv, 1, D) into ring slot ``slot`` of ``powers`` and ``t_write``
    (in place) at time ``now``, read ``query`` (B, H, 1, D) against the first ``slots`` slots; returns (B, H, 1, D).

    ``maps`` are the per-head (scale, bias) of q, k, v in :data:`MAP_NAMES` order; ``poly`` is the cell polynomial.  Every tensor is on the CPU
    in one dtype with unit stride over D; ``powers`` and ``t_write`` are contiguous (the caller checks all of it).
    """
    params.slot, params.slots, params.now = slot, slots, now
    params.q_batch_stride, params.q_head_stride = query.stride(0), query.stride(1)
    params.k_batch_stride, params.k_head_stride = key.stride(0), key.stride(1)
    params.v_batch_stride, params.v_head_stride = value.stride(0), value.stride(1)
    b, h, _, d = query.shape
    out = torch.empty(b, h, 1, d, dtype=query.dtype)
    status = fn(
        ctypes.byref(params),
        query.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        *(m.data_ptr() for m in maps),
        poly.data_ptr(),
        powers.data_ptr(),
        t_write.data_ptr(),
        out.data_ptr(),
    )
    if status != 0:
        raise MemoryError("the compiled decode step could not allocate its scratch memory")
    return out
