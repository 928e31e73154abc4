"""The paper's adaptation algorithm: map a linear-hardware model onto the nonlinear hardware by statistics matching.

As published (Leroux et al. 2025, code ``calibration_algorithm``; sources in ``docs/bibliography.md``):

1. Record per-(layer, head) mean and std of the scaled q, k, v (after the per-head affine map, before the DAC clamp)
   and of the head output (after the output map) in the *linear* model, on one calibration batch.
2. Load those weights into the *nonlinear* model.
3. Iterate on the same batch: record the current statistics and update every map, per head,
   a <- alpha * a * sigma*/sigma + (1 - alpha) * a   (when |sigma - sigma*| > tol and sigma > 0)
   b <- alpha * (b + mu* - mu) + (1 - alpha) * b     (when |mu - mu*| > tol)
   with alpha going linearly from 1 to ``alpha_min`` over ``anneal`` iterations, then ``alpha_min``.
4. Stop when every |sigma - sigma*| and |mu - mu*| is within ``tol``, or after ``max_iter`` iterations.

Only the (a, b) maps change; no weight changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.attention import HeadMaps, attention_spec, head_maps, resolve_attention
from gaincell.config import HardwareConfig
from gaincell.errors import GaincellError
from gaincell.model import convert

__all__ = ["AdaptResult", "adapt", "head_statistics", "recorded_targets", "reset_head_maps"]

_TENSORS = ("q", "k", "v", "out")
_PARAMS = {"q": ("q_scale", "q_bias"), "k": ("k_scale", "k_bias"), "v": ("v_scale", "v_bias"), "out": ("out_scale", "out_bias")}


@dataclass
class AdaptResult:
    iterations: int
    converged: bool
    loss: list[float] = field(default_factory=list)  # calibration cross-entropy before each iteration, then final
    max_std_error: list[float] = field(default_factory=list)
    max_mean_error: list[float] = field(default_factory=list)
    target_source: str = "batch"  # "recorded": EMA statistics saved with the model; "batch": measured on the batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_source": self.target_source,
            "iterations": self.iterations,
            "converged": self.converged,
            "loss": self.loss,
            "max_std_error": self.max_std_error,
            "max_mean_error": self.max_mean_error,
        }


@torch.no_grad()
def head_statistics(model: nn.Module, batch: Tensor) -> tuple[dict[tuple[int, str], tuple[Tensor, Tensor]], float]:
    """Per-(layer, tensor) per-head (mean, std) of the scaled q, k, v and head output, and the batch's loss."""
    maps = list(head_maps(model))
    if not maps:
        raise GaincellError("the model is not converted: convert it to a hardware config first")
    for m in maps:
        m.recorder = {}
    try:
        logits = model(input_ids=batch, use_cache=False).logits
        loss = float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten()))
        stats = {}
        for m in maps:
            for name in _TENSORS:
                if name not in m.recorder:
                    raise GaincellError(f"layer {m.layer}: no '{name}' statistics recorded (is the attention analog?)")
                n, s, ss = m.recorder[name]  # type: ignore[misc]
                mean = s / n
                std = (ss / n - mean * mean).clamp(min=0).sqrt()
                stats[(m.layer, name)] = (mean, std)
    finally:
        for m in maps:
            m.recorder = None
    return stats, loss


def adapt(
    model: nn.Module,
    hardware: HardwareConfig | str = "paper",
    calibration: Tensor | None = None,
    *,
    targets: dict[tuple[int, str], tuple[Tensor, Tensor]] | None = None,
    alpha_min: float = 0.1,
    anneal: int = 50,
    tol: float = 1e-4,
    max_iter: int = 100,
    reset_maps: bool = False,
    target_source: str = "auto",
    progress: bool = False,
) -> AdaptResult:
    """Adapt a linear-hardware model to ``hardware`` in place (only the per-head maps change).

    Args:
        model: a model converted to the linear intermediate hardware (or any analog config whose statistics are the
            targets); it ends converted to ``hardware``.
        hardware: the target (nonlinear) hardware config.
        calibration: (B, T) token ids of the calibration batch.
        targets: precomputed target statistics (overrides ``target_source``).
        target_source: where the targets come from: ``"recorded"`` — the per-head EMA statistics recorded while the
            linear model was fine-tuned and saved with it (as the published code does); ``"batch"`` — measured on
            the calibration batch from the model as it is on entry; ``"auto"`` (default) — recorded when the model
            carries them, else the batch.  The result says which (``target_source``).
        reset_maps: start from a = 1, b = 0 for every map (q, k, v and the output) instead of the linear model's
            trained maps: the arXiv-era variant of the published code (the published code today keeps the trained
            maps, the default).  The targets are recorded before the reset.
    """
    from tqdm import tqdm

    target_cfg = _check_inputs(model, hardware, calibration, alpha_min, anneal, tol, max_iter)
    was_training = model.training
    model.eval()
    source = "given"
    if targets is None:
        targets, source = _targets(model, calibration, target_source)
    convert(model, target_cfg)
    maps = {m.layer: m for m in head_maps(model)}
    if reset_maps:
        reset_head_maps(model)
    result = AdaptResult(iterations=0, converged=False, target_source=source)
    try:
        with tqdm(total=max_iter, desc="adapting", unit="it", leave=False, disable=not progress) as bar:
            for it in range(max_iter):
                stats = _measure(model, calibration, targets, result)
                std_error, mean_error = result.max_std_error[-1], result.max_mean_error[-1]
                bar.set_postfix(loss=f"{result.loss[-1]:.3f}", dstd=f"{std_error:.1e}", dmean=f"{mean_error:.1e}")
                bar.update(1)
                if std_error <= tol and mean_error <= tol:
                    result.converged = True
                    break
                alpha = _alpha(it, alpha_min, anneal)
                for (layer, name), (mu_t, sd_t) in targets.items():
                    mu, sd = stats[(layer, name)]
                    _update(maps[layer], name, mu, sd, mu_t, sd_t, alpha, tol)
                result.iterations = it + 1
            else:  # out of iterations: the statistics after the last update
                _measure(model, calibration, targets, result)
    finally:
        model.train(was_training)
    return result


