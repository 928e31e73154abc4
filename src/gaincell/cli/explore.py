"""``gaincell explore``: a design-space study of accuracy and cost on Optuna (see :mod:`gaincell.explore`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gaincell.errors import GaincellError


def cmd_explore(args: argparse.Namespace) -> int:
    from gaincell.explore import BUILTIN_STUDIES, StudySpec, builtin_study, explore

    if args.list:
        for name, (what, cost, _) in BUILTIN_STUDIES.items():
            print(f"{name:<10} {what} [{cost}]")
        return 0
    if (args.spec is None) == (args.study is None):
        raise GaincellError("give exactly one of --spec FILE or --study NAME")
    if args.out is None:
        raise GaincellError("--out DIR is required")
    spec = StudySpec.load(args.spec) if args.spec else builtin_study(args.study)
    summary = explore(spec, args.out, workers=args.workers, storage=args.storage, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"study {summary['study']}: {summary['complete']} of {summary['trials']} trials complete, {summary['failed']} failed")
    print(f"Pareto front ({len(summary['pareto'])} trials):")
    for row in summary["pareto"]:
        print("  " + ", ".join(f"{k}={_short(v)}" for k, v in row.items()))
    for path in summary["paths"].values():
        print(f"wrote {path}")
    print(f"storage: {summary['storage']} (optuna-dashboard {summary['storage']})")
    return 0


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def register(sub: Any) -> None:
    p = sub.add_parser("explore", help="design-space study: accuracy x cost of hardware variants (Optuna)")
    p.add_argument("--spec", default=None, metavar="FILE", help="study spec (YAML or JSON)")
    p.add_argument("--study", default=None, help="a built-in study: cells, bits, window, retention (--list)")
    p.add_argument("--list", action="store_true", help="list the built-in studies with their cost")
    p.add_argument("--out", default=None, metavar="DIR", help="outputs (and the default SQLite storage)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument(
        "--storage", default=None, metavar="URL", help="any Optuna storage URL (default sqlite:///DIR/study.db); journal:PATH"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_explore)
