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
# A call whose queries fit in one block keeps its forward intermediates for the backward (instead of recomputing
# them) when they take at most this many bytes, all heads together: training at short contexts, where the recompute
# would be a third of the backward's work.  Longer calls recompute (their memory stays O(window)).
KEEP_BUDGET = 64 * 2**20
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
    segment_queries: int  # queries per segment (a multiple of query_block): blocks that share key features
    most_block_slots: int  # the most key slots one query block reads
    most_segment_slots: int  # the most key slots one segment reads
    batch_chunk: int  # batch entries per chunk
    head_chunk: int  # heads per chunk
    bytes_per_head: int  # working set of one head in one block step
    keep_forward: bool  # the forward's intermediates are kept for the backward (one query block, within KEEP_BUDGET)
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
    feature_rows: int | None = None,
    query_rows: int | None = None,
) -> int:
    """Elements of workspace one head uses in one block step (the buffers of ``blocks.py``, counted generously).

    ``feature_rows`` / ``query_rows``: key slots / queries whose features are held at once (a segment's, when its
    blocks share them; default: the block's own).
    """
    keys, bq, d = n_key_slots, query_block, head_dim
    f, fb = forward_width, backward_width
    rows = keys if feature_rows is None else feature_rows
    queries = bq if query_rows is None else query_rows
    elements = 2 * rows * (d + f) + keys * bq + n_key_blocks * bq * (f + 2 * d) + queries * (f + d) + bq * d
    if backward:
        elements += 2 * keys * bq + n_key_blocks * bq * (fb + d) + 6 * keys * fb + 2 * bq * fb
    return elements


