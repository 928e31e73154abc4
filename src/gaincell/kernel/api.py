"""The kernel's public functions: analog attention, its softmax baseline, the materialised pulse map, the work count.

They check their inputs, draw the write noise and cell variation (``gaincell.noise``), make the plan (``plan.py``) and
hand the arrays to the blocked autograd function (``blocks.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gaincell.config import HardwareConfig
from gaincell.dac import dac, readout_step
from gaincell.kernel.blocks import AnalogAttentionFunction
from gaincell.kernel.plan import geometries, make_plan
from gaincell.noise import cell_variation, make_generator, write_voltages


# ---------------------------------------------------------------------------------------------------- input checks
def check_qkv(fn: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise a TypeError / ValueError naming ``fn`` and the bad tensor unless q, k, v are (B, H, T, D) alike."""
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


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


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
    check_qkv("analog_attention", q, k, v)
    if not isinstance(config, HardwareConfig):
        raise TypeError(f"analog_attention: config must be a HardwareConfig, got {type(config).__name__}")
    if isinstance(key_start, bool) or not isinstance(key_start, int) or key_start < 0:
        raise ValueError(f"analog_attention: key_start must be an integer >= 0, got {key_start!r}")
    n_batch, n_heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]
    dtype = compute_dtype(q, k, v)
    cfg = config
    reads_noisy = cfg.reads_noisy
    noisy = cfg.write_noise > 0 or reads_noisy
    if noisy and generator is None:
        generator = make_generator(cfg, layer, q.device)
    # Without write noise the kernel applies the DAC itself, block by block (no written copy of k and v is made).
    kv_in_dac_domain = cfg.write_noise == 0 and not voltages
    if voltages:
        k, v = k.to(dtype), v.to(dtype)
    elif not kv_in_dac_domain:  # write the cells first: write noise is drawn once per written key
        k = write_voltages(k.to(dtype), cfg, generator)
        v = write_voltages(v.to(dtype), cfg, generator)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    quiet = cfg.write_noise == 0 and cfg.reads_exactly
    if voltages and n_queries == 1 and quiet and not needs_grad:  # one decoding step of the analog KV cache
        with torch.autocast(q.device.type, enabled=False):
            return one_query_from_voltages(q.to(dtype), k, v, cfg, key_start).to(q.dtype)
    plan = make_plan(
        cfg,
        n_queries,
        n_keys,
        head_dim,
        batch=n_batch,
        heads=n_heads,
        key_start=key_start,
        decay=cfg.decay_per_token,
        backward=needs_grad,
        element_bytes=torch.finfo(dtype).bits // 8,
        kv_in_dac_domain=kv_in_dac_domain,
    )
    variation = None
    if plan.variation:
        maps = cell_variation(cfg, n_heads, head_dim, layer)
        variation = tuple(m.to(dtype=dtype, device=q.device) for m in maps)
    read_gen = generator if reads_noisy else None
    with torch.autocast(q.device.type, enabled=False):  # the arrays are simulated in float32: no bf16 shortcuts
        out = AnalogAttentionFunction.apply(q, k, v, plan, variation, dtype, read_gen)
    return out.to(q.dtype)


def one_query_from_voltages(q: Tensor, y_k: Tensor, y_v: Tensor, config: HardwareConfig, key_start: int = 0) -> Tensor:
    """The same arrays for a single query (B, H, 1, D) against stored signed voltages (B, H, Tk, D), written out
    directly: the step the analog KV cache takes for every decoded token.  The blocked kernel's planning costs more
    than this arithmetic for one query, so decoding takes this path (no noise, no cell variation, no gradient;
    :func:`analog_attention` chooses it).  Same equations, same readout; only the summation order differs.
    """
    cfg = config
    n_keys = y_k.shape[2]
    query_pos = key_start + n_keys - 1
    pos = torch.arange(key_start, key_start + n_keys, device=q.device)
    inside = pos > query_pos - cfg.window  # keys that fell out of the window are not read
    if not bool(inside.all()):
        first = int(inside.nonzero()[0])
        y_k, y_v, pos = y_k[:, :, first:], y_v[:, :, first:], pos[first:]
    if cfg.decay_per_token > 0:  # leakage since each key was written
        decay = torch.exp(-cfg.decay_per_token * (query_pos - pos).to(q.dtype))[:, None]
        y_k, y_v = y_k * decay, y_v * decay
    pulses_q = dac(q, 0.0, 1.0, cfg.q_levels)  # (B, H, 1, D)
    poly = tuple(float(g) for g in cfg.cell_polynomial)
    # first array: S_j = sum_d q_d f(y_jd); charge-to-pulse phi_j = clamp(S_j / S_sat, 0, 1)
    scores = torch.matmul(_cell(y_k, poly), (pulses_q * (1.0 / cfg.score_saturation)).transpose(-1, -2))  # (B, H, n, 1)
    phi = scores.clamp_(0.0, 1.0)
    # second array, per physical tile (ring slot // array size): A_t = sum_{j in t} phi_j f(y^v_j)
    tiles = (pos % cfg.window) // cfg.array_size
    weighted = _cell(y_v, poly).mul_(phi)
    n_tiles = cfg.n_tiles
    tile_sums = weighted.new_zeros(*weighted.shape[:2], n_tiles, weighted.shape[-1]).index_add_(2, tiles, weighted)
    if cfg.out_levels is not None and cfg.out_quantizer == "exact":  # only tiles that hold a key are read out
        written = torch.zeros(n_tiles, dtype=torch.bool, device=q.device)
        written[tiles] = True
        tile_sums = tile_sums[:, :, written]
    return readout_tiles(tile_sums, cfg, tile_dim=2)


