"""A slow, loop-based reference of the gain-cell attention, written directly from the equations of issue 2.

One query at a time, one tile at a time; float64; autograd does the backward, with the paper's surrogate written as
``linear + (exact - linear).detach()`` (exact forward value, linear-slope gradient).
"""

from __future__ import annotations

import math

import torch

from gaincell import HardwareConfig


def _quant(x: torch.Tensor, lo: float, hi: float, levels: int | None, grid: str = "published") -> torch.Tensor:
    if levels is None:
        return x
    step = (hi - lo) / (levels - 1)
    qx = torch.round((x - lo) / step) * step + lo if grid == "exact" else torch.round(x / step) * step
    return x + (qx - x).detach()


def _cell(cfg: HardwareConfig, z: torch.Tensor) -> torch.Tensor:
    return sum(g * z**n for n, g in enumerate(cfg.cell_polynomial))


def _product(cfg: HardwareConfig, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """a * f(z) elementwise with the configured gradient rule."""
    exact = a * _cell(cfg, z)
    if cfg.cell == "linear" or cfg.cell_gradient == "exact":
        return exact
    lin = a * cfg.linear_slope * z
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
    """(B, H, Tq, D) output; ``gain``/``offset`` optional per-(head, slot, d) cell maps for K and V arrays."""
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
