"""A simulated analog KV cache: ring buffers of gain cells whose stored charge leaks in (simulated) real time.

Per layer, batch entry and key/value head, ``window`` slots hold *voltages*: a new token's K and V go through the
per-head maps and the DAC (clamp, 3-bit quantisation, optional write noise) and are written into slot
``n mod window`` (n = the sequence's count of real tokens), stamped with the hardware time.  A read sees every stored
signed voltage relaxed toward ``kv_offset`` as ``y * exp(-age / tau)``, age = now - write time, where time advances by
``token_period`` per token plus any idle time injected with :meth:`AnalogKVCache.advance_time`.  Reads are the
analog arrays (:func:`gaincell.analog_attention` on the stored voltages); the array never grows.

With no noise and no idle time, token-by-token decoding equals the parallel kernel (same window, same per-token
decay lambda = token_period / tau); the first multi-token prefill of an empty cache *is* the parallel kernel.

Refresh: ``refresh="periodic"`` senses every written cell each ``refresh_period`` seconds and rewrites it at the
nearest DAC level (with write noise, if any), restarting its leak; :attr:`AnalogKVCache.refresh_writes` counts them.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, CacheLayerMixin

from gaincell.attention import attention_layers, attention_spec, head_maps, layer_spec
from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError
from gaincell.families import position_limit
from gaincell.kernel import analog_attention, dac, readout_tiles
from gaincell.native import MAP_NAMES, DecodeParams, NativeUnavailable, decode_function, run_decode_step, step_params
from gaincell.noise import make_write_generator, write_voltages

__all__ = ["AnalogKVCache"]


@functools.lru_cache(maxsize=32)
def _no_leak(cfg: HardwareConfig) -> HardwareConfig:
    """The same hardware reading voltages whose leakage was already applied."""
    return cfg.replace(decay_per_token=0.0)


class AnalogCacheLayer(CacheLayerMixin):
    """One layer's ring buffers of stored voltages (see the module docstring)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, cache: AnalogKVCache, index: int):
        super().__init__()
        self.cache = cache
        self.index = index
        # (B, Hkv, 2, W, P + 1, D): per K / V cell of every slot, the powers y^0 ... y^P of its signed voltage as
        # written (P = the cell polynomial's degree; y^0 = 1 marks a written cell, a never-written slot is all zero).
        # Reads expand the cell's polynomial of the decayed voltage, f(e y) = sum_p g_p e^p y^p, over these powers.
        self.powers: Tensor | None = None
        self.t_write: Tensor | None = None  # (B, W) float64 write time of each slot (s)
        self.written: Tensor | None = None  # (B,) real tokens written so far
        self.uniform: int | None = 0  # tokens written, while every row has written the same number (else None)
        self.steps = 0  # token steps processed (padding included): the next token's position
        self.pending: tuple[Tensor, Tensor] | None = None
        self.last_refresh = 0.0
        self.step_params: DecodeParams | None = None  # its parameters, built once

    @property
    def yk(self) -> Tensor | None:
        """(B, Hkv, W, D) signed key voltages as written (a view of the stored powers)."""
        return None if self.powers is None else self.powers[:, :, 0, :, 1]

    @property
    def yv(self) -> Tensor | None:
        """(B, Hkv, W, D) signed value voltages as written (a view of the stored powers)."""
        return None if self.powers is None else self.powers[:, :, 1, :, 1]

    @property
    def hardware(self) -> HardwareConfig:
        """This layer's arrays: the cache's hardware with the layer's own sliding window (if shorter) applied."""
        return self.cache.layer_hardware[self.index]

    # --------------------------------------------------------------- transformers Cache layer interface
    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        b, hkv, _, d = key_states.shape
        w = self.hardware.window
        dtype = torch.float64 if key_states.dtype == torch.float64 else torch.float32
        degree = len(self.hardware.cell_polynomial) - 1
        self.powers = torch.zeros(b, hkv, 2, w, degree + 1, d, dtype=dtype, device=key_states.device)
        self.exponents = torch.arange(degree + 1, dtype=dtype, device=key_states.device)
        self.gains = torch.tensor(self.hardware.cell_polynomial, dtype=dtype, device=key_states.device)
        self.t_write = torch.zeros(b, w, dtype=torch.float64, device=key_states.device)
        self.written = torch.zeros(b, dtype=torch.long, device=key_states.device)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.powers is not None
        held = (self.powers.shape[0], self.powers.shape[1], self.powers.shape[5])
        if (key_states.shape[0], key_states.shape[1], key_states.shape[3]) != held:
            raise GaincellError(
                f"this AnalogKVCache holds (batch, kv heads, head dim) = {held} in layer "
                f"{self.index}, got {tuple(key_states.shape[i] for i in (0, 1, 3))}: a cache cannot be reused across "
                "models or batch sizes"
            )
        self.pending = (key_states, value_states)
        self.cache.maps[self.index].active_cache = self
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.steps

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.steps + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.powers = self.t_write = self.written = None
        self.uniform = 0
        self.steps = 0
        self.pending = None
        self.last_refresh = 0.0
        self.step_params = None
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        self._select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._select(torch.arange(self.yk.shape[0], device=self.device).repeat_interleave(repeats))  # type: ignore[union-attr]

    def _select(self, idx: Tensor) -> None:
        if not self.is_initialized:
            return
        idx = idx.to(self.device)
        self.step_params = None  # the compiled step's parameters hold the batch size
        self.powers = self.powers.index_select(0, idx)  # type: ignore[union-attr]
        self.t_write, self.written = self.t_write.index_select(0, idx), self.written.index_select(0, idx)  # type: ignore[union-attr]
        counts = self.written.tolist()  # type: ignore[union-attr]
        self.uniform = counts[0] if counts and min(counts) == max(counts) else None

    # --------------------------------------------------------------- the analog arrays
    def now(self, step: Any) -> Any:
        """Simulated time (s) of token step ``step`` (an int, or a float64 tensor of steps)."""
        return step * self.hardware.token_period + self.cache.idle

    def _voltages(self, key: Tensor, value: Tensor, maps: Any) -> Tensor:
        """DAC write of the mapped K and V (B, Hkv, T, D): clamp, quantise, offset, plus write noise (drawn once per
        written cell, all of K, then all of V); returns (B, Hkv, 2, T, D)."""
        dtype = self.powers.dtype  # type: ignore[union-attr]
        hw, gen = self.hardware, self.cache.write_generator(key.device)
        if hw.write_noise > 0:  # two writes, so that the noise stream is drawn in the same order as ever
            yk = write_voltages((key * maps.k_scale.view(1, -1, 1, 1) + maps.k_bias.view(1, -1, 1, 1)).to(dtype), hw, gen)
            yv = write_voltages((value * maps.v_scale.view(1, -1, 1, 1) + maps.v_bias.view(1, -1, 1, 1)).to(dtype), hw, gen)
            return torch.stack([yk, yv], 2)
        scale = torch.stack([maps.k_scale, maps.v_scale], 1).view(1, -1, 2, 1, 1)
        bias = torch.stack([maps.k_bias, maps.v_bias], 1).view(1, -1, 2, 1, 1)
        return write_voltages((torch.stack([key, value], 2) * scale + bias).to(dtype), hw, None)

    def attend(self, maps: Any, query: Tensor, padding: Tensor | None) -> Tensor:
        """Write the pending tokens and read every query through the arrays; returns (B, H, Tq, D) before the out map."""
        assert self.pending is not None and self.powers is not None
        assert self.t_write is not None and self.written is not None
        key, value = self.pending
        self.pending = None
        with torch.no_grad():
            tq = query.shape[2]
            decoding = tq == 1 and self.steps > 0 and (padding is None or bool(padding[:, -1].all()))  # every row decodes
            step_maps = self._compiled_step_maps(query, key, value, maps) if decoding else None
            if step_maps is not None:
                return self._compiled_step(query, key, value, step_maps)
            q = (query * maps.q_scale.view(1, -1, 1, 1) + maps.q_bias.view(1, -1, 1, 1)).to(self.powers.dtype)
            y = self._voltages(key, value, maps)  # (B, Hkv, 2, Tq, D)
            b, h, tq, d = q.shape
            if decoding:
                return self._decode_step(q, y[:, :, :, 0], maps).to(query.dtype)
            real = torch.ones(b, tq, dtype=torch.bool, device=q.device) if padding is None else padding[:, -tq:].bool()
            out = q.new_zeros(b, h, tq, d)
            if self.steps == 0 and tq > 1:
                self._prefill(q, y, real, out, maps)
            else:
                for t in range(tq):
                    self._decode_one(q[:, :, t : t + 1], y[:, :, :, t], real[:, t], out[:, :, t : t + 1], maps)
        return out.to(query.dtype)

    def _compiled_step_maps(self, query: Tensor, key: Tensor, value: Tensor, maps: Any) -> tuple[Tensor, ...] | None:
        """The per-head maps (:data:`MAP_NAMES` order) when this decoding step can run as one compiled call
        (:mod:`gaincell.native`), else None: every row holds the same slots, the reads and writes are exact (no noise,
        no cell variation), the window is a whole number of arrays, and the step's tensors and maps are on the CPU in
        the ring's dtype, contiguous (the maps) or with unit stride over the head dimension (q, k, v)."""
        hw, dtype = self.hardware, self.powers.dtype  # type: ignore[union-attr]
        if not (
            self.uniform is not None
            and hw.write_noise == 0
            and hw.reads_exactly
            and hw.window % hw.array_size == 0
            and self.powers.is_cpu  # type: ignore[union-attr]
            and all(t.dtype == dtype and t.is_cpu and t.stride(3) == 1 for t in (query, key, value))
            and self.cache.compiled_step(dtype) is not None
        ):
            return None
        tensors = tuple(getattr(maps, name) for name in MAP_NAMES)
        return tensors if all(t.dtype == dtype and t.is_cpu and t.is_contiguous() for t in tensors) else None

    def _compiled_step(self, query: Tensor, key: Tensor, value: Tensor, maps: tuple[Tensor, ...]) -> Tensor:
        """The write of :meth:`_write` and the read of :meth:`_read_expanded` as one compiled call (decode_step.c)."""
        assert self.powers is not None and self.t_write is not None and self.written is not None
        assert self.uniform is not None
        hw = self.hardware
        now = self.now(self.steps)
        if self.cache.refresh_period is not None:
            self._refresh_until(now)
        if self.step_params is None:
            self.step_params = step_params(hw, query.shape[1], self.powers.shape)
        out = run_decode_step(
            self.cache.compiled_step(query.dtype),
            self.step_params,
            slot=self.uniform % hw.window,
            slots=min(self.uniform + 1, hw.window),
            now=now,
            query=query,
            key=key,
            value=value,
            maps=maps,
            poly=self.gains,
            powers=self.powers,
            t_write=self.t_write,
        )
        self.written += 1
        self.uniform += 1
        self.steps += 1
        return out

    def _groups(self, h: int) -> int:
        return h // self.powers.shape[1]  # type: ignore[union-attr]

    def _prefill(self, q: Tensor, y: Tensor, real: Tensor, out: Tensor, maps: Any) -> None:
        """Empty cache, several tokens: the parallel kernel (it is what the arrays compute), then write the ring."""
        hw = self.hardware
        yk, yv = y[:, :, 0], y[:, :, 1]
        g = self._groups(q.shape[1])
        starts = [int(r.nonzero()[0]) if bool(r.any()) else q.shape[2] for r in real]
        if len(set(starts)) == 1 and bool(real[:, starts[0] :].all()):
            groups = [(list(range(q.shape[0])), starts[0])]
        else:
            groups = [([i], s) for i, s in enumerate(starts)]
        for rows, s in groups:
            if s >= q.shape[2]:
                continue
            idx = torch.tensor(rows, device=q.device)
            k_ = yk.index_select(0, idx)[:, :, s:].repeat_interleave(g, 1)
            v_ = yv.index_select(0, idx)[:, :, s:].repeat_interleave(g, 1)
            o = analog_attention(
                q.index_select(0, idx)[:, :, s:],
                k_,
                v_,
                hw,
                voltages=True,
                layer=self.index,
                generator=maps.noise_generator(q.device),
            )
            out[idx, :, s:] = o
        every = bool(real.all())
        if every and self.uniform is not None:  # one indexed write for the whole prompt
            self._write_run(y)
            return
        for t in range(q.shape[2]):
            self._write(y[:, :, :, t], None if every else real[:, t], self.now(self.steps))
            self.steps += 1

    def _write_run(self, y: Tensor) -> None:
        """Every row writes the same run of T tokens (B, Hkv, 2, T, D) into its next slots: the ring ends exactly as T
        single writes leave it (only the last ``window`` tokens survive), each slot stamped with its token's time."""
        w = self.hardware.window
        assert self.powers is not None and self.t_write is not None and self.written is not None
        assert self.uniform is not None
        t = y.shape[3]
        kept = torch.arange(max(0, t - w), t, device=y.device)  # earlier tokens of the run are overwritten within it
        slots = (kept + self.uniform) % w
        self.powers[:, :, :, slots] = y[:, :, :, kept, None, :].pow(self.exponents[:, None])
        self.t_write[:, slots] = self.now((kept + self.steps).to(torch.float64))  # each token's own step
        self.written += t
        self.uniform += t
        self.steps += t

    def _write(self, y: Tensor, real: Tensor | None, now: float) -> None:
        """Write one token's K and V voltages y (B, Hkv, 2, D) into each real row's next slot (``real`` None: every
        row)."""
        w = self.hardware.window
        assert self.powers is not None and self.t_write is not None and self.written is not None
        powers = y[:, :, :, None, :].pow(self.exponents[:, None])  # (B, Hkv, 2, P + 1, D); y^0 = 1 marks the cell written
        if real is None and self.uniform is not None:  # every row writes the same slot
            slot = self.uniform % w
            self.powers[:, :, :, slot] = powers
            self.t_write[:, slot] = now
            self.written += 1
            self.uniform += 1
            return
        rows = torch.arange(y.shape[0], device=y.device) if real is None else real.nonzero().flatten()
        if rows.numel() == 0:
            return
        if rows.numel() != y.shape[0]:
            self.uniform = None
        slots = self.written[rows] % w
        self.powers[rows, :, :, slots] = powers[rows]
        self.t_write[rows, slots] = now
        self.written[rows] += 1
        if self.uniform is not None:
            self.uniform += 1

    def _decayed(self, rows: Tensor, n: int, now: float) -> tuple[Tensor, Tensor]:
        """Stored voltages of ``rows``' first ``n`` slots as they read at time ``now``."""
        tau = self.hardware.retention_time
        every_row = rows.numel() == self.yk.shape[0]  # type: ignore[union-attr]  # rows are distinct and sorted
        # slice the written slots first: copying the whole ring per token was most of a decode step's time
        yk, yv, t_write = self.yk[:, :, :n], self.yv[:, :, :n], self.t_write[:, :n]  # type: ignore[index]
        if not every_row:
            yk, yv, t_write = yk.index_select(0, rows), yv.index_select(0, rows), t_write.index_select(0, rows)
        if math.isinf(tau):
            return yk, yv
        f = torch.exp((t_write - now) / tau).to(yk.dtype)[:, None, :, None]
        return yk * f, yv * f

    def _refresh_until(self, now: float) -> None:
        """Apply every refresh scheduled in (last refresh, now], on the refresh controller's own clock.

        Refreshing a cell repeatedly drives it to a fixed DAC level within at most ``kv_levels`` refreshes (each one
        either restores its level or drops it by one), so the first ``kv_levels + 1`` refreshes of a gap are simulated
        exactly and the rest only restart the leak (they rewrite the same level) and are counted.
        """
        period = self.cache.refresh_period
        assert period is not None
        k = int((now - self.last_refresh) / period + 1e-9)
        if k < 1:
            return
        simulate = min(k, (self.hardware.kv_levels or 8) + 1)
        start = self.last_refresh
        for i in range(1, simulate + 1):
            self._refresh(start + i * period)
        if k > simulate:
            cells = self._refresh(start + k * period, rewrite=False)
            self.cache.refresh_writes += (k - simulate - 1) * cells
        self.last_refresh = start + k * period

    def _refresh(self, now: float, *, rewrite: bool = True) -> int:
        """Sense every written cell and rewrite it at the nearest DAC level (restarting its leak); returns cells written.

        ``rewrite=False``: the cells already sit on their fixed level, so only the leak restarts.
        """
        hw = self.hardware
        rows = torch.arange(self.yk.shape[0], device=self.device)  # type: ignore[union-attr]
        n = min(int(self.written.max()), hw.window)  # type: ignore[union-attr]
        if n == 0:
            return 0
        valid = torch.arange(n, device=self.device)[None, :] < self.written[:, None].clamp(max=hw.window)  # type: ignore[index]
        cells = 2 * int(valid.sum()) * self.yk.shape[1] * self.yk.shape[3]  # type: ignore[union-attr]
        self.cache.refresh_writes += cells
        if rewrite:
            yk, yv = self._decayed(rows, n, now)
            for src, dst in ((yk, self.yk), (yv, self.yv)):
                y = write_voltages(src + hw.kv_offset, hw, self.cache.write_generator(src.device))
                dst[:, :, :n] = torch.where(valid[:, None, :, None], y, dst[:, :, :n])  # type: ignore[index]
            first = self.powers[:, :, :, :n, 1:2]  # type: ignore[index]  # the rewritten voltages: their other powers
            self.powers[:, :, :, :n, 2:] = first.pow(self.exponents[2:, None])  # type: ignore[index]
        self.t_write[:, :n] = torch.where(valid, torch.full_like(self.t_write[:, :n], now), self.t_write[:, :n])  # type: ignore[index]
        return cells

    def _decode_one(self, q: Tensor, y: Tensor, real: Tensor, out: Tensor, maps: Any) -> None:
        """One token step in which some rows hold padding: write the real rows, read them through the arrays."""
        now = self.now(self.steps)
        if self.cache.refresh_period is not None:
            self._refresh_until(now)
        self._write(y, real, now)
        self.steps += 1
        self._read_rows(q, real, out, maps, now)

    def _read_rows(self, q: Tensor, real: Tensor, out: Tensor, maps: Any, now: float) -> None:
        """Read the ``real`` rows' queries through the arrays, grouped by their number of written slots (any
        hardware: noise and cell variation included)."""
        hw = self.hardware
        g = self._groups(q.shape[1])
        n_valid = self.written.clamp(max=hw.window)  # type: ignore[union-attr]
        for n in sorted(set(n_valid[real].tolist())):
            rows = (real & (n_valid == n)).nonzero().flatten()
            k_, v_ = self._decayed(rows, n, now)
            o = analog_attention(
                q.index_select(0, rows),
                k_.repeat_interleave(g, 1),
                v_.repeat_interleave(g, 1),
                _no_leak(hw),
                voltages=True,
                layer=self.index,
                generator=maps.noise_generator(q.device),
            )
            out[rows] = o

    def _decode_step(self, q: Tensor, y: Tensor, maps: Any) -> Tensor:
        """Every row decodes one token: write its K and V (B, Hkv, 2, D), read its query (B, H, 1, D) through the
        arrays."""
        hw = self.hardware
        now = self.now(self.steps)
        if self.cache.refresh_period is not None:
            self._refresh_until(now)
        self._write(y, None, now)
        self.steps += 1
        w = hw.window
        if self.uniform is not None:
            n: int | None = min(self.uniform, w)
        else:
            lo, hi = self.written.clamp(max=w).aminmax()  # type: ignore[union-attr]
            n = int(lo) if int(lo) == int(hi) else None
        if n is None or not hw.reads_exactly or w % hw.array_size:
            out = q.new_zeros(q.shape)
            self._read_rows(q, torch.ones(q.shape[0], dtype=torch.bool, device=q.device), out, maps, now)
            return out
        return self._read_expanded(q, n, now)

    def _read_expanded(self, q: Tensor, n: int, now: float) -> Tensor:
        """One query per row (B, H, 1, D) read against the first ``n`` slots of every row, from the stored powers.

        The same arrays as :func:`gaincell.analog_attention` on the decayed voltages, summed in another order: the
        first array's S_j = sum_d q_d f(e_j y_jd) = sum_p g_p e_j^p (sum_d q_d y_jd^p) (e_j: slot j's leak factor), so
        one product over the stored powers replaces the cell polynomial over every stored voltage; the second array's
        tile sums A_t = sum_(j in t) phi_j f(e_j v_j) = sum_(j in t, p) (phi_j g_p e_j^p) v_j^p likewise.  Grouped-query
        heads share their key/value head's powers.  Needs reads without noise or cell variation and a window that is a
        whole number of arrays (the caller checks); slots past ``n`` in the last array hold zeros and contribute nothing.
        """
        hw = self.hardware
        stored = self.powers
        assert stored is not None and self.t_write is not None
        b, h, _, d = q.shape
        hkv, terms, size = stored.shape[1], stored.shape[4], hw.array_size
        g = h // hkv
        tiles = -(-n // size)
        span = tiles * size  # <= window: the window is a whole number of arrays
        tau = hw.retention_time
        if math.isinf(tau):
            gains = self.gains.expand(b, span, terms)
        else:  # g_p e_j^p with e_j = exp(-age_j / tau)
            leak = torch.exp((self.t_write[:, :span] - now) / tau).to(stored.dtype)
            gains = leak[:, :, None].pow(self.exponents) * self.gains
        pulses = dac(q, 0.0, 1.0, hw.q_levels).mul_(1.0 / hw.score_saturation).view(b, hkv, g, d)
        # first array: per slot and power, sum_d q_d y^p (one product), then weighted by g_p e^p and summed over p
        keys = stored[:, :, 0, :span].reshape(b, hkv, span * terms, d)
        partial = torch.matmul(pulses, keys.transpose(-1, -2)).view(b, hkv, g, span, terms)
        phi = (partial * gains[:, None, None]).sum(-1).clamp_(0.0, 1.0)  # (B, Hkv, g, span)
        # second array, tile by tile: weights phi_j g_p e_j^p against the stored powers of the values
        weights = phi.view(b, hkv, g, tiles, size, 1) * gains.view(b, 1, 1, tiles, size, terms)
        values = stored[:, :, 1, :span].reshape(b, hkv, tiles, size * terms, d)
        tile_sums = torch.matmul(weights.view(b, hkv, g, tiles, size * terms).transpose(2, 3), values)  # (B, Hkv, tiles, g, D)
        return readout_tiles(tile_sums, hw, tile_dim=2).reshape(b, h, 1, d)


class AnalogKVCache(Cache):
    """A transformers ``Cache`` that simulates the gain-cell arrays as the KV cache (see the module docstring).

    ``AnalogKVCache(model)`` for a converted model; pass it as ``past_key_values=`` (or let a converted model create
    one: it does whenever ``use_cache=True`` in eval mode).

    Args:
        model: a model converted to an analog hardware config.
        refresh: ``"none"`` or ``"periodic"``.
        refresh_period: seconds between refreshes (``"periodic"`` only).
        hardware: override the model's hardware config (e.g. another retention time or token period).
        compiled: run each exact decoding step as one compiled C call per layer (:mod:`gaincell.native`, built on
            first use with the system C compiler; same values up to the order of floating-point sums).  ``None``
            (default): when it can be built, else the tensor path with a warning saying why; ``True``: required (an
            error if it cannot be built); ``False``: always the tensor path.  Steps with noise, cell variation,
            padded rows or a window that is not a whole number of arrays take the tensor path in every case.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        refresh: str = "none",
        refresh_period: float | None = None,
        hardware: HardwareConfig | None = None,
        compiled: bool | None = None,
    ):
        spec = hardware or attention_spec(model)
        if not isinstance(spec, HardwareConfig):
            raise GaincellError("AnalogKVCache needs a model converted to analog hardware (not softmax or unconverted)")
        if refresh not in ("none", "periodic"):
            raise GaincellError(f"refresh must be 'none' or 'periodic', got {refresh!r}")
        if refresh == "periodic":
            if refresh_period is None or not (refresh_period > 0 and math.isfinite(refresh_period)):
                raise GaincellError(f"refresh_period must be a positive number of seconds, got {refresh_period!r}")
        elif refresh_period is not None:
            raise GaincellError("refresh_period is only used with refresh='periodic'")
        self.hardware = spec
        self.maps = {m.layer: m for m in head_maps(model)}
        self.layer_hardware = {i: layer_spec(spec, m.model_window) for i, m in self.maps.items()}
        self.n_layers = len(attention_layers(model))
        self.refresh_period = refresh_period if refresh == "periodic" else None
        if compiled not in (None, True, False):
            raise GaincellError(f"compiled must be None, True or False, got {compiled!r}")
        self.compiled = compiled
        self._compiled_steps: dict[torch.dtype, Any] = {}  # per dtype: the compiled step, or None (tensor path)
        if compiled:  # required: fail now, not at the first decoding step
            self.compiled_step(torch.float32)
        self.refresh_writes = 0
        self.idle = 0.0
        self._gen: torch.Generator | None = None
        self.model_config = model.config
        super().__init__(layers=[AnalogCacheLayer(self, i) for i in range(self.n_layers)])

    def advance_time(self, seconds: float) -> None:
        """Let the arrays sit idle for ``seconds`` (their charge keeps leaking) before the next token."""
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
            raise GaincellError(f"advance_time: seconds must be a finite number >= 0, got {seconds!r}")
        self.idle += float(seconds)

    @property
    def time(self) -> float:
        """Simulated hardware time of the next token (s)."""
        return self.layers[0].now(self.layers[0].steps) if self.layers else self.idle

    def compiled_step(self, dtype: torch.dtype) -> Any:
        """The compiled decode step for ``dtype`` (see ``compiled``), or None for the tensor path; decided once per dtype
        (a cache that cannot build it warns once, not every step)."""
        if dtype in self._compiled_steps:
            return self._compiled_steps[dtype]
        step = None
        if self.compiled is not False:
            try:
                step = decode_function(dtype)
            except NativeUnavailable as exc:
                if self.compiled:
                    raise GaincellError(f"AnalogKVCache(compiled=True): {exc}") from exc
                warnings.warn(
                    f"AnalogKVCache decodes with tensor operations (same values, slower): {exc}", RuntimeWarning, stacklevel=2
                )
        self._compiled_steps[dtype] = step
        return step

    def write_generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None:
            self._gen = make_write_generator(self.hardware, device)
        return self._gen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0


def install_default_cache(model: nn.Module) -> None:
    """Make a converted model create an :class:`AnalogKVCache` whenever it would create a default cache for inference
    (eval mode, autograd off: ``generate()``, ``torch.no_grad()`` loops).

    Also refuses, with a clear error, to run an absolute-position model (GPT-2) past its ``n_positions``.
    """
    from transformers.cache_utils import DynamicCache

    inner = model.get_decoder()  # the module the causal LM calls, where the cache is made: LlamaModel, OPTDecoder, ...
    if getattr(inner, "_gaincell_hook", None) is not None:
        return

    # The hook finds its model through the decoder, not through a closure: a deep copy of the model then copies the
    # reference too, so a copy's caches are built from the copy's own maps and hardware (a plain attribute, not a
    # registered submodule, so no module cycle).
    object.__setattr__(inner, "_gaincell_model", model)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        model = module._gaincell_model
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        length = ids.shape[1] if ids is not None else (embeds.shape[1] if embeds is not None else 0)
        key = "cache" if "cache" in kwargs or "past_key_values" not in kwargs else "past_key_values"
        cache = kwargs.get(key)
        use_cache = kwargs.get("use_cache")
        if use_cache is None:
            use_cache = getattr(model.config, "use_cache", False)
        spec = attention_spec(model)
        fresh = cache is None or (type(cache) is DynamicCache and cache.get_seq_length() == 0)
        inference = not model.training and not torch.is_grad_enabled()  # caching is for inference only
        if use_cache and inference and fresh and isinstance(spec, HardwareConfig):
            cache = AnalogKVCache(model)
            kwargs[key] = cache
        n_pos = position_limit(model)
        pos = kwargs.get("position_ids")
        if n_pos is not None:
            seen = cache.get_seq_length() if cache is not None else 0
            last = int(pos.max()) + 1 if pos is not None and pos.numel() else seen + length
            if last > n_pos:
                raise GaincellError(
                    f"{type(model).__name__} uses absolute positions and supports {n_pos} tokens; the cache holds {seen} "
                    f"and {length} more were given: generation past n_positions is not possible for this model"
                )
        return args, kwargs

    inner._gaincell_hook = inner.register_forward_pre_hook(hook, with_kwargs=True)