def _slot_range(window: int, padded_window: int, array_size: int, lo: int, hi: int) -> tuple[int, int]:
    """[p0, p1): the array-aligned run of padded-ring slots that holds key positions lo..hi."""

    def padded(position: int) -> int:
        return (position // window) * padded_window + position % window

    return (padded(lo) // array_size) * array_size, (padded(hi) // array_size + 1) * array_size


def _most_key_slots(
    window: int, padded_window: int, array_size: int, key_start: int, n_keys: int, n_queries: int, run: int
) -> int:
    """The most key slots any of the runs of ``run`` consecutive queries (blocks or segments) reads."""
    query_start = key_start + n_keys - n_queries
    most = 0
    for begin in range(0, n_queries, run):
        first_q, last_q = query_start + begin, query_start + min(begin + run, n_queries) - 1
        lo, hi = max(key_start, first_q - window + 1), min(key_start + n_keys - 1, last_q)
        p0, p1 = _slot_range(window, padded_window, array_size, lo, hi)
        most = max(most, p1 - p0)
    return most


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
    # one decay reference per segment of query blocks: keep exp(n * lambda * (r - i)) <= e^30 on the query side
    segment_queries = config.window  # a window's worth of queries: the keys they read stay O(window)
    if decay > 0:
        exponent_limit = int(MAX_EXPONENT / (max_power * decay)) + 1
        query_block = max(1, min(query_block, exponent_limit))
        segment_queries = min(segment_queries, exponent_limit)
    segment_queries = max(query_block, segment_queries // query_block * query_block)
    segment_queries = min(segment_queries, -(-n_queries // query_block) * query_block)
    array_size = config.array_size
    n_tiles = -(-config.window // array_size)
    padded_window = n_tiles * array_size
    geometry = (config.window, padded_window, array_size, key_start, n_keys, n_queries)
    block_slots = _most_key_slots(*geometry, query_block)
    segment_slots = _most_key_slots(*geometry, segment_queries)
    forward_width = sum(t.width(head_dim) for t in forward_terms) + (head_dim if variation else 0)
    backward_width = sum(t.width(head_dim) for t in backward_terms) + (
        head_dim if variation and backward_terms is forward_terms else 0
    )
    elements = working_set_elements(
        block_slots,
        block_slots // array_size,
        query_block,
        head_dim,
        forward_width,
        backward_width,
        backward=backward,
        feature_rows=segment_slots,
        query_rows=segment_queries,
    )
    bytes_per_head = elements * element_bytes
    forward_elements = (
        working_set_elements(
            block_slots, block_slots // array_size, query_block, head_dim, forward_width, backward_width, backward=False
        )
        + block_slots * query_block
    )  # kept: the scores and the pulses both
    keep_forward = backward and n_queries <= query_block and batch * heads * forward_elements * element_bytes <= KEEP_BUDGET
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
        segment_queries=segment_queries,
        most_block_slots=block_slots,
        most_segment_slots=segment_slots,
        batch_chunk=batch_chunk,
        head_chunk=head_chunk,
        bytes_per_head=bytes_per_head,
        keep_forward=keep_forward,
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
class KeySlots:
    """A contiguous run of padded-ring key slots, [first_slot, first_slot + n_key_slots), and its decay factors.

    n_key_slots is a multiple of array_size; slot p holds key position (p // padded_window) * window + p % padded_window
    when that key exists (slots W..padded_window-1 of each ring copy stay empty).
    """

    first_slot: int  # padded coordinate of row 0
    n_key_slots: int  # L
    n_key_blocks: int  # L / array_size
    contiguous: tuple[int, int, int] | None  # (row_begin, row_end, first_key): rows hold keys first_key.. ; others empty
    key_index: Tensor  # (L,) index of the key in each slot, clamped into range (gather path)
    holds_key: Tensor  # (L,) bool: the slot holds a key of the sequence
    physical_slot: Tensor  # (L,) slot within the padded window (for cell variation)
    holds_key_f: Tensor  # (L,) holds_key as 0./1.
    key_decay: dict[int, Tensor]  # n -> (L,) exp(-n lambda (r - j)), zero on empty slots


@dataclass
class BlockGeometry(KeySlots):
    """Geometry of one query block: its queries, the key slots it reads (:class:`KeySlots`), and the window mask.

    bq = the block's number of queries.  Only the rows of key slots that some query of the block must not see carry a
    mask; the others are inside every query's window.
    """

    query_begin: int
    query_end: int
    query_decay: dict[int, Tensor]  # n -> (bq,) exp(n lambda (r - i))
    masked_rows: tuple[tuple[int, int, Tensor], ...]  # (row_begin, row_end, (rows, bq) 0./1. mask) per masked run
    window_count: Tensor  # (1, bq) keys inside each query's window
    tile_of_key_block: Tensor | None  # (n_key_blocks,) readout of each block when some blocks share a tile, else None
    n_readouts: int  # tile readouts of the block: n_tiles when blocks share tiles, else n_key_blocks
    tile_active: Tensor | None  # (n_readouts, bq): the tile holds a key of the query's window (for gating)

    @property
    def n_queries(self) -> int:
        return self.query_end - self.query_begin

    def window_mask(self) -> Tensor:
        """The whole (L, bq) 0./1. window mask (the unmasked rows as ones); for tests and diagnostics."""
        mask = torch.ones(self.n_key_slots, self.n_queries, dtype=self.holds_key_f.dtype, device=self.holds_key_f.device)
        for begin, end, rows in self.masked_rows:
            mask[begin:end] = rows
        return mask


@dataclass
class Segment:
    """Consecutive query blocks that share one decay reference (their last query) and one set of key slots.

    ``keys`` covers every block's slots (block b reads rows [b.first_slot - keys.first_slot, + b.n_key_slots)), so the
    key and value features are computed once for the segment.
    """

    keys: KeySlots
    blocks: list[BlockGeometry]
    query_begin: int
    query_end: int
    query_decay: dict[int, Tensor]  # n -> (queries,) exp(n lambda (r - i)) over the segment's queries


def key_slots(
    plan: KernelPlan, query_begin: int, query_end: int, powers: set[int], like: Tensor, reference: int | None = None
) -> KeySlots:
    """The key slots read by queries [query_begin, query_end), decay factors relative to absolute position
    ``reference`` (default: the last of those queries)."""
    array_size = plan.array_size
    dev, dtype = like.device, like.dtype
    first_q = plan.query_start + query_begin
    last_q = plan.query_start + query_end - 1
    r = last_q if reference is None else reference
    first_k = plan.key_start
    last_k = plan.key_start + plan.n_keys - 1
    lo = max(first_k, first_q - plan.window + 1)  # first and last key position the queries see
    hi = min(last_k, last_q)
    p0, p1 = _slot_range(plan.window, plan.padded_window, array_size, lo, hi)
    p = torch.arange(p0, p1, device=dev)
    slot = p % plan.padded_window
    pos = (p // plan.padded_window) * plan.window + slot
    holds_key = (slot < plan.window) & (pos >= first_k) & (pos <= last_k)
    key_index = (pos - first_k).clamp(0, plan.n_keys - 1)
    contiguous = None
    if plan.padded_window == plan.window:  # padded coordinates are absolute positions: the keys are one contiguous run
        r0 = max(p0, first_k) - p0
        r1 = min(p1 - 1, last_k) + 1 - p0
        contiguous = (r0, r1, p0 + r0 - first_k)
    holds_key_f = holds_key.to(dtype)
    posf = pos.to(dtype)
    key_decay: dict[int, Tensor] = {}
    for n in powers | {0, 1}:
        if n == 0 or plan.decay == 0:
            key_decay[n] = holds_key_f
        else:
            key_decay[n] = torch.exp(-n * plan.decay * (r - posf)) * holds_key_f
    return KeySlots(
        first_slot=p0,
        n_key_slots=p1 - p0,
        n_key_blocks=(p1 - p0) // array_size,
        contiguous=contiguous,
        key_index=key_index,
        holds_key=holds_key,
        physical_slot=slot,
        holds_key_f=holds_key_f,
        key_decay=key_decay,
    )


def query_decay(
    plan: KernelPlan, query_begin: int, query_end: int, powers: set[int], like: Tensor, reference: int
) -> dict[int, Tensor]:
    """n -> (queries,) exp(n lambda (r - i)) for queries [query_begin, query_end) and reference position r."""
    qpos = torch.arange(plan.query_start + query_begin, plan.query_start + query_end, device=like.device).to(like.dtype)
    return {
        n: torch.ones_like(qpos) if n == 0 or plan.decay == 0 else torch.exp(n * plan.decay * (reference - qpos))
        for n in powers | {0, 1}
    }


def _inside(plan: KernelPlan, pos: Tensor, holds_key: Tensor, qpos: Tensor) -> Tensor:
    """(rows, bq) bool: the slot holds a key inside the query's causal window."""
    return holds_key[:, None] & (pos[:, None] <= qpos[None, :]) & (pos[:, None] > qpos[None, :] - plan.window)


def _unmasked_run(plan: KernelPlan, keys: KeySlots, pos: Tensor, first_q: int, last_q: int) -> tuple[int, int]:
    """Rows [begin, end) inside every query's window, when those rows are one run (else an empty run: mask all)."""
    lo = max(plan.key_start, last_q - plan.window + 1)  # keys every query of [first_q, last_q] sees
    hi = min(plan.key_start + plan.n_keys - 1, first_q)
    if keys.contiguous is not None:  # padded coordinates are positions: the run follows from the bounds
        begin = min(max(lo - keys.first_slot, 0), keys.n_key_slots)
        end = min(max(hi + 1 - keys.first_slot, begin), keys.n_key_slots)
        return begin, end
    good = keys.holds_key & (pos >= lo) & (pos <= hi)
    rows = good.nonzero()
    if rows.numel() == 0:
        return 0, 0
    begin, end = int(rows[0]), int(rows[-1]) + 1
    return (begin, end) if end - begin == rows.numel() else (0, 0)


def block_geometry(
    plan: KernelPlan, query_begin: int, query_end: int, powers: set[int], like: Tensor, reference: int | None = None
) -> BlockGeometry:
    """The geometry of queries [query_begin, query_end); ``powers``: the decay powers the features need;
    ``reference``: absolute position of the decay reference r (default: the block's last query)."""
    keys = key_slots(plan, query_begin, query_end, powers, like, reference)
    window, array_size = plan.window, plan.array_size
    dev, dtype = like.device, like.dtype
    first_q = plan.query_start + query_begin
    last_q = plan.query_start + query_end - 1
    n_key_slots, n_key_blocks = keys.n_key_slots, keys.n_key_blocks
    p = torch.arange(keys.first_slot, keys.first_slot + n_key_slots, device=dev)
    pos = (p // plan.padded_window) * window + keys.physical_slot
    qpos = torch.arange(first_q, last_q + 1, device=dev)
    begin, end = _unmasked_run(plan, keys, pos, first_q, last_q)
    masked_rows = tuple(
        (b, e, _inside(plan, pos[b:e], keys.holds_key[b:e], qpos).to(dtype)) for b, e in ((0, begin), (end, n_key_slots)) if e > b
    )
    window_count = torch.full((1, last_q - first_q + 1), float(end - begin), dtype=dtype, device=dev)
    for _, _, mask in masked_rows:
        window_count += mask.sum(0, keepdim=True)
    tile_of_key_block = None
    n_readouts = n_key_blocks
    if n_key_blocks > plan.n_tiles:
        tile_of_key_block = torch.arange(n_key_blocks, device=dev) % plan.n_tiles
        n_readouts = plan.n_tiles
    tile_active = None
    if plan.gate_empty_tiles:
        inside = _inside(plan, pos, keys.holds_key, qpos)
        per_block = inside.view(n_key_blocks, array_size, -1).any(1).to(dtype)  # (n_key_blocks, bq)
        if tile_of_key_block is not None:
            per_block = (
                torch.zeros(n_readouts, per_block.shape[1], dtype=dtype, device=dev)
                .index_add_(0, tile_of_key_block, per_block)
                .clamp_(max=1.0)
            )
        tile_active = per_block
    return BlockGeometry(
        **vars(keys),
        query_begin=query_begin,
        query_end=query_end,
        query_decay=query_decay(plan, query_begin, query_end, powers, like, last_q if reference is None else reference),
        masked_rows=masked_rows,
        window_count=window_count,
        tile_of_key_block=tile_of_key_block,
        n_readouts=n_readouts,
        tile_active=tile_active,
    )


def segment_blocks(plan: KernelPlan) -> list[list[tuple[int, int]]]:
    """The query blocks grouped into segments of at most ``plan.segment_queries`` queries (consecutive, in order)."""
    blocks = query_blocks(plan)
    per_segment = max(1, plan.segment_queries // plan.query_block)
    return [blocks[i : i + per_segment] for i in range(0, len(blocks), per_segment)]


def segments(plan: KernelPlan, like: Tensor) -> Iterator[Segment]:
    """Segments with their block geometries, built one segment at a time."""
    powers = {t.power for t in plan.forward_terms + plan.backward_terms}
    for group in segment_blocks(plan):
        begin, end = group[0][0], group[-1][1]
        reference = plan.query_start + end - 1
        keys = key_slots(plan, begin, end, powers, like, reference)
        blocks = [block_geometry(plan, b, e, powers, like, reference) for b, e in group]
        yield Segment(keys, blocks, begin, end, query_decay(plan, begin, end, powers, like, reference))


def geometries(plan: KernelPlan, like: Tensor) -> Iterator[BlockGeometry]:
    """Every block geometry, in order (decay references as the kernel uses them: per segment)."""
    for segment in segments(plan, like):
        yield from segment.blocks
