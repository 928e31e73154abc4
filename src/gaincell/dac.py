"""The converters at the edge of the arrays: the uniform quantiser and the DAC (clamp, quantise, offset).

The DAC turns a digital query into a pulse width in [0, 1] and a digital key or value into a cell voltage in
[0, kv_max]; the ADC-side readout of each tile uses the same quantiser on [-1, 1].  Training goes straight through the
rounding and keeps the clamp's gradient mask (the paper's rule; see ``docs/hardware.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DACFunction", "dac", "level_step", "quantize", "readout_step"]


def quantize(x: Tensor, lo: float, hi: float, levels: int | None, *, grid: str = "published") -> Tensor:
    """Forward-only uniform quantiser of an already clamped tensor.

    ``grid="published"``: step = (hi - lo) / (levels - 1), value = step * round(x / step) (round half to even), as in
    the released code.  For lo = 0 this is exactly ``levels`` levels; for [-1, 1] it is zero-centred and reaches
    +-ceil((levels-1)/2) * step (the published 32-level readout reaches +-32/31).
    ``grid="exact"``: value = lo + step * round((x - lo) / step): exactly ``levels`` levels from lo to hi.
    """
    if levels is None:
        return x
    step = level_step(lo, hi, levels)
    if grid == "exact":
        return torch.round((x - lo) / step) * step + lo
    return torch.round(x / step) * step


def level_step(lo: float, hi: float, levels: int) -> float:
    """The spacing of ``levels`` levels over [lo, hi]: (hi - lo) / (levels - 1), the quantisers' step."""
    return (hi - lo) / (levels - 1)


def readout_step(levels: int | None) -> float:
    """One level of the readout quantiser on [-1, 1] (published grid: 2 / (levels - 1)); 1 without a quantiser."""
    return 1.0 if levels is None else 2.0 / (levels - 1)


def _convert(x: Tensor, lo: float, hi: float, levels: int | None, offset: float) -> Tensor:
    """The DAC's forward values: clamp, quantise (published grid), subtract the offset; in one new tensor."""
    y = x.clamp(lo, hi)
    if levels is not None:
        step = level_step(lo, hi, levels)
        y.div_(step).round_().mul_(step)
    return y.sub_(offset) if offset != 0.0 else y


class DACFunction(torch.autograd.Function):
    """clamp -> quantise -> subtract offset in one pass; gradient = clamp mask (straight-through rounding)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float, levels: int | None, offset: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return _convert(x, lo, hi, levels, offset)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def dac(x: Tensor, lo: float, hi: float, levels: int | None, offset: float = 0.0) -> Tensor:
    """Clamp to [lo, hi], quantise (published grid) and subtract ``offset``.

    Gradient: the clamp mask, straight through the rounding (the paper's training rule).
    """
    if not (torch.is_grad_enabled() and x.requires_grad):  # no gradient: the same values, no clamp mask
        with torch.no_grad():
            return _convert(x, lo, hi, levels, offset)
    return DACFunction.apply(x, lo, hi, levels, offset)
