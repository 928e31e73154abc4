"""Hardware configuration of the gain-cell attention engine: one source of truth for every constant.

Every field carries its unit, its provenance (paper section, SPICE fit or published code) and its allowed range as
dataclass metadata; :meth:`HardwareConfig.describe` and ``gaincell hardware show`` print them.  Configs are immutable
and validated on construction; :meth:`HardwareConfig.replace` returns a new validated config.

Sources are tagged as in ``docs/bibliography.md``: [N-M] the article's Methods, [S1] full-text literature card,
[C] the published code (github.com/NathanLeroux-git/GainCellAttention), [INF] derived arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaincell.cells import CELL_LIBRARY, library_cell
from gaincell.errors import GaincellError

__all__ = ["PAPER_CELL_COEFFICIENTS", "PRESETS", "HardwareConfig", "HardwareConfigError"]


class HardwareConfigError(GaincellError, ValueError):
    """A hardware configuration field is missing, unknown or outside its allowed range."""


# Released SPICE fit [C `c` list, N-M Eq. 4]: C_ij for i = power of (V_store - 0.45 V), j = power of Vin.
_SPICE_C = (
    (0.17393044, 0.15653739, 0.14088365, 0.12679529),
    (5.51975209, 4.96777688, 4.4709992),
    (-1.44776001, -1.30298401),
    (46.05483778,),
)
_VIN = 0.9  # read input voltage at WLR [N-M]
#: g_n = sum_j C_nj * Vin^j at Vin = 0.9 V: the cell current (uA, full-width pulse) as a cubic in y = V_store - 0.45 V.
PAPER_CELL_COEFFICIENTS: tuple[float, ...] = tuple(sum(c * _VIN**j for j, c in enumerate(row)) for row in _SPICE_C)


def _meta(unit: str, provenance: str, doc: str, allowed: str) -> dict[str, str]:
    return {"unit": unit, "provenance": provenance, "doc": doc, "allowed": allowed}


@dataclass(frozen=True)
class HardwareConfig:
    """Validated, immutable description of one gain-cell attention engine (per head).

    Build one with :meth:`preset` (``"paper"``, ``"paper-linear"``, ...), :meth:`from_dict`, :meth:`load`, or the
    constructor; derive variants with :meth:`replace`.  The retention time is not stored: it is
    ``token_period / decay_per_token``, so the per-token decay and the physical pair (tau, token period) can never
    disagree.  ``replace(retention_time=...)`` sets the decay from a physical retention time.
    """

    name: str = field(
        default="custom",
        metadata=_meta("-", "-", "label of this configuration (preset name or user label)", "any string"),
    )
    cell: str = field(
        default="nonlinear",
        metadata=_meta(
            "-",
            "[N-M] Eq. 4; [C] LinearDRAMAttention / DRAMAttention",
            "cell multiply: 'nonlinear' = the polynomial cell_coefficients (default: the SPICE-fitted cubic; any "
            "user polynomial), 'linear' = intermediate model linear_slope * y; the published ablation cells "
            "'x3', 'x5', 'sigmoid', 'exp' (see CELL_LIBRARY)",
            "'nonlinear' | 'linear' | 'x3' | 'x5' | 'sigmoid' | 'exp'",
        ),
    )
    cell_coefficients: tuple[float, ...] = field(
        default=PAPER_CELL_COEFFICIENTS,
        metadata=_meta(
            "uA per V^n",
            "SPICE fit [C]: g_n = sum_j C_nj * 0.9^j (Vin = 0.9 V) of the released 10 coefficients",
            "polynomial f(y) = sum_n g_n y^n of the nonlinear cell, y = stored voltage - kv_offset",
            "1 to 12 finite numbers",
        ),
    )
    linear_slope: float = field(
        default=19.3,
        metadata=_meta(
            "uA/V",
            "[C] amp_coefficient = 19.3 (linear fit of the cubic over +-0.45 V gives 19.33 [INF])",
            "slope of the linear cell, and of the surrogate gradient of the nonlinear cell",
            "> 0, finite",
        ),
    )
    window: int = field(
        default=1024,
        metadata=_meta("tokens", "[S1] M = 1024; [C] sliding_window_size", "sliding-window length W (ring-buffer slots)", ">= 1"),
    )
    array_size: int = field(
        default=64,
        metadata=_meta("tokens", "[S1] 64x64 sub-arrays; [C] array_len = 64", "tokens per gain-cell array (tile)", ">= 1"),
    )
    decay_per_token: float = field(
        default=1.6e-4,
        metadata=_meta(
            "1/token",
            "[C] decay_factor = 1.6e-4 (ft_dram_gpt2.py)",
            "leakage lambda: a stored signed voltage decays as exp(-lambda * age in tokens); "
            "equals token_period / retention_time",
            ">= 0, finite",
        ),
    )
    token_period: float = field(
        default=8e-7,
        metadata=_meta(
            "s",
            "[INF] lambda * tau = 1.6e-4 * 5 ms = 0.8 us (~ 12 layers x 65 ns)",
            "simulated hardware time between two tokens",
            "> 0, finite",
        ),
    )
    q_levels: int | None = field(
        default=16,
        metadata=_meta(
            "levels", "[N-M] 4-bit pulse width; [C] 16", "query DAC levels over [0, 1] (None = no quantisation)", ">= 2 or None"
        ),
    )
    kv_levels: int | None = field(
        default=8,
        metadata=_meta(
            "levels",
            "[N-M] 3-bit writes; [C] 8",
            "key/value write levels over [0, kv_max] (None = no quantisation)",
            ">= 2 or None",
        ),
    )
    out_levels: int | None = field(
        default=32,
        metadata=_meta(
            "levels",
            "[S1] 5-bit signed counter; [C] 32",
            "per-tile readout levels over [-1, 1] (None = no quantisation)",
            ">= 2 or None",
        ),
    )
    out_quantizer: str = field(
        default="published",
        metadata=_meta(
            "-",
            "[C] quantization_custom; [INF] the zero-centred grid reaches +-16*2/31 = +-1.032 (33 levels)",
            "'published' = step*round(x/step) with step 2/(levels-1), as the released code (reaches +-32/31); "
            "'exact' = exactly out_levels levels spanning [-1, 1]",
            "'published' | 'exact'",
        ),
    )
    kv_max: float = field(
        default=0.9,
        metadata=_meta("V", "[N-M] VDD = 0.9 V", "top of the write range [0, kv_max] (supply rail)", "> 0, finite"),
    )
    kv_offset: float = field(
        default=0.45,
        metadata=_meta(
            "V", "[N-M] K_offset = V_offset = VDD/2", "voltage of the zero weight; y = V_store - kv_offset", "0 <= x <= kv_max"
        ),
    )
    score_saturation: float = field(
        default=80.0,
        metadata=_meta(
            "uA*Tmax",
            "[N-M] Eq. 3; [C] att_score_scaler = 1/80",
            "charge-to-pulse HardSigmoid: phi = clamp(S / score_saturation, 0, 1)",
            "> 0, finite",
        ),
    )
    output_saturation: float = field(
        default=40.0,
        metadata=_meta(
            "uA*Tmax",
            "[C] weight_average_scaler = 1/40",
            "signed charge-to-pulse of each tile: clamp(A / output_saturation, -1, 1)",
            "> 0, finite",
        ),
    )
    max_pulse_width: float = field(
        default=15e-9,
        metadata=_meta("s", "[N-M] Tmax = 15 ns", "full-scale query / phi pulse width (used by the cost model)", "> 0, finite"),
    )
    cell_gradient: str = field(
        default="surrogate",
        metadata=_meta(
            "-",
            "[C] DRAM_MAC_temporal_encoding_surrogate_* backward",
            "backward of the cell multiply: 'surrogate' = linear_slope (paper), 'exact' = derivative of the polynomial",
            "'surrogate' | 'exact'",
        ),
    )
    read_noise_score: float = field(
        default=0.0,
        metadata=_meta(
            "uA*Tmax",
            "beyond the paper (off)",
            "std of Gaussian read noise added to each score S before the HardSigmoid",
            ">= 0, finite",
        ),
    )
    read_noise_output: float = field(
        default=0.0,
        metadata=_meta(
            "uA*Tmax",
            "beyond the paper (off)",
            "std of Gaussian read noise added to each tile sum A before readout",
            ">= 0, finite",
        ),
    )
    read_snr_db: float | None = field(
        default=None,
        metadata=_meta(
            "dB",
            "[C] ReadNoise: 10 dB, evaluation only, switched off in every released model",
            "signal-relative read noise on each score S and each tile sum A: Gaussian with std = rms of that read's "
            "signal (the query's scores in its window; the tile's D sums) / 10^(snr/20); None = off",
            "finite, or None",
        ),
    )
    write_noise: float = field(
        default=0.0,
        metadata=_meta(
            "V",
            "beyond the paper (off)",
            "std of Gaussian noise on each written K/V voltage (after the DAC; clipped to [0, kv_max])",
            ">= 0, finite",
        ),
    )
    cell_gain_variation: float = field(
        default=0.0,
        metadata=_meta(
            "relative",
            "beyond the paper (off)",
            "std of the fixed per-cell gain error: I = (1 + g_err) f(y) + offset",
            ">= 0, finite",
        ),
    )
    cell_offset_variation: float = field(
        default=0.0,
        metadata=_meta("uA", "beyond the paper (off)", "std of the fixed per-cell current offset", ">= 0, finite"),
    )
    seed: int = field(
        default=0,
        metadata=_meta("-", "-", "seed of every random draw (noise, fixed cell variation)", ">= 0"),
    )

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        def bad(name: str, value: Any, why: str | None = None) -> HardwareConfigError:
            allowed = why or self.field_info(name)["allowed"]
            return HardwareConfigError(f"HardwareConfig.{name} = {value!r}: must be {allowed}")

        def real(name: str, *, positive: bool = False, nonneg: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, value, "a number")
            value = float(value)
            if not math.isfinite(value):
                raise bad(name, value)
            if (positive and value <= 0) or (nonneg and value < 0):
                raise bad(name, value)
            object.__setattr__(self, name, value)

        def integer(name: str, minimum: int, *, optional: bool = False) -> None:
            value = getattr(self, name)
            if value is None and optional:
                return
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise bad(name, value)
            object.__setattr__(self, name, value)

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise bad(name, getattr(self, name))

        if not isinstance(self.name, str):
            raise bad("name", self.name)
        choice("cell", ("nonlinear", "linear", *CELL_LIBRARY))
        choice("out_quantizer", ("published", "exact"))
        choice("cell_gradient", ("surrogate", "exact"))
        coeffs = self.cell_coefficients
        if isinstance(coeffs, (str, bytes)) or not isinstance(coeffs, (list, tuple)) or not 1 <= len(coeffs) <= 12:
            raise bad("cell_coefficients", coeffs)
        for c in coeffs:
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
                raise bad("cell_coefficients", coeffs)
        object.__setattr__(self, "cell_coefficients", tuple(float(c) for c in coeffs))
        for name in ("linear_slope", "token_period", "kv_max", "score_saturation", "output_saturation", "max_pulse_width"):
            real(name, positive=True)
        for name in (
            "decay_per_token",
            "kv_offset",
            "read_noise_score",
            "read_noise_output",
            "write_noise",
            "cell_gain_variation",
            "cell_offset_variation",
        ):
            real(name, nonneg=True)
        if self.kv_offset > self.kv_max:
            raise bad("kv_offset", self.kv_offset, f"between 0 and kv_max = {self.kv_max}")
        integer("window", 1)
        integer("array_size", 1)
        integer("q_levels", 2, optional=True)
        integer("kv_levels", 2, optional=True)
        integer("out_levels", 2, optional=True)
        integer("seed", 0)
        snr = self.read_snr_db
        if snr is not None and (isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr)):
            raise bad("read_snr_db", snr)

    # ------------------------------------------------------------------ derived quantities
    @property
    def retention_time(self) -> float:
        """Retention time tau in seconds (``inf`` when there is no leakage)."""
        return math.inf if self.decay_per_token == 0 else self.token_period / self.decay_per_token

    @property
    def reads_noisy(self) -> bool:
        """A read draws noise: absolute noise on the scores or the outputs, or signal-relative noise (SNR)."""
        return self.read_noise_score > 0 or self.read_noise_output > 0 or self.read_snr_db is not None

    @property
    def reads_exactly(self) -> bool:
        """Reading stored voltages is deterministic and uniform: no read noise and no fixed cell variation."""
        return not self.reads_noisy and self.cell_gain_variation == 0 and self.cell_offset_variation == 0

    @property
    def n_tiles(self) -> int:
        """Number of gain-cell arrays (tiles) per head and per K or V: ceil(window / array_size)."""
        return -(-self.window // self.array_size)

    @property
    def cell_polynomial(self) -> tuple[float, ...]:
        """Coefficients g_0..g_n of the effective cell function f(y) = sum_n g_n y^n."""
        if self.cell == "linear":
            return (0.0, self.linear_slope)
        if self.cell in CELL_LIBRARY:
            return library_cell(self.cell, self.linear_slope, self.kv_offset, self.kv_max).coefficients
        return self.cell_coefficients

    @property
    def surrogate_slope(self) -> float:
        """Slope of the linear surrogate gradient of the cell: ``linear_slope`` for the SPICE/user polynomial (the
        paper), the rescaling factor a for a library cell (the published ablation classes' backward)."""
        if self.cell in CELL_LIBRARY:
            return library_cell(self.cell, self.linear_slope, self.kv_offset, self.kv_max).scale
        return self.linear_slope

    @property
    def has_noise(self) -> bool:
        """True when any random effect (read/write noise, cell variation) is switched on."""
        return self.read_snr_db is not None or any(
            getattr(self, n) > 0
            for n in ("read_noise_score", "read_noise_output", "write_noise", "cell_gain_variation", "cell_offset_variation")
        )

    def cell_current(self, y: float) -> float:
        """f(y): cell current (uA, full-width pulse) for a stored signed voltage y = V_store - kv_offset."""
        return sum(g * y**n for n, g in enumerate(self.cell_polynomial))

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str) -> HardwareConfig:
        """A named configuration: ``paper``, ``paper-linear``, ``ideal``, ``igzo`` (see :data:`PRESETS`)."""
        if name not in PRESETS:
            raise HardwareConfigError(f"unknown hardware preset {name!r}: choose one of {', '.join(sorted(PRESETS))}")
        return cls(name=name, **PRESETS[name]["fields"])

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def field_info(cls, name: str) -> dict[str, str]:
        """Unit, provenance, description and allowed range of one field."""
        for f in dataclasses.fields(cls):
            if f.name == name:
                return dict(f.metadata)
        raise HardwareConfigError(f"unknown HardwareConfig field {name!r}")

    def replace(self, **changes: Any) -> HardwareConfig:
        """A new validated config with ``changes`` applied.

        ``retention_time=tau`` (seconds, or ``None``/``inf`` for no leakage) is accepted and converted into
        ``decay_per_token = token_period / tau``.
        """
        base = self.to_dict()
        base.pop("retention_time")
        if "retention_time" in changes and "decay_per_token" not in changes:
            base.pop("decay_per_token")  # the new retention time sets the decay
        return type(self).from_dict({**base, **changes})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HardwareConfig:
        """Build from a mapping (as written by :meth:`to_dict`); unknown fields are an error."""
        if not isinstance(data, Mapping):
            raise HardwareConfigError(f"a hardware config must be a mapping of field names to values, got {type(data).__name__}")
        data = dict(data)
        if "preset" in data:  # {"preset": "paper", "window": 256}: start from a preset
            base = cls.preset(data.pop("preset")).to_dict()
            base.pop("retention_time")
            data = {**base, **data}
        known = set(cls.field_names())
        unknown = sorted(set(data) - known - {"retention_time"})
        if unknown:
            raise HardwareConfigError(
                f"unknown HardwareConfig field {unknown[0]!r}; known fields: {', '.join(sorted(known))}, retention_time"
            )
        if "retention_time" in data:
            tau = data.pop("retention_time")
            if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau <= 0):
                raise HardwareConfigError(f"HardwareConfig.retention_time = {tau!r}: must be > 0 seconds, or None for no leakage")
            period = data.get("token_period", cls.token_period)
            derived = 0.0 if tau is None or math.isinf(tau) else float(period) / float(tau)
            given = data.get("decay_per_token")
            implied_tau = math.inf if given is None or given == 0 else float(period) / given
            tau_f = math.inf if tau is None else float(tau)
            if given is not None and implied_tau != tau_f and not math.isclose(implied_tau, tau_f, rel_tol=1e-6):
                raise HardwareConfigError(
                    f"HardwareConfig.retention_time = {tau!r} disagrees with decay_per_token = {given!r}: "
                    f"decay_per_token must equal token_period / retention_time = {derived!r}"
                )
            if given is None:
                data["decay_per_token"] = derived
        if isinstance(data.get("cell_coefficients"), list):
            data["cell_coefficients"] = tuple(data["cell_coefficients"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python mapping of every field (plus the derived ``retention_time``, ``None`` when infinite)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["cell_coefficients"] = list(self.cell_coefficients)
        out["retention_time"] = None if math.isinf(self.retention_time) else self.retention_time
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else), atomically."""
        from gaincell.files import atomic_write_text

        path = Path(path)
        text = self.to_yaml() if path.suffix.lower() in (".yaml", ".yml") else self.to_json() + "\n"
        atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | Path) -> HardwareConfig:
        """Read a YAML or JSON file written by :meth:`save` (or by hand); validates every field."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise HardwareConfigError(f"cannot read hardware config {str(path)!r}: {exc.strerror or exc}") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise HardwareConfigError(f"cannot parse hardware config {str(path)!r}: {exc}") from None
        return cls.from_dict(data if data is not None else {})

    @classmethod
    def resolve(cls, spec: HardwareConfig | str | Path | Mapping[str, Any]) -> HardwareConfig:
        """A config from a config, a preset name, a YAML/JSON file path, or a mapping."""
        if isinstance(spec, HardwareConfig):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, str) and spec in PRESETS:
            return cls.preset(spec)
        path = Path(spec)
        if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
            return cls.load(path)
        raise HardwareConfigError(f"unknown hardware preset or file {str(spec)!r}: presets are {', '.join(sorted(PRESETS))}")

    def describe(self) -> list[dict[str, str]]:
        """One row per field: name, value, unit, provenance, description (for ``gaincell hardware show``)."""
        rows = []
        for f in dataclasses.fields(self):
            rows.append({"field": f.name, "value": _fmt(getattr(self, f.name)), **dict(f.metadata)})
        rows.append(
            {
                "field": "retention_time",
                "value": _fmt(self.retention_time),
                "unit": "s",
                "provenance": "derived: token_period / decay_per_token ([S1] tau = 5 ms for silicon gain cells)",
                "doc": "retention time tau of a stored voltage",
                "allowed": "> 0 (inf = no leakage)",
                "derived": "yes",
            }
        )
        # a preset that changes a field says where its value comes from (only while the field still has that value)
        preset = PRESETS.get(self.name, {})
        base = HardwareConfig()
        for row in rows:
            source = preset.get("provenance", {}).get(row["field"])
            field = row["field"] if row["field"] != "retention_time" else "decay_per_token"
            if source and getattr(self, field) == preset["fields"].get(field, getattr(base, field)):
                row["provenance"] = source
        return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


