"""``gaincell cost`` (energy, latency and area of the engine against GPUs) and ``gaincell bench-gpu``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gaincell.errors import GaincellError


def cmd_cost(args: argparse.Namespace) -> int:
    from gaincell.config import HardwareConfig
    from gaincell.cost import GPU_SPECS, CostAssumptions, compare, constants_table, model_shape
    from gaincell.cost_report import sensitivity, write_report, write_sensitivity_plot

    assumptions = CostAssumptions(area_reading=args.area_reading)
    if args.explain:
        return print_constants(constants_table(assumptions), args.json)
    hw = HardwareConfig.resolve(args.hardware)
    shape = model_shape(args.model)
    if args.gpu and args.gpu.lower() not in GPU_SPECS:
        raise GaincellError(f"unknown GPU {args.gpu!r}: choose one of {', '.join(GPU_SPECS)}")
    if args.window is not None and args.window < 1:
        raise GaincellError(f"--window must be >= 1, got {args.window}")
    if args.window is not None and args.window % hw.array_size and args.window > hw.array_size:
        raise GaincellError(f"--window {args.window} is not a whole number of {hw.array_size}-token arrays")
    gpus = [args.gpu] if args.gpu else None
    if args.sensitivity:
        data = sensitivity(hw, shape, window=args.window, batch=args.batch, gpus=gpus)
        if args.plots:
            write_sensitivity_plot(data, Path(args.plots) / "sensitivity.png")
        print(json.dumps(data, indent=2) if args.json else "\n".join(sensitivity_lines(data)))
        return 0
    res = compare(hw, shape, window=args.window, batch=args.batch, gpus=gpus, assumptions=assumptions)
    res["constants"] = constants_table(assumptions)
    if args.plots:
        write_report(hw, args.plots, batch=args.batch)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    lines = cost_lines(res)
    if args.plots:
        lines.append(f"wrote {args.plots}/cost.png, cost.json, cost-by-window.csv, cost-by-model.csv")
    print("\n".join(lines))
    return 0


def cost_lines(res: dict[str, Any]) -> list[str]:
    """The human-readable form of :func:`gaincell.cost.compare`'s result."""
    e_h, e_l, e_t = res["energy_per_token_per_head_j"], res["energy_per_token_per_layer_j"], res["energy_per_token_j"]
    lines = [
        f"gain-cell attention, hardware {res['hardware']}, model {res['model']} ({res['layers']} layers x "
        f"{res['heads']} heads, d = {res['head_dim']}), window {res['window']} ({res['tiles_per_head']} tiles per head)",
        f"  energy per token:  {e_h * 1e9:.2f} nJ per head, {e_l * 1e9:.1f} nJ per layer, {e_t * 1e6:.3f} uJ all layers",
        f"  latency per token: {res['latency_per_token_s'] * 1e9:.0f} ns per layer (all heads in parallel), "
        f"{res['latency_per_token_all_layers_s'] * 1e6:.2f} us all layers",
        f"  area:              {res['area_per_head_mm2']:.3f} mm^2 per head, {res['area_mm2']:.1f} mm^2 all layers",
        "  breakdown per head: " + ", ".join(f"{k} {v * 1e12:.0f} pJ" for k, v in res["energy_breakdown_per_head_j"].items()),
        f"against GPUs (one layer, batch {res['batch']}, per token):",
    ]
    for name, g in res["gpus"].items():
        paper = f"  (paper: x{g['paper']['speedup']:,} / x{g['paper']['energy_ratio']:,})" if "paper" in g else ""
        kind = {"measured": "measured", "paper-ratio": "paper-ratio: the paper's claim, not evidence"}.get(
            g["kind"], f"roofline, {g.get('bound')}-bound"
        )
        lines.append(
            f"  {name:<22} {g['latency_s'] * 1e6:10.3f} us {g['energy_j'] * 1e3:10.4f} mJ   "
            f"speed-up x{g['speedup']:,.0f}  energy x{g['energy_ratio']:,.0f}  [{kind}]{paper}"
        )
    if any(g["kind"] == "measured" for g in res["gpus"].values()):
        lines.append("  note: " + next(g["caveat"] for g in res["gpus"].values() if g["kind"] == "measured"))
    lines.append("  sources: --json lists each entry's source; --explain the status of every constant; --sensitivity")
    return lines


