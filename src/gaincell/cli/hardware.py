"""``gaincell hardware show|validate|presets|demo`` and ``gaincell demo``."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_hardware_show(args: argparse.Namespace) -> int:
    from gaincell.config import HardwareConfig

    cfg = HardwareConfig.resolve(args.spec)
    rows = cfg.describe()
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "fields": rows}, indent=2))
        return 0
    print(f"hardware config: {cfg.name}")
    w_field = max(len(r["field"]) for r in rows)
    w_value = min(max(len(r["value"]) for r in rows), 48)
    w_unit = max(len(r["unit"]) for r in rows)
    for r in rows:
        tag = " (derived)" if r.get("derived") else ""
        print(f"  {r['field']:<{w_field}}  {r['value']:<{w_value}}  {r['unit']:<{w_unit}}  {r['provenance']}{tag}")
    return 0


def cmd_hardware_validate(args: argparse.Namespace) -> int:
    from gaincell.config import HardwareConfig

    cfg = HardwareConfig.load(args.file)
    print(f"{args.file}: valid hardware config ({cfg.cell} cell, window {cfg.window}, {cfg.n_tiles} tiles per head)")
    return 0


def cmd_hardware_presets(args: argparse.Namespace) -> int:
    from gaincell.config import PRESETS

    if args.json:
        print(json.dumps({k: v["doc"] for k, v in PRESETS.items()}, indent=2))
        return 0
    for name, p in PRESETS.items():
        print(f"  {name:<14} {p['doc']}")
    return 0


def cmd_hardware_demo(args: argparse.Namespace) -> int:
    from gaincell.hwdemo import run_hardware_demo

    run_hardware_demo(args.out, tokens=args.tokens, quiet=args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gaincell.demo import run_demo

    run_demo(args.out, quiet=args.quiet, max_tokens=args.max_tokens)
    return 0


def register(sub: Any) -> None:
    hw = sub.add_parser("hardware", help="inspect and validate hardware configs")
    actions = hw.add_subparsers(dest="hw_command", metavar="ACTION", parser_class=type(hw), required=True)
    p = actions.add_parser("show", help="print every field with its unit and provenance")
    p.add_argument("spec", nargs="?", default="paper", help="preset name or YAML/JSON file (default: paper)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_hardware_show)
    p = actions.add_parser("validate", help="check a YAML/JSON hardware file")
    p.add_argument("file")
    p.set_defaults(handler=cmd_hardware_validate)
    p = actions.add_parser("presets", help="list the named presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_hardware_presets)
    p = actions.add_parser("demo", help="run the paper array on real text and plot the cell curve and attention maps")
    p.add_argument("--out", default="gaincell-out/hardware-demo", help="output folder")
    p.add_argument("--tokens", type=int, default=256, help="sequence length")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_hardware_demo)

    p = sub.add_parser("demo", help="Table 1 in miniature on held-out Shakespeare with the shipped models")
    p.add_argument("--out", default="gaincell-out/demo", help="output folder")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N test tokens")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_demo)
