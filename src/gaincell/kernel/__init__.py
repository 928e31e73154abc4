"""The gain-cell attention kernel: the paper's analog array math, streamed in blocks, with surrogate gradients.

Per head, query i and key j in the causal window i - W < j <= i (Leroux et al. 2025, see ``docs/bibliography.md``;
the hardware model is described in ``docs/hardware.md``):

1. q -> clamp [0, 1], ``q_levels`` levels; k, v -> clamp [0, kv_max], ``kv_levels`` levels; y = value - kv_offset.
2. Leakage: y decays as y * d_ij with d_ij = exp(-lambda (i - j)).
3. S_ij = sum_d q_id f(d_ij y_jd), f(y) = sum_n g_n y^n (SPICE cubic, or 19.3 y for the linear cell).
4. phi_ij = clamp(S_ij / score_saturation, 0, 1) (charge-to-pulse HardSigmoid, not quantised).
5. Per physical tile t (key j lives in ring slot j mod W, tile slot // array_size):
   A_t = sum_{j in t} phi_ij f(d_ij y^v_j); O = sum_t Qout(clamp(A_t / output_saturation, -1, 1)).

How it is computed without materialising anything of size T x T:

* The decay is separable, d_ij^n = exp(n lambda (r - i)) * exp(-n lambda (r - j)) for a reference r (the last query
  of a segment of query blocks), so f(d_ij y) = sum_n g_n d_ij^n y^n becomes one matrix product of "query features"
  [g_n exp(n lambda (r - i)) q_i] and "key features" [exp(-n lambda (r - j)) y_j^n] (inner size n_terms * D).  With
  no leakage the powers collapse into f(y) itself (inner size D).  The constant term g_0 rides along as one column.
  (``features.py``)
* Queries are processed in blocks; each block only touches the keys of its window (causality and the window cut
  work, not just mask it), heads are chunked so a block's working set stays within a fixed budget.  Consecutive
  blocks form segments (up to a window of queries) that share the decay reference, so each segment's query, key and
  value features are computed once and its blocks read them as views.  (``plan.py``)
* Keys are laid out in "padded ring coordinates" so that every array_size-aligned block of keys belongs to exactly
  one physical tile, also when the window is not a multiple of array_size; blocks of the same tile are summed before
  the tile's readout, which is what the hardware does when the ring buffer wraps.  (``plan.py``)
* The backward pass recomputes each block (flash-attention style; a one-block call within ``KEEP_BUDGET`` keeps its
  forward instead) and applies the paper's training rules:
  straight-through quantisers, clamp gradients, and the linear surrogate (``linear_slope``) for the cell multiply,
  or the exact polynomial derivative with ``cell_gradient="exact"``.  (``blocks.py``)

The public functions are in ``api.py``; the DAC and quantiser in :mod:`gaincell.dac`; noise and cell variation in
:mod:`gaincell.noise`; a slow loop-per-query statement of the same equations in :mod:`gaincell.reference`.
"""

from gaincell.dac import dac, quantize
from gaincell.kernel.api import (
    POINTWISE_SCORES,
    analog_attention,
    attention_map,
    causal_window_mask,
    pointwise_attention,
    readout_tiles,
    score_pairs,
    softmax_attention,
)
from gaincell.kernel.blocks import release_workspace
from gaincell.noise import make_generator, variation_maps

__all__ = [
    "POINTWISE_SCORES",
    "analog_attention",
    "attention_map",
    "causal_window_mask",
    "dac",
    "make_generator",
    "pointwise_attention",
    "quantize",
    "readout_tiles",
    "release_workspace",
    "score_pairs",
    "softmax_attention",
    "variation_maps",
]
