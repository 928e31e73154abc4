"""What a design-space study is, as plain data: :class:`StudySpec`, read from YAML or JSON and validated up front.

A spec names the model, the base hardware, the evaluation text, the space (HardwareConfig fields: a list is a
categorical choice, a mapping ``{low, high, log, step}`` a range), what each trial runs (``pipeline``), the
objectives (all minimised except lm-eval accuracies), optional constraints, the sampler, the number of trials and a
seed.  Every mistake is found here, before anything is written, and reported in one line naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaincell.config import HardwareConfig, HardwareConfigError
from gaincell.errors import GaincellError

__all__ = [
    "COST_OBJECTIVES",
    "SAMPLERS",
    "Constraint",
    "ExploreSpecError",
    "Pipeline",
    "Range",
    "StudySpec",
    "objective_direction",
]

#: metrics of ``gaincell cost --json`` a study can minimise (same names, same numbers)
COST_OBJECTIVES = ("energy_per_token_j", "latency_per_token_s", "area_mm2")
#: samplers a spec can name (grid: every point of the product of the space's lists, each once)
SAMPLERS = ("grid", "random", "tpe", "nsga2")
#: ``acc:TASK`` objectives: the accuracy of an lm-eval task (maximised)
ACCURACY_PREFIX = "acc:"
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w:.-]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


class ExploreSpecError(GaincellError):
    """A study spec that cannot run: the message names the key and what is allowed."""


def objective_direction(name: str) -> str:
    """``minimize`` or ``maximize`` for an objective name (unknown names raise)."""
    if name == "perplexity" or name in COST_OBJECTIVES:
        return "minimize"
    if name.startswith(ACCURACY_PREFIX) and len(name) > len(ACCURACY_PREFIX):
        return "maximize"
    raise ExploreSpecError(
        f"objectives: unknown objective {name!r}: choose perplexity, {', '.join(COST_OBJECTIVES)}, or acc:TASK (an lm-eval task)"
    )


@dataclass(frozen=True)
class Range:
    """A numeric range of one field: uniform (or log-uniform) between ``low`` and ``high``, optionally stepped."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def grid(self) -> list[float | int]:
        """The points of a stepped range (the grid sampler needs them)."""
        if self.step is None or self.log:
            raise ExploreSpecError("space: the grid sampler needs lists, or ranges with a step and no log")
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        points = [self.low + i * self.step for i in range(n)]
        return [round(p) for p in points] if self.integer else points


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` (or >=, <, >): passed to the sampler as a constraint (feasible when violation <= 0)."""

    metric: str
    op: str
    bound: float

    def violation(self, metrics: dict[str, float]) -> float:
        value = metrics[self.metric]
        return value - self.bound if self.op in ("<=", "<") else self.bound - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Pipeline:
    """What one trial runs before it is measured: convert -> (adapt from a linear model) -> (fine-tune N steps)."""

    adapt: bool = False
    finetune_steps: int = 0
    calib: str = "shakespeare:train"  # calibration text of the adaptation (as ``gaincell adapt --calib``)
    calib_batch: int = 16
    calib_context: int = 128
    train: str = "shakespeare:train"  # training text of the fine-tune
    lr: float = 3e-4
    batch_size: int = 16
    train_context: int = 128
    seed: int = 0


@dataclass(frozen=True)
class StudySpec:
    """One design-space study (see the module docstring); build with :meth:`from_dict` or :meth:`load`."""

    model: str
    space: dict[str, Any]  # field -> list of values | Range
    hardware: str = "paper"
    text: str = "shakespeare:validation"
    context: int | None = None  # as ``gaincell eval``: the model's positions
    stride: int | None = None  # as ``gaincell eval``: the context
    max_tokens: int | None = None  # evaluate on the first N tokens of the text (None: all)
    pipeline: Pipeline = field(default_factory=Pipeline)
    objectives: tuple[str, ...] = ("perplexity", "energy_per_token_j")
    constraints: tuple[Constraint, ...] = ()
    sampler: str = "tpe"
    trials: int = 20
    seed: int = 0
    lm_eval_limit: int | None = 200  # examples per lm-eval task of an acc:TASK objective
    name: str = "gaincell-explore"

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | Path) -> StudySpec:
        """Read a YAML or JSON spec file."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise ExploreSpecError(f"spec file {str(p)!r} not found")
        text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExploreSpecError(f"spec {p.name} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {first}") from None
        return cls.from_dict(data, source=p.name)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> StudySpec:
        """Validate a mapping (as in a spec file) into a spec; every problem raises :class:`ExploreSpecError`."""
        if not isinstance(data, dict):
            raise ExploreSpecError(f"{source}: a study spec must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExploreSpecError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        if not isinstance(data.get("model"), str) or not data["model"]:
            raise ExploreSpecError(f"{source}: 'model' is required (a model name, folder or hub id)")
        values = dict(data)
        values["pipeline"] = _pipeline(values.get("pipeline", {}))
        try:
            base = HardwareConfig.resolve(values.get("hardware", "paper"))
        except HardwareConfigError as exc:
            raise ExploreSpecError(f"hardware: {exc}") from None
        values["space"] = _space(values.get("space"), base)
        objectives = values.get("objectives", ["perplexity", "energy_per_token_j"])
        if isinstance(objectives, str) or not isinstance(objectives, list) or not objectives:
            raise ExploreSpecError("objectives: give a non-empty list of objective names")
        for name in objectives:
            objective_direction(str(name))
        if len(set(objectives)) != len(objectives):
            raise ExploreSpecError("objectives: each objective once")
        values["objectives"] = tuple(str(o) for o in objectives)
        values["constraints"] = tuple(_constraint(c) for c in values.get("constraints", []) or [])
        sampler = values.get("sampler", "tpe")
        if sampler not in SAMPLERS:
            raise ExploreSpecError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
        if values["constraints"] and sampler not in ("tpe", "nsga2"):
            raise ExploreSpecError(f"constraints: the {sampler} sampler takes no constraints; use tpe or nsga2")
        for key, minimum in (("trials", 1), ("seed", 0)):
            v = values.get(key, 20 if key == "trials" else 0)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ExploreSpecError(f"{key}: must be an integer >= {minimum}, got {v!r}")
        for key in ("context", "stride", "max_tokens", "lm_eval_limit"):
            v = values.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ExploreSpecError(f"{key}: must be an integer >= 1 or absent, got {v!r}")
        for key in ("hardware", "text", "name"):
            if key in values and not isinstance(values[key], str):
                raise ExploreSpecError(f"{key}: must be a string, got {values[key]!r}")
        spec = cls(**values)
        if sampler == "grid":
            n = len(spec.grid_points())
            if spec.trials > n:
                raise ExploreSpecError(f"trials: {spec.trials} > the {n} points of the grid; use trials <= {n}")
        return spec

    # ------------------------------------------------------------------ use
    @property
    def base_hardware(self) -> HardwareConfig:
        return HardwareConfig.resolve(self.hardware)

    def hardware_for(self, params: dict[str, Any]) -> HardwareConfig:
        """The trial's hardware: the base config with the sampled fields (raises on an invalid combination)."""
        return self.base_hardware.replace(**params)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid, in a fixed order (the product of the fields' lists, fields in spec order)."""
        axes = [(name, dim.grid() if isinstance(dim, Range) else list(dim)) for name, dim in self.space.items()]
        return [dict(zip([a for a, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able), as stored with the study to recognise it on resume."""
        d = dataclasses.asdict(self)
        d["space"] = {k: _range_dict(v) if isinstance(v, Range) else list(v) for k, v in self.space.items()}
        d["constraints"] = [str(c) for c in self.constraints]
        d["objectives"] = list(self.objectives)
        return d


# ---------------------------------------------------------------------------------------------------- validation
def _range_dict(r: Range) -> dict[str, Any]:
    d: dict[str, Any] = {"low": int(r.low) if r.integer else r.low, "high": int(r.high) if r.integer else r.high, "log": r.log}
    if r.step is not None:
        d["step"] = r.step
    return d


def _pipeline(data: Any) -> Pipeline:
    if isinstance(data, Pipeline):
        return data
    if not isinstance(data, dict):
        raise ExploreSpecError(f"pipeline: must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(Pipeline)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ExploreSpecError(f"pipeline: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
    defaults = Pipeline()
    for key, value in data.items():
        kind = type(getattr(defaults, key))
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ExploreSpecError(f"pipeline.{key}: must be {kind.__name__}, got {value!r}")
        if kind in (int, float) and value < 0:
            raise ExploreSpecError(f"pipeline.{key}: must be >= 0, got {value!r}")
    return Pipeline(**data)


def _check_value(base: HardwareConfig, name: str, value: Any) -> None:
    try:
        base.replace(**{name: value})
    except HardwareConfigError as exc:
        raise ExploreSpecError(f"space.{name}: value {value!r} is not allowed: {exc}") from None


def _space(data: Any, base: HardwareConfig) -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        raise ExploreSpecError("space: give at least one HardwareConfig field to vary (a list of values or a range)")
    fields = set(HardwareConfig.field_names()) - {"name"}
    space: dict[str, Any] = {}
    for name, dim in data.items():
        if name not in fields and name != "retention_time":
            raise ExploreSpecError(f"space: unknown field {name!r}; any HardwareConfig field (or retention_time) can vary")
        if isinstance(dim, list):
            if not dim:
                raise ExploreSpecError(f"space.{name}: empty list")
            for value in dim:
                _check_value(base, name, value)
            if len({json.dumps(v, sort_keys=True) for v in dim}) != len(dim):
                raise ExploreSpecError(f"space.{name}: a value is listed twice")
            space[name] = [tuple(v) if isinstance(v, list) else v for v in dim]
        elif isinstance(dim, dict):
            space[name] = _range(name, dim, base)
        else:
            raise ExploreSpecError(f"space.{name}: give a list of values or a mapping {{low, high, log, step}}, got {dim!r}")
    return space


def _range(name: str, dim: dict[str, Any], base: HardwareConfig) -> Range:
    unknown = sorted(set(dim) - {"low", "high", "log", "step"})
    if unknown:
        raise ExploreSpecError(f"space.{name}: unknown range key(s) {', '.join(unknown)}; allowed: low, high, log, step")
    low, high = dim.get("low"), dim.get("high")
    for key, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ExploreSpecError(f"space.{name}.{key}: must be a finite number, got {v!r}")
    if not low < high:
        raise ExploreSpecError(f"space.{name}: low ({low}) must be below high ({high})")
    log, step = bool(dim.get("log", False)), dim.get("step")
    if log and low <= 0:
        raise ExploreSpecError(f"space.{name}: a log range needs low > 0, got {low}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise ExploreSpecError(f"space.{name}.step: must be a number > 0, got {step!r}")
    current = getattr(base, name)
    integer = (isinstance(current, int) and not isinstance(current, bool)) or (current is None and name.endswith("_levels"))
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise ExploreSpecError(f"space.{name}: an integer field needs integer low and high, got {low}, {high}")
    for v in (low, high):
        _check_value(base, name, int(v) if integer else float(v))
    return Range(float(low), float(high), log, None if step is None else float(step), integer)


def _constraint(text: Any) -> Constraint:
    m = _CONSTRAINT.match(str(text))
    if not m:
        raise ExploreSpecError(f"constraints: {text!r} is not of the form 'metric <= number'")
    metric, op, bound = m.group(1), m.group(2), m.group(3)
    objective_direction(metric)  # a known metric name
    try:
        value = float(bound)
    except ValueError:
        raise ExploreSpecError(f"constraints: {text!r}: {bound!r} is not a number") from None
    return Constraint(metric, op, value)