def print_constants(rows: list[dict[str, Any]], as_json: bool) -> int:
    """``gaincell cost --explain``: every constant with its status and source (and the range of the assumed ones)."""
    if as_json:
        print(json.dumps({"constants": rows}, indent=2))
        return 0
    for status in ("published", "assumed", "derived"):
        print(f"{status}:")
        for r in (r for r in rows if r["status"] == status):
            value = f"{r['value']:.4g}" if isinstance(r["value"], float) else str(r["value"])
            span = f"  [try {r['low']} .. {r['high']}]" if status == "assumed" else ""
            print(f"  {r['name']:<26} {value:>10} {r['unit']:<5} {r['meaning']}{span}")
            print(f"  {'':<26} {'':>10} {'':<5} <- {r['source']}")
    return 0


def sensitivity_lines(data: dict[str, Any]) -> list[str]:
    """The sensitivity table: each ratio at the low end, default and high end of each assumed constant's range."""
    lines = [
        f"sensitivity of the ratios ({data['model']}, window {data['window']}, batch {data['batch']}); "
        "each cell: at low .. default .. at high of the constant's range"
    ]
    for g, base in data["base"].items():
        lines.append(f"{g}: energy x{base['energy_ratio']:,.0f}, speed-up x{base['speedup']:,.0f}")
        for row in data["rows"]:
            e, t = row["gpus"][g]["energy_ratio"], row["gpus"][g]["speedup"]
            if e[0] == e[2] and t[0] == t[2]:
                continue
            lines.append(f"  {row['constant']:<26} energy x{e[0]:,.0f} .. x{e[2]:,.0f}   speed-up x{t[0]:,.0f} .. x{t[2]:,.0f}")
        worst = data["worst"][g]
        lines.append(
            f"  {'worst case, all at once':<26} energy x{worst['energy_ratio']:,.0f}   speed-up x{worst['speedup']:,.0f}"
        )
    unmoved = [row["constant"] for row in data["rows"] if all(v[0] == v[2] for gr in row["gpus"].values() for v in gr.values())]
    if unmoved:
        lines.append(f"no effect here: {', '.join(unmoved)}")
    return lines


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    from gaincell.gpu_bench import METHODS, bench_gpu

    res = bench_gpu(batch=args.batch, window=args.window, steps=args.steps, repeats=args.repeats, method=args.method)
    if res is None:
        print("no CUDA GPU on this machine: nothing measured")
        print(f"(method {args.method}: " + "; ".join(f"{k} {v}" for k, v in METHODS[args.method].items()) + ")")
        return 0
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    energy = "n/a (no NVML)" if res["energy_j"] is None else f"{res['energy_j'] * 1e3:.4f} mJ"
    print(
        f"{res['gpu']}: {res['latency_s'] * 1e6:.3f} us and {energy} per token "
        f"({res['heads']} heads, d {res['head_dim']}, window {res['window']}, batch {res['batch']})"
    )
    method = res["method"]
    print(f"method {method['name']}: " + "; ".join(f"{k} {v}" for k, v in method.items() if k != "name"))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("cost", help="energy, latency and area of the gain-cell engine vs GPUs")
    p.add_argument("--hardware", default="paper")
    p.add_argument("--model", default="gpt2", help="gpt2[-medium|-large|-xl], llama-7b, a shipped model, HF folder or hub id")
    p.add_argument("--window", type=int, default=None, help="default: the hardware window")
    p.add_argument("--batch", type=int, default=64, help="GPU batch (the paper measured 64)")
    p.add_argument("--gpu", default=None, help="only this GPU roofline (h100, h200, a100, rtx4090, jetson-nano)")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write sweeps and the breakdown (PNG, CSV, JSON)")
    p.add_argument(
        "--area-reading",
        default="cells",
        choices=["cells", "crossbars"],
        help="which published area sets the cell area (they disagree; both keep 0.5 mm^2 per head at the design point)",
    )
    p.add_argument("--explain", action="store_true", help="every constant: value, status (published/derived/assumed), source")
    p.add_argument("--sensitivity", action="store_true", help="how the GPU ratios move across each assumed constant's range")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_cost)
    p = sub.add_parser("bench-gpu", help="measure decode attention latency/energy on the local CUDA GPU (NVML)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--method",
        default="paper",
        choices=["paper", "corrected"],
        help="paper: the published measurement's conditions (fp32, is_causal=True, time.time()); "
        "corrected: fp16, is_causal=False, CUDA events, sampled power",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench_gpu)
