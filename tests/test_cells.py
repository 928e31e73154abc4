"""The cell library (published ablation cells) and the digital HardSigmoid / sigmoid attention baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaincell import HardwareConfig, analog_attention
from gaincell.attention import SoftmaxSpec, resolve_attention
from gaincell.cells import CELL_LIBRARY, MAX_FIT_ERROR, library_cell
from gaincell.reference import reference_attention

SAT = {"score_saturation": 8.0, "output_saturation": 4.0}


def _inputs(seed=0, t=70, d=8, grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(1, 2, t, d, generator=g, dtype=torch.float64) * 1.4 - 0.2
    k = torch.rand(1, 2, t, d, generator=g, dtype=torch.float64) * 1.1 - 0.1
    v = torch.rand(1, 2, t, d, generator=g, dtype=torch.float64) * 1.1 - 0.1
    for x in (q, k, v):
        x.requires_grad_(grad)
    return q, k, v


@pytest.mark.parametrize(
    ("name", "scale", "at_max", "at_min"),
    [("x3", 105.9, 9.65, -9.65), ("x5", 522.9, 9.65, -9.65), ("sigmoid", 19.73, 9.65, -9.65), ("exp", 5.364, 15.33, -3.97)],
)
def test_library_cells_are_the_published_rescaled_curves(name, scale, at_max, at_min):
    """The worked values of the published classes: a, f(0.45), f(-0.45); span = 19.3 (the linear cell's slope)."""
    cell = library_cell(name, 19.3, 0.45, 0.9)
    assert cell.scale == pytest.approx(scale, rel=1e-3)
    f = np.polynomial.polynomial.polyval(np.array([-0.45, 0.0, 0.45]), cell.coefficients)
    assert f[2] == pytest.approx(at_max, abs=0.01) and f[0] == pytest.approx(at_min, abs=0.01)
    assert f[2] - f[0] == pytest.approx(19.3, abs=2 * cell.max_error + 1e-12) and abs(f[1]) <= cell.max_error + 1e-12
    # the polynomial the kernel computes stays within the stated bound of the true curve
    y = np.linspace(-0.45, 0.45, 4001)
    err = np.abs(np.polynomial.polynomial.polyval(y, cell.coefficients) - cell.exact(y)).max()
    assert err <= cell.max_error + 1e-12 and cell.max_error <= MAX_FIT_ERROR * 19.3
    if name in ("x3", "x5"):
        assert cell.max_error == 0.0


@pytest.mark.parametrize("name", list(CELL_LIBRARY))
def test_library_cells_run_in_the_kernel_as_in_the_reference_with_their_surrogate(name):
    cfg = HardwareConfig.preset("paper").replace(**SAT, cell=name, window=50, array_size=16)
    assert cfg.cell_polynomial == library_cell(name, 19.3, 0.45, 0.9).coefficients
    assert cfg.surrogate_slope == library_cell(name, 19.3, 0.45, 0.9).scale
    q, k, v = _inputs(grad=True)
    out = analog_attention(q, k, v, cfg)
    ref = reference_attention(q, k, v, cfg)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weights).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    # another cell changes the output: the choice reaches the arrays
    assert not torch.allclose(out, analog_attention(q, k, v, cfg.replace(cell="nonlinear")))


def test_a_user_polynomial_is_a_cell_and_bad_cells_are_refused():
    cfg = HardwareConfig.preset("paper").replace(cell_coefficients=(0.0, 10.0, 0.0, 40.0))
    assert cfg.cell_polynomial == (0.0, 10.0, 0.0, 40.0)
    with pytest.raises(ValueError, match="cell"):
        HardwareConfig.preset("paper").replace(cell="tanh")
    with pytest.raises(ValueError, match="cell_coefficients"):
        HardwareConfig.preset("paper").replace(cell_coefficients=tuple(range(13)))


@pytest.mark.parametrize("score", ["hardsigmoid", "sigmoid"])
def test_hardsigmoid_and_sigmoid_attention_baselines(score):
    from gaincell.kernel import pointwise_attention

    spec = resolve_attention(score)
    assert spec == SoftmaxSpec(None, score) and spec.name == score
    assert resolve_attention(f"{score}:16") == SoftmaxSpec(16, score)
    q, k, v = (torch.randn(1, 2, 20, 8, dtype=torch.float64) for _ in range(3))
    s = q @ k.transpose(-1, -2) / 8**0.5
    phi = s.clamp(0, 1) if score == "hardsigmoid" else torch.sigmoid(s)
    allowed = torch.ones(20, 20).tril().bool() & ~torch.ones(20, 20).tril(-16).bool()
    expected = (phi * allowed) @ v
    torch.testing.assert_close(pointwise_attention(q, k, v, score=score, window=16), expected)
    with pytest.raises(ValueError, match="score"):
        pointwise_attention(q, k, v, score="relu")
