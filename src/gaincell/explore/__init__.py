"""Design-space exploration: accuracy and cost of hardware variants in one Optuna study.

``gaincell.explore(spec, out)`` (or ``gaincell explore --spec FILE --out DIR``) varies HardwareConfig fields,
measures each point (perplexity as ``gaincell eval``, energy / latency / area as ``gaincell cost``, lm-eval accuracy)
and writes the trial table, the Pareto front and a self-contained report into ``out``.  The study lives in an Optuna
storage (a SQLite file in ``out`` by default), so re-running resumes it, several worker processes or machines share
it, and ``optuna-dashboard sqlite:///OUT/study.db`` shows it live.

============================  ==========================================================================
``gaincell.explore.spec``     :class:`StudySpec`: the study as validated plain data (YAML / JSON)
``gaincell.explore.point``    one design point: the pipeline (convert / adapt / fine-tune), then its metrics
``gaincell.explore.study``    Optuna: storage, slots, workers, heartbeat retry, Ctrl-C re-enqueue
``gaincell.explore.report``   trials.csv / .json, pareto.md / .png, sensitivity.png, report.html
``gaincell.explore.studies``  the built-in studies (cells, bits, window, retention)
============================  ==========================================================================
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

from gaincell.errors import GaincellError
from gaincell.explore.spec import ExploreSpecError, StudySpec
from gaincell.explore.studies import BUILTIN_STUDIES, builtin_study

__all__ = ["BUILTIN_STUDIES", "ExploreSpecError", "StudySpec", "builtin_study", "explore"]


def explore(
    spec: StudySpec | dict[str, Any] | str | Path,
    out: str | Path,
    *,
    workers: int = 1,
    storage: str | None = None,
    progress: bool = True,
    heartbeat: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study and write its outputs into ``out``; returns the summary.

    ``spec``: a :class:`StudySpec`, a mapping, or a YAML / JSON file.  ``workers``: local worker processes (1: this
    process).  ``storage``: any Optuna storage URL (default: ``sqlite:///OUT/study.db``); ``journal:PATH`` for a
    journal file.  ``heartbeat``: (seconds between a running trial's beats, seconds of silence after which it is
    failed and retried); default (5, 20).  Invalid input raises before anything is written.
    """
    from gaincell.explore.report import write_outputs
    from gaincell.explore.study import GRACE_S, HEARTBEAT_S, default_threads, open_study, run_worker, storage_url

    if isinstance(spec, (str, Path)):
        spec = StudySpec.load(spec)
    elif isinstance(spec, dict):
        spec = StudySpec.from_dict(spec)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise GaincellError(f"workers must be an integer >= 1, got {workers!r}")
    from gaincell.cost import model_shape

    model_shape(spec.model)  # an unknown model is an error now, not one failed trial after another
    out = Path(out)
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    beat = heartbeat or (HEARTBEAT_S, GRACE_S)
    study = open_study(spec, url, create=True, heartbeat=beat)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    threads = default_threads(workers)
    if workers == 1:
        run_worker(spec.to_dict(), str(out), url, 0, threads, progress, beat)
    else:
        _run_processes(spec, out, url, workers, threads, progress, beat)
    wall = time.perf_counter() - start
    trials = study.get_trials(deepcopy=False)
    summary = write_outputs(spec, trials, out, _reference(spec, trials, out))
    summary.update(storage=url, workers=workers, wall_s=wall)
    return summary


def _run_processes(
    spec: StudySpec, out: Path, url: str, workers: int, threads: int, progress: bool, beat: tuple[int, int]
) -> None:
    from tqdm import tqdm

    from gaincell.explore.study import finished_slots, open_study, run_worker

    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=run_worker, args=(spec.to_dict(), str(out), url, w, threads, False, beat)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    study = open_study(spec, url, heartbeat=beat)
    bar = tqdm(total=spec.trials, desc=f"study {spec.name}", unit="trial", disable=not progress)
    try:
        while any(p.is_alive() for p in procs):
            bar.update(finished_slots(study) - bar.n)
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:  # the workers got the same Ctrl-C: they re-enqueue their trials and exit
            p.join(timeout=30)
        raise
    finally:
        bar.update(finished_slots(study) - bar.n)
        bar.close()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise GaincellError(f"{len(failed)} worker process(es) failed (exit codes {failed}); run again to resume")


def _reference(spec: StudySpec, trials: list[Any], out: Path) -> dict[str, Any] | None:
    """The base hardware's metrics, marked on the plots: a completed trial at the base config, else measured once
    (kept in OUT/reference.json for this spec)."""
    from gaincell.explore.point import measure_point
    from gaincell.explore.study import trial_params_of

    base = spec.base_hardware
    for t in trials:
        if t.state.name == "COMPLETE" and "metrics" in t.user_attrs:
            try:
                if spec.hardware_for(trial_params_of(spec, t)) == base:
                    return dict(t.user_attrs["metrics"])
            except ValueError:
                continue
    cached = out / "reference.json"
    key = json.dumps(spec.to_dict(), sort_keys=True, default=str)
    if cached.is_file():
        data = json.loads(cached.read_text())
        if data.get("spec") == key:
            return data["metrics"]
    from gaincell.files import atomic_write_text

    metrics = measure_point(spec, base, out / "points" / "reference")
    atomic_write_text(cached, json.dumps({"spec": key, "metrics": metrics}))
    return metrics
