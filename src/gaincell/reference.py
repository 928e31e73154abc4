"""The executable specification of the gain-cell attention hardware: slow, exact, and written to be read.

:func:`reference_attention` computes the same outputs as :func:`gaincell.analog_attention`, straight from the
equations of the hardware model (``docs/hardware.md``): one query at a time, one key at a time, one tile at a time,
in plain loops.  Nothing is factorised, blocked or fused, so each line can be checked against the hardware: the DAC
clamps and quantises q, k and v, the stored voltage leaks by exp(-lambda (i - j)), each cell multiplies its input by
the cell polynomial f, the first array's charge becomes a pulse through the HardSigmoid, the second array sums per
physical tile (slot = position mod window, tile = slot // array_size) and every tile is read out through a clamp and
the output quantiser before the digital sum.

It is the yardstick the fast kernel is tested against, and the place to start when you design a variant of the
hardware: change the loop here, check your variant against it on short sequences, then port it to the kernel.  The
cost is O(T^2 D) Python-level work per head (T queries x up to W keys), so keep T to a few hundred tokens.

Gradients come from autograd through the loops, with the paper's training rules written out: straight-through
quantisers (``x + (round(x) - x).detach()``) and, for the nonlinear cell, the linear surrogate
``linear + (exact - linear).detach()`` (exact forward value, ``linear_slope`` gradient) unless
``cell_gradient="exact"``.  Noise is not simulated; the fixed cell variation can be passed as explicit maps.
"""

from __future__ import annotations

import math

import torch

from gaincell.config import HardwareConfig

__all__ = ["reference_attention"]


def _quant(x: torch.Tensor, lo: float, hi: float, levels: int | None, grid: str = "published") -> torch.Tensor:
    """Quantiser with a straight-through gradient (same grids as :func:`gaincell.dac.quantize`)."""
    if levels is None:
        return x
    step = (hi - lo) / (levels - 1)
    qx = torch.round((x - lo) / step) * step + lo if grid == "exact" else torch.round(x / step) * step
    return x + (qx - x).detach()


def _cell(cfg: HardwareConfig, z: torch.Tensor) -> torch.Tensor:
    """The cell polynomial f(z) = sum_n g_n z^n."""
    return sum(g * z**n for n, g in enumerate(cfg.cell_polynomial))


def _product(cfg: HardwareConfig, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """a * f(z) elementwise with the configured gradient rule."""
    exact = a * _cell(cfg, z)
    if cfg.cell == "linear" or cfg.cell_gradient == "exact":
        return exact
    lin = a * cfg.surrogate_slope * z
    return lin + (exact - lin).detach()


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cfg: HardwareConfig,
    key_start: int = 0,
    gain: tuple[torch.Tensor, torch.Tensor] | None = None,
    offset: tuple[torch.Tensor, torch.Tensor] | None = None,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Gain-cell attention by loops: (B, H, Tq, D) output for (B, H, Tq, D) q and (B, H, Tk, D) k, v.

    Same conventions as :func:`gaincell.analog_attention`: queries are the last Tq of the keys, key j sits at
    absolute position key_start + j.  ``gain``/``offset``: optional (K array, V array) per-(head, slot, d) cell maps,
    as returned by :func:`gaincell.noise.variation_maps`.  ``stats``: if given, counts how many (pair, head) scores
    and (tile, dim) readouts fall in each region of their clamps (keys ``phi_zero``, ``phi_one``, ``phi_linear``,
    ``out_clamped``, ``out_linear``), to check that test inputs exercise every region.
    """
    b, h, tq, d = q.shape
    tk = k.shape[2]
    w, a = cfg.window, cfg.array_size
    lam = cfg.decay_per_token
    qd = _quant(q.clamp(0, 1), 0, 1, cfg.q_levels)
    yk = _quant(k.clamp(0, cfg.kv_max), 0, cfg.kv_max, cfg.kv_levels) - cfg.kv_offset
    yv = _quant(v.clamp(0, cfg.kv_max), 0, cfg.kv_max, cfg.kv_levels) - cfg.kv_offset
    outs = []
    for i in range(tq):
        ipos = key_start + tk - tq + i
        js = [j for j in range(tk) if ipos - w < key_start + j <= ipos]
        tiles: dict[int, torch.Tensor] = {}
        for j in js:
            jpos = key_start + j
            dd = math.exp(-lam * (ipos - jpos))
            slot = jpos % w
            ck = _product(cfg, qd[:, :, i, :], dd * yk[:, :, j, :])  # (B, H, D)
            if gain is not None:
                ck = ck * gain[0][None, :, slot, :]
            if offset is not None:
                ck = ck + qd[:, :, i, :] * offset[0][None, :, slot, :]
            s = ck.sum(-1, keepdim=True)  # (B, H, 1)
            phi = (s / cfg.score_saturation).clamp(0, 1)
            if stats is not None:
                r = (s / cfg.score_saturation).detach()
                stats["phi_zero"] = stats.get("phi_zero", 0) + int((r < 0).sum())
                stats["phi_one"] = stats.get("phi_one", 0) + int((r > 1).sum())
                stats["phi_linear"] = stats.get("phi_linear", 0) + int(((r > 0) & (r < 1)).sum())
            cv = _product(cfg, phi, dd * yv[:, :, j, :])
            if gain is not None:
                cv = cv * gain[1][None, :, slot, :]
            if offset is not None:
                cv = cv + phi * offset[1][None, :, slot, :]
            t = slot // a
            tiles[t] = tiles[t] + cv if t in tiles else cv
        o = torch.zeros(b, h, d, dtype=q.dtype)
        for t in sorted(tiles):
            x = (tiles[t] / cfg.output_saturation).clamp(-1, 1)
            if stats is not None:
                r = (tiles[t] / cfg.output_saturation).detach().abs()
                stats["out_clamped"] = stats.get("out_clamped", 0) + int((r > 1).sum())
                stats["out_linear"] = stats.get("out_linear", 0) + int((r < 1).sum())
            o = o + _quant(x, -1, 1, cfg.out_levels, cfg.out_quantizer)
        outs.append(o)
    return torch.stack(outs, 2)