def recorded_targets(model: nn.Module) -> dict[tuple[int, str], tuple[Tensor, Tensor]] | None:
    """The EMA adaptation targets the model carries (recorded while it was fine-tuned), or None if any is missing."""
    found = {}
    for maps in head_maps(model):
        for name in _TENSORS:
            if name not in maps.targets:
                return None
            mean, std = maps.targets[name]
            found[(maps.layer, name)] = (mean, std)
    return found or None


def _targets(model: nn.Module, calibration: Tensor, source: str) -> tuple[dict[tuple[int, str], tuple[Tensor, Tensor]], str]:
    if source not in ("auto", "recorded", "batch"):
        raise GaincellError(f"target_source must be 'auto', 'recorded' or 'batch', got {source!r}")
    recorded = recorded_targets(model) if source != "batch" else None
    if recorded is not None:
        return recorded, "recorded"
    if source == "recorded":
        raise GaincellError(
            "the model carries no recorded adaptation targets (fine-tune it on the linear hardware with target_ema "
            "set, or use target_source='batch')"
        )
    return head_statistics(model, calibration)[0], "batch"


def reset_head_maps(model: nn.Module) -> nn.Module:
    """Set every per-head map of a converted model to a = 1, b = 0 (q, k, v and the output), in place: the start of the
    arXiv-era adaptation.  Returns the model."""
    with torch.no_grad():
        for maps in head_maps(model):
            for name, p in maps.named_parameters():
                p.fill_(1.0 if name.endswith("_scale") else 0.0)
    return model


def _check_inputs(
    model: nn.Module,
    hardware: HardwareConfig | str,
    calibration: Tensor | None,
    alpha_min: float,
    anneal: int,
    tol: float,
    max_iter: int,
) -> HardwareConfig:
    """The target hardware config, once the model, calibration batch and iteration settings are checked."""
    if calibration is None or calibration.dim() != 2 or calibration.numel() == 0:
        raise GaincellError("adapt needs a calibration batch of token ids with shape (batch, tokens)")
    target_cfg = resolve_attention(hardware)
    if not isinstance(target_cfg, HardwareConfig):
        raise GaincellError("adapt maps a model onto analog hardware: give a hardware preset or file, not softmax")
    if not isinstance(attention_spec(model), HardwareConfig):
        raise GaincellError("adapt starts from a model converted to the linear hardware (e.g. paper-linear)")
    if not 0 < alpha_min <= 1 or anneal < 1 or tol <= 0 or max_iter < 1:
        raise GaincellError("adapt: need 0 < alpha_min <= 1, anneal >= 1, tol > 0, max_iter >= 1")
    return target_cfg


def _measure(
    model: nn.Module, calibration: Tensor, targets: dict[tuple[int, str], tuple[Tensor, Tensor]], result: AdaptResult
) -> dict[tuple[int, str], tuple[Tensor, Tensor]]:
    """Record the current statistics; append the loss and the largest std and mean errors to ``result``."""
    stats, loss = head_statistics(model, calibration)
    result.loss.append(loss)
    result.max_std_error.append(max(float((stats[k][1] - targets[k][1]).abs().max()) for k in targets))
    result.max_mean_error.append(max(float((stats[k][0] - targets[k][0]).abs().max()) for k in targets))
    return stats


def _alpha(iteration: int, alpha_min: float, anneal: int) -> float:
    """Update strength: linearly from 1 at the first iteration to ``alpha_min`` at iteration ``anneal - 1``, then flat."""
    return 1.0 + (alpha_min - 1.0) * min(iteration, anneal - 1) / max(anneal - 1, 1)


@torch.no_grad()
def _update(maps: HeadMaps, name: str, mu: Tensor, sd: Tensor, mu_t: Tensor, sd_t: Tensor, alpha: float, tol: float) -> None:
    scale: Tensor = getattr(maps, _PARAMS[name][0])
    bias: Tensor = getattr(maps, _PARAMS[name][1])
    a = scale.double()
    b = bias.double()
    fix_sd = ((sd - sd_t).abs() > tol) & (sd > 0)
    a_new = torch.where(fix_sd, a * sd_t / sd.clamp(min=1e-30), a)
    fix_mu = (mu - mu_t).abs() > tol
    b_new = torch.where(fix_mu, b + (mu_t - mu), b)
    scale.copy_((alpha * a_new + (1 - alpha) * a).to(scale.dtype))
    bias.copy_((alpha * b_new + (1 - alpha) * b).to(bias.dtype))
