"""The study on Optuna: storage, trial slots, worker processes, crash and interrupt recovery.

Optuna owns sampling, storage and the heartbeat; gaincell adds one rule so a study ends with exactly ``trials``
finished trials even with many workers on many machines: the study's creator enqueues ``trials`` *slots* (for the
grid, the grid points themselves, in a seeded order; otherwise empty slots that the sampler fills when a worker takes
one), and workers only run slots.  Taking a slot is Optuna's atomic WAITING -> RUNNING step, so no two workers run
the same one.  A worker killed mid-trial stops beating; after the grace period the next worker (or the next run of
the command) fails that trial and Optuna's ``RetryHeartbeatStaleTrialCallback`` puts the same parameters back as a new slot.
Ctrl-C fails the running trial and re-enqueues it the same way before exiting, so re-running resumes.

(A worker killed in the instant between taking a slot and its first heartbeat leaves a RUNNING trial that no
heartbeat will ever fail; the rare case shows as a study that waits.  ``optuna`` can fail it by hand:
``study.tell(number, state=TrialState.FAIL)``, then run again.)

Heartbeats need an RDB storage (the default SQLite file, PostgreSQL, MySQL); a journal file works for sharing a
study but a killed worker's trial then stays RUNNING (Optuna's journal storage has no heartbeat).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from gaincell.errors import GaincellError
from gaincell.explore.spec import Range, StudySpec, objective_direction

__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "STUDY_FILE",
    "default_threads",
    "finished_slots",
    "is_journal",
    "open_storage",
    "open_study",
    "run_worker",
    "sampler_for",
    "storage_url",
    "trial_params",
    "trial_params_of",
]

#: seconds between heartbeats of a running trial; a trial silent for GRACE_S is failed and retried
HEARTBEAT_S = 5
GRACE_S = 20
#: retries of one parameter set after crashes or interrupts (then it stays failed)
MAX_RETRY = 3
#: the default storage: this SQLite file in the study folder
STUDY_FILE = "study.db"
SLOT = "gaincell_slot"


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / STUDY_FILE).resolve()}"


def is_journal(url: str) -> bool:
    """A journal-file storage (no heartbeat) rather than an RDB URL."""
    return url.startswith("journal:") or url.endswith((".log", ".journal"))


def open_storage(url: str, heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S)) -> Any:
    """An Optuna storage for ``url``: an RDB URL (sqlite:///..., postgresql://...) with heartbeat and retry, or a
    journal file (``journal:PATH`` or a path ending in .log / .journal)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    try:
        if is_journal(url):
            from optuna.storages.journal import JournalFileBackend

            path = url.removeprefix("journal:")
            if not Path(path).parent.is_dir():
                raise GaincellError(f"cannot open storage {url!r}: folder {str(Path(path).parent)!r} does not exist")
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9; they are what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat[0],
                grace_period=heartbeat[1],
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except GaincellError:
        raise
    except Exception as exc:  # sqlalchemy / driver errors: one line naming the URL
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GaincellError(f"cannot open storage {url!r}: {first}") from None


def _suggest(trial: Any, spec: StudySpec, name: str) -> Any:
    dim = spec.space[name]
    if isinstance(dim, Range):
        if dim.integer:
            step = 1 if dim.step is None or dim.log else int(dim.step)
            return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log, step=step)
        return trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=None if dim.log else dim.step)
    return trial.suggest_categorical(name, [_storable(v) for v in dim])


def _storable(value: Any) -> Any:
    """Optuna stores None, bool, int, float and str choices; tuples (polynomials) travel as JSON strings."""
    return json.dumps(list(value)) if isinstance(value, tuple) else value


def _from_storable(name: str, spec: StudySpec, value: Any) -> Any:
    dim = spec.space[name]
    if isinstance(value, str) and not isinstance(dim, Range) and any(isinstance(v, tuple) for v in dim):
        return tuple(json.loads(value))
    return value


def sampler_for(spec: StudySpec, worker: int) -> Any:
    """The spec's sampler, seeded (worker k adds k to the seed, so workers do not draw the same points)."""
    import optuna

    seed = spec.seed + worker
    constraints = (lambda t: t.user_attrs.get("constraints", [math.inf])) if spec.constraints else None
    with warnings.catch_warnings():  # multivariate TPE and constraints are "experimental" in Optuna 4
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, multivariate=True)
        if spec.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    return optuna.samplers.RandomSampler(seed=seed)  # random; grid points are enqueued, the sampler is never asked


def open_study(
    spec: StudySpec,
    url: str,
    *,
    worker: int = 0,
    create: bool = False,
    wait_s: float = 60.0,
    heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
) -> Any:
    """Create (``create``) or load the study; the creator enqueues the slots.  A study made from another spec is
    refused (nothing is written to it)."""
    import optuna

    storage = open_storage(url, heartbeat)
    directions = [objective_direction(o) for o in spec.objectives]
    stored = spec.to_dict()
    if create:
        try:
            study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            pass
        else:
            study.set_user_attr("spec", stored)
            _enqueue_slots(study, spec)
            study.set_user_attr("ready", True)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler_for(spec, worker))
    except KeyError:
        raise GaincellError(f"no study {spec.name!r} in {url}") from None
    deadline = time.monotonic() + wait_s
    while not study.user_attrs.get("ready"):  # another process is creating it right now
        if time.monotonic() > deadline:
            raise GaincellError(f"study {spec.name!r} in {url} was never completed by its creator")
        time.sleep(0.5)
    if study.user_attrs.get("spec") != json.loads(json.dumps(stored)):
        raise GaincellError(
            f"the study {spec.name!r} in {url} was made from another spec: use the same spec to resume, or another "
            "--out / storage / name for a new study"
        )
    return study


