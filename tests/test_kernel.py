"""The gain-cell attention kernel against the loop reference, its gradients, properties, noise, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gaincell import HardwareConfig, analog_attention, attention_map, softmax_attention
from gaincell.kernel import plan as kernel_plan
from gaincell.kernel import quantize, score_pairs, variation_maps
from gaincell.reference import reference_attention

SAT = {"score_saturation": 8.0, "output_saturation": 4.0}  # small saturations so every clamp is exercised


def _inputs(b, h, tq, tk, d, seed=0, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, h, tq, d, generator=g, dtype=dtype) * 1.4 - 0.2
    k = torch.rand(b, h, tk, d, generator=g, dtype=dtype) * 1.1 - 0.1
    v = torch.rand(b, h, tk, d, generator=g, dtype=dtype) * 1.1 - 0.1
    if grad:
        for t in (q, k, v):
            t.requires_grad_()
    return q, k, v


CASES = [
    # (preset, changes, B, H, Tq, Tk, D, key_start, expect every clamp region)
    ("paper", {}, 1, 2, 70, 70, 16, 0, False),
    ("paper", SAT, 2, 2, 70, 70, 16, 0, True),
    ("paper-linear", SAT, 2, 2, 70, 70, 16, 0, True),
    ("paper", {**SAT, "window": 50, "array_size": 16}, 1, 2, 130, 130, 8, 0, True),  # W < T, W not multiple
    ("paper-linear", {**SAT, "window": 37, "array_size": 8}, 1, 1, 100, 100, 8, 5, True),
    ("paper", {**SAT, "window": 100}, 1, 2, 150, 150, 8, 0, True),  # W not a multiple of 64 with 64-arrays
    ("paper", {**SAT, "decay_per_token": 0.05}, 1, 2, 90, 90, 8, 0, True),  # large lambda
    ("paper", {**SAT, "decay_per_token": 3.0, "window": 40, "array_size": 8}, 1, 1, 60, 60, 8, 0, False),  # huge lambda
    ("paper", {**SAT, "decay_per_token": 0.0}, 1, 2, 70, 70, 8, 0, True),  # no leakage
    ("paper-linear", {**SAT, "decay_per_token": 0.0}, 1, 2, 70, 70, 8, 0, True),
    ("ideal", SAT, 1, 2, 70, 70, 8, 0, True),  # quantisation off
    ("paper-linear", {**SAT, "q_levels": None, "kv_levels": None, "out_levels": None}, 1, 2, 70, 70, 8, 0, True),
    ("paper", {**SAT, "out_quantizer": "exact", "window": 48, "array_size": 16}, 1, 2, 80, 80, 8, 0, True),
    ("paper", {**SAT, "q_levels": 4, "kv_levels": 3, "out_levels": 5}, 1, 2, 70, 70, 8, 0, True),
    ("paper", {**SAT, "window": 30, "array_size": 16}, 1, 2, 17, 90, 8, 3, True),  # Tq < Tk, key_start
    ("paper", SAT, 1, 3, 1, 77, 24, 1000, False),  # a single decode query at a large absolute position
    ("paper", {**SAT, "window": 64, "array_size": 32}, 1, 1, 200, 200, 4, 10, True),  # wraps several times
    ("paper", {**SAT, "window": 1}, 1, 2, 20, 20, 8, 0, False),  # window of one token
]


@pytest.mark.parametrize(("preset", "changes", "b", "h", "tq", "tk", "d", "start", "every_clamp"), CASES)
def test_matches_loop_reference(preset, changes, b, h, tq, tk, d, start, every_clamp):
    cfg = HardwareConfig.preset(preset).replace(**changes)
    q, k, v = _inputs(b, h, tq, tk, d, seed=tq + tk + d)
    stats: dict[str, int] = {}
    ref = reference_attention(q, k, v, cfg, key_start=start, stats=stats)
    out = analog_attention(q, k, v, cfg, key_start=start)
    assert out.shape == (b, h, tq, d)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    if every_clamp:
        for key in ("phi_zero", "phi_one", "phi_linear", "out_clamped", "out_linear"):
            assert stats.get(key, 0) > 0, f"inputs never reach {key}: {stats}"


@pytest.mark.parametrize(
    ("preset", "changes"),
    [
        ("paper", SAT),
        ("paper", {**SAT, "cell_gradient": "exact"}),
        ("paper-linear", SAT),
        ("paper", {**SAT, "window": 40, "array_size": 16, "out_quantizer": "exact"}),
        ("paper", {**SAT, "decay_per_token": 0.0, "cell_gradient": "exact"}),
        ("paper", {**SAT, "decay_per_token": 0.02, "window": 50, "array_size": 16}),
        pytest.param("ideal", {**SAT, "cell_gradient": "exact"}, marks=pytest.mark.slow),
    ],
)
def test_gradients_match_reference(preset, changes):
    cfg = HardwareConfig.preset(preset).replace(**changes)
    q, k, v = _inputs(1, 2, 90, 90, 8, seed=3, grad=True)
    g = torch.randn(1, 2, 70, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = analog_attention(q, k, v, cfg, key_start=2)[:, :, 20:]
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    ref = reference_attention(q, k, v, cfg, key_start=2)[:, :, 20:]
    ref_grads = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for name, a, r in zip("qkv", grads, ref_grads, strict=True):
        assert r.abs().max() > 0, name
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11, msg=f"d{name}")


@pytest.mark.parametrize(
    ("changes", "segments"),
    [
        ({"window": 64, "array_size": 16, "decay_per_token": 0.01}, [4, 3]),  # W < T: two segments of 4 and 3 blocks
        pytest.param({"window": 100, "array_size": 64, "decay_per_token": 0.01}, [6, 1], marks=pytest.mark.slow),
        ({"window": 128, "array_size": 32, "decay_per_token": 0.3}, [2, 2, 2, 1]),  # the exponent limit cuts them
        pytest.param({"window": 128, "array_size": 32, "decay_per_token": 0.0}, [7], marks=pytest.mark.slow),
        pytest.param(
            {"window": 64, "array_size": 16, "cell_gradient": "exact", "out_quantizer": "exact"}, [4, 3], marks=pytest.mark.slow
        ),
    ],
)
def test_segments_of_several_query_blocks_match_the_reference(monkeypatch, changes, segments):
    """Query blocks grouped into a segment share one decay reference and one set of key/value features."""
    monkeypatch.setattr(kernel_plan, "DEFAULT_QUERY_BLOCK", 16)  # small blocks: several per segment at small sizes
    cfg = HardwareConfig.preset("paper").replace(**SAT, **changes)
    plan = kernel_plan.make_plan(cfg, 100, 103, 4, key_start=3, decay=cfg.decay_per_token, backward=True)
    assert [len(group) for group in kernel_plan.segment_blocks(plan)] == segments
    q, k, v = _inputs(1, 1, 100, 103, 4, seed=11, grad=True)
    stats: dict[str, int] = {}
    out = analog_attention(q, k, v, cfg, key_start=3)
    ref = reference_attention(q, k, v, cfg, key_start=3, stats=stats)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert all(stats.get(key, 0) > 0 for key in ("phi_zero", "phi_one", "phi_linear", "out_clamped")), stats
    g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out * g).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * g).sum(), (q, k, v))
    for name, a, r in zip("qkv", grads, ref_grads, strict=True):
        assert r.abs().max() > 0, name
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11, msg=f"d{name}")


def test_surrogate_differs_from_exact_gradient():
    base = HardwareConfig.preset("paper").replace(**SAT)
    q, k, v = _inputs(1, 1, 40, 40, 8, seed=5, grad=True)
    g_sur = torch.autograd.grad(analog_attention(q, k, v, base).sum(), k)[0]
    g_ex = torch.autograd.grad(analog_attention(q, k, v, base.replace(cell_gradient="exact")).sum(), k)[0]
    assert not torch.allclose(g_sur, g_ex)


@pytest.mark.slow
def test_exact_gradient_passes_gradcheck():
    """Without quantisation the 'exact' rule is the true derivative: finite differences agree."""
    cfg = HardwareConfig.preset("ideal").replace(decay_per_token=0.03, cell_gradient="exact", window=20, array_size=8)
    g = torch.Generator().manual_seed(0)
    q = (torch.rand(1, 1, 30, 4, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    k = (torch.rand(1, 1, 30, 4, generator=g, dtype=torch.float64) * 0.7 + 0.1).requires_grad_()
    v = (torch.rand(1, 1, 30, 4, generator=g, dtype=torch.float64) * 0.7 + 0.1).requires_grad_()
    cfg = cfg.replace(score_saturation=2.0, output_saturation=8.0)
    assert torch.autograd.gradcheck(lambda a, b, c: analog_attention(a, b, c, cfg), (q, k, v), eps=1e-7, atol=1e-6)


def test_attention_map_and_dense_second_array_reproduce_kernel():
    cfg = HardwareConfig.preset("paper").replace(**SAT, window=40, array_size=16)
    q, k, v = _inputs(1, 2, 60, 60, 8, seed=9)
    phi = attention_map(q, k, cfg)
    assert phi.shape == (1, 2, 60, 60) and phi.min() >= 0 and phi.max() <= 1
    assert torch.all(torch.triu(phi[0, 0], diagonal=1) == 0)  # causal
    # second array by hand from phi
    y = quantize(v.clamp(0, 0.9), 0, 0.9, 8) - 0.45
    i = torch.arange(60, dtype=torch.float64)[:, None]
    j = torch.arange(60, dtype=torch.float64)[None, :]
    dec = torch.exp(-cfg.decay_per_token * (i - j).clamp(min=0))
    f = sum(c * (dec[..., None] * y[:, :, None]) ** n for n, c in enumerate(cfg.cell_polynomial))  # (B,H,Tq,Tk,D)
    contrib = phi[..., None] * f
    tile = (torch.arange(60) % cfg.window) // cfg.array_size
    out = 0
    for t in range(cfg.n_tiles):
        a = contrib[:, :, :, tile == t].sum(3)
        out = out + quantize((a / cfg.output_saturation).clamp(-1, 1), -1, 1, 32)
    torch.testing.assert_close(analog_attention(q, k, v, cfg), out, rtol=0, atol=1e-12)


def test_float32_and_bfloat16_inputs():
    cfg = HardwareConfig.preset("paper").replace(**SAT)
    q, k, v = _inputs(1, 2, 70, 70, 16, seed=2)
    ref = analog_attention(q, k, v, cfg)
    out32 = analog_attention(q.float(), k.float(), v.float(), cfg)
    assert out32.dtype == torch.float32
    # identical up to rare level flips from float32 rounding at a quantiser boundary
    step = 2 / 31
    assert ((out32.double() - ref).abs() > 1e-4).float().mean() < 0.01
    assert (out32.double() - ref).abs().max() <= 2 * step + 1e-5
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    outb = analog_attention(qb, kb, vb, cfg)
    assert outb.dtype == torch.bfloat16
    upcast = analog_attention(qb.float(), kb.float(), vb.float(), cfg)  # computed in float32, rounded once at the end
    torch.testing.assert_close(outb, upcast.to(torch.bfloat16), rtol=0, atol=0)


def test_non_contiguous_inputs():
    cfg = HardwareConfig.preset("paper").replace(**SAT)
    q, k, v = _inputs(2, 3, 50, 50, 8, seed=4)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    torch.testing.assert_close(analog_attention(qt, kt, vt, cfg), analog_attention(q, k, v, cfg), rtol=0, atol=0)


def test_batch_entries_are_independent():
    cfg = HardwareConfig.preset("paper").replace(**SAT)
    q, k, v = _inputs(3, 2, 40, 40, 8, seed=6)
    full = analog_attention(q, k, v, cfg)
    one = analog_attention(q[1:2], k[1:2], v[1:2], cfg)
    torch.testing.assert_close(full[1:2], one, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(2, 90),
    w=st.integers(1, 120),
    a=st.sampled_from([4, 16, 64]),
    cut=st.floats(0.05, 0.95),
    lam=st.sampled_from([0.0, 1.6e-4, 0.05]),
    seed=st.integers(0, 1000),
)
def test_causality_future_keys_never_change_the_past(t, w, a, cut, lam, seed):
    cfg = HardwareConfig.preset("paper").replace(**SAT, window=w, array_size=a, decay_per_token=lam)
    q, k, v = _inputs(1, 1, t, t, 4, seed=seed)
    j = max(1, int(cut * t))
    k2, v2 = k.clone(), v.clone()
    k2[:, :, j:] = torch.rand_like(k2[:, :, j:])
    v2[:, :, j:] = torch.rand_like(v2[:, :, j:])
    o1 = analog_attention(q, k, v, cfg)
    o2 = analog_attention(q, k2, v2, cfg)
    torch.testing.assert_close(o1[:, :, :j], o2[:, :, :j], rtol=0, atol=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # (t, w) with w < t, so at least one key has left the last query's window and every example checks something
    t_w=st.integers(4, 90).flatmap(lambda t: st.tuples(st.just(t), st.integers(1, min(40, t - 1)))),
    a=st.sampled_from([4, 16, 64]),
    seed=st.integers(0, 1000),
)
def test_window_forgets_old_keys(t_w, a, seed):
    t, w = t_w
    cfg = HardwareConfig.preset("paper").replace(**SAT, window=w, array_size=a)
    q, k, v = _inputs(1, 1, t, t, 4, seed=seed)
    old = max(1, t - w)  # keys before `old` are outside the last query's window
    k2, v2 = k.clone(), v.clone()
    k2[:, :, :old] = torch.rand_like(k2[:, :, :old])
    v2[:, :, :old] = torch.rand_like(v2[:, :, :old])
    o1 = analog_attention(q, k, v, cfg)[:, :, -1]
    o2 = analog_attention(q, k2, v2, cfg)[:, :, -1]
    assert t - w >= 1
    torch.testing.assert_close(o1, o2, rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(levels=st.integers(2, 40), lo=st.sampled_from([0.0, -1.0]), grid=st.sampled_from(["published", "exact"]))
@example(levels=32, lo=-1.0, grid="published")  # always run the 32-level case below, not only when drawn
def test_quantizer_levels_land_on_the_grid(levels, lo, grid):
    hi = 1.0 if lo == -1.0 else 0.9
    x = torch.linspace(lo, hi, 20001, dtype=torch.float64)
    y = quantize(x, lo, hi, levels, grid=grid)
    values = torch.unique(y)
    step = (hi - lo) / (levels - 1)
    origin = lo if grid == "exact" or lo == 0.0 else 0.0
    k = (values - origin) / step
    torch.testing.assert_close(k, torch.round(k), rtol=0, atol=1e-9)
    if grid == "exact" or lo == 0.0:
        assert len(values) == levels and values.min() == pytest.approx(lo) and values.max() == pytest.approx(hi)
    else:  # the published zero-centred readout: k * step for |k| <= round((levels - 1) / 2); 32 levels reach +-32/31
        reach = round((levels - 1) / 2)  # Python rounds half to even, like torch.round
        assert len(values) == 2 * reach + 1
        if levels == 32:
            assert values.max().item() == pytest.approx(32 / 31)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), w=st.integers(1, 100))
def test_outputs_are_sums_of_readout_levels(seed, w):
    cfg = HardwareConfig.preset("paper").replace(**SAT, window=w)
    q, k, v = _inputs(1, 2, 50, 50, 8, seed=seed)
    out = analog_attention(q, k, v, cfg) / (2 / 31)
    torch.testing.assert_close(out, torch.round(out), rtol=0, atol=1e-9)
    assert out.abs().max() <= 16 * cfg.n_tiles


# ---------------------------------------------------------------------------------------------------- noise
def test_noise_is_off_by_default_and_seeded():
    cfg = HardwareConfig.preset("paper").replace(**SAT, q_levels=None, kv_levels=None, out_levels=None)
    q, k, v = _inputs(1, 2, 60, 60, 8, seed=1)
    clean = analog_attention(q, k, v, cfg)
    for field, value in [
        ("read_noise_score", 0.5),
        ("read_noise_output", 0.2),
        ("write_noise", 0.02),
        ("cell_gain_variation", 0.05),
        ("cell_offset_variation", 0.1),
        ("read_snr_db", 10.0),
    ]:
        noisy_cfg = cfg.replace(**{field: value})
        a = analog_attention(q, k, v, noisy_cfg)
        b = analog_attention(q, k, v, noisy_cfg)
        c = analog_attention(q, k, v, noisy_cfg.replace(seed=1))
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=field)  # reproducible
        assert not torch.allclose(a, clean), field
        assert not torch.allclose(a, c), field


def test_read_noise_on_output_has_the_configured_std():
    sigma = 0.3
    cfg = HardwareConfig.preset("paper").replace(out_levels=None, read_noise_output=sigma, window=64)
    q, k, v = _inputs(1, 8, 64, 64, 16, seed=0, dtype=torch.float32)
    clean = analog_attention(q, k, v, cfg.replace(read_noise_output=0.0))
    gen = torch.Generator().manual_seed(123)
    diff = analog_attention(q, k, v, cfg, generator=gen) - clean
    expected = sigma / cfg.output_saturation  # one tile per query (window = array size)
    assert diff.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(diff.mean().item()) < 0.05 * expected
    # a shared generator advances: the next call draws new noise
    assert not torch.allclose(analog_attention(q, k, v, cfg, generator=gen) - clean, diff)


def test_signal_relative_read_noise_scales_with_the_read_signal():
    from gaincell.kernel.blocks import _add_read_noise, _window_rms
    from gaincell.kernel.plan import block_geometry, make_plan

    # std = rms * 10^(-snr/20), per read: a row 10x larger gets 10x the noise
    x = torch.ones(4, 3, 20000, dtype=torch.float64)
    x[:, 1] *= 10.0
    rms = x.square().mean(-1, keepdim=True).sqrt()
    before = x.clone()
    _add_read_noise(x, 0.0, 10.0 ** (-10.0 / 20.0), rms, torch.Generator().manual_seed(0))
    std = (x - before).std(-1)
    assert std[:, 0].mean().item() == pytest.approx(10.0**-0.5, rel=0.02)
    assert std[:, 1].mean().item() == pytest.approx(10.0**0.5, rel=0.02)
    # absolute and relative noise add in quadrature
    y = torch.zeros(1, 1, 40000, dtype=torch.float64)
    _add_read_noise(y, 0.3, 0.1, torch.full((1, 1, 1), 4.0, dtype=torch.float64), torch.Generator().manual_seed(1))
    assert y.std().item() == pytest.approx(math.hypot(0.3, 0.4), rel=0.02)
    # the score rms counts only the keys inside each query's window
    cfg = HardwareConfig.preset("paper").replace(window=16, array_size=8)
    plan = make_plan(cfg, 40, 40, 4, decay=cfg.decay_per_token, backward=False)
    block = block_geometry(plan, 16, 32, {1}, torch.zeros(1, dtype=torch.float64))
    scores = torch.rand(1, block.n_key_slots, block.n_queries, dtype=torch.float64) + 0.5
    mask = block.window_mask()  # the rows declared unmasked as ones
    expected = ((scores.square() * mask).sum(-2) / mask.sum(-2)).sqrt()
    torch.testing.assert_close(_window_rms(block, scores)[:, 0], expected)


def test_signal_relative_read_noise_is_off_at_infinite_snr_and_bad_values_are_refused():
    cfg = HardwareConfig.preset("paper").replace(**SAT, q_levels=None, kv_levels=None, out_levels=None)
    q, k, v = _inputs(1, 2, 60, 60, 8, seed=1)
    clean = analog_attention(q, k, v, cfg)
    torch.testing.assert_close(analog_attention(q, k, v, cfg.replace(read_snr_db=300.0)), clean, rtol=0, atol=1e-12)
    assert cfg.replace(read_snr_db=10.0).has_noise and not cfg.has_noise
    for bad in (float("nan"), float("inf"), "10", True):
        with pytest.raises(ValueError, match="read_snr_db"):
            cfg.replace(read_snr_db=bad)


def test_cell_variation_matches_reference_with_the_same_maps():
    cfg = HardwareConfig.preset("paper").replace(
        **SAT, window=40, array_size=16, cell_gain_variation=0.1, cell_offset_variation=0.3, seed=7
    )
    q, k, v = _inputs(1, 2, 70, 70, 8, seed=8)
    maps = variation_maps(cfg, heads=2, head_dim=8, layer=3)
    ref = reference_attention(q, k, v, cfg, gain=(maps["k_gain"], maps["v_gain"]), offset=(maps["k_offset"], maps["v_offset"]))
    torch.testing.assert_close(analog_attention(q, k, v, cfg, layer=3), ref, rtol=0, atol=1e-12)
    assert not torch.allclose(analog_attention(q, k, v, cfg, layer=4), ref)  # each layer has its own arrays


def test_noisy_backward_replays_the_forward_noise():
    cfg = HardwareConfig.preset("paper").replace(**SAT, read_noise_score=0.5, read_noise_output=0.3, read_snr_db=10.0)
    q, k, v = _inputs(1, 2, 50, 50, 8, seed=2, grad=True)
    gen = torch.Generator().manual_seed(5)
    out = analog_attention(q, k, v, cfg, generator=gen)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    # the same noise drawn again (same seed), with the gradient masks it implies
    gen2 = torch.Generator().manual_seed(5)
    out2 = analog_attention(q, k, v, cfg, generator=gen2)
    grads2 = torch.autograd.grad(out2.sum(), (q, k, v))
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    for a, b in zip(grads, grads2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    "changes",
    [SAT, {**SAT, "cell_gradient": "exact"}, {**SAT, "read_noise_score": 0.5, "read_noise_output": 0.3, "read_snr_db": 10.0}],
)
def test_kept_forward_gives_the_gradients_of_the_recomputed_one(monkeypatch, changes):
    """A one-block call keeps its forward for the backward (plan.keep_forward); recomputing it (and replaying the read
    noise) must give the same gradients."""
    cfg = HardwareConfig.preset("paper").replace(**changes)
    q, k, v = _inputs(2, 3, 60, 60, 8, seed=4, grad=True)
    g = torch.randn(2, 3, 60, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert kernel_plan.make_plan(cfg, 60, 60, 8, batch=2, heads=3, decay=cfg.decay_per_token, backward=True).keep_forward
    results = []
    for budget in (kernel_plan.KEEP_BUDGET, 0):
        monkeypatch.setattr(kernel_plan, "KEEP_BUDGET", budget)
        monkeypatch.setattr(kernel_plan, "BLOCK_BUDGET", 6 * 2**10)  # several head chunks, each kept on its own
        out = analog_attention(q, k, v, cfg, generator=torch.Generator().manual_seed(5))
        results.append((out, torch.autograd.grad((out * g).sum(), (q, k, v))))
    (out_kept, grads_kept), (out_again, grads_again) = results
    torch.testing.assert_close(out_kept, out_again, rtol=0, atol=0)
    for name, a, b in zip("qkv", grads_kept, grads_again, strict=True):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14, msg=f"d{name}")


def test_the_forward_is_kept_only_for_one_block_within_its_budget():
    cfg = HardwareConfig.preset("paper")

    def keeps(n_queries: int, batch: int, heads: int, backward: bool = True) -> bool:
        plan = kernel_plan.make_plan(cfg, n_queries, n_queries, 64, batch=batch, heads=heads, decay=1e-4, backward=backward)
        return plan.keep_forward

    assert keeps(128, 16, 4)  # the shipped model's training step
    assert not keeps(128, 16, 4, backward=False)  # nothing to keep it for
    assert not keeps(129, 1, 1)  # two query blocks: recomputed, memory O(window)
    assert not keeps(128, 64, 12)  # over KEEP_BUDGET


# ---------------------------------------------------------------------------------------------------- efficiency
def test_window_cuts_work_not_just_masks_it():
    cfg = HardwareConfig.preset("paper")
    full = score_pairs(cfg.replace(window=4096), 4096)
    short = score_pairs(cfg.replace(window=256), 4096)
    assert full / short > 5
    # causality: about half of the T x T square, not all of it
    assert score_pairs(cfg.replace(window=4096), 4096) < 0.6 * 4096 * 4096


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from gaincell import HardwareConfig, analog_attention
    from gaincell.kernel import release_workspace
    torch.set_num_threads(2)
    def status(key):
        for line in open('/proc/self/status'):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    t, w = int(sys.argv[1]), int(sys.argv[2])
    q, k, v = torch.rand(1, 12, t, 64), torch.rand(1, 12, t, 64) * 0.9, torch.rand(1, 12, t, 64) * 0.9
    cfg = HardwareConfig.preset('paper').replace(window=w)
    analog_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], cfg)  # thread pools
    release_workspace()
    open('/proc/self/clear_refs', 'w').write('5')
    base = status('VmRSS')
    out = analog_attention(q, k, v, cfg)
    print((status('VmHWM') - base - out.numel() * 4) / 2**20)
    """
)


