"""Design-space exploration overhead and throughput (not a test; figures go to benchmarks/RESULTS.md).

1. An evaluation-only trial against a plain ``gaincell eval`` of the same config: both as commands (process start,
   imports, model load, tokenisation, perplexity), and in-process (the trial's ``wall_s`` against the same library
   calls ``gaincell eval`` makes).
2. Study throughput (trials per minute) with 1 and 2 worker processes on the same grid.

    python benchmarks/explore.py [--model shakespeare-nonlinear] [--tokens 8000] [--trials 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="shakespeare-nonlinear")
    ap.add_argument("--text", default="shakespeare:validation")
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gc = str(Path(sys.executable).with_name("gaincell"))
    work = Path(tempfile.mkdtemp(prefix="gaincell-explore-bench-"))
    try:
        hw = work / "hw.yaml"
        from gaincell import HardwareConfig

        HardwareConfig.preset("paper").replace(window=64).save(hw)
        spec = {
            "model": args.model,
            "hardware": str(hw),  # the trial's own config: the base point is the trial, not one more evaluation
            "text": args.text,
            "max_tokens": args.tokens,
            "space": {"window": [64]},
            "objectives": ["perplexity", "energy_per_token_j"],
            "sampler": "grid",
            "trials": 1,
        }
        eval_cmd = [gc, "eval", "--model", args.model, "--hardware", str(hw), "--text", args.text]
        eval_cmd += ["--max-tokens", str(args.tokens), "--json", "--quiet"]
        from gaincell.cli import main as gaincell_main

        evals, trials, trial_walls, in_process = [], [], [], []
        for i in range(args.repeats):
            evals.append(_timed(eval_cmd))
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                gaincell_main(eval_cmd[1:])
            in_process.append(time.perf_counter() - t)
            (work / f"s{i}.json").write_text(json.dumps(spec))
            trials.append(_timed([gc, "explore", "--spec", str(work / f"s{i}.json"), "--out", str(work / f"o{i}"), "--quiet"]))
            rows = json.loads((work / f"o{i}" / "trials.json").read_text())["trials"]
            trial_walls.append(rows[0]["wall_s"])
        print(f"gaincell eval (command, median of {args.repeats}): {statistics.median(evals):.2f} s")
        print(
            f"gaincell explore, 1 eval-only trial (command, incl. study creation and outputs): {statistics.median(trials):.2f} s"
        )
        print(f"gaincell eval in this process (imports warm): {statistics.median(in_process):.2f} s")
        print(f"trial wall_s (load + eval + cost, in the worker): {statistics.median(trial_walls):.2f} s")
        print(f"ratio trial wall_s / in-process eval: {statistics.median(trial_walls) / statistics.median(in_process):.2f}x")
        print(f"ratio trial command / eval command: {statistics.median(trials) / statistics.median(evals):.2f}x")
        # throughput
        grid = {"window": [8, 16, 32, 64], "kv_levels": [4, 8]}  # 64 / 8 is the base: no extra reference run
        for workers in (1, 2):
            s = {**spec, "space": grid, "trials": args.trials, "name": f"w{workers}"}
            (work / f"t{workers}.json").write_text(json.dumps(s))
            cmd = [gc, "explore", "--spec", str(work / f"t{workers}.json"), "--out", str(work / f"t{workers}")]
            wall = _timed([*cmd, "--workers", str(workers), "--quiet"])
            print(f"{workers} worker(s): {args.trials} trials in {wall:.1f} s = {60 * args.trials / wall:.1f} trials/min")
            if workers == 1:  # a trial inside a running study (the worker warm, as the in-process eval above)
                walls = [r["wall_s"] for r in json.loads((work / "t1" / "trials.json").read_text())["trials"]][1:]
                print(
                    f"  median trial wall_s after the first: {statistics.median(walls):.2f} s = "
                    f"{statistics.median(walls) / statistics.median(in_process):.2f}x the in-process eval"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
