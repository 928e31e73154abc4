"""The kernel's plan: which feature terms factorise the cell product, how queries, heads and keys are blocked.

Everything here is a pure function of the hardware config and the input shapes (the per-block geometry also builds a
few small index tensors); nothing touches q, k or v.  The blocked forward and backward (``blocks.py``) only follow it.

Key slots are "padded ring coordinates": key position j sits in ring slot j mod W of the window, and the ring is laid
out as consecutive copies of a *padded* window of ``n_tiles * array_size`` slots (the slots from W up to that size are
empty).  Every ``array_size``-aligned block of padded slots then belongs to exactly one physical tile, also when W is
not a multiple of array_size, and the blocks of one query block's keys that wrap onto the same tile are summed before
that tile's readout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gaincell.config import HardwareConfig

# Working-set budget of one (head chunk, query block) step, in bytes.  Peak extra memory of a forward call is a small
# multiple of this, independent of the sequence length.
BLOCK_BUDGET = 32 * 2**20
DEFAULT_QUERY_BLOCK = 128
MAX_EXPONENT = 30.0  # largest exp() taken on the query side of the decay factorisation (e^30 ~ 1e13)


# ---------------------------------------------------------------------------------------------------- feature terms
@dataclass(frozen=True)
class FeatureTerm:
    """One term of the factorised cell product.

    Key feature F(z) = sum_p polynomial[p] z^p of the decayed voltage z = exp(-lambda (r - j)) y, query factor
    weight * exp(power lambda (r - i)).  With leakage on, the terms are the monomials z^n of the cell polynomial
    (power = n); with leakage off, one term holds f(z) - g_0 (power = 0).  A ``constant`` term is the g_0 of the cell
    polynomial: the same for every head dimension, so it takes one feature column instead of D.
    """

    polynomial: tuple[float, ...]
    power: int
    weight: float
    constant: bool = False

    def width(self, head_dim: int) -> int:
        return 1 if self.constant else head_dim

    @property
    def is_monomial(self) -> bool:
        return not self.constant and self.power >= 1


def feature_terms(polynomial: Sequence[float], decay: float, *, constant: bool) -> tuple[FeatureTerm, ...]:
    """The terms of the cell polynomial ``polynomial`` under per-token decay ``decay``; ``constant``: keep g_0."""
    terms: list[FeatureTerm] = []
    if decay > 0:
        for n, g in enumerate(polynomial):
            if n >= 1 and g != 0.0:
                terms.append(FeatureTerm(tuple([0.0] * n + [1.0]), n, float(g)))
    elif any(g != 0.0 for g in polynomial[1:]):
        terms.append(FeatureTerm((0.0, *map(float, polynomial[1:])), 0, 1.0))
    if constant and polynomial[0] != 0.0:
        terms.append(FeatureTerm((1.0,), 0, float(polynomial[0]), constant=True))
    return tuple(terms)


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class KernelPlan:
    """Everything the blocked kernel needs to know about one call, fixed before the first block."""

    forward_terms: tuple[FeatureTerm, ...]
    backward_terms: tuple[FeatureTerm, ...]  # the forward terms, or the linear surrogate's
    decay: float  # lambda per token
    window: int
    array_size: int
    n_tiles: int
    padded_window: int  # n_tiles * array_size: the ring in padded coordinates
    inv_score_saturation: float
    inv_output_saturation: float
    out_levels: int | None
    out_grid: str
    read_noise_score: float
    read_noise_output: float
    read_noise_relative: float | None  # 10^(-snr/20): read-noise std per unit rms of the read signal (None: off)
    q_levels: int | None
    kv_levels: int | None
    kv_max: float
    kv_offset: float
    kv_in_dac_domain: bool  # k, v arrive in the DAC domain (quantised per block) rather than as written voltages
    query_block: int  # queries per block
    batch_chunk: int  # batch entries per chunk
    head_chunk: int  # heads per chunk
    bytes_per_head: int  # working set of one head in one block step
    key_start: int  # absolute position of key 0
    query_start: int  # absolute position of query 0
    n_keys: int
    n_queries: int
    variation: bool  # fixed cell variation: gains on every feature, a full-width constant map instead of g_0

    @property
    def gate_empty_tiles(self) -> bool:
        # With the published zero-centred grid an empty tile reads exactly 0.  Otherwise tiles that hold no key of the
        # query's window are not read out (the digital adder only sums tiles that were written).
        return (self.out_levels is not None and self.out_grid == "exact") or self.reads_are_noisy

    @property
    def reads_are_noisy(self) -> bool:
        """Any read noise on the two integrators (absolute or signal-relative)."""
        return self.read_noise_score > 0 or self.read_noise_output > 0 or self.read_noise_relative is not None

    def feature_width(self, terms: tuple[FeatureTerm, ...], head_dim: int) -> int:
        """Columns of the feature matrices for ``terms`` (the constant map adds D columns)."""
        return sum(t.width(head_dim) for t in terms) + (head_dim if self.has_constant_map(terms) else 0)

    def has_constant_map(self, terms: tuple[FeatureTerm, ...]) -> bool:
        """With cell variation the forward features end with the per-cell constant map (g0 * gain + offset)."""
        return self.variation and terms is self.forward_terms


def working_set_elements(
    n_key_slots: int,
    n_key_blocks: int,
    query_block: int,
    head_dim: int,
    forward_width: int,
    backward_width: int,
    *,
    backward: bool,
) -> int:
    """Elements of workspace one head uses in one block step (the buffers of ``blocks.py``, counted generously)."""
    keys, bq, d = n_key_slots, query_block, head_dim
    f, fb = forward_width, backward_width
    elements = 2 * keys * d + 2 * keys * f + keys * bq + n_key_blocks * bq * (f + 2 * d) + bq * (f + 2 * d)
    if backward:
        elements += 2 * keys * bq + n_key_blocks * bq * (fb + d) + 6 * keys * fb + 2 * bq * fb
    return elements


def make_plan(
    config: HardwareConfig,
    n_queries: int,
    n_keys: int,
    head_dim: int,
    *,
    batch: int = 1,
    heads: int = 1,
    key_start: int = 0,
    decay: float,
    backward: bool,
    element_bytes: int = 4,
    kv_in_dac_domain: bool = True,
) -> KernelPlan:
    """The plan of one kernel call on (batch, heads, n_queries / n_keys, head_dim) inputs."""
    poly = config.cell_polynomial
    variation = config.cell_gain_variation > 0 or config.cell_offset_variation > 0
    forward_terms = feature_terms(poly, decay, constant=not variation)
    if config.cell_gradient == "surrogate" and config.cell != "linear":
        backward_terms = feature_terms((0.0, config.surrogate_slope), decay, constant=False)
    else:
        backward_terms = forward_terms
    max_power = max([t.power for t in forward_terms + backward_terms] + [1])
    query_block = min(DEFAULT_QUERY_BLOCK, n_queries)
    if decay > 0:  # keep exp(n * lambda * (r - i)) <= e^30 on the query side of the factorisation
        query_block = max(1, min(query_block, int(MAX_EXPONENT / (max_power * decay)) + 1))
    array_size = config.array_size
    n_tiles = -(-config.window // array_size)
    padded_window = n_tiles * array_size
    # the most key slots one query block can touch: its keys' span, stretched by the padding, plus a block each side
    span = min(n_keys, config.window + query_block - 1)
    n_key_blocks = -(-span * padded_window // config.window // array_size) + 2
    forward_width = sum(t.width(head_dim) for t in forward_terms) + (head_dim if variation else 0)
    backward_width = sum(t.width(head_dim) for t in backward_terms) + (
        head_dim if variation and backward_terms is forward_terms else 0
    )
    elements = working_set_elements(
        n_key_blocks * array_size, n_key_blocks, query_block, head_dim, forward_width, backward_width, backward=backward
    )
    bytes_per_head = elements * element_bytes
    batch_chunk, head_chunk = chunk_sizes(batch, heads, bytes_per_head)
    return KernelPlan(
        forward_terms=forward_terms,
        backward_terms=backward_terms,
        decay=decay,
        window=config.window,
        array_size=array_size,
        n_tiles=n_tiles,
        padded_window=padded_window,
        inv_score_saturation=1.0 / config.score_saturation,
        inv_output_saturation=1.0 / config.output_saturation,
        out_levels=config.out_levels,
        out_grid=config.out_quantizer,
        read_noise_score=config.read_noise_score,
        read_noise_output=config.read_noise_output,
        read_noise_relative=None if config.read_snr_db is None else 10.0 ** (-config.read_snr_db / 20.0),
        q_levels=config.q_levels,
        kv_levels=config.kv_levels,
        kv_max=config.kv_max,
        kv_offset=config.kv_offset,
        kv_in_dac_domain=kv_in_dac_domain,
        query_block=query_block,
        batch_chunk=batch_chunk,
        head_chunk=head_chunk,
        bytes_per_head=bytes_per_head,
        key_start=key_start,
        query_start=key_start + n_keys - n_queries,
        n_keys=n_keys,
        n_queries=n_queries,
        variation=variation,
    )


def chunk_sizes(batch: int, heads: int, bytes_per_head: int, budget: int = BLOCK_BUDGET) -> tuple[int, int]:
    """(batch entries, heads) per chunk: as many heads as fit in ``budget``, whole batch entries when they fit.

    Chunks are balanced (equal sizes up to one) rather than full-then-remainder.
    """
    fit = max(1, budget // max(bytes_per_head, 1))  # heads that fit in the budget
    if fit >= heads:  # whole batch entries per chunk
        batch_chunk = min(batch, fit // heads)
        return -(-batch // -(-batch // batch_chunk)), heads
    return 1, -(-heads // -(-heads // fit))


# ---------------------------------------------------------------------------------------------------- chunks and blocks
@dataclass(frozen=True)
class HeadChunk:
    """A rectangle of (batch entries, heads) processed together: ``size`` = n_batch * n_heads rows of the buffers."""

    batch_begin: int
    batch_end: int
    head_begin: int
    head_end: int

    @property
    def n_batch(self) -> int:
        return self.batch_end - self.batch_begin

    @property
    def n_heads(self) -> int:
        return self.head_end - self.head_begin

    @property
    def size(self) -> int:
        return self.n_batch * self.n_heads

    def of(self, x: Tensor) -> Tensor:
        """The chunk's part of a (B, H, ...) tensor (a view)."""
        return x[self.batch_begin : self.batch_end, self.head_begin : self.head_end]


