"""One design point, measured: the spec's pipeline on one HardwareConfig, then its objectives.

The numbers come from the same library calls as the commands, with the same defaults, so a trial's values are what
``gaincell eval --json`` (perplexity) and ``gaincell cost --json`` (energy, latency, area) print for the same model,
hardware, text, context and stride; :func:`measure_point` is the only place a study computes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError
from gaincell.explore.spec import ACCURACY_PREFIX, COST_OBJECTIVES, StudySpec

__all__ = ["EVAL_BATCH_SIZE", "measure_point", "point_key"]

#: windows per forward pass of the perplexity (the default of ``gaincell eval --batch-size``)
EVAL_BATCH_SIZE = 8


def point_key(params: dict[str, Any]) -> str:
    """A short stable name for a parameter set (the folder of its files; a retried trial finds its fine-tune there)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _shape(model: str) -> Any:
    from gaincell.cost import model_shape

    return model_shape(model)


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from gaincell.hub import load_tokenizer

    return load_tokenizer(model)


@functools.lru_cache(maxsize=4)
def _eval_ids(model: str, text: str, max_tokens: int | None) -> Any:
    """The evaluation tokens, read and tokenised once per worker (every trial of a study shares them)."""
    from gaincell.data import text_token_ids

    ids = text_token_ids(text, _tokenizer(model)).flatten()
    return ids if max_tokens is None else ids[:max_tokens]


def _needed(spec: StudySpec) -> set[str]:
    return set(spec.objectives) | {c.metric for c in spec.constraints}


def measure_point(spec: StudySpec, hardware: HardwareConfig, folder: Path, *, progress: bool = False) -> dict[str, float]:
    """Run the pipeline on ``hardware`` and return every metric the objectives and constraints need (plus the cost
    metrics, which are free).  ``folder``: this point's files (its hardware file, a fine-tune's checkpoints)."""
    from gaincell.cost import compare

    folder.mkdir(parents=True, exist_ok=True)
    hardware_file = folder / "hardware.yaml"
    hardware.save(hardware_file)
    cost = compare(hardware, _shape(spec.model))
    metrics: dict[str, float] = {name: float(cost[name]) for name in COST_OBJECTIVES}
    needed = _needed(spec)
    if not needed - set(COST_OBJECTIVES):
        return metrics
    model, tokenizer = _pipeline_model(spec, hardware, folder, progress)
    if "perplexity" in needed:
        from gaincell.evaluate import perplexity

        ids = _eval_ids(spec.model, spec.text, spec.max_tokens)
        res = perplexity(model, ids, context=spec.context, stride=spec.stride, batch_size=EVAL_BATCH_SIZE, progress=progress)
        metrics["perplexity"] = float(res["perplexity"])
    tasks = sorted(n[len(ACCURACY_PREFIX) :] for n in needed if n.startswith(ACCURACY_PREFIX))
    if tasks:
        metrics.update(_accuracies(spec, model, tokenizer, hardware_file, folder, tasks))
    return metrics


def _pipeline_model(spec: StudySpec, hardware: HardwareConfig, folder: Path, progress: bool) -> tuple[Any, Any]:
    """The model the point is measured on: converted (or adapted from a linear model), then fine-tuned if asked."""
    from gaincell.hub import load

    p = spec.pipeline
    tokenizer = _tokenizer(spec.model)
    if not p.adapt:
        model = load(spec.model, attention=hardware)
    else:
        from gaincell.adapt import adapt
        from gaincell.data import text_token_ids
        from gaincell.train import sample_batch

        model = load(spec.model)
        batch, _ = sample_batch(text_token_ids(p.calib, tokenizer), p.calib_batch, p.calib_context, p.seed)
        adapt(model, hardware, batch, progress=progress)
    if p.finetune_steps > 0:
        from gaincell.data import text_token_ids
        from gaincell.train import TrainConfig, finetune

        cfg = TrainConfig(
            steps=p.finetune_steps,
            batch_size=p.batch_size,
            context=p.train_context,
            lr=p.lr,
            warmup=max(1, p.finetune_steps // 10),
            eval_every=p.finetune_steps,
            save_every=max(1, p.finetune_steps // 4),
            log_every=max(1, p.finetune_steps // 10),
            seed=p.seed,
        )
        finetune(model, text_token_ids(p.train, tokenizer), None, cfg, folder / "finetune", progress=progress)
    model.eval()
    return model, tokenizer


def _accuracies(
    spec: StudySpec, model: Any, tokenizer: Any, hardware_file: Path, folder: Path, tasks: list[str]
) -> dict[str, float]:
    """lm-eval accuracy per task, on the pipeline's model (saved to the point's folder when it was trained)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:  # lm-eval is an extra (gaincell.bench imports it lazily)
        raise GaincellError("acc:TASK objectives need lm-eval: pip install 'gaincell[lm-eval]'")
    from gaincell.bench import evaluate_models, main_metric

    if spec.pipeline.adapt or spec.pipeline.finetune_steps > 0:
        from gaincell.hub import save

        save(model, folder / "model", tokenizer=tokenizer, metadata={"role": "explore-point"})
        name, hardware = str(folder / "model"), None
    else:
        name, hardware = spec.model, str(hardware_file)
    data = evaluate_models([name], tasks, hardware=hardware, limit=spec.lm_eval_limit)
    out = {}
    for task in tasks:
        metric, value = main_metric(data["rows"][0]["results"].get(task, {}))
        if value is None or metric == "word_perplexity":
            raise GaincellError(f"lm-eval task {task!r} reports no accuracy")
        out[ACCURACY_PREFIX + task] = float(value)
    return out
