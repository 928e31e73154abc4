"""The gain-cell attention kernel: the paper's analog array math, streamed in blocks, with surrogate gradients.

Per head, query i and key j in the causal window i - W < j <= i (Leroux et al. 2025; see ``shared/docs/paper.md``):

1. q -> clamp [0, 1], ``q_levels`` levels; k, v -> clamp [0, kv_max], ``kv_levels`` levels; y = value - kv_offset.
2. Leakage: y decays as y * d_ij with d_ij = exp(-lambda (i - j)).
3. S_ij = sum_d q_id f(d_ij y_jd), f(y) = sum_n g_n y^n (SPICE cubic, or 19.3 y for the linear cell).
4. phi_ij = clamp(S_ij / score_saturation, 0, 1) (charge-to-pulse HardSigmoid, not quantised).
5. Per physical tile t (key j lives in ring slot j mod W, tile slot // array_size):
   A_t = sum_{j in t} phi_ij f(d_ij y^v_j); O = sum_t Qout(clamp(A_t / output_saturation, -1, 1)).

How it is computed without materialising anything of size T x T:

* The decay is separable, d_ij^n = exp(n lambda (r - i)) * exp(-n lambda (r - j)) for a reference r (the last query
  of a block), so f(d_ij y) = sum_n g_n d_ij^n y^n becomes one matrix product of "query features"
  [g_n exp(n lambda (r - i)) q_i] and "key features" [exp(-n lambda (r - j)) y_j^n] (inner size n_terms * D).  With
  no leakage the powers collapse into f(y) itself (inner size D).  The constant term g_0 rides along as one column.
* Queries are processed in blocks; each block only touches the keys of its window (causality and the window cut
  work, not just mask it), heads are chunked so a block's working set stays within a fixed budget.
* Keys are laid out in "padded ring coordinates" so that every array_size-aligned block of keys belongs to exactly
  one physical tile, also when the window is not a multiple of array_size; blocks of the same tile are summed before
  the tile's readout, which is what the hardware does when the ring buffer wraps.
* The backward pass recomputes each block (flash-attention style) and applies the paper's training rules:
  straight-through quantisers, clamp gradients, and the linear surrogate (``linear_slope``) for the cell multiply,
  or the exact polynomial derivative with ``cell_gradient="exact"``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from gaincell.config import HardwareConfig

__all__ = ["analog_attention", "dac", "quantize", "softmax_attention"]

# Working-set budget of one (head chunk, query block) step, in bytes.  Peak extra memory of a forward call is a small
# multiple of this, independent of the sequence length.
_BLOCK_BUDGET = 32 * 2**20
_DEFAULT_BLOCK_Q = 128
_MAX_EXPONENT = 30.0  # largest exp() taken on the query side of the decay factorisation (e^30 ~ 1e13)


# ---------------------------------------------------------------------------------------------------- quantisers
def quantize(x: Tensor, lo: float, hi: float, levels: int | None, *, grid: str = "published") -> Tensor:
    """Forward-only uniform quantiser of an already clamped tensor.

    ``grid="published"``: step = (hi - lo) / (levels - 1), value = step * round(x / step) (round half to even), as in
    the released code.  For lo = 0 this is exactly ``levels`` levels; for [-1, 1] it is zero-centred and reaches
    +-ceil((levels-1)/2) * step (the published 32-level readout reaches +-32/31).
    ``grid="exact"``: value = lo + step * round((x - lo) / step): exactly ``levels`` levels from lo to hi.
    """
    if levels is None:
        return x
    step = (hi - lo) / (levels - 1)
    if grid == "exact":
        return torch.round((x - lo) / step) * step + lo
    return torch.round(x / step) * step


class _DAC(torch.autograd.Function):
    """clamp -> quantise -> subtract offset in one pass; gradient = clamp mask (straight-through rounding)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float, levels: int | None, offset: float) -> Tensor:  # type: ignore[override]
        y = x.clamp(lo, hi)
        if levels is not None:
            step = (hi - lo) / (levels - 1)
            y.div_(step).round_().mul_(step)
        if offset != 0.0:
            y.sub_(offset)
        ctx.save_for_backward((x >= lo) & (x <= hi))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def dac(x: Tensor, lo: float, hi: float, levels: int | None, offset: float = 0.0) -> Tensor:
    """Clamp to [lo, hi], quantise (published grid) and subtract ``offset``.

    Gradient: the clamp mask, straight through the rounding (the paper's training rule).
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        with torch.no_grad():
            return _DAC.forward(_NoCtx(), x, lo, hi, levels, offset)
    return _DAC.apply(x, lo, hi, levels, offset)


class _NoCtx:
    def save_for_backward(self, *_: Tensor) -> None:
        pass


# ---------------------------------------------------------------------------------------------------- input checks
def _check_qkv(fn: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} must have 4 dimensions (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{fn}: k has shape {tuple(k.shape)} but v has shape {tuple(v.shape)}: they must match")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(f"{fn}: q has shape {tuple(q.shape)} and k {tuple(k.shape)}: batch, heads and head_dim must match")
    if q.shape[2] < 1 or q.shape[2] > k.shape[2]:
        raise ValueError(
            f"{fn}: q has {q.shape[2]} tokens and k {k.shape[2]}: need 1 <= query tokens <= key tokens "
            "(queries are the last tokens of the key sequence)"
        )
    if q.shape[3] < 1:
        raise ValueError(f"{fn}: head_dim must be >= 1, got {q.shape[3]}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"{fn}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _compute_dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


# ---------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class _Group:
    """One term of the factorised cell product.

    Key feature F(z) = sum_p poly[p] z^p of the decayed voltage z = exp(-lambda (r - j)) y, query factor
    w * exp(n lambda (r - i)).  With leakage on, the groups are the monomials z^n of the cell polynomial (n = power);
    with leakage off, one group holds f(z) - g_0 (n = 0).  ``reduced`` groups are the constant g_0 term: one column.
    """

    poly: tuple[float, ...]
    n: int
    weight: float
    reduced: bool = False

    def width(self, d: int) -> int:
        return 1 if self.reduced else d

    @property
    def monomial(self) -> bool:
        return not self.reduced and self.n >= 1


def _groups_for(poly: Sequence[float], decay: float, *, constant: bool) -> tuple[_Group, ...]:
    groups: list[_Group] = []
    if decay > 0:
        for n, g in enumerate(poly):
            if n >= 1 and g != 0.0:
                groups.append(_Group(tuple([0.0] * n + [1.0]), n, float(g)))
    elif any(g != 0.0 for g in poly[1:]):
        groups.append(_Group((0.0, *map(float, poly[1:])), 0, 1.0))
    if constant and poly[0] != 0.0:
        groups.append(_Group((1.0,), 0, float(poly[0]), reduced=True))
    return tuple(groups)


@dataclass(frozen=True)
class _Plan:
    fwd: tuple[_Group, ...]
    bwd: tuple[_Group, ...]
    decay: float  # lambda per token
    window: int
    array: int
    n_tiles: int
    padded_window: int
    inv_score_sat: float
    inv_out_sat: float
    out_levels: int | None
    out_grid: str
    read_noise_score: float
    read_noise_output: float
    q_levels: int | None
    kv_levels: int | None
    kv_max: float
    kv_offset: float
    raw_kv: bool  # k, v arrive in the DAC domain (quantised per block) rather than as written voltages
    block_q: int
    batch_chunk: int
    head_chunk: int
    key_start: int  # absolute position of key 0
    query_start: int  # absolute position of query 0
    n_keys: int
    n_queries: int
    variation: bool  # fixed cell variation: gains on every feature, a full-width constant map instead of g_0

    @property
    def gate_empty_tiles(self) -> bool:
        # With the published zero-centred grid an empty tile reads exactly 0.  Otherwise tiles that hold no key of the
        # query's window are not read out (the digital adder only sums tiles that were written).
        return (self.out_levels is not None and self.out_grid == "exact") or self.read_noise_output > 0

    def width(self, groups: tuple[_Group, ...], d: int) -> int:
        return sum(g.width(d) for g in groups) + (d if self.const_map(groups) else 0)

    def const_map(self, groups: tuple[_Group, ...]) -> bool:
        return self.variation and groups is self.fwd


def _make_plan(
    cfg: HardwareConfig,
    tq: int,
    tk: int,
    d: int,
    bh: int,
    key_start: int,
    decay: float,
    *,
    backward: bool,
    elem_bytes: int = 4,
    heads: int = 1,
    raw_kv: bool = True,
) -> _Plan:
    poly = cfg.cell_polynomial
    variation = cfg.cell_gain_variation > 0 or cfg.cell_offset_variation > 0
    fwd = _groups_for(poly, decay, constant=not variation)
    if cfg.cell_gradient == "surrogate" and cfg.cell == "nonlinear":
        bwd = _groups_for((0.0, cfg.linear_slope), decay, constant=False)
    else:
        bwd = fwd
    n_max = max([g.n for g in fwd + bwd] + [1])
    block_q = min(_DEFAULT_BLOCK_Q, tq)
    if decay > 0:  # keep exp(n * lambda * (r - i)) <= e^30 on the query side of the factorisation
        block_q = max(1, min(block_q, int(_MAX_EXPONENT / (n_max * decay)) + 1))
    a = cfg.array_size
    n_tiles = -(-cfg.window // a)
    wp = n_tiles * a
    span = min(tk, cfg.window + block_q - 1)
    n_blocks = -(-span * wp // cfg.window // a) + 2
    keys = n_blocks * a
    f = sum(g.width(d) for g in fwd) + (d if variation else 0)
    fb = sum(g.width(d) for g in bwd) + (d if variation and bwd is fwd else 0)
    per_head = 2 * keys * d + 2 * keys * f + keys * block_q + n_blocks * block_q * (f + 2 * d) + block_q * (f + 2 * d)
    if backward:
        per_head += 2 * keys * block_q + n_blocks * block_q * (fb + d) + 6 * keys * fb + 2 * block_q * fb
    per_head *= elem_bytes
    batch = bh // heads
    fit = max(1, _BLOCK_BUDGET // max(per_head, 1))  # heads that fit in the budget
    if fit >= heads:  # whole batch entries per chunk
        head_chunk = heads
        batch_chunk = min(batch, fit // heads)
        batch_chunk = -(-batch // -(-batch // batch_chunk))
    else:
        batch_chunk = 1
        head_chunk = -(-heads // -(-heads // fit))
    return _Plan(
        fwd=fwd,
        bwd=bwd,
        decay=decay,
        window=cfg.window,
        array=a,
        n_tiles=n_tiles,
        padded_window=wp,
        inv_score_sat=1.0 / cfg.score_saturation,
        inv_out_sat=1.0 / cfg.output_saturation,
        out_levels=cfg.out_levels,
        out_grid=cfg.out_quantizer,
        read_noise_score=cfg.read_noise_score,
        read_noise_output=cfg.read_noise_output,
        q_levels=cfg.q_levels,
        kv_levels=cfg.kv_levels,
        kv_max=cfg.kv_max,
        kv_offset=cfg.kv_offset,
        raw_kv=raw_kv,
        block_q=block_q,
        batch_chunk=batch_chunk,
        head_chunk=head_chunk,
        key_start=key_start,
        query_start=key_start + tk - tq,
        n_keys=tk,
        n_queries=tq,
        variation=variation,
    )


# ---------------------------------------------------------------------------------------------------- workspace
class _Workspace:
    """Named scratch buffers reused across blocks and calls (no allocator traffic, no page faults in the loop)."""

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        n = math.prod(shape)
        key = (name, like.dtype, like.device)
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self.bufs[key] = buf
        return buf[:n].view(shape)


_LOCAL = threading.local()


def _workspace() -> _Workspace:
    ws = getattr(_LOCAL, "ws", None)
    if ws is None:
        ws = _LOCAL.ws = _Workspace()
    return ws


def release_workspace() -> None:
    """Free the kernel's cached scratch buffers of this thread (they are kept between calls for speed)."""
    _LOCAL.ws = None