#: Named configurations.  Each lists only what differs from the field defaults (which are the paper's values).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "doc": "Leroux et al. 2025 nonlinear gain-cell model: SPICE cubic, 16/8/32 levels, lambda = 1.6e-4, W = 1024",
        "fields": {},
    },
    "paper-linear": {
        "doc": "the paper's linear intermediate model: f(y) = 19.3 y, otherwise as 'paper'",
        "fields": {"cell": "linear"},
    },
    "ideal": {
        "doc": "the nonlinear array with no quantisation and no leakage (isolates the cell function and HardSigmoid)",
        "fields": {"q_levels": None, "kv_levels": None, "out_levels": None, "decay_per_token": 0.0},
    },
    "igzo": {
        "doc": (
            "'paper' with the retention of an oxide-semiconductor (IGZO) gain cell: tau = 100 s, the >100 s measured on "
            "a 3-bit 8x8 IGZO 2T0C array [Li25]; the multiply curve, energies and area are still the silicon cell's"
        ),
        # lambda = token period / tau = 0.8 us / 100 s
        "fields": {"decay_per_token": 8e-9},
        "provenance": {
            "decay_per_token": "[Li25] retention > 100 s (3-bit IGZO 2T0C array); lambda = 0.8 us / 100 s [INF]",
            "retention_time": "derived: token_period / decay_per_token ([Li25] > 100 s measured for IGZO 2T0C cells)",
        },
    },
}
