"""The settings of a training run as plain data: :class:`TrainConfig`, one field per ``gaincell finetune`` flag.

Every field carries its help text (and its choices where they are a fixed set) as dataclass metadata, so the command
line is built from it and each default exists once.  A run's settings can also come from a YAML or JSON file
(:meth:`TrainConfig.load`); the paper's full-scale schedules ship as such files in ``recipes/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gaincell.errors import GaincellError

__all__ = ["TrainConfig"]


_PRECISIONS = ("fp32", "bf16", "fp16")
#: the per-head maps a ``trainable = "head-maps:..."`` setting can name
HEAD_MAP_NAMES = ("q", "k", "v", "out")


def trainable_maps(value: str) -> tuple[str, ...] | None:
    """The per-head maps a ``trainable`` setting trains: None for ``"all"`` (every parameter), all four for
    ``"head-maps"``, the named ones for ``"head-maps:v,out"``.  Anything else raises, naming the setting."""
    if value == "all":
        return None
    if value == "head-maps":
        return HEAD_MAP_NAMES
    prefix = "head-maps:"
    if isinstance(value, str) and value.startswith(prefix):
        names = tuple(value[len(prefix) :].split(","))
        if all(n in HEAD_MAP_NAMES for n in names) and len(set(names)) == len(names):
            return names
    raise GaincellError(
        f"invalid training setting trainable = {value!r}: 'all', 'head-maps', or 'head-maps:' followed by a "
        "comma-separated subset of q, k, v, out (e.g. 'head-maps:v,out')"
    )


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    metadata: dict[str, Any] = {"help": help} if choices is None else {"help": help, "choices": choices}
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Every setting of a training run; the ``finetune`` command has one flag per field (field metadata: "help", and
    "choices" where the values are a fixed set)."""

    steps: int = _setting(1000, "optimizer steps of the whole run")
    batch_size: int = _setting(16, "sequences per optimizer step (all processes and micro-batches together)")
    context: int = _setting(128, "tokens per training sequence")
    grad_accum: int = _setting(1, "micro-batches per optimizer step (gradient accumulation); must divide batch_size")
    lr: float = _setting(6e-4, "peak learning rate, reached at the end of the warm-up")
    min_lr: float | None = _setting(None, "learning rate at the end of the cosine decay (default: lr / 10)")
    warmup: int = _setting(100, "steps of linear learning-rate warm-up")
    weight_decay: float = _setting(0.1, "AdamW weight decay of the weight matrices (biases and norms: none)")
    decay_head_maps: bool = _setting(
        True,
        "apply the weight decay to the per-head maps (scales and offsets) too, as the published trainer does; "
        "false: exempt them like the biases and norms",
    )
    beta1: float = _setting(0.9, "AdamW decay rate of the gradient mean")
    beta2: float = _setting(0.95, "AdamW decay rate of the squared-gradient mean")
    grad_clip: float = _setting(1.0, "clip the gradient norm to this value (0: no clipping)")
    eval_every: int = _setting(100, "evaluate on the validation tokens every this many steps (and at the last step)")
    eval_batches: int = _setting(16, "validation batches per evaluation (the same fixed batches every time)")
    save_every: int = _setting(100, "write the checkpoint every this many steps (and at the last step)")
    log_every: int = _setting(10, "log the training loss every this many steps (evaluations and the last step too)")
    seed: int = _setting(1337, "seed of the batch sampler")
    distill_weight: float = _setting(
        0.5, "with a teacher: its share of the loss (0: cross-entropy only, 1: teacher only); ignored without one"
    )
    distill_temperature: float = _setting(1.0, "softmax temperature of the distillation loss")
    precision: str = _setting("fp32", "autocast of the digital layers (the analog arrays stay float32)", choices=_PRECISIONS)
    lr_decay_steps: int | None = _setting(
        None, "length of the cosine decay in steps (default: steps); the paper decays over 600,000 iterations"
    )
    fsdp: bool = _setting(
        False, "shard parameters, gradients and optimizer state across processes (FSDP2) instead of DDP; not with fp16"
    )
    compile: bool = _setting(False, "torch.compile the digital layers (the analog attention always runs eagerly)")
    target_ema: float | None = _setting(
        0.1,
        "on analog hardware, record per-head EMA statistics (mean, std) of the scaled q, k, v and head output at this "
        "rate, the adaptation targets saved with the model (as the published linear fine-tune does); none: do not",
    )
    trainable: str = _setting(
        "all",
        "which parameters train: all (the paper); head-maps: only the per-head maps (a calibration that cannot overfit "
        "the weights to the training text); head-maps:LIST: only the named maps of q, k, v, out (e.g. head-maps:v,out "
        "calibrates the value voltages and the readout, leaving the query and key maps, which set what each head "
        "attends to, as the adaptation set them)",
    )
    keep_best: bool = _setting(
        False,
        "ship the weights with the lowest validation loss (the starting model included) instead of the last ones; "
        "they are kept in OUT/best while training",
    )
    patience: int | None = _setting(
        None, "stop early when this many evaluations in a row have not lowered the validation loss (default: never)"
    )

    @property
    def end_lr(self) -> float:
        """The learning rate the cosine decays to: ``min_lr``, or ``lr / 10`` when it is None."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def validate(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "context": self.context >= 2,
            "grad_accum": self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
            "lr": self.lr > 0,
            "min_lr": 0 <= self.end_lr <= self.lr,
            "warmup": self.warmup >= 0,
            "grad_clip": self.grad_clip >= 0,
            "eval_every": self.eval_every >= 1,
            "save_every": self.save_every >= 1,
            "distill_weight": 0 <= self.distill_weight <= 1,
            "distill_temperature": self.distill_temperature > 0,
            "precision": self.precision in _PRECISIONS,
            "fsdp": not (self.fsdp and self.precision == "fp16"),  # no sharded loss scaler: use bf16 with FSDP
            "patience": self.patience is None or self.patience >= 1,
            "target_ema": self.target_ema is None or 0 < self.target_ema <= 1,
        }
        trainable_maps(self.trainable)
        for name, ok in checks.items():
            if not ok:
                raise GaincellError(f"invalid training setting {name} = {getattr(self, name)!r}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then cosine decay to :attr:`end_lr`, reached at step ``lr_decay_steps or steps``."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, (self.lr_decay_steps or self.steps) - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.end_lr + 0.5 * (self.lr - self.end_lr) * (1 + math.cos(math.pi * progress))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "the settings") -> TrainConfig:
        """Settings from a mapping of field names to values; an unknown name is an error that lists the known ones."""
        if not isinstance(data, dict):
            raise GaincellError(f"{source} must be a mapping of training settings, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise GaincellError(f"unknown training setting {unknown[0]!r} in {source} (settings: {', '.join(known)})")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Settings from a YAML or JSON file (a mapping of field names to values)."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise GaincellError(f"cannot read training settings {path}: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(data or {}, source=str(path))

    def evaluates_at(self, step: int) -> bool:
        """Is a validation scheduled after ``step``?"""
        return (step + 1) % self.eval_every == 0 or step == self.steps - 1