def _peak_extra_mib(t: int, w: int) -> float:
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(t), str(w)], capture_output=True, text=True, check=True)
    return float(res.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.slow
def test_peak_memory_is_bounded_and_independent_of_length():
    small = _peak_extra_mib(1024, 1024)
    assert small <= 64, f"{small:.1f} MiB extra at T=1024"
    large = _peak_extra_mib(4096, 1024)
    assert large <= small + 16, f"extra memory grows with T: {small:.1f} -> {large:.1f} MiB"


# ---------------------------------------------------------------------------------------------------- softmax baseline
def test_softmax_attention_with_window_matches_dense():
    q, k, v = (torch.randn(1, 2, 30, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = softmax_attention(q, k, v, window=7)
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    i = torch.arange(30)[:, None]
    j = torch.arange(30)[None, :]
    s = s.masked_fill(~((j <= i) & (j > i - 7)), float("-inf"))
    torch.testing.assert_close(out, s.softmax(-1) @ v)
    torch.testing.assert_close(softmax_attention(q[:, :, -5:], k, v, window=7), out[:, :, -5:])
    torch.testing.assert_close(softmax_attention(q, k, v), softmax_attention(q, k, v, window=30))


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 2, 4), (1, 2, 4, 8), (1, 2, 4, 8)), "q must have 4 dimensions"),
        (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8)), "k has shape .* but v has shape"),
        (((1, 2, 4, 8), (1, 3, 4, 8), (1, 3, 4, 8)), "batch, heads and head_dim must match"),
        (((1, 2, 6, 8), (1, 2, 4, 8), (1, 2, 4, 8)), "need 1 <= query tokens <= key tokens"),
    ],
)
def test_bad_shapes_are_named(shapes, message):
    q, k, v = (torch.rand(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        analog_attention(q, k, v, HardwareConfig.preset("paper"))


def test_bad_arguments_are_named():
    q = torch.rand(1, 1, 4, 8)
    cfg = HardwareConfig.preset("paper")
    with pytest.raises(ValueError, match="key_start"):
        analog_attention(q, q, q, cfg, key_start=-1)
    with pytest.raises(TypeError, match="config must be a HardwareConfig"):
        analog_attention(q, q, q, "paper")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating-point"):
        analog_attention(q.long(), q, q, cfg)
    with pytest.raises(TypeError, match=r"k must be a torch\.Tensor"):
        analog_attention(q, [1.0], q, cfg)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        softmax_attention(q, q, q, window=0)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"cell": "linear"},
        {"window": 100, "array_size": 16},  # window not a multiple of the array: a partial last tile
        {"out_quantizer": "exact"},  # only tiles that hold a key are read out
        {"out_levels": None, "q_levels": None, "decay_per_token": 0.0},
        {"decay_per_token": 0.05, "window": 40, "array_size": 8},
    ],
)
@pytest.mark.parametrize("key_start", [0, 37, 250])  # 250: the ring has wrapped more than once
def test_the_single_query_decode_path_equals_the_blocked_kernel(changes, key_start):
    from gaincell.kernel.api import one_query_from_voltages

    cfg = HardwareConfig.preset("paper").replace(score_saturation=8.0, output_saturation=4.0, **changes)
    torch.manual_seed(key_start)
    n_keys = 90  # more than a 40- or 100-token window: the oldest keys are not read
    q = torch.rand(2, 3, 1, 16, dtype=torch.float64)
    y_k = (torch.rand(2, 3, n_keys, 16, dtype=torch.float64) - 0.5) * 0.9
    y_v = (torch.rand(2, 3, n_keys, 16, dtype=torch.float64) - 0.5) * 0.9
    fast = one_query_from_voltages(q, y_k, y_v, cfg, key_start)
    blocked = analog_attention(q.clone().requires_grad_(), y_k, y_v, cfg, key_start=key_start, voltages=True)  # grad: kernel
    torch.testing.assert_close(fast, blocked.detach(), rtol=0, atol=1e-12)
    assert fast.abs().max() > 0.05  # the arrays really read out
    torch.testing.assert_close(analog_attention(q, y_k, y_v, cfg, key_start=key_start, voltages=True), fast, rtol=0, atol=0)
