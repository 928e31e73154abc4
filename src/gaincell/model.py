"""Model integration: convert a Hugging Face decoder-only causal LM of any family (see :mod:`gaincell.families`)
to gain-cell attention.

``convert(model, "paper")`` registers a ``gaincell`` attention function *and* its mask function with transformers
(so causal masking is never silently dropped), gives every attention layer per-head affine maps (a, b) on q, k, v
and on the head output (initialised as in the paper: a = 1; b = 0 for q and the output, kv_offset for k and v) and
switches the model to it.  Projections and MLPs stay digital.  The softmax baselines ("softmax", "softmax-window",
"softmax:W") are selected the same way.  Converting an already converted model swaps its attention config and keeps
its learned maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.attention import (
    ATTN_NAME,
    SPEC_ATTRIBUTE,
    AttentionSpec,
    HeadMaps,
    SoftmaxSpec,
    attention_layers,
    attention_spec,
    head_maps,
    is_converted,
    resolve_attention,
)
from gaincell.cache import install_default_cache
from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError
from gaincell.kernel import analog_attention, causal_window_mask, pointwise_attention, softmax_attention
from gaincell.noise import make_generator

# attention_spec, head_maps, is_converted, resolve_attention live in gaincell.attention; re-exported for convenience
__all__ = [
    "attention_spec",
    "convert",
    "gaincell_attention",
    "gaincell_mask",
    "head_maps",
    "is_converted",
    "register",
    "resolve_attention",
]


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


@torch.compiler.disable  # streamed blocks, per-sequence loops, statistics hooks: run eagerly inside compiled models
def gaincell_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """The attention function registered with transformers as ``gaincell``; returns (B, Tq, H, D)."""
    maps: HeadMaps = module.gaincell  # type: ignore[assignment]
    spec = maps.layer_spec  # the layer's own sliding window, if any, applied
    if query.shape[1] != maps.q_scale.numel() or key.shape[1] != maps.k_scale.numel():
        raise GaincellError(
            f"layer {maps.layer} was converted for {maps.q_scale.numel()} query / {maps.k_scale.numel()} key-value heads, "
            f"got {query.shape[1]} / {key.shape[1]}"
        )
    if maps.active_cache is not None:  # decoding through the simulated analog KV cache
        layer, maps.active_cache = maps.active_cache, None
        if attention_mask is not None and attention_mask.dim() != 2:
            raise GaincellError("the analog KV cache takes a 2-D padding mask only")
        out = layer.attend(maps, query, attention_mask)
        out = maps.apply(out, maps.out_scale, maps.out_bias)
        maps.record("out", out)
        return out.transpose(1, 2), None
    groups = query.shape[1] // key.shape[1]
    padding = _padding_mask(attention_mask, query, key)
    if isinstance(spec, SoftmaxSpec):
        k, v = _repeat_kv(key, groups), _repeat_kv(value, groups)
        softcap = kwargs.get("softcap")

        def baseline(q_: Tensor, k_: Tensor, v_: Tensor, start: int) -> Tensor:
            if spec.score != "softmax":
                return pointwise_attention(q_, k_, v_, score=spec.score, window=spec.window, scale=scaling, softcap=softcap)
            if softcap:
                return softcapped_softmax_attention(q_, k_, v_, window=spec.window, scale=scaling, softcap=softcap)
            return softmax_attention(q_, k_, v_, window=spec.window, scale=scaling)

        return _per_sequence(padding, query, k, v, baseline).transpose(1, 2), None
    q = maps.apply(query, maps.q_scale, maps.q_bias)
    k = maps.apply(key, maps.k_scale, maps.k_bias)
    v = maps.apply(value, maps.v_scale, maps.v_bias)
    maps.record("q", q)
    maps.record("k", k)
    maps.record("v", v)
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)

    def run(q_: Tensor, k_: Tensor, v_: Tensor, start: int) -> Tensor:
        return analog_attention(q_, k_, v_, spec, layer=maps.layer, generator=maps.noise_generator(q_.device))

    out = _per_sequence(padding, q, k, v, run)
    out = maps.apply(out, maps.out_scale, maps.out_bias)
    maps.record("out", out)
    return out.transpose(1, 2), None


def softcapped_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, *, window: int | None, scale: float | None, softcap: float
) -> Tensor:
    """Causal (sliding-window) softmax attention with the scores capped as ``softcap * tanh(s / softcap)`` (Gemma 2),
    materialised (the baseline only).  Queries are the last Tq of the Tk keys."""
    tq, tk = q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    scores = torch.tanh(scores / softcap) * softcap
    allowed = causal_window_mask(tq, tk, window, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores.float(), -1).to(v.dtype), v)


def _padding_mask(mask: Tensor | None, query: Tensor, key: Tensor) -> Tensor | None:
    if mask is None:
        return None
    if mask.dim() != 2 or mask.shape != (key.shape[0], key.shape[2]):
        raise GaincellError(
            f"gaincell attention takes a 2-D padding mask of shape (batch, keys) = {(key.shape[0], key.shape[2])}, "
            f"got {tuple(mask.shape)}: custom 4-D masks are not supported"
        )
    return mask


def _per_sequence(padding: Tensor | None, q: Tensor, k: Tensor, v: Tensor, fn: Any) -> Tensor:
    """Run ``fn`` on the whole batch, or sequence by sequence from each one's first real token (left padding).

    The hardware never writes padding: a sequence's first real token is written into ring slot 0.
    """
    if padding is None:
        return fn(q, k, v, 0)
    tq, tk = q.shape[2], k.shape[2]
    out = q.new_zeros(q.shape)
    for b in range(q.shape[0]):
        real = padding[b].nonzero()
        if real.numel() == 0:
            continue
        start = int(real[0])
        q0 = max(0, start - (tk - tq))
        if q0 >= tq:
            continue
        out[b : b + 1, :, q0:] = fn(q[b : b + 1, :, q0:], k[b : b + 1, :, start:], v[b : b + 1, :, start:], start)
    return out


def _is_causal(mask_function: Any, batch: int, q_length: int, kv_length: int, q_offset: Any, kv_offset: Any) -> bool:
    """Is ``mask_function`` the causal mask, possibly with a sliding window (which the attention function applies
    itself, from the layer's spec)?  transformers' own causal function is recognised at once; anything else (a sliding
    window overlay, or under torch.compile a packed-sequence wrapper that cannot be checked while tracing) is evaluated
    on the whole (batch, query, key) grid and compared with the causal pattern of the same window."""
    from transformers.masking_utils import causal_mask_function

    if mask_function is None or mask_function is causal_mask_function:
        return True
    h = torch.zeros(1, dtype=torch.long)[None, :, None, None]
    q = (torch.arange(q_length) + int(q_offset))[None, None, :, None]
    kv = (torch.arange(kv_length) + int(kv_offset))[None, None, None, :]
    causal = (kv <= q).expand(1, 1, q_length, kv_length)
    for row in range(batch):  # one sequence at a time: memory Q x KV, not B x Q x KV
        b = torch.full((1, 1, 1, 1), row, dtype=torch.long)
        try:
            got = torch.as_tensor(mask_function(b, h, q, kv)).cpu().bool().expand(1, 1, q_length, kv_length)
        except Exception:  # a mask that cannot be evaluated this way is not a causal one
            return False
        window = int(got.sum(-1).max())  # the widest row: the window, if the mask is a sliding one
        if window == 0 or not torch.equal(got, causal & (kv > q - window)):
            return False
    return True


@torch.compiler.disable  # data-dependent: returns None when nothing is padded
def gaincell_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor | None:
    """The mask function registered with transformers as ``gaincell``.

    The attention function applies causality and the window (the layer's own sliding window included) itself, so
    this returns only the 2-D padding mask (or None when nothing is padded).  Any mask other than a causal one with or
    without a sliding window (packed sequences, custom overlays) is refused rather than silently dropped.
    """
    if not _is_causal(mask_function, batch_size, q_length, kv_length, q_offset, kv_offset):
        raise GaincellError(
            "gaincell attention supports plain causal masks only, with or without a sliding window (no packed sequences "
            f"or custom mask functions), got {mask_function!r}"
        )
    if attention_mask is None:
        return None
    m = attention_mask[:, kv_offset : kv_offset + kv_length].bool()
    return None if bool(m.all()) else m


def register() -> None:
    """Register the ``gaincell`` attention and mask functions with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, gaincell_attention)
    AttentionMaskInterface.register(ATTN_NAME, gaincell_mask)


def convert(model: nn.Module, config: AttentionSpec | str | Path | dict[str, Any] = "paper") -> nn.Module:
    """Turn a Hugging Face causal LM into its gain-cell (or softmax-baseline) version, in place; returns it.

    Args:
        model: a decoder-only causal LM whose attention goes through the transformers attention interface
            (GPT-2, Llama, Qwen, Mistral, Gemma, Phi, GPT-NeoX, OPT, OLMo, GPT-J, GPT-BigCode, StableLM, SmolLM3, ...;
            see :mod:`gaincell.families`), converted or not.  Anything else is refused with the reason, unchanged.
        config: a :class:`HardwareConfig`, a preset name (``paper``, ``paper-linear``, ...), ``softmax``,
            ``softmax-window``/``softmax:W``, or a YAML/JSON hardware file.

    A model converted before keeps its learned per-head maps; only its attention config changes.
    """
    spec = resolve_attention(config)
    register()
    layers = attention_layers(model)
    param = next(model.parameters())
    kv_offset = spec.kv_offset if isinstance(spec, HardwareConfig) else 0.45
    for layer in layers:
        maps = getattr(layer.module, "gaincell", None)
        if not isinstance(maps, HeadMaps):
            maps = HeadMaps(layer.n_heads, layer.n_kv_heads, layer.index, kv_offset).to(device=param.device, dtype=param.dtype)
            layer.module.gaincell = maps
        maps.spec = spec
        maps.model_window = layer.model_window
        maps.layer = layer.index
        for p in maps.parameters():  # the maps only exist in the analog arrays; softmax leaves them untouched
            p.requires_grad_(isinstance(spec, HardwareConfig))
        noisy = isinstance(spec, HardwareConfig) and spec.has_noise
        maps.generator = make_generator(spec, layer.index, param.device) if noisy else None
    model.set_attn_implementation(ATTN_NAME)
    setattr(model, SPEC_ATTRIBUTE, spec)
    install_default_cache(model)
    return model