def readout_tiles(tile_sums: Tensor, config: HardwareConfig, *, tile_dim: int) -> Tensor:
    """The 5-bit counters and the digital sum of a read: each tile's charge A (the tiles along ``tile_dim``, every one
    holding a key) read out as clamp(A / output_saturation, -1, 1) on the output quantiser, then summed over the tiles
    (kept as a dimension of size 1).  Overwrites ``tile_sums``."""
    cfg = config
    step = readout_step(cfg.out_levels)  # computed in units of one step
    x = tile_sums.mul_(1.0 / cfg.output_saturation / step).clamp_(-1.0 / step, 1.0 / step)
    if cfg.out_levels is not None:
        if cfg.out_quantizer == "exact":
            x.add_(1.0 / step).round_().sub_(1.0 / step)
        else:
            x.round_()
    out = x.sum(tile_dim, keepdim=True)
    return out.mul_(step) if step != 1.0 else out


def _cell(y: Tensor, poly: tuple[float, ...]) -> Tensor:
    """f(y) = sum_n g_n y^n by Horner's rule, in a new tensor."""
    out = torch.full_like(y, poly[-1])
    for g in reversed(poly[:-1]):
        out.mul_(y).add_(g)
    return out


def causal_window_mask(tq: int, tk: int, window: int | None, device: torch.device | str = "cpu") -> Tensor:
    """(Tq, Tk) boolean mask of the digital baselines: the queries are the last Tq of the Tk keys, and query i sees the
    keys j with i - window < j <= i (all earlier keys when ``window`` is None)."""
    qpos = torch.arange(tk - tq, tk, device=device)[:, None]
    kpos = torch.arange(tk, device=device)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    return allowed


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int | None = None, scale: float | None = None) -> Tensor:
    """Causal softmax attention with an optional sliding window, same shapes as :func:`analog_attention`.

    Queries are the last Tq of the Tk keys; query i sees keys j with i - window < j <= i.
    """
    check_qkv("softmax_attention", q, k, v)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"softmax_attention: window must be an integer >= 1 or None, got {window!r}")
    tq, tk = q.shape[2], k.shape[2]
    if tq == tk and (window is None or window >= tk):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    allowed = causal_window_mask(tq, tk, window, q.device)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


#: the digital baselines' score functions: softmax (row-normalised) and the published pointwise ablations
POINTWISE_SCORES = ("hardsigmoid", "sigmoid")


def pointwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    score: str,
    window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> Tensor:
    """Causal (sliding-window) attention with a pointwise score function instead of softmax, digital and materialised:
    the published software ablations ``hardsigmoid`` (phi = clamp(s, 0, 1)) and ``sigmoid`` (phi = sigmoid(s)), with
    s = q.k * scale (default 1/sqrt(D)), optionally capped as softcap * tanh(s / softcap); out = sum_j phi_ij v_j.
    Queries are the last Tq of the Tk keys; no normalisation over the keys."""
    if score not in POINTWISE_SCORES:
        raise ValueError(f"pointwise_attention: score must be one of {', '.join(POINTWISE_SCORES)}, got {score!r}")
    check_qkv("pointwise_attention", q, k, v)
    tq, tk = q.shape[2], k.shape[2]
    s = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    phi = s.clamp(0.0, 1.0) if score == "hardsigmoid" else torch.sigmoid(s)
    allowed = causal_window_mask(tq, tk, window, q.device)
    return torch.matmul(phi * allowed.to(phi.dtype), v)


def attention_map(q: Tensor, k: Tensor, config: HardwareConfig, *, key_start: int = 0) -> Tensor:
    """The charge-to-pulse outputs phi (B, H, Tq, Tk) of the first array, materialised (for plots and inspection).

    Same conventions as :func:`analog_attention`; phi is 0 outside the causal window.  Memory is O(Tq * Tk * D):
    use it on short sequences.  Noise and cell variation are not applied.
    """
    check_qkv("attention_map", q, k, k)
    cfg = config
    tq, tk = q.shape[2], k.shape[2]
    dtype = compute_dtype(q, k)
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
    plan = make_plan(config, n_queries, n_keys, 1, decay=config.decay_per_token, backward=False)
    like = torch.empty(0)
    return sum(block.n_key_slots * block.n_queries for block in geometries(plan, like))
