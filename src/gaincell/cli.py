"""The ``gaincell`` command.  Every subcommand lives in its own module; this file only wires them up.

Errors a user can fix (bad input, unknown names, missing files) print one line and exit with status 2; ``--debug``
shows the traceback instead.  Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gaincell import __version__
from gaincell.errors import GaincellError

Handler = Callable[[argparse.Namespace], int | None]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _hardware_show(args: argparse.Namespace) -> int:
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


def _hardware_validate(args: argparse.Namespace) -> int:
    from gaincell.config import HardwareConfig

    cfg = HardwareConfig.load(args.file)
    print(f"{args.file}: valid hardware config ({cfg.cell} cell, window {cfg.window}, {cfg.n_tiles} tiles per head)")
    return 0


def _hardware_presets(args: argparse.Namespace) -> int:
    from gaincell.config import PRESETS

    if args.json:
        print(json.dumps({k: v["doc"] for k, v in PRESETS.items()}, indent=2))
        return 0
    for name, p in PRESETS.items():
        print(f"  {name:<14} {p['doc']}")
    return 0


def _hardware_demo(args: argparse.Namespace) -> int:
    from gaincell.hwdemo import run_hardware_demo

    run_hardware_demo(args.out, tokens=args.tokens, quiet=args.quiet)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gaincell.demo import run_demo

    run_demo(args.out, quiet=args.quiet, max_tokens=args.max_tokens)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gaincell", description="Analog gain-cell attention: simulate, convert, adapt, evaluate, cost.")
    p.add_argument("--version", action="version", version=f"gaincell {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    hw = sub.add_parser("hardware", help="inspect and validate hardware configs")
    hw_sub = hw.add_subparsers(dest="hw_command", metavar="ACTION", parser_class=_Parser, required=True)
    show = hw_sub.add_parser("show", help="print every field with its unit and provenance")
    show.add_argument("spec", nargs="?", default="paper", help="preset name or YAML/JSON file (default: paper)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_hardware_show)
    val = hw_sub.add_parser("validate", help="check a YAML/JSON hardware file")
    val.add_argument("file")
    val.set_defaults(handler=_hardware_validate)
    pre = hw_sub.add_parser("presets", help="list the named presets")
    pre.add_argument("--json", action="store_true")
    pre.set_defaults(handler=_hardware_presets)
    demo = hw_sub.add_parser("demo", help="run the paper array on real text and plot the cell curve and attention maps")
    demo.add_argument("--out", default="gaincell-out/hardware-demo", help="output folder")
    demo.add_argument("--tokens", type=int, default=256, help="sequence length")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(handler=_hardware_demo)

    top_demo = sub.add_parser("demo", help="Table 1 in miniature on held-out Shakespeare with the shipped models")
    top_demo.add_argument("--out", default="gaincell-out/demo", help="output folder")
    top_demo.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N test tokens")
    top_demo.add_argument("--quiet", action="store_true")
    top_demo.set_defaults(handler=_demo)

    for register in _registrations():
        register(sub)
    return p


def _registrations() -> list[Callable[[Any], None]]:
    """Subcommands defined in other modules (each module exposes ``register(subparsers)``)."""
    import importlib

    regs = []
    for name in _COMMAND_MODULES:
        module = importlib.import_module(name)
        regs.append(module.register)
    return regs


_COMMAND_MODULES: list[str] = ["gaincell.commands", "gaincell.generation", "gaincell.bench"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = [a for a in argv[:2] if a == "--debug"]
    if argv[len(head) : len(head) + 1] == ["lm-eval"]:  # pass everything after it to lm_eval's own parser
        argv = [*head, "lm-eval", "--", *argv[len(head) + 1 :]]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("gaincell: interrupted", file=sys.stderr)
        return 130
    except (GaincellError, OSError, ValueError) as exc:
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        print(f"gaincell: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