def _enqueue_slots(study: Any, spec: StudySpec) -> None:
    import random

    if spec.sampler == "grid":
        points = spec.grid_points()
        random.Random(spec.seed).shuffle(points)
        for i, point in enumerate(points[: spec.trials]):
            study.enqueue_trial({k: _storable(v) for k, v in point.items()}, user_attrs={SLOT: i})
    else:
        for i in range(spec.trials):
            study.enqueue_trial({}, user_attrs={SLOT: i})


def trial_params(spec: StudySpec, trial: Any) -> dict[str, Any]:
    """The trial's HardwareConfig changes, suggested through Optuna (so the sampler and the dashboard see them)."""
    return {name: _from_storable(name, spec, _suggest(trial, spec, name)) for name in spec.space}


def trial_params_of(spec: StudySpec, trial: Any) -> dict[str, Any]:
    """The HardwareConfig changes of a stored (frozen) trial; fields it never reached are None."""
    return {name: _from_storable(name, spec, trial.params[name]) if name in trial.params else None for name in spec.space}


def finished_slots(study: Any) -> int:
    """Slots whose trial ended for good: completed, or failed and not put back for a retry."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if SLOT in t.user_attrs and not t.user_attrs.get("surplus")]
    retried = {t.system_attrs.get("failed_trial") for t in trials} | {
        n for t in trials for n in t.system_attrs.get("retry_history", [])
    }
    return sum(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.number not in retried) for t in trials)


class ClaimLock:
    """Serialises taking a slot between the processes of one machine on a SQLite storage.

    Optuna takes a WAITING trial by reading its state and then writing RUNNING; a server database locks the row in
    between, SQLite does not, so two workers can take the same slot.  This file lock (beside the database) is held
    from "is a slot waiting?" until the trial is RUNNING.  Other storages lock in the database and need none."""

    def __init__(self, url: str) -> None:
        self.path = Path(url.removeprefix("sqlite:///") + ".claim") if url.startswith("sqlite:///") else None
        self.handle: Any = None

    def acquire(self) -> None:
        if self.path is not None and self.handle is None:
            import fcntl

            self.handle = open(self.path, "a")  # noqa: SIM115 - held across calls, closed in release()
            fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def run_worker(
    spec_data: dict[str, Any],
    out: str,
    url: str,
    worker: int,
    threads: int,
    progress: bool = False,
    heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
) -> None:
    """One worker process: run slots until none is left (waiting for running ones that may still fail and return).
    ``heartbeat``: (seconds between beats, seconds of silence before a running trial counts as dead)."""
    import optuna
    import torch

    from gaincell.explore.point import measure_point, point_key
    from gaincell.explore.spec import StudySpec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(max(1, threads))
    spec = StudySpec.from_dict(spec_data)
    study = open_study(spec, url, worker=worker, heartbeat=heartbeat)
    beating = not is_journal(url)
    current: dict[str, Any] = {}
    from tqdm import tqdm

    bar = tqdm(total=spec.trials, desc=f"study {spec.name}", unit="trial", disable=not progress, initial=finished_slots(study))

    lock = ClaimLock(url)

    def objective(trial: Any) -> list[float]:
        lock.release()  # the slot is RUNNING now: others may take the next one
        current["number"] = trial.number
        if SLOT not in trial.user_attrs:  # a race left no slot for this worker: not a trial of the study
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("no slot left")
        params = trial_params(spec, trial)
        try:
            hardware = spec.hardware_for(params)
        except ValueError as exc:  # a combination the hardware cannot have (each value alone was checked)
            trial.set_user_attr("error", str(exc))
            raise
        start = time.perf_counter()
        try:
            metrics = measure_point(spec, hardware, Path(out) / "points" / point_key(trial.params))
        except Exception as exc:  # recorded with the trial (state FAIL), then the next slot
            trial.set_user_attr("error", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
            raise
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("wall_s", time.perf_counter() - start)
        if spec.constraints:
            trial.set_user_attr("constraints", [c.violation(metrics) for c in spec.constraints])
        return [metrics[o] for o in spec.objectives]

    while True:
        if beating:
            with warnings.catch_warnings():  # experimental since Optuna 2.9, and what study.optimize itself calls
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        lock.acquire()
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if optuna.trial.TrialState.WAITING in states:
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,))
            except KeyboardInterrupt:
                _requeue_interrupted(study, current.get("number"))
                raise
            finally:
                lock.release()
            bar.update(finished_slots(study) - bar.n)
            continue
        lock.release()
        if beating and optuna.trial.TrialState.RUNNING in states:
            time.sleep(1.0)  # others are running; a dead one will be failed and re-enqueued after the grace period
            continue
        bar.close()
        return


def _requeue_interrupted(study: Any, number: int | None) -> None:
    """Ctrl-C: the trial Optuna just failed goes back as a new slot with the same parameters."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    if number is None:
        return
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if frozen.state == TrialState.FAIL and SLOT in frozen.user_attrs:
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))
