"""Cost model: energy, latency and area of the gain-cell attention engine, and GPUs running the same decode step.

Every constant lives once in :data:`COMPONENTS` with its unit and provenance.  The paper reports stage totals for
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

Where the paper gives only a total, the split is a named assumption (``ASSUMPTIONS``) that matters only away from the
design point; at the paper preset every figure is reproduced exactly.  Bit widths and array size scale by documented
assumptions too: DAC energy with kv_levels - 1, counter energy with log2(out_levels) and its time with out_levels / 2,
pulse times with ``max_pulse_width``, array periphery area with ``array_size`` (no quantisation is costed as the
paper's bit widths).  The laws: energy is linear in M (and in d,
heads, layers); latency is flat in M except for the adder tree's log2(T) stages; area is linear in M.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError

__all__ = [
    "COMPONENTS",
    "GPU_SPECS",
    "MEASURED_GPUS",
    "ModelShape",
    "analog_cost",
    "compare",
    "gpu_roofline",
    "model_shape",
    "sweeps",
    "write_report",
]

# ---------------------------------------------------------------------------------------------------- paper design point
_M0, _D0, _A0 = 1024, 64, 64  # window, head dim, array size of the reported design
_T0 = _M0 // _A0  # 16 sub-tiles

#: Named assumptions: how the paper's stage totals split between per-cell and per-column parts.
ASSUMPTIONS = {
    "cell_fraction": (
        0.5,
        "[INF] share of each array stage's energy spent in the cells (rest: per-column charge-to-pulse / counters); "
        "the paper reports only the stage totals, so this only matters when d or the array size changes",
    ),
    "t_counter": (16e-9, "[INF] 5-bit signed counter: 16 levels at 1 GHz; scales with out_levels / 2"),
    "dac_scaling": (
        None,
        "[INF] write (DAC) energy proportional to kv_levels - 1 (charge-redistribution DAC: switched "
        "capacitance ~ 2^bits - 1); 7 at the paper's 3 bits",
    ),
    "counter_scaling": (None, "[INF] counter energy proportional to its bits log2(out_levels); 5 at the paper's 32 levels"),
    "array_periphery_scaling": (
        None,
        "[INF] periphery per array (one charge-to-pulse per column, one counter per row) proportional to array_size",
    ),
    "periphery_share_of_area": (None, "[INF] head area minus cell area, spread evenly over the head's arrays"),
}

_CF = ASSUMPTIONS["cell_fraction"][0]
_T_COUNTER = ASSUMPTIONS["t_counter"][0]
_T_PULSES = 2 * 15e-9  # Tq + Tphi at Tmax = 15 ns [N-M]
_T_ADD = (65e-9 - _T_PULSES - _T_COUNTER) / math.log2(_T0)  # the rest of the reported 65 ns over log2(16) adder stages


@dataclass(frozen=True)
class Component:
    value: float
    unit: str
    per: str
    provenance: str


#: Per-operation energies (J), times (s) and areas (mm^2).  One source of truth.
COMPONENTS: dict[str, Component] = {
    "e_cell_K": Component(
        1120e-12 * _CF / (_M0 * _D0),
        "J",
        "cell read (K array, one MAC)",
        "[S1] 1,120 pJ K stage per head-token x cell_fraction / (M d)",
    ),
    "e_ctp_K": Component(
        1120e-12 * (1 - _CF) / _M0, "J", "charge-to-pulse conversion (K array column)", "[S1] 1,120 pJ x (1 - cell_fraction) / M"
    ),
    "e_cell_V": Component(
        700e-12 * _CF / (_M0 * _D0), "J", "cell read (V array, one MAC)", "[S1] 700 pJ V stage x cell_fraction / (M d)"
    ),
    "e_counter": Component(
        700e-12 * (1 - _CF) / (_T0 * _D0),
        "J",
        "signed charge-to-pulse + counter (tile row)",
        "[S1] 700 pJ x (1 - cell_fraction) / (16 tiles x d)",
    ),
    "e_write": Component(
        330e-12 / (2 * _D0), "J", "DAC write of one cell (3 bit)", "[S1] 330 pJ DACs per head-token / (2 d written cells)"
    ),
    "e_digital": Component(
        4000e-12 / (_T0 * _D0),
        "J",
        "digital sum + routing of one tile readout",
        "[S1] 4 nJ digital control and routing (113.7 mW) / (16 tiles x d)",
    ),
    "t_pulses": Component(
        _T_PULSES, "s", "query pulse + phi pulse at Tmax", "[N-M] Tmax = 15 ns each (HardwareConfig.max_pulse_width)"
    ),
    "t_counter": Component(_T_COUNTER, "s", "tile readout (counter)", ASSUMPTIONS["t_counter"][1]),
    "t_add": Component(_T_ADD, "s", "one adder-tree stage", "[INF] (65 ns [S1] - 30 ns pulses - 16 ns counter) / log2(16)"),
    "a_cell": Component(1e-6, "mm^2", "6T gain cell", "[S1] ~1 um^2"),
    "a_array_periphery": Component(
        (0.5 - 2 * _M0 * _D0 * 1e-6) / (2 * _T0),
        "mm^2",
        "periphery per 64x64 array",
        "[S1] 0.5 mm^2 per head minus cells, over 32 arrays [INF]",
    ),
}


def _c(name: str) -> float:
    return COMPONENTS[name].value


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
def analog_cost(hw: HardwareConfig, shape: ModelShape, *, window: int | None = None) -> dict[str, Any]:
    """Energy, latency and area of the gain-cell engine for one decode step (one new token)."""
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
        "v_readout_counters": tiles * d * _c("e_counter") * math.log2(hw.out_levels or 32) / 5,
        "dac_writes": 2 * d * _c("e_write") * ((hw.kv_levels or 8) - 1) / 7,
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

#: The paper's measured points: 12 heads, d = 64, T = 1024, batch 64, sequential decode; batch-amortised per token.
MEASURED_GPUS = {
    "rtx4090-measured": {
        "latency_s": 22.37e-6,
        "energy_j": 7.178e-3,
        "source": "[C] tests_divers/nvidia_4090_attention.json",
        "paper_ratios": {"speedup": 300, "energy_ratio": 90_000},
    },
    "jetson-nano-measured": {
        "latency_s": 488.9e-6,
        "energy_j": 3.246e-3,
        "source": "[C] Jetson Nano measurement JSON",
        "paper_ratios": {"speedup": 7_000, "energy_ratio": 40_000},
    },
    "h100-paper": {
        "latency_s": 6.5e-6,
        "energy_j": 5.2e-3,
        "source": "[INF] implied by the paper's x100 / x70,000 vs H100",
        "paper_ratios": {"speedup": 100, "energy_ratio": 70_000},
    },
}
MEASURED_CAVEAT = (
    "measured GPU figures are attention only (no projections) and batch-amortised: per-token = per-step / batch 64; "
    "the real per-step latency on the RTX 4090 is 64 x 22.4 us = 1.43 ms"
)


def gpu_roofline(gpu: str, shape: ModelShape, *, window: int, batch: int, bytes_per_value: int = 2) -> dict[str, Any]:
    """Analytic decode cost of one attention layer on a GPU: KV-cache bytes over bandwidth vs FLOPs over peak.

    Per step the GPU streams the whole KV cache of every sequence (2 * M * d * kv_heads values) and does
    4 * M * d * heads FLOPs per sequence; per-token figures divide by the batch, as the paper's measurements do.
    Energy = time x board power (an upper bound: the paper subtracted idle power).
    """
    key = gpu.lower()
    if key not in GPU_SPECS:
        raise GaincellError(f"unknown GPU {gpu!r}: choose one of {', '.join(GPU_SPECS)}")
    if batch < 1:
        raise GaincellError(f"batch must be >= 1, got {batch}")
    spec = GPU_SPECS[key]
    kv_bytes = batch * 2 * window * shape.head_dim * shape.kv_heads * bytes_per_value
    flops = batch * 4 * window * shape.head_dim * shape.heads
    t = max(kv_bytes / spec.bandwidth, flops / spec.flops)
    bound = "memory" if kv_bytes / spec.bandwidth >= flops / spec.flops else "compute"
    return {
        "gpu": spec.name,
        "latency_per_step_s": t,
        "latency_s": t / batch,
        "energy_j": t * spec.power / batch,
        "bound": bound,
        "kv_bytes_per_step": kv_bytes,
        "flops_per_step": flops,
        "source": spec.source,
    }


def compare(
    hw: HardwareConfig, shape: ModelShape, *, window: int | None = None, batch: int = 64, gpus: list[str] | None = None
) -> dict[str, Any]:
    """The analog cost per head/layer/token and the speed-up and energy ratio against every GPU baseline."""
    window = window or hw.window
    if window < 1:
        raise GaincellError(f"window must be >= 1, got {window}")
    if batch < 1:
        raise GaincellError(f"batch must be >= 1, got {batch}")
    ana = analog_cost(hw, shape, window=window)
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
    for name, mgpu in MEASURED_GPUS.items():
        if not paper_point:
            continue  # the measured points are for 12 heads, d = 64, T = 1024, batch 64 only
        out["gpus"][name] = {
            "kind": "measured",
            "latency_s": mgpu["latency_s"],
            "energy_j": mgpu["energy_j"],
            "speedup": mgpu["latency_s"] / t_layer,
            "energy_ratio": mgpu["energy_j"] / e_layer,
            "paper": mgpu["paper_ratios"],
            "source": mgpu["source"],
            "caveat": MEASURED_CAVEAT,
        }
    for name in gpus if gpus is not None else list(GPU_SPECS):
        r = gpu_roofline(name, shape, window=window, batch=batch)
        out["gpus"][name] = {
            "kind": "roofline",
            **r,
            "speedup": r["latency_s"] / t_layer,
            "energy_ratio": r["energy_j"] / e_layer,
        }
    return out


# ---------------------------------------------------------------------------------------------------- sweeps and plots
WINDOWS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def sweeps(hw: HardwareConfig, *, batch: int = 64) -> dict[str, Any]:
    """Energy/latency per token vs window (GPT-2 layer) and vs model size (whole model, window = hw.window)."""
    gpt2 = BUILTIN_SHAPES["gpt2"]
    by_window = []
    for m in WINDOWS:
        r = compare(hw, gpt2, window=m, batch=batch)
        by_window.append(
            {
                "window": m,
                "analog_energy_j": r["energy_per_token_per_layer_j"],
                "analog_latency_s": r["latency_per_token_s"],
                **{f"{g}_energy_j": r["gpus"][g]["energy_j"] for g in GPU_SPECS},
                **{f"{g}_latency_s": r["gpus"][g]["latency_s"] for g in GPU_SPECS},
            }
        )
    by_model = []
    for shape in BUILTIN_SHAPES.values():
        r = compare(hw, shape, batch=batch)
        by_model.append(
            {
                "model": shape.name,
                "analog_energy_j": r["energy_per_token_j"],
                "analog_latency_s": r["latency_per_token_all_layers_s"],
                **{f"{g}_energy_j": r["gpus"][g]["energy_j"] * shape.layers for g in GPU_SPECS},
                **{f"{g}_latency_s": r["gpus"][g]["latency_s"] * shape.layers for g in GPU_SPECS},
            }
        )
    breakdown = analog_cost(hw, gpt2)["energy_breakdown_per_head_j"]
    return {"batch": batch, "by_window": by_window, "by_model": by_model, "breakdown_per_head_j": breakdown}


def write_report(hw: HardwareConfig, out: str | Path, *, batch: int = 64) -> dict[str, Any]:
    """cost.json, cost-by-window.csv, cost-by-model.csv and cost.png (sweeps + component breakdown) into ``out``;
    returns the sweeps (:func:`sweeps`)."""
    out = Path(out)
    data = sweeps(hw, batch=batch)
    _write_sweep_files(data, out)
    _write_sweep_plot(data, hw, out / "cost.png")
    return data


def _write_sweep_files(data: dict[str, Any], out: Path) -> None:
    from gaincell.files import atomic_write_text

    for key, name in (("by_window", "cost-by-window.csv"), ("by_model", "cost-by-model.csv")):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(data[key][0]))
        writer.writeheader()
        writer.writerows(data[key])
        atomic_write_text(out / name, buf.getvalue())
    atomic_write_text(out / "cost.json", json.dumps(data, indent=2) + "\n")


def _write_sweep_plot(data: dict[str, Any], hw: HardwareConfig, path: Path) -> None:
    """Top row: energy and latency vs window, the component breakdown; bottom row: energy and latency vs model size."""
    from matplotlib.figure import Figure

    from gaincell.files import atomic_write

    fig = Figure(figsize=(18, 9))
    ax = fig.subplots(2, 3)
    ax[1, 2].axis("off")
    styles = {g: s for g, s in zip(GPU_SPECS, ("--", "-.", ":", "--", ":"), strict=True)}
    for col, key in enumerate(("energy_j", "latency_s")):
        _plot_by_window(ax[0, col], data, key, styles)
    for a, key in zip((ax[1, 0], ax[1, 1]), ("energy_j", "latency_s"), strict=True):
        _plot_by_model(a, data, key, styles, hw.window)
    _plot_breakdown(ax[0, 2], data["breakdown_per_head_j"])
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def _plot_by_window(a: Any, data: dict[str, Any], key: str, styles: dict[str, str]) -> None:
    unit = {"energy_j": "J", "latency_s": "s"}[key]
    quantity = key.split("_")[0]
    ws = [r["window"] for r in data["by_window"]]
    a.loglog(ws, [r[f"analog_{key}"] for r in data["by_window"]], "o-", lw=2, label="gain cells")
    for g, spec in GPU_SPECS.items():
        a.loglog(ws, [r[f"{g}_{key}"] for r in data["by_window"]], styles[g], label=f"{spec.name} (roofline)")
    for name, mg in MEASURED_GPUS.items():  # the paper's measured points, at its window of 1024
        a.plot([1024], [mg[key]], "x", ms=9, label=f"{name} (paper)")
    a.set(
        xlabel="window M (tokens)",
        ylabel=f"{quantity} per token, one GPT-2 layer ({unit})",
        title=f"{quantity.capitalize()} vs window (batch {data['batch']})",
    )
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=7)


def _plot_by_model(a: Any, data: dict[str, Any], key: str, styles: dict[str, str], window: int) -> None:
    label = {"energy_j": "energy (J)", "latency_s": "latency (s)"}[key]
    names = [r["model"] for r in data["by_model"]]
    x = list(range(len(names)))
    a.semilogy(x, [r[f"analog_{key}"] for r in data["by_model"]], "o-", lw=2, label="gain cells")
    for g, spec in GPU_SPECS.items():
        a.semilogy(x, [r[f"{g}_{key}"] for r in data["by_model"]], styles[g], label=f"{spec.name} (roofline)")
    a.set_xticks(x, names)
    a.set(
        ylabel=f"attention {label} per token, all layers",
        title=f"{label.split()[0].capitalize()} vs model size (window {window})",
    )
    a.grid(alpha=0.3, which="both")
    a.legend(fontsize=7)


def _plot_breakdown(a: Any, parts: dict[str, float]) -> None:
    total = sum(parts.values())
    a.barh(list(parts), [v * 1e12 for v in parts.values()], color="#4c72b0")
    for y, v in enumerate(parts.values()):
        a.text(v * 1e12, y, f" {v * 1e12:.0f} pJ ({100 * v / total:.0f}%)", va="center", fontsize=8)
    a.set(xlabel="pJ per head per token", title=f"Component breakdown ({total * 1e9:.2f} nJ per head per token)")
