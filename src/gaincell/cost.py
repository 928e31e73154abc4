"""Cost model: energy, latency and area of the gain-cell attention engine, and GPUs running the same decode step.

Every number has a status (``gaincell cost --explain``, :func:`constants_table`): *published* ones
(:data:`PUBLISHED_CONSTANTS`, with the paper section), *assumed* ones (:class:`CostAssumptions`, :data:`ASSUMPTIONS`:
why this value and the range to try) and the per-operation figures *derived* from both (:func:`per_operation`, with
the arithmetic; :data:`COMPONENTS` under the default assumptions).  The paper reports stage totals for
its design point (window M = 1024, head dim d = 64, 64x64 arrays, 16 sub-tiles of two arrays per head):
K arrays + charge-to-pulse 1,120 pJ, V arrays + signed charge-to-pulse + counters 700 pJ, digital control and routing
4 nJ, DACs 330 pJ per head per token (6.15 nJ), 65 ns per token with all heads in parallel, 0.5 mm^2 per head.
gaincell turns those into per-operation figures that scale with the design:

    energy per head per token =
        M * d * e_cell_K + M * e_ctp_K                    first array: cell reads + one charge-to-pulse per column
      + M * d * e_cell_V + T * d * e_counter              second array: cell reads + one signed readout per tile row
      + 2 * d * e_write                                   DAC writes of the new K and V columns
      + T * d * e_digital                                 digital sum / routing of every tile readout
    (T = ceil(M / array) tiles; d > array rows stacks ceil(d / array) arrays per tile.)

    latency per token (one layer, all heads in parallel) =
        Tq (query pulse) + Tphi (phi pulse) + t_counter + ceil(log2 T) * t_add

    area per head = 2 * M * d * A_cell + arrays * A_array_periphery

Where the paper gives only a total, the split is a named assumption that matters only away from the design point; at
the paper preset every figure is reproduced exactly, whatever the assumptions.  The GPU figures carry a ``kind``:
``measured`` (published measurements, with their conditions), ``paper-ratio`` (computed back from a ratio the paper
states: the claim, never evidence for it) or ``roofline`` (datasheet bandwidth, throughput and power, formula in
:data:`ROOFLINE_FORMULA`).  Bit widths and array size scale by documented
assumptions too: DAC energy with kv_levels - 1, counter energy with log2(out_levels) and its time with out_levels / 2,
pulse times with ``max_pulse_width``, array periphery area with ``array_size`` (no quantisation is costed as the
paper's bit widths).  The laws: energy is linear in M (and in d,
heads, layers); latency is flat in M except for the adder tree's log2(T) stages; area is linear in M.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError

__all__ = [
    "ASSUMPTIONS",
    "COMPONENTS",
    "GPU_SPECS",
    "MEASURED_GPUS",
    "PUBLISHED_CONSTANTS",
    "PUBLISHED_GPUS",
    "CostAssumptions",
    "CostConstant",
    "ModelShape",
    "analog_cost",
    "compare",
    "constants_table",
    "gpu_roofline",
    "model_shape",
    "per_operation",
]

# ---------------------------------------------------------------------------------------------------- constants
# The paper's design point: window M = 1024, head dim d = 64, 64x64 arrays -> 16 sub-tiles of two arrays per head.
_M0, _D0, _A0 = 1024, 64, 64
_T0 = _M0 // _A0

PUBLISHED, DERIVED, ASSUMED = "published", "derived", "assumed"


@dataclass(frozen=True)
class CostConstant:
    """One number of the cost model, with where it comes from.

    ``status``: ``published`` (``source`` names the paper section or figure), ``derived`` (``source`` shows the
    arithmetic from published numbers and, where it enters, assumed ones) or ``assumed`` (``source`` says why this
    value; ``low`` and ``high`` are the range a user should try, which ``gaincell cost --sensitivity`` sweeps).
    """

    name: str
    value: float | str
    unit: str
    status: str
    meaning: str
    source: str
    low: float | str | None = None
    high: float | str | None = None


#: What the paper publishes (per head per token at the design point, unless said otherwise).
PUBLISHED_CONSTANTS: dict[str, CostConstant] = {
    c.name: c
    for c in (
        CostConstant(
            "E_K_stage", 1120e-12, "J", PUBLISHED, "K arrays + charge-to-pulse", "[S1] energy table; [C] utils/plot_energy.py"
        ),
        CostConstant(
            "E_V_stage", 700e-12, "J", PUBLISHED, "V arrays + signed charge-to-pulse + counters", "[S1]; [C] utils/plot_energy.py"
        ),
        CostConstant(
            "E_digital", 4000e-12, "J", PUBLISHED, "digital control and routing (113.7 mW)", "[S1]; [C] utils/plot_energy.py"
        ),
        CostConstant("E_DAC", 330e-12, "J", PUBLISHED, "DACs writing the new K and V", "[S1]; [C] utils/plot_energy.py"),
        CostConstant(
            "T_token", 65e-9, "s", PUBLISHED, "latency per token, all heads in parallel", "[S1]; [C] latency_IMC = 65e-9"
        ),
        CostConstant("T_max", 15e-9, "s", PUBLISHED, "full-scale pulse width (query and phi pulses)", "[N-M] Tmax = 15 ns"),
        CostConstant("A_head", 0.5, "mm^2", PUBLISHED, "area per head including digital control", "[S1]"),
        CostConstant("A_cell", 1e-6, "mm^2", PUBLISHED, "one 6T gain cell (~1 um^2)", "[S1]"),
        CostConstant("A_kv_crossbars", 15.7e-3, "mm^2", PUBLISHED, "a GPT-2 head's K and V crossbars, excluding control", "[S1]"),
    )
}


@dataclass(frozen=True)
class CostAssumptions:
    """The assumed numbers of the cost model (see :data:`ASSUMPTIONS` for why each value and the range to try).

    At the paper's design point the analog totals do not depend on any of them (the published stage totals are
    reproduced whatever the split); away from it (other windows, head dims, bit widths, arrays) they do.  The GPU
    ones shape the roofline baselines.
    """

    cell_fraction: float = 0.5
    t_counter: float = 16e-9
    area_reading: str = "cells"
    dac_exponent: float = 1.0
    counter_exponent: float = 1.0
    gpu_power_fraction: float = 1.0
    gpu_bandwidth_efficiency: float = 1.0
    kv_bytes_per_value: float = 2.0

    def __post_init__(self) -> None:
        checks = {
            "cell_fraction": (0.0 <= self.cell_fraction <= 1.0, "0 to 1"),
            "t_counter": (0.0 <= self.t_counter <= 35e-9, "0 to 35e-9 s (65 ns minus the two 15 ns pulses)"),
            "area_reading": (self.area_reading in AREA_READINGS, " or ".join(AREA_READINGS)),
            "dac_exponent": (self.dac_exponent >= 0, ">= 0"),
            "counter_exponent": (self.counter_exponent >= 0, ">= 0"),
            "gpu_power_fraction": (0.0 < self.gpu_power_fraction <= 1.0, "above 0, at most 1"),
            "gpu_bandwidth_efficiency": (0.0 < self.gpu_bandwidth_efficiency <= 1.0, "above 0, at most 1"),
            "kv_bytes_per_value": (self.kv_bytes_per_value > 0, "> 0"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise GaincellError(f"cost assumption {name} = {getattr(self, name)!r} is out of range (allowed: {allowed})")


#: The two readings of the cell area the paper's figures allow (they do not reconcile: see docs/hardware.md).
AREA_READINGS = {
    "cells": "2 M d cells x 1 um^2 [S1] = 0.131 mm^2 of cells per head; the rest of 0.5 mm^2 is periphery",
    "crossbars": "the K and V crossbars of a head take 15.7e-3 mm^2 [S1]; the rest of 0.5 mm^2 is periphery",
}

#: Why each assumed value, and the range to try (``low``, ``high``).
ASSUMPTIONS: dict[str, CostConstant] = {
    c.name: c
    for c in (
        CostConstant(
            "cell_fraction",
            0.5,
            "-",
            ASSUMED,
            "share of each array stage's energy spent in the cells (the rest per column / per tile row)",
            "the paper gives only stage totals; an even split until the circuit breakdown is known",
            0.2,
            0.8,
        ),
        CostConstant(
            "t_counter",
            16e-9,
            "s",
            ASSUMED,
            "tile readout time of the 5-bit signed counter",
            "16 counting steps (half of 32 levels) at 1 GHz; the rest of the published 65 ns is the adder tree",
            4e-9,
            32e-9,
        ),
        CostConstant(
            "area_reading",
            "cells",
            "-",
            ASSUMED,
            "which of the paper's area figures sets the cell area",
            "131,072 cells x 1 um^2 = 0.131 mm^2 does not match the 15.7e-3 mm^2 of KV crossbars [S1]; both keep "
            "0.5 mm^2 per head at the design point",
            "crossbars",
            "cells",
        ),
        CostConstant(
            "dac_exponent",
            1.0,
            "-",
            ASSUMED,
            "DAC write energy ~ (kv_levels - 1)^p",
            "charge-redistribution DAC: switched capacitance grows as 2^bits - 1 (p = 1)",
            0.5,
            2.0,
        ),
        CostConstant(
            "counter_exponent",
            1.0,
            "-",
            ASSUMED,
            "readout energy ~ (bits of out_levels)^p",
            "a counter's flip-flops grow with its bits (p = 1)",
            0.5,
            2.0,
        ),
        CostConstant(
            "gpu_power_fraction",
            1.0,
            "-",
            ASSUMED,
            "share of the board power limit a GPU draws while decoding",
            "the power limit is an upper bound (the paper subtracted idle power from measured power)",
            0.3,
            1.0,
        ),
        CostConstant(
            "gpu_bandwidth_efficiency",
            1.0,
            "-",
            ASSUMED,
            "share of the datasheet memory bandwidth a decode step reaches",
            "the datasheet peak is a lower bound on time; decode kernels reach a fraction of it",
            0.3,
            1.0,
        ),
        CostConstant(
            "kv_bytes_per_value",
            2.0,
            "B",
            ASSUMED,
            "bytes per cached K/V value on the GPU",
            "fp16/bf16 serving; the paper's own measurement used fp32 (4 B), fp8 caches use 1 B",
            1.0,
            4.0,
        ),
    )
}

DEFAULT_ASSUMPTIONS = CostAssumptions()


@dataclass(frozen=True)
class Component:
    value: float
    unit: str
    per: str
    provenance: str


def per_operation(assumptions: CostAssumptions = DEFAULT_ASSUMPTIONS) -> dict[str, Component]:
    """Per-operation energies (J), times (s) and areas (mm^2) derived from the published totals and the assumptions;
    ``provenance`` shows the arithmetic."""
    p = PUBLISHED_CONSTANTS
    cf, t_counter = assumptions.cell_fraction, assumptions.t_counter
    e_k, e_v, e_dig, e_dac = p["E_K_stage"].value, p["E_V_stage"].value, p["E_digital"].value, p["E_DAC"].value
    t_pulses = 2 * float(p["T_max"].value)
    cells_area = 2 * _M0 * _D0 * float(p["A_cell"].value)
    if assumptions.area_reading == "crossbars":
        cells_area = float(p["A_kv_crossbars"].value)
    return {
        "e_cell_K": Component(e_k * cf / (_M0 * _D0), "J", "cell read (K array, one MAC)", "E_K_stage x cell_fraction / (M d)"),
        "e_ctp_K": Component(
            e_k * (1 - cf) / _M0, "J", "charge-to-pulse conversion (K array column)", "E_K_stage x (1 - cell_fraction) / M"
        ),
        "e_cell_V": Component(e_v * cf / (_M0 * _D0), "J", "cell read (V array, one MAC)", "E_V_stage x cell_fraction / (M d)"),
        "e_counter": Component(
            e_v * (1 - cf) / (_T0 * _D0),
            "J",
            "signed charge-to-pulse + counter (tile row)",
            "E_V_stage x (1 - cell_fraction) / (16 tiles x d)",
        ),
        "e_write": Component(e_dac / (2 * _D0), "J", "DAC write of one cell (3 bit)", "E_DAC / (2 d written cells)"),
        "e_digital": Component(
            e_dig / (_T0 * _D0), "J", "digital sum + routing of one tile readout", "E_digital / (16 tiles x d)"
        ),
        "t_pulses": Component(t_pulses, "s", "query pulse + phi pulse at Tmax", "2 x T_max"),
        "t_counter": Component(t_counter, "s", "tile readout (counter)", "assumed (t_counter)"),
        "t_add": Component(
            (float(p["T_token"].value) - t_pulses - t_counter) / math.log2(_T0),
            "s",
            "one adder-tree stage",
            "(T_token - 2 T_max - t_counter) / log2(16 tiles)",
        ),
        "a_cell": Component(cells_area / (2 * _M0 * _D0), "mm^2", "one gain cell", f"area_reading = {assumptions.area_reading}"),
        "a_array_periphery": Component(
            (float(p["A_head"].value) - cells_area) / (2 * _T0),
            "mm^2",
            "periphery per 64x64 array",
            "(A_head - cell area of a head) / 32 arrays",
        ),
    }


#: The per-operation figures under the default assumptions.  One source of truth: :func:`per_operation`.
COMPONENTS: dict[str, Component] = per_operation()


def constants_table(assumptions: CostAssumptions = DEFAULT_ASSUMPTIONS) -> list[dict[str, Any]]:
    """Every constant of the cost model: published, assumed (with the range to try) and derived (with the arithmetic)."""
    rows = [asdict(c) for c in PUBLISHED_CONSTANTS.values()]
    for c in ASSUMPTIONS.values():
        rows.append({**asdict(c), "value": getattr(assumptions, c.name)})
    for name, comp in per_operation(assumptions).items():
        rows.append(
            {
                "name": name,
                "value": comp.value,
                "unit": comp.unit,
                "status": DERIVED,
                "meaning": comp.per,
                "source": comp.provenance,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int


BUILTIN_SHAPES = {
    "gpt2": ModelShape("gpt2", 12, 12, 12, 64),
    "gpt2-medium": ModelShape("gpt2-medium", 24, 16, 16, 64),
    "gpt2-large": ModelShape("gpt2-large", 36, 20, 20, 64),
    "gpt2-xl": ModelShape("gpt2-xl", 48, 25, 25, 64),
    "llama-7b": ModelShape("llama-7b", 32, 32, 32, 128),
}


def model_shape_of(model: Any) -> ModelShape:
    """Attention shape of a loaded model."""
    return _shape_from_config(type(model).__name__, model.config)


def _shape_from_config(name: str, cfg: Any) -> ModelShape:
    layers = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    heads = getattr(cfg, "n_head", None) or cfg.num_attention_heads
    width = getattr(cfg, "n_embd", None) or cfg.hidden_size
    kv = 1 if getattr(cfg, "multi_query", False) else getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or width // heads
    return ModelShape(name, int(layers), int(heads), int(kv), int(head_dim))


def model_shape(name: str) -> ModelShape:
    """Attention shape of a model: a built-in size, a shipped model, a local HF folder or a hub id."""
    key = name.split("/")[-1].lower()
    if key in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[key]
    from transformers import AutoConfig

    from gaincell.hub import resolve_model_path

    folder = resolve_model_path(name)
    try:
        cfg = AutoConfig.from_pretrained(str(folder or name), local_files_only=folder is not None)
    except Exception:
        raise GaincellError(
            f"unknown model {name!r}: use a built-in size ({', '.join(BUILTIN_SHAPES)}), a shipped model, "
            "a local Hugging Face folder, or a reachable hub id"
        ) from None
    return _shape_from_config(name, cfg)


# ---------------------------------------------------------------------------------------------------- analog engine
def analog_cost(
    hw: HardwareConfig, shape: ModelShape, *, window: int | None = None, assumptions: CostAssumptions = DEFAULT_ASSUMPTIONS
) -> dict[str, Any]:
    """Energy, latency and area of the gain-cell engine for one decode step (one new token)."""
    ops = per_operation(assumptions)

    def _c(name: str) -> float:
        return ops[name].value

    m = window or hw.window
    if m < 1:
        raise GaincellError(f"window must be >= 1, got {m}")
    a = hw.array_size
    d = shape.head_dim
    tiles = -(-m // a)
    row_stack = -(-d // a)  # arrays stacked along the feature rows when d > array rows
    arrays = 2 * tiles * row_stack
    parts = {
        "k_cells": m * d * _c("e_cell_K"),
        "k_charge_to_pulse": m * _c("e_ctp_K"),
        "v_cells": m * d * _c("e_cell_V"),
        "v_readout_counters": tiles * d * _c("e_counter") * (math.log2(hw.out_levels or 32) / 5) ** assumptions.counter_exponent,
        "dac_writes": 2 * d * _c("e_write") * (((hw.kv_levels or 8) - 1) / 7) ** assumptions.dac_exponent,
        "digital_sum_routing": tiles * d * _c("e_digital"),
    }
    e_head = sum(parts.values())
    adder_stages = math.ceil(math.log2(tiles)) if tiles > 1 else 0
    t_counter = _c("t_counter") * ((hw.out_levels or 32) / 2) / 16
    latency_layer = 2 * hw.max_pulse_width + t_counter + adder_stages * _c("t_add")
    area_head = 2 * m * d * _c("a_cell") + arrays * _c("a_array_periphery") * a / _A0
    return {
        "window": m,
        "head_dim": d,
        "tiles_per_head": tiles,
        "arrays_per_head": arrays,
        "energy_per_token_per_head_j": e_head,
        "energy_per_token_per_layer_j": e_head * shape.heads,
        "energy_per_token_j": e_head * shape.heads * shape.layers,
        "energy_breakdown_per_head_j": parts,
        "latency_per_token_s": latency_layer,
        "latency_per_token_all_layers_s": latency_layer * shape.layers,
        "area_per_head_mm2": area_head,
        "area_per_layer_mm2": area_head * shape.heads,
        "area_mm2": area_head * shape.heads * shape.layers,
        "refresh_energy_per_head_j": 2 * m * d * _c("e_write"),
    }


# ---------------------------------------------------------------------------------------------------- GPUs
@dataclass(frozen=True)
class GPUSpec:
    name: str
    bandwidth: float  # bytes/s (HBM / DRAM)
    flops: float  # dense fp16 tensor FLOP/s
    power: float  # board power limit, W
    source: str


GPU_SPECS = {
    "h100": GPUSpec(
        "H100 SXM", 3.35e12, 989e12, 700, "NVIDIA H100 datasheet (SXM5: 3.35 TB/s HBM3, 989 TFLOPS fp16 dense, 700 W)"
    ),
    "h200": GPUSpec("H200 SXM", 4.8e12, 989e12, 700, "NVIDIA H200 datasheet (4.8 TB/s HBM3e, 989 TFLOPS fp16 dense, 700 W)"),
    "a100": GPUSpec("A100 SXM 80GB", 2.039e12, 312e12, 400, "NVIDIA A100 datasheet (2,039 GB/s, 312 TFLOPS fp16, 400 W)"),
    "rtx4090": GPUSpec("RTX 4090", 1.008e12, 165e12, 450, "NVIDIA Ada whitepaper (1,008 GB/s, 165 TFLOPS fp16/fp32-acc, 450 W)"),
    "jetson-nano": GPUSpec("Jetson Nano", 25.6e9, 0.472e12, 10, "NVIDIA Jetson Nano (25.6 GB/s LPDDR4, 472 GFLOPS fp16, 10 W)"),
}

#: Published GPU baselines.  ``kind``: ``measured`` (a measurement the paper's code published, quoted with its
#: conditions) or ``paper-ratio`` (a figure computed back from a ratio the paper states: it shows the claim, it is
#: never evidence for it).  All: 12 heads, d = 64, window 1,024, batch 64, per token = per decode step / batch.
_PAPER_MEASUREMENT = (
    "attention only (no projections), fp32, batch 64 x 12 heads x d 64, 1,024 sequential single-query decode steps "
    "on a 1,024-slot cache (SDPA, is_causal=True), 5 warm-up + 10 timed passes timed with time.time(), one NVML "
    "power reading per pass minus the mean of 10 idle readings; per token = per pass / (64 x 1,024) "
    "[C] tests_divers/test_speed_energy.py"
)
PUBLISHED_GPUS = {
    "rtx4090-measured": {
        "kind": "measured",
        "latency_s": 22.37e-6,
        "energy_j": 7.178e-3,
        "source": "[C] tests_divers/nvidia_4090_attention.json (RTX 4090): " + _PAPER_MEASUREMENT,
        "paper_ratios": {"speedup": 300, "energy_ratio": 90_000},
    },
    "jetson-nano-measured": {
        "kind": "measured",
        "latency_s": 488.9e-6,
        "energy_j": 3.246e-3,
        "source": "[C] tests_divers/nvidia_jetson_attention.json (Jetson Nano, jtop power): " + _PAPER_MEASUREMENT,
        "paper_ratios": {"speedup": 7_000, "energy_ratio": 40_000},
    },
    "h100-paper": {
        "kind": "paper-ratio",
        "latency_s": 6.5e-6,
        "energy_j": 5.2e-3,
        "source": (
            "[INF] the paper's stated x100 / x70,000 against an H100 [S1] applied to its 65 ns and 73.8 nJ per layer: "
            "6.5 us and 5.2 mJ; no H100 measurement is published, so these ratios equal the claim by construction"
        ),
        "paper_ratios": {"speedup": 100, "energy_ratio": 70_000},
    },
}
MEASURED_GPUS = {k: v for k, v in PUBLISHED_GPUS.items() if v["kind"] == "measured"}
MEASURED_CAVEAT = (
    "measured GPU figures are attention only (no projections) and batch-amortised: per-token = per-step / batch 64; "
    "the real per-step latency on the RTX 4090 is 64 x 22.4 us = 1.43 ms"
)
ROOFLINE_FORMULA = (
    "latency = max(KV bytes / (bandwidth x gpu_bandwidth_efficiency), FLOPs / peak) / batch, with KV bytes = "
    "batch x 2 M d kv_heads x kv_bytes_per_value and FLOPs = batch x 4 M d heads; energy = latency x board power x "
    "gpu_power_fraction"
)


def gpu_roofline(
    gpu: str,
    shape: ModelShape,
    *,
    window: int,
    batch: int,
    bytes_per_value: float | None = None,
    assumptions: CostAssumptions = DEFAULT_ASSUMPTIONS,
) -> dict[str, Any]:
    """Analytic decode cost of one attention layer on a GPU: KV-cache bytes over bandwidth vs FLOPs over peak.

    Per step the GPU streams the whole KV cache of every sequence (2 * M * d * kv_heads values) and does
    4 * M * d * heads FLOPs per sequence; per-token figures divide by the batch, as the paper's measurements do.
    Energy = time x board power x ``gpu_power_fraction`` (1 = the power limit, an upper bound).  Formula:
    :data:`ROOFLINE_FORMULA`.
    """
    key = gpu.lower()
    if key not in GPU_SPECS:
        raise GaincellError(f"unknown GPU {gpu!r}: choose one of {', '.join(GPU_SPECS)}")
    if batch < 1:
        raise GaincellError(f"batch must be >= 1, got {batch}")
    spec = GPU_SPECS[key]
    per_value = assumptions.kv_bytes_per_value if bytes_per_value is None else bytes_per_value
    kv_bytes = batch * 2 * window * shape.head_dim * shape.kv_heads * per_value
    flops = batch * 4 * window * shape.head_dim * shape.heads
    t_memory = kv_bytes / (spec.bandwidth * assumptions.gpu_bandwidth_efficiency)
    t = max(t_memory, flops / spec.flops)
    return {
        "gpu": spec.name,
        "latency_per_step_s": t,
        "latency_s": t / batch,
        "energy_j": t * spec.power * assumptions.gpu_power_fraction / batch,
        "bound": "memory" if t_memory >= flops / spec.flops else "compute",
        "kv_bytes_per_step": kv_bytes,
        "flops_per_step": flops,
        "source": f"{spec.source}; {ROOFLINE_FORMULA}",
    }


def compare(
    hw: HardwareConfig,
    shape: ModelShape,
    *,
    window: int | None = None,
    batch: int = 64,
    gpus: list[str] | None = None,
    assumptions: CostAssumptions = DEFAULT_ASSUMPTIONS,
) -> dict[str, Any]:
    """The analog cost per head/layer/token and the speed-up and energy ratio against every GPU baseline."""
    window = window or hw.window
    if window < 1:
        raise GaincellError(f"window must be >= 1, got {window}")
    if batch < 1:
        raise GaincellError(f"batch must be >= 1, got {batch}")
    ana = analog_cost(hw, shape, window=window, assumptions=assumptions)
    e_layer, t_layer = ana["energy_per_token_per_layer_j"], ana["latency_per_token_s"]
    out: dict[str, Any] = {
        "hardware": hw.name,
        "model": shape.name,
        "layers": shape.layers,
        "heads": shape.heads,
        "head_dim": shape.head_dim,
        "batch": batch,
        **ana,
        "gpus": {},
    }
    paper_point = shape.heads == 12 and shape.head_dim == 64 and window == 1024 and batch == 64
    for name, mgpu in PUBLISHED_GPUS.items():
        if not paper_point:
            continue  # the published points are for 12 heads, d = 64, T = 1024, batch 64 only
        out["gpus"][name] = {
            "kind": mgpu["kind"],
            "latency_s": mgpu["latency_s"],
            "energy_j": mgpu["energy_j"],
            "speedup": mgpu["latency_s"] / t_layer,
            "energy_ratio": mgpu["energy_j"] / e_layer,
            "paper": mgpu["paper_ratios"],
            "source": mgpu["source"],
            "caveat": MEASURED_CAVEAT,
        }
    for name in gpus if gpus is not None else list(GPU_SPECS):
        r = gpu_roofline(name, shape, window=window, batch=batch, assumptions=assumptions)
        out["gpus"][name] = {
            "kind": "roofline",
            **r,
            "speedup": r["latency_s"] / t_layer,
            "energy_ratio": r["energy_j"] / e_layer,
        }
    return out