def query_blocks(plan: KernelPlan) -> list[tuple[int, int]]:
    """[begin, end) of each query block: consecutive, ``plan.query_block`` queries each (the last may be shorter)."""
    return [(i, min(i + plan.query_block, plan.n_queries)) for i in range(0, plan.n_queries, plan.query_block)]


def head_chunks(plan: KernelPlan, batch: int, heads: int) -> list[HeadChunk]:
    """The chunks that tile the (batch, heads) rectangle."""
    return [
        HeadChunk(b, min(b + plan.batch_chunk, batch), h, min(h + plan.head_chunk, heads))
        for b in range(0, batch, plan.batch_chunk)
        for h in range(0, heads, plan.head_chunk)
    ]


@dataclass
class BlockGeometry:
    """Geometry of one query block: its queries, the padded-ring key slots it reads, and the window mask.

    L = n_key_slots (a multiple of array_size), bq = the block's number of queries.
    """

    query_begin: int
    query_end: int
    n_key_slots: int  # L
    n_key_blocks: int  # L / array_size
    contiguous: tuple[int, int, int] | None  # (row_begin, row_end, first_key): rows hold keys first_key.. ; others empty
    key_index: Tensor  # (L,) index of the key in each slot, clamped into range (gather path)
    holds_key: Tensor  # (L,) bool: the slot holds a key of the sequence
    physical_slot: Tensor  # (L,) slot within the padded window (for cell variation)
    holds_key_f: Tensor  # (L,) holds_key as 0./1.
    key_decay: dict[int, Tensor]  # n -> (L,) exp(-n lambda (r - j)), zero on empty slots
    query_decay: dict[int, Tensor]  # n -> (bq,) exp(n lambda (r - i))
    window_mask: Tensor | None  # (L, bq) 0./1. window mask, or None when every pair is inside the window
    unmasked_rows: tuple[int, int]  # rows [begin, end) are inside every query's window; the others need the mask
    tile_of_key_block: Tensor | None  # (n_key_blocks,) readout of each block when some blocks share a tile, else None
    n_readouts: int  # tile readouts of the block: n_tiles when blocks share tiles, else n_key_blocks
    tile_active: Tensor | None  # (n_readouts, bq): the tile holds a key of the query's window (for gating)

    @property
    def n_queries(self) -> int:
        return self.query_end - self.query_begin


