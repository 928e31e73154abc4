"""The blocked kernel: both arrays for one (head chunk, query block) at a time, and a backward that recomputes them.

Per block (shapes: c = batch entries x heads of the chunk, L = key slots, bq = queries, D = head_dim, F = features):

1. first array: S^T / S_sat = Kf Qf^T (c, L, bq), read noise, HardSigmoid clamp to pulses phi^T, window mask;
2. second array, per array-sized block b of key slots: M^T_b = Vf_b^T phi^T_b, combined over the feature terms into
   the tile sums A (c, n_key_blocks, D, bq); blocks that share a physical tile are summed;
3. readout of each tile: clamp(A / A_sat, -1, 1), quantised, then the digital sum over tiles.

The key and value features of a segment of blocks (one decay reference) are computed once per head chunk
(:class:`SharedFeatures`); its blocks read their rows as views.

The backward pass replays the forward of each block (flash-attention style: nothing of size T x T is kept) and
applies the training rules: straight-through quantisers, clamp gradients, and the backward feature terms of the plan
(the linear surrogate, or the exact polynomial derivative).  A one-block call with ``plan.keep_forward`` instead
keeps each chunk's forward (in buffers of its own) until the backward.

Every other intermediate lives in a per-thread workspace of named slots (:class:`Buffer`) reused across blocks and
calls, so the loop allocates nothing.
"""

from __future__ import annotations

import enum
import math
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from gaincell.dac import readout_step
from gaincell.kernel.features import (
    combine_terms,
    decayed_voltages,
    extend_grad_to_terms,
    key_features,
    query_features,
    query_pulses,
    query_scales,
    reduce_grad_to_voltages,
)
from gaincell.kernel.plan import BlockGeometry, FeatureTerm, HeadChunk, KernelPlan, KeySlots, Segment, head_chunks, segments


# ---------------------------------------------------------------------------------------------------- workspace
class Buffer(enum.Enum):
    """The workspace's scratch buffers, one per intermediate of a block step (a slot is reused by every block)."""

    # forward
    QUERY_PULSES = enum.auto()  # (c, Qs, D) a segment's quantised queries
    QUERY_FEATURES = enum.auto()  # (c, Qs, F)
    DECAYED_KEYS = enum.auto()  # (c, Ls, D) z of a segment's keys (Ls slots), when it cannot live in the key features
    KEY_FEATURES = enum.auto()  # (c, Ls, F)
    SCORES_T = enum.auto()  # (c, L, bq) S^T / S_sat
    PULSES_T = enum.auto()  # (c, L, bq) phi^T, when the scores must be kept
    DECAYED_VALUES = enum.auto()  # (c, Ls, D)
    VALUE_FEATURES = enum.auto()  # (c, Ls, F)
    TERM_SUMS_T = enum.auto()  # (c, n_key_blocks, F, bq) M^T per term
    TILE_SUMS = enum.auto()  # (c, n_key_blocks, D, bq) A
    FOLDED_TILE_SUMS = enum.auto()  # (c, n_readouts, D, bq) A with blocks of one tile summed
    READOUT = enum.auto()  # (c, n_readouts, D, bq) quantised readouts, when the tile sums must be kept
    OUTPUT = enum.auto()  # (c, D, bq)
    # backward
    GRAD_OUTPUT = enum.auto()  # (c, D, bq)
    GRAD_TILE_SUMS = enum.auto()  # (c, n_readouts, D, bq)
    BACKWARD_KEY_FEATURES = enum.auto()  # (c, L, Fb)
    BACKWARD_VALUE_FEATURES = enum.auto()  # (c, L, Fb)
    BACKWARD_QUERY_FEATURES = enum.auto()  # (c, bq, Fb)
    GRAD_TERM_SUMS = enum.auto()  # (c, n_key_blocks, Fb, bq)
    GRAD_PULSES_T = enum.auto()  # (c, L, bq)
    GRAD_VALUE_FEATURES = enum.auto()  # (c, L, Fb)
    GRAD_KEY_FEATURES = enum.auto()  # (c, L, Fb)
    FEATURE_SLOPES = enum.auto()  # (c, L, Fb) dF/dy, of the values and then of the keys
    GRAD_VALUES = enum.auto()  # (c, L, D)
    GRAD_KEYS = enum.auto()  # (c, L, D)
    GRAD_QUERY_FEATURES = enum.auto()  # (c, bq, Fb)
    GRAD_QUERIES = enum.auto()  # (c, bq, D)


