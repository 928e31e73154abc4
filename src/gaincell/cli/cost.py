"""``gaincell cost`` (energy, latency and area of the engine against GPUs) and ``gaincell bench-gpu``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gaincell.errors import GaincellError


def cmd_cost(args: argparse.Namespace) -> int:
    from gaincell.config import HardwareConfig
    from gaincell.cost import GPU_SPECS, compare, model_shape, write_report

    hw = HardwareConfig.resolve(args.hardware)
    shape = model_shape(args.model)
    if args.gpu and args.gpu.lower() not in GPU_SPECS:
        raise GaincellError(f"unknown GPU {args.gpu!r}: choose one of {', '.join(GPU_SPECS)}")
    if args.window is not None and args.window < 1:
        raise GaincellError(f"--window must be >= 1, got {args.window}")
    if args.window is not None and args.window % hw.array_size and args.window > hw.array_size:
        raise GaincellError(f"--window {args.window} is not a whole number of {hw.array_size}-token arrays")
    res = compare(hw, shape, window=args.window, batch=args.batch, gpus=[args.gpu] if args.gpu else None)
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
        kind = "measured" if g["kind"] == "measured" else f"roofline, {g['bound']}-bound"
        lines.append(
            f"  {name:<22} {g['latency_s'] * 1e6:10.3f} us {g['energy_j'] * 1e3:10.4f} mJ   "
            f"speed-up x{g['speedup']:,.0f}  energy x{g['energy_ratio']:,.0f}  [{kind}]{paper}"
        )
    if any(g["kind"] == "measured" for g in res["gpus"].values()):
        lines.append("  note: " + next(g["caveat"] for g in res["gpus"].values() if g["kind"] == "measured"))
    return lines


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    from gaincell.gpu_bench import bench_gpu

    res = bench_gpu(batch=args.batch, window=args.window, steps=args.steps, repeats=args.repeats)
    if res is None:
        print("no CUDA GPU on this machine: nothing measured")
        return 0
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    energy = "n/a (no NVML)" if res["energy_j"] is None else f"{res['energy_j'] * 1e3:.4f} mJ"
    print(
        f"{res['gpu']}: {res['latency_s'] * 1e6:.3f} us and {energy} per token "
        f"({res['heads']} heads, d {res['head_dim']}, window {res['window']}, batch {res['batch']})"
    )
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("cost", help="energy, latency and area of the gain-cell engine vs GPUs")
    p.add_argument("--hardware", default="paper")
    p.add_argument("--model", default="gpt2", help="gpt2[-medium|-large|-xl], llama-7b, a shipped model, HF folder or hub id")
    p.add_argument("--window", type=int, default=None, help="default: the hardware window")
    p.add_argument("--batch", type=int, default=64, help="GPU batch (the paper measured 64)")
    p.add_argument("--gpu", default=None, help="only this GPU roofline (h100, h200, a100, rtx4090, jetson-nano)")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write sweeps and the breakdown (PNG, CSV, JSON)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_cost)
    p = sub.add_parser("bench-gpu", help="measure decode attention latency/energy on the local CUDA GPU (NVML)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench_gpu)