# ---------------------------------------------------------------------------------------------------- block geometry
@dataclass
class _Block:
    """Geometry of one query block: its queries, the padded-ring key slots it reads, and the window mask."""

    q0: int
    q1: int
    n_rows: int  # key slots L (a multiple of array_size)
    n_blocks: int  # L / array_size
    contiguous: tuple[int, int, int] | None  # (r0, r1, k0): rows r0..r1 hold keys k0.. ; other rows empty
    key_index: Tensor  # (L,) clamped key index (gather path)
    key_valid: Tensor  # (L,) bool: the slot holds a key of the sequence
    slot: Tensor  # (L,) physical slot within the padded window (for cell variation)
    valid_f: Tensor  # (L,) float
    kdec: dict[int, Tensor]  # n -> (L,) exp(-n lambda (r - j)) * valid
    qdec: dict[int, Tensor]  # n -> (bq,) exp(n lambda (r - i))
    mask: Tensor | None  # (L, bq) float window mask, or None when every pair is inside the window
    mask_rows: tuple[int, int]  # rows [0, a) and [b, L) need the mask; the rows between are all inside
    tile_of_block: Tensor | None  # (n_blocks,) tile of each block when some blocks share a tile, else None
    n_tile_slots: int
    active: Tensor | None  # (n_tile_slots, bq): tile holds a key of the query's window (for gating)


