"""``gaincell bench`` (lm-evaluation-harness tasks for several models, a Table 1-like table) and ``gaincell lm-eval``
(lm_eval's own command line with gaincell's offline tasks on its include path)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gaincell.errors import GaincellError


def cmd_bench(args: argparse.Namespace) -> int:
    from gaincell.bench import evaluate_models, table
    from gaincell.files import atomic_write_text
    from gaincell.hub import shipped_models

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else [m["name"] for m in shipped_models()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not models or not tasks:
        raise GaincellError("give --models (or ship models) and --tasks")
    data = evaluate_models(models, tasks, hardware=args.hardware, limit=args.limit, batch_size=args.batch_size)
    lines = ["# gaincell bench (lm-evaluation-harness)", "", f"limit per task: {args.limit or 'all'}", "", *table(data), ""]
    out = Path(args.out)
    atomic_write_text(out / "bench.md", "\n".join(lines))
    atomic_write_text(out / "bench.json", json.dumps(data, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(lines[4:]))
        print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    """``lm_eval`` itself, with the offline tasks on the include path (and the model type registered even without the .pth hook)."""
    from lm_eval.__main__ import cli_evaluate

    import gaincell.lm_eval_plugin  # noqa: F401
    from gaincell.bench import task_dir

    argv = list(args.lm_eval_args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if "--include_path" not in argv:
        argv += ["--include_path", str(task_dir())]
    sys.argv = ["lm_eval", *argv]
    cli_evaluate()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="lm-evaluation-harness tasks for several models: a Table 1-like Markdown/JSON")
    p.add_argument("--models", default=None, help="comma-separated models (default: the shipped ones)")
    p.add_argument("--tasks", default="gaincell_social_iqa,gaincell_physical_intuition,gaincell_shakespeare_ppl")
    p.add_argument("--hardware", default=None, help="convert every model to this (default: as saved)")
    p.add_argument("--limit", type=int, default=None, help="examples per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default="gaincell-out/bench")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_bench)
    p = sub.add_parser(
        "lm-eval", help="run lm_eval's own CLI with the offline gaincell tasks on the include path", add_help=False
    )
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_lm_eval)
