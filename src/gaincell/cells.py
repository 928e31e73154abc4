"""The cell library: the multiply curves of the published ablation study, as polynomials the kernel computes exactly.

The published code (classes ``NLAttention_x3 / _x5 / _sigmoid / _exponential``) tries other nonlinear cells to show
that the adaptation is not tied to the SPICE cubic.  Each takes a base curve g of the signed stored value
y = V_store - kv_offset and rescales it to the linear cell's span::

    f(y) = a * (g(y) - g(0)),   a = linear_slope / (g(y_max) - g(y_min))

so f(y_max) - f(y_min) equals ``linear_slope`` (19.3 uA/V over the +-0.45 V swing).  The published backward is a
linear surrogate with slope a, which :attr:`gaincell.config.HardwareConfig.surrogate_slope` returns for these cells.

y^3 and y^5 are polynomials and are used exactly.  sigmoid(10 y) and exp(3 y) are not: the kernel factorises the cell
product by powers of y, so they are replaced by their Chebyshev interpolant over the stored range [y_min, y_max]
(odd degree 11 for the sigmoid, which is odd about 0; degree 9 for the exponential).  The largest deviation from the
true curve over that range is computed on a dense grid and carried with the cell (:attr:`LibraryCell.max_error`);
the tests hold it below :data:`MAX_FIT_ERROR` of the span.  Leakage only shrinks y towards 0, so decayed values stay
inside the fitted range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["CELL_LIBRARY", "MAX_FIT_ERROR", "LibraryCell", "library_cell"]


def _sigmoid(y: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-10.0 * y))


#: name -> (base curve g, fitted polynomial degree or None when g is itself a polynomial, odd symmetry, description)
CELL_LIBRARY: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int | None, bool, str]] = {
    "x3": (lambda y: y**3, None, True, "y^3"),
    "x5": (lambda y: y**5, None, True, "y^5"),
    "sigmoid": (_sigmoid, 11, True, "sigmoid(10 y)"),
    "exp": (lambda y: np.exp(3.0 * y), 9, False, "exp(3 y)"),
}

#: the tested bound on a fitted cell's largest deviation, as a fraction of the span (linear_slope * swing / swing)
MAX_FIT_ERROR = 1e-3


@dataclass(frozen=True)
class LibraryCell:
    """One library cell for a given span: f(y) = sum_n coefficients[n] y^n."""

    name: str
    curve: str  # the base curve g, in words
    scale: float  # a: the rescaling factor (also the surrogate-gradient slope)
    coefficients: tuple[float, ...]
    max_error: float  # uA: largest |polynomial - a (g(y) - g(0))| over the stored range (0 for exact polynomials)

    def exact(self, y: np.ndarray) -> np.ndarray:
        """The true rescaled curve a (g(y) - g(0)) (not the polynomial), for checks and plots."""
        g = CELL_LIBRARY[self.name][0]
        return self.scale * (g(y) - g(np.zeros_like(y)))


@functools.lru_cache(maxsize=64)
def library_cell(name: str, linear_slope: float, kv_offset: float, kv_max: float) -> LibraryCell:
    """The library cell ``name`` rescaled to ``linear_slope`` over the stored range [-kv_offset, kv_max - kv_offset]."""
    if name not in CELL_LIBRARY:
        raise ValueError(f"unknown library cell {name!r}: choose one of {', '.join(CELL_LIBRARY)}")
    g, degree, odd, words = CELL_LIBRARY[name]
    lo, hi = -kv_offset, kv_max - kv_offset
    scale = linear_slope / float(g(np.array(hi)) - g(np.array(lo)))

    def f(y: np.ndarray) -> np.ndarray:
        return scale * (g(y) - g(np.zeros_like(y)))

    if degree is None:  # y^n: exact
        power = {"x3": 3, "x5": 5}[name]
        coefficients = tuple(scale if n == power else 0.0 for n in range(power + 1))
        return LibraryCell(name, words, scale, coefficients, 0.0)
    fit = np.polynomial.chebyshev.Chebyshev.interpolate(f, degree, domain=[lo, hi])
    coef = fit.convert(kind=np.polynomial.Polynomial).coef
    if odd and math.isclose(lo, -hi):  # an odd curve on a symmetric range: keep the symmetry exactly
        coef = np.where(np.arange(coef.size) % 2 == 1, coef, 0.0)
    grid = np.linspace(lo, hi, 20001)
    error = float(np.abs(np.polynomial.polynomial.polyval(grid, coef) - f(grid)).max())
    return LibraryCell(name, words, scale, tuple(float(c) for c in coef), error)
