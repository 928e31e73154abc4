"""Every random effect of the simulated hardware, seeded reproducibly: write noise, cell variation, noise streams.

* Write noise: a written cell holds its DAC level plus Gaussian noise (``write_noise`` volts), drawn once per written
  cell and held within the rails [0, kv_max].  :func:`write_voltages` is the one place that writes a cell; the kernel
  (keys and values given in the DAC domain) and the analog KV cache (new tokens and refreshes) both call it.
* Cell variation: every cell of the K and V arrays has a fixed gain and offset drawn once per (seed, layer); see
  :func:`variation_maps`.
* Read noise on the score and output integrators is drawn inside the kernel from the layer's generator
  (:func:`make_generator`).

Seeds are mixed from ``HardwareConfig.seed``, the layer index and a per-purpose constant (:func:`mix_seed`), so the
streams of different layers and purposes are independent and every run draws the same numbers.  The hardware model
behind these effects is described in ``docs/hardware.md``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from gaincell.config import HardwareConfig
from gaincell.dac import dac

__all__ = ["make_generator", "make_write_generator", "mix_seed", "variation_maps", "write_voltages"]

# Per-purpose constants mixed into the seed so that each stream is independent of the others.
_READ_WRITE_STREAM = 0x5EED  # kernel read noise and kernel write noise of one layer
_VARIATION_STREAM = 0x6A11  # fixed cell variation of one layer
_CACHE_WRITE_STREAM = 0xCAC7E  # writes and refreshes of the analog KV cache (all layers share it)


def mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (splitmix-style): nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for x in values:
        h = ((h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def make_generator(config: HardwareConfig, layer: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The noise generator of one layer, seeded from ``config.seed`` and the layer index."""
    return torch.Generator(device=device).manual_seed(mix_seed(config.seed, layer, _READ_WRITE_STREAM))


def make_write_generator(config: HardwareConfig, device: torch.device | str = "cpu") -> torch.Generator:
    """The write-noise generator of an analog KV cache, seeded from ``config.seed`` (one stream for all layers)."""
    return torch.Generator(device=device).manual_seed(mix_seed(config.seed, _CACHE_WRITE_STREAM))


def write_voltages(x: Tensor, config: HardwareConfig, generator: torch.Generator | None) -> Tensor:
    """The signed voltages y = V - kv_offset that cells hold after writing ``x`` (DAC domain) into them.

    V = clamp(DAC level of x + write_noise * N(0, 1), 0, kv_max): the DAC clamps to [0, kv_max] and quantises to
    ``kv_levels`` levels, the noise is drawn once per written cell from ``generator`` (in ``x``'s element order),
    and the rails hold the result.  ``generator`` may be None when ``write_noise`` is 0.  Differentiable: the DAC's
    clamp mask straight through the rounding, then the rails' clamp.
    """
    level = dac(x, 0.0, config.kv_max, config.kv_levels)
    if config.write_noise > 0:
        noise = torch.randn(level.shape, generator=generator, dtype=level.dtype, device=level.device)
        level = (level + config.write_noise * noise).clamp(0.0, config.kv_max)
    return level - config.kv_offset


@lru_cache(maxsize=64)
def _cached_variation(
    seed: int, layer: int, heads: int, slots: int, head_dim: int, gain_std: float, offset_std: float, g0: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed per-cell (gain, g0 * gain + offset) of the K and V arrays of every head: (heads, slots, head_dim) each."""
    gen = torch.Generator().manual_seed(mix_seed(seed, layer, _VARIATION_STREAM))
    shape = (heads, slots, head_dim)
    k_gain = 1.0 + gain_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    k_offset = offset_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    v_gain = 1.0 + gain_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    v_offset = offset_std * torch.randn(shape, generator=gen, dtype=torch.float64)
    return k_gain, g0 * k_gain + k_offset, v_gain, g0 * v_gain + v_offset


def cell_variation(config: HardwareConfig, heads: int, head_dim: int, layer: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The variation maps in the form the kernel uses: (K gain, K constant, V gain, V constant), (heads, slots, D).

    The constant map is g0 * gain + offset: the cell's constant term g0 scaled by the cell's gain, plus its offset.
    Cached per (seed, layer, shape, spreads): treat the tensors as read-only.
    """
    padded_window = config.n_tiles * config.array_size
    return _cached_variation(
        config.seed,
        layer,
        heads,
        padded_window,
        head_dim,
        config.cell_gain_variation,
        config.cell_offset_variation,
        config.cell_polynomial[0],
    )


def variation_maps(config: HardwareConfig, heads: int, head_dim: int, layer: int = 0) -> dict[str, Tensor]:
    """The fixed cell variation of one layer's arrays: K/V gain (relative) and K/V offset (uA), (heads, slots, D)."""
    k_gain, k_constant, v_gain, v_constant = cell_variation(config, heads, head_dim, layer)
    g0 = config.cell_polynomial[0]
    return {"k_gain": k_gain, "k_offset": k_constant - g0 * k_gain, "v_gain": v_gain, "v_offset": v_constant - g0 * v_gain}
