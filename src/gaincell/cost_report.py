"""Reports of the cost model: sweeps over window and model size, the sensitivity of the GPU ratios to the assumed
constants, and their plots and files (``gaincell cost --plots``, ``--sensitivity``)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from gaincell.config import HardwareConfig
from gaincell.cost import (
    ASSUMPTIONS,
    BUILTIN_SHAPES,
    DEFAULT_ASSUMPTIONS,
    GPU_SPECS,
    PUBLISHED_GPUS,
    CostAssumptions,
    ModelShape,
    analog_cost,
    compare,
)

__all__ = ["WINDOWS", "sensitivity", "sweeps", "write_report", "write_sensitivity_plot"]


# ---------------------------------------------------------------------------------------------------- sensitivity
def sensitivity(
    hw: HardwareConfig, shape: ModelShape, *, window: int | None = None, batch: int = 64, gpus: list[str] | None = None
) -> dict[str, Any]:
    """How the energy and latency ratios against every GPU baseline move when each assumed constant moves across its
    range (one at a time), and in the worst case (every assumption at the end least favourable to the gain cells).

    Returns ``{"base": {gpu: {...}}, "rows": [{constant, low, high, gpus: {gpu: {energy_ratio: [low, base, high],
    speedup: [...]}}}], "worst": {gpu: {energy_ratio, speedup}}}``.  ``paper-ratio`` entries are left out: they are
    the paper's claim, not a baseline.
    """

    def ratios(assumptions: CostAssumptions) -> dict[str, dict[str, float]]:
        res = compare(hw, shape, window=window, batch=batch, gpus=gpus, assumptions=assumptions)
        return {
            g: {"energy_ratio": r["energy_ratio"], "speedup": r["speedup"]}
            for g, r in res["gpus"].items()
            if r["kind"] != "paper-ratio"
        }

    base = ratios(DEFAULT_ASSUMPTIONS)
    rows = []
    for c in ASSUMPTIONS.values():
        at = {end: ratios(replace(DEFAULT_ASSUMPTIONS, **{c.name: value})) for end, value in (("low", c.low), ("high", c.high))}
        rows.append(
            {
                "constant": c.name,
                "low": c.low,
                "high": c.high,
                "default": getattr(DEFAULT_ASSUMPTIONS, c.name),
                "gpus": {
                    g: {m: [at["low"][g][m], base[g][m], at["high"][g][m]] for m in ("energy_ratio", "speedup")} for g in base
                },
            }
        )
    worst = {}
    for g in base:
        for metric in ("energy_ratio", "speedup"):
            pick = {
                row["constant"]: row["low"] if row["gpus"][g][metric][0] <= row["gpus"][g][metric][2] else row["high"]
                for row in rows
            }
            worst.setdefault(g, {})[metric] = ratios(replace(DEFAULT_ASSUMPTIONS, **pick))[g][metric]
    return {
        "hardware": hw.name,
        "model": shape.name,
        "window": window or hw.window,
        "batch": batch,
        "base": base,
        "rows": rows,
        "worst": worst,
    }


def write_sensitivity_plot(data: dict[str, Any], path: str | Path) -> None:
    """A tornado plot per GPU baseline: log10 of each ratio's span as each assumed constant moves across its range."""
    from matplotlib.figure import Figure

    from gaincell.files import atomic_write

    gpus = list(data["base"])
    names = [row["constant"] for row in data["rows"]]
    fig = Figure(figsize=(13, 1.1 + 1.9 * len(gpus)))
    axes = fig.subplots(len(gpus), 2, squeeze=False)
    for r, g in enumerate(gpus):
        for col, metric in enumerate(("energy_ratio", "speedup")):
            a = axes[r][col]
            base = data["base"][g][metric]
            for y, row in enumerate(data["rows"]):
                lo, _, hi = row["gpus"][g][metric]
                a.barh(y, max(lo, hi) - min(lo, hi), left=min(lo, hi), color="#4c72b0" if lo != hi else "#bbbbbb")
            a.axvline(base, color="k", lw=1)
            a.axvline(data["worst"][g][metric], color="#c44e52", ls="--", lw=1, label="worst case (all at once)")
            a.set_xscale("log")
            a.set_yticks(range(len(names)), names, fontsize=7)
            a.set_title(f"{g}: {'energy ratio' if metric == 'energy_ratio' else 'speed-up'} (base {base:,.0f}x)", fontsize=9)
            a.grid(alpha=0.3, which="both", axis="x")
            if r == 0 and col == 0:
                a.legend(fontsize=7)
    fig.suptitle(
        f"Sensitivity of the ratios to the assumed constants ({data['model']}, window {data['window']}, batch {data['batch']})"
    )
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=100, format="png"))


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
    for name, mg in PUBLISHED_GPUS.items():  # the paper's points, at its window of 1024
        a.plot([1024], [mg[key]], "x", ms=9, label=f"{name} ({mg['kind']})")
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
