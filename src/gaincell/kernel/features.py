"""Query and key features of the factorised cell product, and the gradient through them.

The cell product f(d_ij y_j) = sum_n g_n d_ij^n y_j^n splits into a query side and a key side per feature term
(see ``plan.FeatureTerm``): key features F_t(z_j) of the decayed voltages z_j = exp(-lambda (r - j)) y_j, query
features w_t exp(n_t lambda (r - i)) q_i.  A matrix product of the two gives the first array's scores; the same key
features of the values, weighted by the pulses, give the second array's tile sums after :func:`combine_terms`.

All functions write into the buffers they are given (workspace views) and return them.  Shapes: c = batch entries x
heads of the chunk, L = key slots of the block, bq = queries of the block, D = head_dim, F = feature columns.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gaincell.dac import level_step
from gaincell.kernel.plan import FeatureTerm, HeadChunk, KernelPlan, KeySlots


def horner(z: Tensor, polynomial: tuple[float, ...], out: Tensor) -> Tensor:
    """out = sum_p polynomial[p] z^p."""
    top = len(polynomial) - 1
    if top == 0:
        return out.fill_(polynomial[0])
    torch.mul(z, polynomial[top], out=out)
    if polynomial[top - 1] != 0.0:
        out.add_(polynomial[top - 1])
    for c in reversed(polynomial[: top - 1]):
        out.mul_(z)
        if c != 0.0:
            out.add_(c)
    return out


def derivative_coefficients(polynomial: tuple[float, ...]) -> tuple[float, ...]:
    """Coefficients of the derivative polynomial."""
    return tuple(p * c for p, c in enumerate(polynomial))[1:] or (0.0,)


def quantize_in_place(x: Tensor, step: float) -> Tensor:
    return x.div_(step).round_().mul_(step)


def decayed_voltages(plan: KernelPlan, src: Tensor, chunk: HeadChunk, slots: KeySlots, out: Tensor) -> Tensor:
    """z = exp(-lambda (r - j)) * y for the key slots (zero on empty slots), written into ``out`` (c, L, D).

    ``src`` is the (B, H, Tk, D) key or value tensor; in the DAC domain it is clamped, quantised and offset here.
    """
    out4 = out.view(chunk.n_batch, chunk.n_heads, slots.n_key_slots, out.shape[-1])
    src = chunk.of(src)
    if slots.contiguous is not None:
        row_begin, row_end, first_key = slots.contiguous
        out4[:, :, row_begin:row_end].copy_(src[:, :, first_key : first_key + row_end - row_begin])
        if row_begin > 0:
            out4[:, :, :row_begin].zero_()
        if row_end < slots.n_key_slots:
            out4[:, :, row_end:].zero_()
    else:
        out4.copy_(src.index_select(2, slots.key_index))
    if plan.kv_in_dac_domain:
        out.clamp_(0.0, plan.kv_max)
        if plan.kv_levels is not None:
            quantize_in_place(out, level_step(0.0, plan.kv_max, plan.kv_levels))
        out.sub_(plan.kv_offset)
    return out.mul_(slots.key_decay[1][:, None])


def query_pulses(plan: KernelPlan, q: Tensor, chunk: HeadChunk, begin: int, end: int, out: Tensor) -> Tensor:
    """Queries [begin, end) as pulse widths: clamp [0, 1], quantise; (c, end - begin, D)."""
    out.view(chunk.n_batch, chunk.n_heads, *out.shape[1:]).copy_(chunk.of(q)[:, :, begin:end])
    out.clamp_(0.0, 1.0)
    if plan.q_levels is not None:
        quantize_in_place(out, level_step(0.0, 1.0, plan.q_levels))
    return out


def key_features(
    plan: KernelPlan,
    terms: tuple[FeatureTerm, ...],
    z: Tensor,
    slots: KeySlots,
    out: Tensor,
    gain: Tensor | None,
    constant_map: Tensor | None,
    *,
    derivative: bool = False,
) -> Tensor:
    """Key-side features (c, L, F) of the decayed voltages z: F_t(z) [* gain], then the constant map.

    With ``derivative``: d/dy of each feature, i.e. n z^(n-1) exp(-lambda (r - j)) for z^n.
    """
    d = z.shape[-1]
    holds_key = slots.holds_key_f[:, None]
    col = 0
    powers: dict[int, Tensor] = {1: z}
    for term in terms:
        width = term.width(d)
        dst = out[..., col : col + width]
        if term.constant:
            dst.zero_() if derivative else dst.copy_(holds_key.expand_as(dst))
        elif term.is_monomial:
            n = term.power
            if derivative:
                if n == 1:
                    dst.copy_(slots.key_decay[1][:, None].expand_as(dst))
                else:
                    torch.mul(_power(powers, z, n - 1), slots.key_decay[1][:, None], out=dst).mul_(float(n))
            else:
                if n == 1:
                    if dst.data_ptr() != z.data_ptr():  # z may already have been written in place
                        dst.copy_(z)
                else:
                    torch.mul(_power(powers, z, n - 1), z, out=dst)
                    powers[n] = dst
        else:
            horner(z, derivative_coefficients(term.polynomial) if derivative else term.polynomial, dst)
            if derivative:
                dst.mul_(holds_key)
        col += width
    if gain is not None:
        col = 0
        for term in terms:
            if not term.constant:
                out[..., col : col + d].mul_(gain)
            col += term.width(d)
    if plan.has_constant_map(terms):
        dst = out[..., col:]
        if derivative or constant_map is None:
            dst.zero_()
        else:
            torch.mul(constant_map, holds_key, out=dst)
    return out


def _power(powers: dict[int, Tensor], z: Tensor, n: int) -> Tensor:
    """z^n, reusing (and filling) the cache ``powers`` of the powers already computed."""
    if n not in powers:
        powers[n] = _power(powers, z, n - 1) * z
    return powers[n]


def query_scales(terms: tuple[FeatureTerm, ...], query_decay: dict[int, Tensor]) -> list[Tensor]:
    """Per-term query factor w_t * exp(n_t lambda (r - i)), shape (queries,), from ``query_decay`` (n -> (queries,))."""
    return [query_decay[t.power] * t.weight for t in terms]


def query_features(
    plan: KernelPlan, terms: tuple[FeatureTerm, ...], scales: list[Tensor], q: Tensor, out: Tensor, factor: float = 1.0
) -> Tensor:
    """Query-side features (c, bq, F) matching :func:`key_features`."""
    d = q.shape[-1]
    col = 0
    q_sum = None
    for term, s in zip(terms, scales, strict=True):
        scale = (s * factor)[:, None]
        if term.constant:
            if q_sum is None:
                q_sum = q.sum(-1, keepdim=True)
            torch.mul(q_sum, scale, out=out[..., col : col + 1])
            col += 1
        else:
            torch.mul(q, scale, out=out[..., col : col + d])
            col += d
    if plan.has_constant_map(terms):
        torch.mul(q, factor, out=out[..., col:])
    return out


def combine_terms(
    plan: KernelPlan,
    terms: tuple[FeatureTerm, ...],
    scales: list[Tensor],
    m: Tensor,
    d: int,
    axis: int,
    out: Tensor,
    factor: float = 1.0,
) -> Tensor:
    """out = factor * (sum_t s_t * M_t + M_const), with the term columns of ``m`` along ``axis`` (-1 or -2).

    The scales vary along the other of the last two axes (the queries).
    """
    col = 0
    first = True
    for term, s in zip(terms, scales, strict=True):
        width = term.width(d)
        part = m.narrow(axis, col, width)
        s = s * factor if factor != 1.0 else s
        scale = s[None, :] if axis == -2 else s[:, None]
        if first:
            torch.mul(part, scale, out=out)
            first = False
        else:
            out.addcmul_(part, scale)
        col += width
    if plan.has_constant_map(terms):
        part = m.narrow(axis, col, d)
        if first:
            torch.mul(part, factor, out=out)
        else:
            out.add_(part, alpha=factor)
        first = False
    if first:
        out.zero_()
    return out


def extend_grad_to_terms(
    plan: KernelPlan, terms: tuple[FeatureTerm, ...], scales: list[Tensor], grad: Tensor, out: Tensor
) -> Tensor:
    """Gradient on the combined tile sums (c, n_key_blocks, D, bq) -> on the term rows (c, n_key_blocks, Fb, bq)."""
    d = grad.shape[-2]
    col = 0
    for term, s in zip(terms, scales, strict=True):
        if term.constant:
            torch.mul(grad.sum(-2, keepdim=True), s, out=out[..., col : col + 1, :])
            col += 1
        else:
            torch.mul(grad, s, out=out[..., col : col + d, :])
            col += d
    if plan.has_constant_map(terms):
        out[..., col:, :].copy_(grad)
    return out


def reduce_grad_to_voltages(
    terms: tuple[FeatureTerm, ...], grad_features: Tensor, feature_slope: Tensor, d: int, out: Tensor
) -> Tensor:
    """dy = sum_t dFeature_t * dF_t/dy over the term columns (c, L, Fb) -> (c, L, D)."""
    col = 0
    first = True
    for term in terms:
        width = term.width(d)
        if not term.constant:
            if first:
                torch.mul(grad_features[..., col : col + width], feature_slope[..., col : col + width], out=out)
                first = False
            else:
                out.addcmul_(grad_features[..., col : col + width], feature_slope[..., col : col + width])
        col += width
    if first:
        out.zero_()
    return out