class Workspace:
    """Scratch buffers reused across blocks and calls (no allocator traffic, no page faults in the loop)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[Buffer, torch.dtype, torch.device], Tensor] = {}

    def get(self, slot: Buffer, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A (shape) view of the slot's buffer, grown when too small; contents are whatever was there."""
        n = math.prod(shape)
        key = (slot, like.dtype, like.device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self.buffers[key] = buf
        return buf[:n].view(shape)


_LOCAL = threading.local()


def thread_workspace() -> Workspace:
    """This thread's workspace (created on first use)."""
    ws = getattr(_LOCAL, "workspace", None)
    if ws is None:
        ws = _LOCAL.workspace = Workspace()
    return ws


def release_workspace() -> None:
    """Free the kernel's cached scratch buffers of this thread (they are kept between calls for speed)."""
    _LOCAL.workspace = None


# ---------------------------------------------------------------------------------------------------- one block
class KernelInputs:
    """Inputs shared by the forward and the recomputing backward: (B, H, T, D) tensors, any strides."""

    def __init__(
        self,
        plan: KernelPlan,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        variation: tuple[Tensor, ...] | None,
        dtype: torch.dtype,
        workspace: Workspace | None = None,
    ):
        self.plan, self.q, self.k, self.v, self.variation = plan, q, k, v, variation
        self.workspace = thread_workspace() if workspace is None else workspace
        self.head_dim = q.shape[-1]
        self.like = torch.empty(0, dtype=dtype, device=q.device)  # dtype and device of every buffer

    def chunk_variation(self, chunk: HeadChunk, slots: KeySlots) -> tuple[Tensor | None, ...]:
        """(K gain, K constant map, V gain, V constant map) of the slots, (c, L, D) each; Nones without variation."""
        if self.variation is None:
            return (None, None, None, None)
        return tuple(
            m[chunk.head_begin : chunk.head_end][:, slots.physical_slot]
            .unsqueeze(0)
            .expand(chunk.n_batch, -1, -1, -1)
            .reshape(chunk.size, slots.n_key_slots, self.head_dim)
            for m in self.variation
        )

    def buffer(self, slot: Buffer, *shape: int) -> Tensor:
        return self.workspace.get(slot, shape, self.like)


@dataclass(slots=True)
class SharedFeatures:
    """Decayed voltages and features of a segment's key slots (one head chunk), which its blocks read as views."""

    keys: KeySlots
    decayed_keys: Tensor  # (c, Ls, D)
    key_features: Tensor  # (c, Ls, F)
    decayed_values: Tensor  # (c, Ls, D)
    value_features: Tensor  # (c, Ls, F)
    key_gain: Tensor | None  # (c, Ls, D) cell variation of the slots, or None
    value_gain: Tensor | None
    query_begin: int
    query_pulses: Tensor  # (c, Qs, D) the segment's queries
    query_features: Tensor  # (c, Qs, F)
    scales: list[Tensor]  # per forward term, (Qs,)

    def rows(self, block: BlockGeometry) -> tuple[Tensor | None, ...]:
        """(z_k, key features, z_v, value features, key gain, value gain) of the block's key slots: views, no copy."""
        begin = block.first_slot - self.keys.first_slot
        rows = slice(begin, begin + block.n_key_slots)
        every = (self.decayed_keys, self.key_features, self.decayed_values, self.value_features, self.key_gain, self.value_gain)
        return tuple(None if t is None else t[:, rows] for t in every)

    def queries(self, block: BlockGeometry) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(query pulses, query features, per-term scales) of the block's queries: views, no copy."""
        rows = slice(block.query_begin - self.query_begin, block.query_end - self.query_begin)
        return self.query_pulses[:, rows], self.query_features[:, rows], [s[rows] for s in self.scales]


def shared_features(inputs: KernelInputs, chunk: HeadChunk, segment: Segment) -> SharedFeatures:
    """The forward features of a segment's queries, keys and values for one head chunk."""
    plan, d = inputs.plan, inputs.head_dim
    keys = segment.keys
    key_gain, key_constant, value_gain, value_constant = inputs.chunk_variation(chunk, keys)
    terms = plan.forward_terms
    f = plan.feature_width(terms, d)
    c, n_slots, n_queries = chunk.size, keys.n_key_slots, segment.query_end - segment.query_begin
    scales = query_scales(terms, segment.query_decay)
    q = query_pulses(
        plan, inputs.q, chunk, segment.query_begin, segment.query_end, inputs.buffer(Buffer.QUERY_PULSES, c, n_queries, d)
    )
    qf = query_features(plan, terms, scales, q, inputs.buffer(Buffer.QUERY_FEATURES, c, n_queries, f), plan.inv_score_saturation)
    kf = inputs.buffer(Buffer.KEY_FEATURES, c, n_slots, f)
    zk = decayed_voltages(plan, inputs.k, chunk, keys, _z_buffer(inputs, Buffer.DECAYED_KEYS, kf, key_gain))
    key_features(plan, terms, zk, keys, kf, key_gain, key_constant)
    vf = inputs.buffer(Buffer.VALUE_FEATURES, c, n_slots, f)
    zv = decayed_voltages(plan, inputs.v, chunk, keys, _z_buffer(inputs, Buffer.DECAYED_VALUES, vf, value_gain))
    key_features(plan, terms, zv, keys, vf, value_gain, value_constant)
    return SharedFeatures(keys, zk, kf, zv, vf, key_gain, value_gain, segment.query_begin, q, qf, scales)


@dataclass(slots=True)
class ForwardState:
    """The intermediates of one block's forward (views into the workspace), as the backward needs them."""

    output: Tensor  # (c, D, bq) the block's output
    query_pulses: Tensor  # (c, bq, D)
    query_features: Tensor  # (c, bq, F)
    decayed_keys: Tensor  # (c, L, D)
    key_features: Tensor  # (c, L, F)
    scores_t: Tensor  # (c, L, bq) S^T / S_sat before the clamp (only when kept)
    pulses_t: Tensor  # (c, L, bq) phi^T
    decayed_values: Tensor  # (c, L, D)
    value_features: Tensor  # (c, L, F)
    tile_sums: Tensor  # (c, n_readouts, D, bq) A / A_sat / step before the readout (only when kept)
    key_gain: Tensor | None  # (c, L, D) cell variation, or None
    value_gain: Tensor | None


def _z_buffer(inputs: KernelInputs, slot: Buffer, features: Tensor, gain: Tensor | None) -> Tensor:
    """Where to write z: straight into the first feature columns when they are z itself, else a scratch buffer."""
    terms = inputs.plan.forward_terms
    if gain is None and terms and terms[0].is_monomial and terms[0].power == 1:
        return features[..., : inputs.head_dim]
    return inputs.buffer(slot, features.shape[0], features.shape[1], inputs.head_dim)


def _apply_window_mask(block: BlockGeometry, t: Tensor) -> None:
    """Zero the (key, query) pairs outside the window (t: (c, L, bq))."""
    for begin, end, mask in block.masked_rows:
        t[..., begin:end, :].mul_(mask)


def _window_rms(block: BlockGeometry, scores_t: Tensor) -> Tensor:
    """Root mean square of each query's scores over the keys of its window (scores_t: (c, L, bq) -> (c, 1, bq))."""
    squares = scores_t.square()
    _apply_window_mask(block, squares)
    return squares.sum(-2, keepdim=True).div_(block.window_count.clamp_min(1.0)).sqrt_()


def _add_read_noise(
    x: Tensor, absolute: float, relative: float | None, rms: Tensor | None, noise_gen: torch.Generator | None
) -> None:
    """x += N(0, 1) * std, one draw per element; std = ``absolute`` (same units as x), or, with signal-relative noise,
    sqrt(absolute^2 + (relative * rms)^2).  The noise is a constant of the backward (drawn again from the same state)."""
    noise = torch.randn(x.shape, generator=noise_gen, dtype=x.dtype, device=x.device)
    if relative is None:
        x.add_(noise, alpha=absolute)
        return
    assert rms is not None
    std = rms.mul(relative)
    if absolute > 0:
        std = std.square_().add_(absolute * absolute).sqrt_()
    x.addcmul_(noise, std)


def _per_key_block_matmul(x: Tensor, y: Tensor, out: Tensor) -> Tensor:
    """out = x @ y over the batch dimensions (c, n_blocks).  When x is a view into a segment's rows its two batch
    strides cannot merge into one, and ``torch.matmul`` would copy it: then one product per chunk row instead."""
    if x.stride(0) == x.shape[1] * x.stride(1) or x.shape[0] == 1:
        return torch.matmul(x, y, out=out)
    for i in range(x.shape[0]):
        torch.matmul(x[i], y[i], out=out[i])
    return out


def forward_block(
    inputs: KernelInputs,
    chunk: HeadChunk,
    block: BlockGeometry,
    noise_gen: torch.Generator | None,
    *,
    keep: bool,
    shared: SharedFeatures,
) -> ForwardState:
    """Both arrays for one (head chunk, query block).  ``keep``: leave the scores and tile sums intact for the backward;
    ``shared``: the features of the block's segment (:func:`shared_features`)."""
    plan, d = inputs.plan, inputs.head_dim
    c, bq, n_slots, n_blocks, a = chunk.size, block.n_queries, block.n_key_slots, block.n_key_blocks, plan.array_size
    buf = inputs.buffer
    terms = plan.forward_terms
    f = plan.feature_width(terms, d)
    q, qf, scales = shared.queries(block)
    zk, kf, zv, vf, key_gain, value_gain = shared.rows(block)
    assert zk is not None and kf is not None and zv is not None and vf is not None
    # first array: S^T / S_sat = Kf Qf^T  (c, L, bq), then read noise, HardSigmoid, window
    scores_t = torch.matmul(kf, qf.transpose(-1, -2), out=buf(Buffer.SCORES_T, c, n_slots, bq))
    if plan.read_noise_score > 0 or plan.read_noise_relative is not None:
        _add_read_noise(
            scores_t,
            plan.read_noise_score * plan.inv_score_saturation,
            plan.read_noise_relative,
            _window_rms(block, scores_t),
            noise_gen,
        )
    pulses_t = torch.clamp(scores_t, 0.0, 1.0, out=buf(Buffer.PULSES_T, c, n_slots, bq)) if keep else scores_t.clamp_(0.0, 1.0)
    _apply_window_mask(block, pulses_t)
    # second array, per array-sized block of keys: M^T_b = Vf_b^T phi^T_b  (c, n_blocks, F, bq)
    term_sums_t = _per_key_block_matmul(
        vf.unflatten(1, (n_blocks, a)).transpose(-1, -2),
        pulses_t.view(c, n_blocks, a, bq),
        buf(Buffer.TERM_SUMS_T, c, n_blocks, f, bq),
    )
    # tile sums A, in units of one readout step: A / A_sat / step (the scale rides on the per-query term factors)
    step = readout_step(plan.out_levels)
    scale = plan.inv_output_saturation / step
    tile_sums = combine_terms(plan, terms, scales, term_sums_t, d, -2, buf(Buffer.TILE_SUMS, c, n_blocks, d, bq), factor=scale)
    if block.tile_of_key_block is not None:  # blocks W apart share a physical tile: sum them before the readout
        folded = buf(Buffer.FOLDED_TILE_SUMS, c, block.n_readouts, d, bq).zero_()
        tile_sums = folded.index_add_(1, block.tile_of_key_block, tile_sums)
    if plan.read_noise_output > 0 or plan.read_noise_relative is not None:
        rms = None if plan.read_noise_relative is None else tile_sums.square().mean(2, keepdim=True).sqrt_()
        _add_read_noise(tile_sums, plan.read_noise_output * scale, plan.read_noise_relative, rms, noise_gen)
    # readout of each tile: clamp(A / A_sat, -1, 1), quantised; in units of one step until the digital sum
    x = torch.clamp(tile_sums, -1.0 / step, 1.0 / step, out=buf(Buffer.READOUT, *tile_sums.shape)) if keep else tile_sums
    if not keep:
        x.clamp_(-1.0 / step, 1.0 / step)
    if plan.out_levels is not None:
        if plan.out_grid == "exact":
            x.add_(1.0 / step).round_().sub_(1.0 / step)
        else:
            x.round_()
    if block.tile_active is not None:
        x.mul_(block.tile_active[None, :, None, :])
    out = torch.sum(x, 1, out=buf(Buffer.OUTPUT, c, d, bq))
    if step != 1.0:
        out.mul_(step)
    return ForwardState(
        output=out,
        query_pulses=q,
        query_features=qf,
        decayed_keys=zk,
        key_features=kf,
        scores_t=scores_t,
        pulses_t=pulses_t,
        decayed_values=zv,
        value_features=vf,
        tile_sums=tile_sums,
        key_gain=key_gain,
        value_gain=value_gain,
    )


def backward_block(
    inputs: KernelInputs,
    chunk: HeadChunk,
    block: BlockGeometry,
    grad_t: Tensor,
    noise_gen: torch.Generator | None,
    shared: SharedFeatures | None,
    kept: ForwardState | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq (c, bq, D), dyk (c, L, D), dyv (c, L, D)) of one block, recomputing its forward unless ``kept``.

    ``grad_t``: the gradient on the block's output, (c, D, bq); ``shared``: as for :func:`forward_block`; ``kept``:
    the block's forward state kept from the forward pass (see ``KernelPlan.keep_forward``).
    """
    plan, d = inputs.plan, inputs.head_dim
    c, bq, n_slots, n_blocks, a = chunk.size, block.n_queries, block.n_key_slots, block.n_key_blocks, plan.array_size
    buf = inputs.buffer
    if kept is None:
        assert shared is not None
    s = kept if kept is not None else forward_block(inputs, chunk, block, noise_gen, keep=True, shared=shared)
    # readout: straight-through quantiser, clamp gradient of each tile's saturation
    tile_sums = s.tile_sums  # in readout steps
    limit = 1.0 / readout_step(plan.out_levels)
    grad_tiles = buf(Buffer.GRAD_TILE_SUMS, *tile_sums.shape)
    torch.abs(tile_sums, out=grad_tiles).le_(limit).mul_(grad_t[:, None] * plan.inv_output_saturation)
    if block.tile_active is not None:
        grad_tiles.mul_(block.tile_active[None, :, None, :])
    grad_blocks = (
        grad_tiles if block.tile_of_key_block is None else grad_tiles[:, block.tile_of_key_block]
    )  # (c, n_blocks, D, bq)
    terms = plan.backward_terms
    fb = plan.feature_width(terms, d)
    scales = query_scales(terms, block.query_decay)
    if terms is plan.forward_terms:
        kfb, vfb = s.key_features, s.value_features
    elif _features_are_z(terms, s.key_gain):  # the linear surrogate: the features are the decayed voltages
        kfb, vfb = s.decayed_keys, s.decayed_values
    else:
        kfb = key_features(
            plan, terms, s.decayed_keys, block, buf(Buffer.BACKWARD_KEY_FEATURES, c, n_slots, fb), s.key_gain, None
        )
        vfb = key_features(
            plan, terms, s.decayed_values, block, buf(Buffer.BACKWARD_VALUE_FEATURES, c, n_slots, fb), s.value_gain, None
        )
    grad_terms = extend_grad_to_terms(plan, terms, scales, grad_blocks, buf(Buffer.GRAD_TERM_SUMS, c, n_blocks, fb, bq))
    # second array: M^T_b = Vf_b^T phi^T_b  ->  dphi^T_b = Vf_b dM^T_b,  dVf_b = phi^T_b dM^T_b^T
    grad_pulses_t = _per_key_block_matmul(
        vfb.unflatten(1, (n_blocks, a)), grad_terms, buf(Buffer.GRAD_PULSES_T, c, n_blocks, a, bq)
    ).view(c, n_slots, bq)
    grad_vf = torch.matmul(
        s.pulses_t.view(c, n_blocks, a, bq),
        grad_terms.transpose(-1, -2),
        out=buf(Buffer.GRAD_VALUE_FEATURES, c, n_blocks, a, fb),
    ).view(c, n_slots, fb)
    dyv = _voltage_grad(inputs, block, grad_vf, s.decayed_values, s.value_gain, buf(Buffer.GRAD_VALUES, c, n_slots, d))
    # HardSigmoid clamp gradient (the pulse equals the score inside [0, 1]) and window, then the first array
    grad_scores_t = grad_pulses_t.mul_(torch.eq(s.pulses_t, s.scores_t)).mul_(plan.inv_score_saturation)
    _apply_window_mask(block, grad_scores_t)
    grad_qf = torch.matmul(grad_scores_t.transpose(-1, -2), kfb, out=buf(Buffer.GRAD_QUERY_FEATURES, c, bq, fb))
    dq = combine_terms(plan, terms, scales, grad_qf, d, -1, buf(Buffer.GRAD_QUERIES, c, bq, d))
    qfb = query_features(plan, terms, scales, s.query_pulses, buf(Buffer.BACKWARD_QUERY_FEATURES, c, bq, fb))
    grad_kf = torch.matmul(grad_scores_t, qfb, out=buf(Buffer.GRAD_KEY_FEATURES, c, n_slots, fb))
    dyk = _voltage_grad(inputs, block, grad_kf, s.decayed_keys, s.key_gain, buf(Buffer.GRAD_KEYS, c, n_slots, d))
    return dq, dyk, dyv


def _features_are_z(terms: tuple[FeatureTerm, ...], gain: Tensor | None) -> bool:
    """The backward features are the decayed voltages z themselves (one z^1 term, no cell gains)."""
    return gain is None and len(terms) == 1 and terms[0].is_monomial and terms[0].power == 1


def _voltage_grad(
    inputs: KernelInputs, block: BlockGeometry, grad_features: Tensor, z: Tensor, gain: Tensor | None, out: Tensor
) -> Tensor:
    """dL/dy (c, L, D) of the written voltages from dL/d(backward features) (c, L, Fb), through dF/dy."""
    plan, terms = inputs.plan, inputs.plan.backward_terms
    if _features_are_z(terms, gain):  # dz/dy = exp(-lambda (r - j)): no slope matrix needed
        return torch.mul(grad_features, block.key_decay[1][:, None], out=out)
    c, n_slots, fb = grad_features.shape
    slopes = key_features(
        plan, terms, z, block, inputs.buffer(Buffer.FEATURE_SLOPES, c, n_slots, fb), gain, None, derivative=True
    )
    return reduce_grad_to_voltages(terms, grad_features, slopes, inputs.head_dim, out)


def _scatter_keys(dst: Tensor, chunk: HeadChunk, block: BlockGeometry, rows: Tensor) -> None:
    """dst[b, h, key] += rows[., slot] for the block's key slots; rows (c, L, D), dst (B, H, Tk, D)."""
    rows4 = rows.view(chunk.n_batch, chunk.n_heads, block.n_key_slots, rows.shape[-1])
    dst = chunk.of(dst)
    if block.contiguous is not None:
        row_begin, row_end, first_key = block.contiguous
        dst[:, :, first_key : first_key + row_end - row_begin].add_(rows4[:, :, row_begin:row_end])
    else:
        dst.index_add_(2, block.key_index[block.holds_key], rows4[:, :, block.holds_key])


def _backward_into(
    inputs: KernelInputs,
    chunk: HeadChunk,
    block: BlockGeometry,
    grad: Tensor,
    grads: tuple[Tensor, Tensor, Tensor],
    noise_gen: torch.Generator | None,
    shared: SharedFeatures | None,
    kept: ForwardState | None,
) -> None:
    """One block's backward: its share of ``grad`` (B, H, Tq, D) in, its gradients added into ``grads`` (dq, dk, dv)."""
    d, queries = inputs.head_dim, slice(block.query_begin, block.query_end)
    dq, dk, dv = grads
    grad_t = inputs.buffer(Buffer.GRAD_OUTPUT, chunk.size, d, block.n_queries)
    grad_t.view(chunk.n_batch, chunk.n_heads, d, block.n_queries).copy_(chunk.of(grad)[:, :, queries].transpose(-1, -2))
    block_dq, block_dk, block_dv = backward_block(inputs, chunk, block, grad_t, noise_gen, shared, kept)
    chunk.of(dq)[:, :, queries] = block_dq.view(chunk.n_batch, chunk.n_heads, block.n_queries, d)
    _scatter_keys(dk, chunk, block, block_dk)
    _scatter_keys(dv, chunk, block, block_dv)


# ---------------------------------------------------------------------------------------------------- autograd
class AnalogAttentionFunction(torch.autograd.Function):
    """Blocked forward; backward recomputes each block.  Inputs (B, H, T, D) of any strides and float dtype."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        plan: KernelPlan,
        variation: tuple[Tensor, ...] | None,
        dtype: torch.dtype,
        noise_gen: torch.Generator | None,
    ) -> Tensor:
        noise_state = noise_gen.get_state() if noise_gen is not None else None
        inputs = KernelInputs(plan, q, k, v, variation, dtype)
        n_batch, n_heads, n_queries, d = q.shape
        out = torch.empty(n_batch, n_heads, n_queries, d, dtype=dtype, device=q.device)
        # with plan.keep_forward (one query block): each chunk's forward in buffers of its own, kept for the backward
        kept: list[tuple[HeadChunk, BlockGeometry, ForwardState]] = []
        for segment in segments(plan, inputs.like):
            for chunk in head_chunks(plan, n_batch, n_heads):
                if plan.keep_forward:
                    inputs = KernelInputs(plan, q, k, v, variation, dtype, Workspace())
                shared = shared_features(inputs, chunk, segment)
                for block in segment.blocks:
                    state = forward_block(inputs, chunk, block, noise_gen, keep=plan.keep_forward, shared=shared)
                    chunk.of(out)[:, :, block.query_begin : block.query_end] = state.output.view(
                        chunk.n_batch, chunk.n_heads, d, -1
                    ).transpose(-1, -2)
                    if plan.keep_forward:
                        kept.append((chunk, block, state))
        ctx.save_for_backward(q, k, v)
        ctx.extras = (plan, variation, dtype, noise_state)  # type: ignore[attr-defined]
        ctx.kept = kept  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor):  # type: ignore[override]
        q, k, v = ctx.saved_tensors  # type: ignore[attr-defined]
        plan, variation, dtype, noise_state = ctx.extras  # type: ignore[attr-defined]
        kept = ctx.kept  # type: ignore[attr-defined]
        noise_gen = None
        if noise_state is not None:  # replay the forward's read noise
            noise_gen = torch.Generator(device=q.device)
            noise_gen.set_state(noise_state)
        inputs = KernelInputs(plan, q, k, v, variation, dtype)
        n_batch, n_heads = q.shape[:2]
        dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
        dk = torch.zeros(k.shape, dtype=dtype, device=q.device)
        dv = torch.zeros(v.shape, dtype=dtype, device=q.device)
        for chunk, block, state in kept:  # forward kept: no recompute (and no noise to replay)
            _backward_into(inputs, chunk, block, grad, (dq, dk, dv), noise_gen, None, state)
        for segment in () if plan.keep_forward else segments(plan, inputs.like):
            for chunk in head_chunks(plan, n_batch, n_heads):
                shared = shared_features(inputs, chunk, segment)
                for block in segment.blocks:
                    _backward_into(inputs, chunk, block, grad, (dq, dk, dv), noise_gen, shared, None)
        # straight-through quantisers: the gradient passes where the input was inside the DAC range
        dq.mul_(torch.clamp(q, 0.0, 1.0).eq_(q))  # 1 where clamping leaves the input unchanged
        if plan.kv_in_dac_domain:
            dk.mul_(torch.clamp(k, 0.0, plan.kv_max).eq_(k))
            dv.mul_(torch.clamp(v, 0.0, plan.kv_max).eq_(v))
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None