def block_geometry(plan: KernelPlan, query_begin: int, query_end: int, powers: set[int], like: Tensor) -> BlockGeometry:
    """The geometry of queries [query_begin, query_end); ``powers``: the decay powers the features need."""
    window, array_size, padded_window = plan.window, plan.array_size, plan.padded_window
    dev, dtype = like.device, like.dtype
    first_q = plan.query_start + query_begin
    last_q = plan.query_start + query_end - 1
    first_k = plan.key_start
    last_k = plan.key_start + plan.n_keys - 1
    lo = max(first_k, first_q - window + 1)  # first and last key position the block's queries see
    hi = min(last_k, last_q)

    def padded(position: int) -> int:
        return (position // window) * padded_window + position % window

    p0 = (padded(lo) // array_size) * array_size
    p1 = (padded(hi) // array_size + 1) * array_size
    p = torch.arange(p0, p1, device=dev)
    slot = p % padded_window
    pos = (p // padded_window) * window + slot
    holds_key = (slot < window) & (pos >= first_k) & (pos <= last_k)
    key_index = (pos - first_k).clamp(0, plan.n_keys - 1)
    contiguous = None
    if padded_window == window:  # padded coordinates are absolute positions: the keys are one contiguous run
        r0 = max(p0, first_k) - p0
        r1 = min(p1 - 1, last_k) + 1 - p0
        contiguous = (r0, r1, p0 + r0 - first_k)
    qpos = torch.arange(first_q, last_q + 1, device=dev)
    inside = holds_key[:, None] & (pos[:, None] <= qpos[None, :]) & (pos[:, None] > qpos[None, :] - window)  # (L, bq)
    n_key_slots = p1 - p0
    n_key_blocks = n_key_slots // array_size
    row_needs_mask = ~inside.all(1)
    window_mask: Tensor | None = None
    unmasked = (0, 0)
    if bool(row_needs_mask.any()):
        window_mask = inside.to(dtype)
        good = (~row_needs_mask).nonzero()
        unmasked = (n_key_slots, n_key_slots)  # mask every row
        if good.numel() > 0:
            g0, g1 = int(good[0]), int(good[-1]) + 1
            if not bool(row_needs_mask[g0:g1].any()):
                unmasked = (g0, g1)
    tile_of_key_block = None
    n_readouts = n_key_blocks
    if n_key_blocks > plan.n_tiles:
        tile_of_key_block = torch.arange(n_key_blocks, device=dev) % plan.n_tiles
        n_readouts = plan.n_tiles
    tile_active = None
    if plan.gate_empty_tiles:
        per_block = inside.view(n_key_blocks, array_size, -1).any(1).to(dtype)  # (n_key_blocks, bq)
        if tile_of_key_block is not None:
            per_block = (
                torch.zeros(n_readouts, per_block.shape[1], dtype=dtype, device=dev)
                .index_add_(0, tile_of_key_block, per_block)
                .clamp_(max=1.0)
            )
        tile_active = per_block
    holds_key_f = holds_key.to(dtype)
    posf = pos.to(dtype)
    qposf = qpos.to(dtype)
    key_decay: dict[int, Tensor] = {}
    query_decay: dict[int, Tensor] = {}
    for n in powers | {0, 1}:
        if n == 0 or plan.decay == 0:
            key_decay[n] = holds_key_f
            query_decay[n] = torch.ones_like(qposf)
        else:  # reference r = the block's last query
            key_decay[n] = torch.exp(-n * plan.decay * (last_q - posf)) * holds_key_f
            query_decay[n] = torch.exp(n * plan.decay * (last_q - qposf))
    return BlockGeometry(
        query_begin=query_begin,
        query_end=query_end,
        n_key_slots=n_key_slots,
        n_key_blocks=n_key_blocks,
        contiguous=contiguous,
        key_index=key_index,
        holds_key=holds_key,
        physical_slot=slot,
        holds_key_f=holds_key_f,
        key_decay=key_decay,
        query_decay=query_decay,
        window_mask=window_mask,
        unmasked_rows=unmasked,
        tile_of_key_block=tile_of_key_block,
        n_readouts=n_readouts,
        tile_active=tile_active,
    )


def geometries(plan: KernelPlan, like: Tensor) -> Iterator[BlockGeometry]:
    """Block geometries, built one at a time (their masks are the only per-block state)."""
    powers = {t.power for t in plan.forward_terms + plan.backward_terms}
    for begin, end in query_blocks(plan):
        yield block_geometry(plan, begin, end, powers, like)