def _block_geometry(plan: _Plan, q0: int, q1: int, ns: set[int], like: Tensor) -> _Block:
    w, a, wp = plan.window, plan.array, plan.padded_window
    dev, dtype = like.device, like.dtype
    first_q = plan.query_start + q0
    last_q = plan.query_start + q1 - 1
    first_k = plan.key_start
    last_k = plan.key_start + plan.n_keys - 1
    lo = max(first_k, first_q - w + 1)
    hi = min(last_k, last_q)

    def pad(j: int) -> int:
        return (j // w) * wp + j % w

    p0 = (pad(lo) // a) * a
    p1 = (pad(hi) // a + 1) * a
    p = torch.arange(p0, p1, device=dev)
    slot = p % wp
    pos = (p // wp) * w + slot
    valid = (slot < w) & (pos >= first_k) & (pos <= last_k)
    key_index = (pos - first_k).clamp(0, plan.n_keys - 1)
    contiguous = None
    if wp == w:  # padded coordinates are absolute positions: the valid rows are one contiguous run
        r0 = max(p0, first_k) - p0
        r1 = min(p1 - 1, last_k) + 1 - p0
        contiguous = (r0, r1, p0 + r0 - first_k)
    qpos = torch.arange(first_q, last_q + 1, device=dev)
    inside = valid[:, None] & (pos[:, None] <= qpos[None, :]) & (pos[:, None] > qpos[None, :] - w)  # (L, bq)
    n_rows = p1 - p0
    n_blocks = n_rows // a
    row_bad = ~inside.all(1)
    mask: Tensor | None = None
    rows = (0, 0)
    if bool(row_bad.any()):
        mask = inside.to(dtype)
        good = (~row_bad).nonzero()
        rows = (n_rows, n_rows)  # mask every row
        if good.numel() > 0:
            g0, g1 = int(good[0]), int(good[-1]) + 1
            if not bool(row_bad[g0:g1].any()):
                rows = (g0, g1)
    tile_of_block = None
    n_tile_slots = n_blocks
    if n_blocks > plan.n_tiles:
        tile_of_block = torch.arange(n_blocks, device=dev) % plan.n_tiles
        n_tile_slots = plan.n_tiles
    active = None
    if plan.gate_empty_tiles:
        per_block = inside.view(n_blocks, a, -1).any(1).to(dtype)  # (n_blocks, bq)
        if tile_of_block is not None:
            per_block = (
                torch.zeros(n_tile_slots, per_block.shape[1], dtype=dtype, device=dev)
                .index_add_(0, tile_of_block, per_block)
                .clamp_(max=1.0)
            )
        active = per_block
    valid_f = valid.to(dtype)
    posf = pos.to(dtype)
    qposf = qpos.to(dtype)
    kdec: dict[int, Tensor] = {}
    qdec: dict[int, Tensor] = {}
    for n in ns | {0, 1}:
        if n == 0 or plan.decay == 0:
            kdec[n] = valid_f
            qdec[n] = torch.ones_like(qposf)
        else:
            kdec[n] = torch.exp(-n * plan.decay * (last_q - posf)) * valid_f
            qdec[n] = torch.exp(n * plan.decay * (last_q - qposf))
    return _Block(
        q0=q0,
        q1=q1,
        n_rows=n_rows,
        n_blocks=n_blocks,
        contiguous=contiguous,
        key_index=key_index,
        key_valid=valid,
        slot=slot,
        valid_f=valid_f,
        kdec=kdec,
        qdec=qdec,
        mask=mask,
        mask_rows=rows,
        tile_of_block=tile_of_block,
        n_tile_slots=n_tile_slots,
        active=active,
    )


# ---------------------------------------------------------------------------------------------------- features
def _horner(z: Tensor, poly: tuple[float, ...], out: Tensor) -> Tensor:
    """out = sum_p poly[p] z^p."""
    top = len(poly) - 1
    if top == 0:
        return out.fill_(poly[0])
    torch.mul(z, poly[top], out=out)
    if poly[top - 1] != 0.0:
        out.add_(poly[top - 1])
    for c in reversed(poly[: top - 1]):
        out.mul_(z)
        if c != 0.0:
            out.add_(c)
    return out


def _deriv(poly: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(p * c for p, c in enumerate(poly))[1:] or (0.0,)


def _quantize_(x: Tensor, step: float) -> Tensor:
    return x.div_(step).round_().mul_(step)


def _decayed(plan: _Plan, src: Tensor, ch: _Chunk, blk: _Block, out: Tensor) -> Tensor:
    """z = exp(-lambda (r - j)) * y for the block's key slots (zero on empty slots), written into ``out`` (c, L, D).

    ``src`` is the (B, H, Tk, D) key or value tensor; in the DAC domain it is clamped, quantised and offset here.
    """
    o4 = out.view(ch.nb, ch.nh, blk.n_rows, out.shape[-1])
    src = src[ch.b0 : ch.b1, ch.h0 : ch.h1]
    if blk.contiguous is not None:
        r0, r1, k0 = blk.contiguous
        o4[:, :, r0:r1].copy_(src[:, :, k0 : k0 + r1 - r0])
        if r0 > 0:
            o4[:, :, :r0].zero_()
        if r1 < blk.n_rows:
            o4[:, :, r1:].zero_()
    else:
        o4.copy_(src.index_select(2, blk.key_index))
    if plan.raw_kv:
        out.clamp_(0.0, plan.kv_max)
        if plan.kv_levels is not None:
            _quantize_(out, plan.kv_max / (plan.kv_levels - 1))
        out.sub_(plan.kv_offset)
    return out.mul_(blk.kdec[1][:, None])


def _query_dac(plan: _Plan, q: Tensor, ch: _Chunk, blk: _Block, out: Tensor) -> Tensor:
    """Queries of the block as pulse widths: clamp [0, 1], quantise; (c, bq, D)."""
    out.view(ch.nb, ch.nh, *out.shape[1:]).copy_(q[ch.b0 : ch.b1, ch.h0 : ch.h1, blk.q0 : blk.q1])
    out.clamp_(0.0, 1.0)
    if plan.q_levels is not None:
        _quantize_(out, 1.0 / (plan.q_levels - 1))
    return out


def _key_features(
    plan: _Plan,
    groups: tuple[_Group, ...],
    z: Tensor,
    blk: _Block,
    out: Tensor,
    gain: Tensor | None,
    const: Tensor | None,
    *,
    derivative: bool = False,
) -> Tensor:
    """Key-side features (c, L, F) of the decayed voltages z: F_g(z) [* gain], then the constant map.

    With ``derivative``: d/dy of each feature, i.e. n z^(n-1) exp(-lambda (r - j)) for z^n.
    """
    d = z.shape[-1]
    valid = blk.valid_f[:, None]
    col = 0
    powers: dict[int, Tensor] = {1: z}
    for g in groups:
        wdt = g.width(d)
        dst = out[..., col : col + wdt]
        if g.reduced:
            dst.zero_() if derivative else dst.copy_(valid.expand_as(dst))
        elif g.monomial:
            n = g.n
            if derivative:
                if n == 1:
                    dst.copy_(blk.kdec[1][:, None].expand_as(dst))
                else:
                    torch.mul(_power(powers, z, n - 1), blk.kdec[1][:, None], out=dst).mul_(float(n))
            else:
                if n == 1:
                    if dst.data_ptr() != z.data_ptr():
                        dst.copy_(z)
                else:
                    torch.mul(_power(powers, z, n - 1), z, out=dst)
                    powers[n] = dst
        else:
            _horner(z, _deriv(g.poly) if derivative else g.poly, dst)
            if derivative:
                dst.mul_(valid)
        col += wdt
    if gain is not None:
        col = 0
        for g in groups:
            if not g.reduced:
                out[..., col : col + d].mul_(gain)
            col += g.width(d)
    if plan.const_map(groups):
        dst = out[..., col:]
        if derivative or const is None:
            dst.zero_()
        else:
            torch.mul(const, valid, out=dst)
    return out


def _power(powers: dict[int, Tensor], z: Tensor, n: int) -> Tensor:
    if n not in powers:
        powers[n] = _power(powers, z, n - 1) * z
    return powers[n]


def _query_scales(groups: tuple[_Group, ...], blk: _Block) -> list[Tensor]:
    """Per-group query factor w_g * exp(n_g lambda (r - i)), shape (bq,)."""
    return [blk.qdec[g.n] * g.weight for g in groups]


def _query_features(
    plan: _Plan, groups: tuple[_Group, ...], scales: list[Tensor], q: Tensor, out: Tensor, factor: float = 1.0
) -> Tensor:
    """Query-side features (c, bq, F) matching :func:`_key_features`."""
    d = q.shape[-1]
    col = 0
    qsum = None
    for g, s in zip(groups, scales, strict=True):
        sc = (s * factor)[:, None]
        if g.reduced:
            if qsum is None:
                qsum = q.sum(-1, keepdim=True)
            torch.mul(qsum, sc, out=out[..., col : col + 1])
            col += 1
        else:
            torch.mul(q, sc, out=out[..., col : col + d])
            col += d
    if plan.const_map(groups):
        torch.mul(q, factor, out=out[..., col:])
    return out


def _combine(plan: _Plan, groups: tuple[_Group, ...], scales: list[Tensor], m: Tensor, d: int, axis: int, out: Tensor) -> Tensor:
    """out = sum_g s_g * M_g + M_const, with the group columns of ``m`` along ``axis`` (-1 or -2).

    The scales vary along the other of the last two axes (the queries).
    """
    col = 0
    first = True
    for g, s in zip(groups, scales, strict=True):
        wdt = g.width(d)
        part = m.narrow(axis, col, wdt)
        sc = s[None, :] if axis == -2 else s[:, None]
        if first:
            torch.mul(part, sc, out=out)
            first = False
        else:
            out.addcmul_(part, sc)
        col += wdt
    if plan.const_map(groups):
        part = m.narrow(axis, col, d)
        out.copy_(part) if first else out.add_(part)
        first = False
    if first:
        out.zero_()
    return out


def _extend_grad(plan: _Plan, groups: tuple[_Group, ...], scales: list[Tensor], g: Tensor, out: Tensor) -> Tensor:
    """Gradient on the combined tile sums (c, nb, D, bq) -> on the group rows (c, nb, Fb, bq)."""
    d = g.shape[-2]
    col = 0
    for grp, s in zip(groups, scales, strict=True):
        if grp.reduced:
            torch.mul(g.sum(-2, keepdim=True), s, out=out[..., col : col + 1, :])
            col += 1
        else:
            torch.mul(g, s, out=out[..., col : col + d, :])
            col += d
    if plan.const_map(groups):
        out[..., col:, :].copy_(g)
    return out


def _reduce_key_grad(groups: tuple[_Group, ...], z: Tensor, dfeat: Tensor, d: int, out: Tensor) -> Tensor:
    """dy = sum_g Z_g * dF_g over the group columns (c, L, Fb) -> (c, L, D)."""
    col = 0
    first = True
    for g in groups:
        wdt = g.width(d)
        if not g.reduced:
            if first:
                torch.mul(z[..., col : col + wdt], dfeat[..., col : col + wdt], out=out)
                first = False
            else:
                out.addcmul_(z[..., col : col + wdt], dfeat[..., col : col + wdt])
        col += wdt
    if first:
        out.zero_()
    return out


# ---------------------------------------------------------------------------------------------------- cell variation
@lru_cache(maxsize=64)
def _variation_maps(
    seed: int, layer: int, heads: int, slots: int, d: int, gain_std: float, offset_std: float, g0: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed per-cell (gain, g0 * gain + offset) of the K and V arrays of every head: (heads, slots, d) each."""
    gen = torch.Generator().manual_seed(_mix(seed, layer, 0x6A11))
    shape = (heads, slots, d)
    gk = 1.0 + gain_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    ok = offset_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    gv = 1.0 + gain_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    ov = offset_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    return gk, g0 * gk + ok, gv, g0 * gv + ov


def _mix(*xs: int) -> int:
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = ((h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def make_generator(config: HardwareConfig, layer: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The noise generator of one layer, seeded from ``config.seed`` and the layer index."""
    return torch.Generator(device=device).manual_seed(_mix(config.seed, layer, 0x5EED))


def variation_maps(config: HardwareConfig, heads: int, head_dim: int, layer: int = 0) -> dict[str, Tensor]:
    """The fixed cell variation of one layer's arrays: K/V gain (relative) and K/V offset (uA), (heads, slots, D)."""
    wp = config.n_tiles * config.array_size
    gk, ck, gv, cv = _variation_maps(
        config.seed,
        layer,
        heads,
        wp,
        head_dim,
        config.cell_gain_variation,
        config.cell_offset_variation,
        config.cell_polynomial[0],
    )
    g0 = config.cell_polynomial[0]
    return {"k_gain": gk, "k_offset": ck - g0 * gk, "v_gain": gv, "v_offset": cv - g0 * gv}


# ---------------------------------------------------------------------------------------------------- core
@dataclass(frozen=True)
class _Chunk:
    """A rectangle of (batch entries, heads) processed together; c = nb * nh rows of the block buffers."""

    b0: int
    b1: int
    h0: int
    h1: int

    @property
    def nb(self) -> int:
        return self.b1 - self.b0

    @property
    def nh(self) -> int:
        return self.h1 - self.h0

    @property
    def c(self) -> int:
        return self.nb * self.nh


class _Context:
    """Inputs shared by the forward and the recomputing backward: (B, H, T, D) tensors, any strides."""

    def __init__(self, plan: _Plan, q: Tensor, k: Tensor, v: Tensor, var: tuple[Tensor, ...] | None, dtype: torch.dtype):
        self.plan, self.q, self.k, self.v, self.var = plan, q, k, v, var
        self.ws = _workspace()
        self.d = q.shape[-1]
        self.like = torch.empty(0, dtype=dtype, device=q.device)

    def chunk_var(self, ch: _Chunk, blk: _Block) -> tuple[Tensor | None, ...]:
        if self.var is None:
            return (None, None, None, None)
        return tuple(
            m[ch.h0 : ch.h1][:, blk.slot].unsqueeze(0).expand(ch.nb, -1, -1, -1).reshape(ch.c, blk.n_rows, self.d)
            for m in self.var
        )

    def buf(self, name: str, *shape: int) -> Tensor:
        return self.ws.get(name, shape, self.like)


def _z_buffer(ctx: _Context, name: str, feats: Tensor, gain: Tensor | None) -> Tensor:
    """Where to write z: straight into the first feature columns when they are z itself, else a scratch buffer."""
    g = ctx.plan.fwd
    if gain is None and g and g[0].monomial and g[0].n == 1:
        return feats[..., : ctx.d]
    return ctx.buf(name, feats.shape[0], feats.shape[1], ctx.d)


def _apply_mask(blk: _Block, t: Tensor) -> None:
    """Zero the (key, query) pairs outside the window (t: (c, L, bq))."""
    if blk.mask is None:
        return
    a, b = blk.mask_rows
    if a >= t.shape[-2]:
        t.mul_(blk.mask)
        return
    if a > 0:
        t[..., :a, :].mul_(blk.mask[:a])
    if b < t.shape[-2]:
        t[..., b:, :].mul_(blk.mask[b:])


def _forward_block(ctx: _Context, ch: _Chunk, blk: _Block, noise_gen: torch.Generator | None, *, keep: bool) -> dict[str, Tensor]:
    """Both arrays for one (head chunk, query block); returns the named buffers (views into the workspace)."""
    plan, d, c, bq, nrow, nb, a = ctx.plan, ctx.d, ch.c, blk.q1 - blk.q0, blk.n_rows, blk.n_blocks, ctx.plan.array
    groups = plan.fwd
    f = plan.width(groups, d)
    gk, ck, gv, cv = ctx.chunk_var(ch, blk)
    scales = _query_scales(groups, blk)
    q = _query_dac(plan, ctx.q, ch, blk, ctx.buf("q", c, bq, d))
    qf = _query_features(plan, groups, scales, q, ctx.buf("qf", c, bq, f), plan.inv_score_sat)
    kf = ctx.buf("kf", c, nrow, f)
    zk = _decayed(plan, ctx.k, ch, blk, _z_buffer(ctx, "zk", kf, gk))
    _key_features(plan, groups, zk, blk, kf, gk, ck)
    # first array: S^T / S_sat = Kf Qf^T  (c, L, bq), then read noise, HardSigmoid, window
    st = torch.matmul(kf, qf.transpose(-1, -2), out=ctx.buf("st", c, nrow, bq))
    if plan.read_noise_score > 0:
        st.add_(
            torch.randn(st.shape, generator=noise_gen, dtype=st.dtype, device=st.device),
            alpha=plan.read_noise_score * plan.inv_score_sat,
        )
    phit = torch.clamp(st, 0.0, 1.0, out=ctx.buf("phit", c, nrow, bq)) if keep else st.clamp_(0.0, 1.0)
    _apply_mask(blk, phit)
    # second array, per array-sized block of keys: M^T_b = Vf_b^T phi^T_b  (c, nb, F, bq)
    vf = ctx.buf("vf", c, nrow, f)
    zv = _decayed(plan, ctx.v, ch, blk, _z_buffer(ctx, "zv", vf, gv))
    _key_features(plan, groups, zv, blk, vf, gv, cv)
    mt = torch.matmul(vf.view(c, nb, a, f).transpose(-1, -2), phit.view(c, nb, a, bq), out=ctx.buf("mt", c, nb, f, bq))
    at = _combine(plan, groups, scales, mt, d, -2, ctx.buf("at", c, nb, d, bq))  # (c, nb, D, bq)
    if blk.tile_of_block is not None:  # blocks W apart share a physical tile: sum them before the readout
        folded = ctx.buf("fold", c, blk.n_tile_slots, d, bq).zero_()
        at = folded.index_add_(1, blk.tile_of_block, at)
    if plan.read_noise_output > 0:
        at.add_(torch.randn(at.shape, generator=noise_gen, dtype=at.dtype, device=at.device), alpha=plan.read_noise_output)
    # readout of each tile: clamp(A / A_sat, -1, 1), quantised; in units of one step until the digital sum
    step = 1.0 if plan.out_levels is None else 2.0 / (plan.out_levels - 1)
    scale = plan.inv_out_sat / step
    x = torch.mul(at, scale, out=ctx.buf("x", *at.shape)) if keep else at.mul_(scale)
    x.clamp_(-1.0 / step, 1.0 / step)
    if plan.out_levels is not None:
        if plan.out_grid == "exact":
            x.add_(1.0 / step).round_().sub_(1.0 / step)
        else:
            x.round_()
    if blk.active is not None:
        x.mul_(blk.active[None, :, None, :])
    out = torch.sum(x, 1, out=ctx.buf("out", c, d, bq))
    if step != 1.0:
        out.mul_(step)
    return {
        "out": out,
        "q": q,
        "qf": qf,
        "zk": zk,
        "kf": kf,
        "st": st,
        "phit": phit,
        "zv": zv,
        "vf": vf,
        "at": at,
        "gk": gk,
        "gv": gv,
    }  # type: ignore[dict-item]


def _backward_block(
    ctx: _Context, ch: _Chunk, blk: _Block, grad_t: Tensor, noise_gen: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq (c, bq, D), dyk (c, L, D), dyv (c, L, D)) of one block, recomputing its forward."""
    plan, d, c, bq, nrow, nb, a = ctx.plan, ctx.d, ch.c, blk.q1 - blk.q0, blk.n_rows, blk.n_blocks, ctx.plan.array
    s = _forward_block(ctx, ch, blk, noise_gen, keep=True)
    # readout: straight-through quantiser, clamp gradient of each tile's saturation
    at = s["at"]
    dt = ctx.buf("dt", *at.shape)
    torch.mul(at, plan.inv_out_sat, out=dt)
    dt.copy_((dt >= -1.0) & (dt <= 1.0)).mul_(grad_t[:, None] * plan.inv_out_sat)  # (c, n_t, D, bq)
    if blk.active is not None:
        dt.mul_(blk.active[None, :, None, :])
    dblocks = dt if blk.tile_of_block is None else dt[:, blk.tile_of_block]  # (c, nb, D, bq)
    groups = plan.bwd
    fb = plan.width(groups, d)
    scales = _query_scales(groups, blk)
    if groups is plan.fwd:
        kfb, vfb = s["kf"], s["vf"]
    else:
        kfb = _key_features(plan, groups, s["zk"], blk, ctx.buf("kfb", c, nrow, fb), s["gk"], None)
        vfb = _key_features(plan, groups, s["zv"], blk, ctx.buf("vfb", c, nrow, fb), s["gv"], None)
    dext = _extend_grad(plan, groups, scales, dblocks, ctx.buf("dext", c, nb, fb, bq))  # (c, nb, Fb, bq)
    # second array: M^T_b = Vf_b^T phi^T_b  ->  dphi^T_b = Vf_b dext_b,  dVf_b = phi^T_b dext_b^T
    dphit = torch.matmul(vfb.view(c, nb, a, fb), dext, out=ctx.buf("dphit", c, nb, a, bq)).view(c, nrow, bq)
    dvf = torch.matmul(s["phit"].view(c, nb, a, bq), dext.transpose(-1, -2), out=ctx.buf("dvf", c, nb, a, fb)).view(c, nrow, fb)
    dfeat = _key_features(plan, groups, s["zv"], blk, ctx.buf("dfeat", c, nrow, fb), s["gv"], None, derivative=True)
    dyv = _reduce_key_grad(groups, dvf, dfeat, d, ctx.buf("dyv", c, nrow, d))
    # HardSigmoid clamp gradient and window, then the first array
    st = s["st"]
    dst = dphit.mul_((st >= 0.0) & (st <= 1.0)).mul_(plan.inv_score_sat)
    _apply_mask(blk, dst)
    dq_ext = torch.matmul(dst.transpose(-1, -2), kfb, out=ctx.buf("dqext", c, bq, fb))
    dq = _combine(plan, groups, scales, dq_ext, d, -1, ctx.buf("dq", c, bq, d))
    qfb = _query_features(plan, groups, scales, s["q"], ctx.buf("qfb", c, bq, fb))
    dkf = torch.matmul(dst, qfb, out=ctx.buf("dkf", c, nrow, fb))
    dfeat = _key_features(plan, groups, s["zk"], blk, ctx.buf("dfeat", c, nrow, fb), s["gk"], None, derivative=True)
    dyk = _reduce_key_grad(groups, dkf, dfeat, d, ctx.buf("dyk", c, nrow, d))
    return dq, dyk, dyv


def _query_blocks(plan: _Plan) -> list[tuple[int, int]]:
    return [(i, min(i + plan.block_q, plan.n_queries)) for i in range(0, plan.n_queries, plan.block_q)]


def _chunks(plan: _Plan, batch: int, heads: int) -> list[_Chunk]:
    return [
        _Chunk(b, min(b + plan.batch_chunk, batch), h, min(h + plan.head_chunk, heads))
        for b in range(0, batch, plan.batch_chunk)
        for h in range(0, heads, plan.head_chunk)
    ]


def _geometries(plan: _Plan, like: Tensor) -> Iterator[_Block]:
    """Block geometries, built one at a time (their masks are the only per-block state)."""
    ns = {g.n for g in plan.fwd + plan.bwd}
    for q0, q1 in _query_blocks(plan):
        yield _block_geometry(plan, q0, q1, ns, like)


def _scatter_keys(dst: Tensor, ch: _Chunk, blk: _Block, rows: Tensor) -> None:
    """dst[b, h, key] += rows[., slot] for the block's key slots; rows (c, L, D), dst (B, H, Tk, D)."""
    r4 = rows.view(ch.nb, ch.nh, blk.n_rows, rows.shape[-1])
    dst = dst[ch.b0 : ch.b1, ch.h0 : ch.h1]
    if blk.contiguous is not None:
        r0, r1, k0 = blk.contiguous
        dst[:, :, k0 : k0 + r1 - r0].add_(r4[:, :, r0:r1])
    else:
        dst.index_add_(2, blk.key_index[blk.key_valid], r4[:, :, blk.key_valid])


class _AnalogCore(torch.autograd.Function):
    """Blocked forward; backward recomputes each block.  Inputs (B, H, T, D) of any strides and float dtype."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx_: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        plan: _Plan,
        var: tuple[Tensor, ...] | None,
        dtype: torch.dtype,
        noise_gen: torch.Generator | None,
    ) -> Tensor:
        state = noise_gen.get_state() if noise_gen is not None else None
        ctx = _Context(plan, q, k, v, var, dtype)
        b, h, tq, d = q.shape
        out = torch.empty(b, h, tq, d, dtype=dtype, device=q.device)
        for blk in _geometries(plan, ctx.like):
            for ch in _chunks(plan, b, h):
                res = _forward_block(ctx, ch, blk, noise_gen, keep=False)["out"]  # (c, D, bq)
                out[ch.b0 : ch.b1, ch.h0 : ch.h1, blk.q0 : blk.q1] = res.view(ch.nb, ch.nh, d, -1).transpose(-1, -2)
        ctx_.save_for_backward(q, k, v)
        ctx_.extras = (plan, var, dtype, state)  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx_: torch.autograd.function.FunctionCtx, grad: Tensor):  # type: ignore[override]
        q, k, v = ctx_.saved_tensors  # type: ignore[attr-defined]
        plan, var, dtype, state = ctx_.extras  # type: ignore[attr-defined]
        gen = None
        if state is not None:  # replay the forward's read noise
            gen = torch.Generator(device=q.device)
            gen.set_state(state)
        ctx = _Context(plan, q, k, v, var, dtype)
        b, h, _tq, d = q.shape
        dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
        dk = torch.zeros(k.shape, dtype=dtype, device=q.device)
        dv = torch.zeros(v.shape, dtype=dtype, device=q.device)
        for blk in _geometries(plan, ctx.like):
            for ch in _chunks(plan, b, h):
                bq = blk.q1 - blk.q0
                g = ctx.buf("grad", ch.c, d, bq)
                g.view(ch.nb, ch.nh, d, bq).copy_(grad[ch.b0 : ch.b1, ch.h0 : ch.h1, blk.q0 : blk.q1].transpose(-1, -2))
                bdq, bdk, bdv = _backward_block(ctx, ch, blk, g, gen)
                dq[ch.b0 : ch.b1, ch.h0 : ch.h1, blk.q0 : blk.q1] = bdq.view(ch.nb, ch.nh, bq, d)
                _scatter_keys(dk, ch, blk, bdk)
                _scatter_keys(dv, ch, blk, bdv)
        # straight-through quantisers: the gradient passes where the input was inside the DAC range
        dq.mul_((q >= 0.0) & (q <= 1.0))
        if plan.raw_kv:
            dk.mul_((k >= 0.0) & (k <= plan.kv_max))
            dv.mul_((v >= 0.0) & (v <= plan.kv_max))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


# ---------------------------------------------------------------------------------------------------- public API
def analog_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    config: HardwareConfig,
    *,
    key_start: int = 0,
    layer: int = 0,
    generator: torch.Generator | None = None,
    voltages: bool = False,
) -> Tensor:
    """Attention exactly as the gain-cell engine computes it, per head, before the output affine map.

    Args:
        q: (B, H, Tq, D) queries in the DAC domain (pulse widths; clamped to [0, 1] and quantised here).
        k, v: (B, H, Tk, D) keys and values in the DAC domain (voltages; clamped to [0, kv_max], quantised here).
        config: the :class:`~gaincell.HardwareConfig`.
        key_start: absolute position of the first key; keys sit at key_start ... key_start + Tk - 1 and the queries
            are the last Tq of them.  Positions set the ring-buffer tiles (slot = position mod window).
        layer: layer index, seeds the fixed cell variation (each layer has its own physical arrays).
        generator: random stream for read/write noise; default: a fresh one seeded from ``config.seed`` and
            ``layer`` (so repeated calls draw identical noise).
        voltages: k and v are already-written signed cell voltages y = V - kv_offset (the analog KV cache's
            contents): no DAC and no write noise are applied to them; leakage still follows ``decay_per_token``.

    Returns:
        (B, H, Tq, D): the sum over tiles of the quantised tile readouts, in units of full scale.
    """
    _check_qkv("analog_attention", q, k, v)
    if not isinstance(config, HardwareConfig):
        raise TypeError(f"analog_attention: config must be a HardwareConfig, got {type(config).__name__}")
    if isinstance(key_start, bool) or not isinstance(key_start, int) or key_start < 0:
        raise ValueError(f"analog_attention: key_start must be an integer >= 0, got {key_start!r}")
    b, h, tq, d = q.shape
    tk = k.shape[2]
    dtype = _compute_dtype(q, k, v)  # float64 stays float64; everything else is computed in float32
    cfg = config
    noisy = cfg.write_noise > 0 or cfg.read_noise_score > 0 or cfg.read_noise_output > 0
    if noisy and generator is None:
        generator = make_generator(cfg, layer, q.device)
    raw_kv = cfg.write_noise == 0 and not voltages
    if voltages:
        k, v = k.to(dtype), v.to(dtype)
    elif not raw_kv:  # written voltage = DAC level + noise, held within the rails; drawn once per written key
        kd = dac(k.to(dtype), 0.0, cfg.kv_max, cfg.kv_levels)
        vd = dac(v.to(dtype), 0.0, cfg.kv_max, cfg.kv_levels)
        noise_k = torch.randn(kd.shape, generator=generator, dtype=dtype, device=kd.device)
        noise_v = torch.randn(vd.shape, generator=generator, dtype=dtype, device=vd.device)
        k = (kd + cfg.write_noise * noise_k).clamp(0.0, cfg.kv_max) - cfg.kv_offset
        v = (vd + cfg.write_noise * noise_v).clamp(0.0, cfg.kv_max) - cfg.kv_offset
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    plan = _make_plan(
        cfg,
        tq,
        tk,
        d,
        b * h,
        key_start,
        cfg.decay_per_token,
        backward=needs_grad,
        elem_bytes=torch.finfo(dtype).bits // 8,
        heads=h,
        raw_kv=raw_kv,
    )
    var = None
    if plan.variation:
        maps = _variation_maps(
            cfg.seed, layer, h, plan.padded_window, d, cfg.cell_gain_variation, cfg.cell_offset_variation, cfg.cell_polynomial[0]
        )
        var = tuple(m.to(dtype=dtype, device=q.device) for m in maps)
    read_gen = generator if (cfg.read_noise_score > 0 or cfg.read_noise_output > 0) else None
    with torch.autocast(q.device.type, enabled=False):  # the arrays are simulated in float32: no bf16 shortcuts
        out = _AnalogCore.apply(q, k, v, plan, var, dtype, read_gen)
    return out.to(q.dtype)


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int | None = None, scale: float | None = None) -> Tensor:
    """Causal softmax attention with an optional sliding window, same shapes as :func:`analog_attention`.

    Queries are the last Tq of the Tk keys; query i sees keys j with i - window < j <= i.
    """
    _check_qkv("softmax_attention", q, k, v)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"softmax_attention: window must be an integer >= 1 or None, got {window!r}")
    tq, tk = q.shape[2], k.shape[2]
    if tq == tk and (window is None or window >= tk):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    qpos = torch.arange(tk - tq, tk, device=q.device)[:, None]
    kpos = torch.arange(tk, device=q.device)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def attention_map(q: Tensor, k: Tensor, config: HardwareConfig, *, key_start: int = 0) -> Tensor:
    """The charge-to-pulse outputs phi (B, H, Tq, Tk) of the first array, materialised (for plots and inspection).

    Same conventions as :func:`analog_attention`; phi is 0 outside the causal window.  Memory is O(Tq * Tk * D):
    use it on short sequences.  Noise and cell variation are not applied.
    """
    _check_qkv("attention_map", q, k, k)
    cfg = config
    tq, tk = q.shape[2], k.shape[2]
    dtype = _compute_dtype(q, k)
    with torch.no_grad():
        qd = dac(q.to(dtype), 0.0, 1.0, cfg.q_levels)
        y = dac(k.to(dtype), 0.0, cfg.kv_max, cfg.kv_levels, cfg.kv_offset)
        qpos = torch.arange(tk - tq, tk, device=q.device, dtype=dtype)[:, None] + key_start
        kpos = torch.arange(tk, device=q.device, dtype=dtype)[None, :] + key_start
        inside = (kpos <= qpos) & (kpos > qpos - cfg.window)
        dec = torch.exp(-cfg.decay_per_token * (qpos - kpos).clamp(min=0))  # (Tq, Tk)
        z = dec[None, None, :, :, None] * y[:, :, None, :, :]  # (B, H, Tq, Tk, D)
        f = sum(g * z**n for n, g in enumerate(cfg.cell_polynomial))
        s = (qd[:, :, :, None, :] * f).sum(-1)
        return (s / cfg.score_saturation).clamp(0.0, 1.0) * inside


def score_pairs(config: HardwareConfig, n_queries: int, n_keys: int | None = None) -> int:
    """Number of (query, key slot) pairs the kernel's first-array products touch for one head.

    Causality and the window cut this work: it grows as n_queries * window, not n_queries * n_keys.
    """
    n_keys = n_queries if n_keys is None else n_keys
    plan = _make_plan(config, n_queries, n_keys, 1, 1, 0, config.decay_per_token, backward=False)
    like = torch.empty(0)
    return sum(blk.n_rows * (blk.q1 - blk.q0) for blk in _geometries(plan, like))
