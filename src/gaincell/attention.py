"""Attention specs and the per-head maps a converted model carries: the leaf that model, cache and training share.

An *attention spec* is what a converted model computes its attention with: a :class:`~gaincell.HardwareConfig`
(the analog arrays) or a :class:`SoftmaxSpec` (the digital baselines).  :class:`HeadMaps` are the per-head affine maps
(a, b) into and out of the arrays that conversion adds to every attention layer.  :func:`attention_layers` finds a
model's attention modules; :func:`attention_spec` and :func:`head_maps` read back what :func:`gaincell.convert` set.

Nothing here imports the rest of the model integration (``gaincell.model``, ``gaincell.cache``), so both can import it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.config import PRESETS, HardwareConfig, HardwareConfigError
from gaincell.families import AttentionLayer, attention_layers
from gaincell.kernel import POINTWISE_SCORES
from gaincell.noise import make_generator

__all__ = [
    "ATTN_NAME",
    "AttentionLayer",
    "AttentionSpec",
    "HeadMaps",
    "SoftmaxSpec",
    "attention_layers",
    "attention_spec",
    "head_maps",
    "is_converted",
    "layer_spec",
    "resolve_attention",
    "spec_to_dict",
]

#: the name under which gaincell's attention and mask functions are registered with transformers
ATTN_NAME = "gaincell"
#: attribute of a converted model that holds its attention spec
SPEC_ATTRIBUTE = "_gaincell_spec"


#: the digital baselines: softmax, and the published software ablations with a pointwise score function
DIGITAL_SCORES = ("softmax", *POINTWISE_SCORES)


@dataclass(frozen=True)
class SoftmaxSpec:
    """Digital attention (the baselines), causal, with an optional sliding window: softmax, or the published
    software ablations ``hardsigmoid`` (clamp(s, 0, 1)) and ``sigmoid`` in its place (``score``)."""

    window: int | None = None
    score: str = "softmax"

    def __post_init__(self) -> None:
        if self.score not in DIGITAL_SCORES:
            raise HardwareConfigError(f"digital attention score {self.score!r}: choose one of {', '.join(DIGITAL_SCORES)}")

    @property
    def name(self) -> str:
        return self.score if self.window is None else f"{self.score}:{self.window}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "softmax", "window": self.window, "score": self.score}


AttentionSpec = HardwareConfig | SoftmaxSpec


def resolve_attention(spec: AttentionSpec | str | Path | dict[str, Any]) -> AttentionSpec:
    """An attention spec from a config object, a preset name, ``softmax``/``softmax-window``/``softmax:W``, a file."""
    if isinstance(spec, (HardwareConfig, SoftmaxSpec)):
        return spec
    if isinstance(spec, dict):
        if spec.get("kind") == "softmax":
            return SoftmaxSpec(spec.get("window"), spec.get("score", "softmax"))
        return HardwareConfig.from_dict({k: v for k, v in spec.items() if k != "kind"})
    s = str(spec)
    if s in DIGITAL_SCORES:
        return SoftmaxSpec(None, s)
    if s in ("softmax-window", "sliding-window-softmax"):
        return SoftmaxSpec(HardwareConfig().window)
    if s.split(":", 1)[0] in DIGITAL_SCORES:
        score, _, given = s.partition(":")
        try:
            w = int(given)
        except ValueError:
            w = 0
        if w < 1:
            raise HardwareConfigError(f"{score} window must be an integer >= 1, got {s!r}")
        return SoftmaxSpec(w, score)
    try:
        return HardwareConfig.resolve(s)
    except HardwareConfigError as exc:
        if s in PRESETS or Path(s).exists():
            raise
        raise HardwareConfigError(
            f"unknown attention {s!r}: use a hardware preset ({', '.join(sorted(PRESETS))}), "
            "softmax, softmax-window, softmax:W, hardsigmoid[:W], sigmoid[:W], or a YAML/JSON hardware file"
        ) from exc


def spec_to_dict(spec: AttentionSpec) -> dict[str, Any]:
    return spec.to_dict() if isinstance(spec, SoftmaxSpec) else {"kind": "analog", **spec.to_dict()}


# ---------------------------------------------------------------------------------------------------- per-head maps
class HeadMaps(nn.Module):
    """Per-head affine maps into and out of the analog arrays: x_dac = a * x + b, out = a_o * O + b_o.

    q and the output have one (a, b) per attention head; k and v one per key/value head (grouped-query attention).
    """

    def __init__(self, n_heads: int, n_kv_heads: int, layer: int, kv_offset: float = 0.45):
        super().__init__()
        self.q_scale = nn.Parameter(torch.ones(n_heads))
        self.q_bias = nn.Parameter(torch.zeros(n_heads))
        self.k_scale = nn.Parameter(torch.ones(n_kv_heads))
        self.k_bias = nn.Parameter(torch.full((n_kv_heads,), kv_offset))
        self.v_scale = nn.Parameter(torch.ones(n_kv_heads))
        self.v_bias = nn.Parameter(torch.full((n_kv_heads,), kv_offset))
        self.out_scale = nn.Parameter(torch.ones(n_heads))
        self.out_bias = nn.Parameter(torch.zeros(n_heads))
        self.layer = layer
        self.spec: AttentionSpec = SoftmaxSpec()
        self.model_window: int | None = None  # the model's own sliding window for this layer (see gaincell.families)
        self.recorder: dict[str, list[Tensor]] | None = None  # per-head running sums while recording statistics
        # adaptation targets recorded while training (as the published code does during the linear fine-tune): an
        # exponential moving average, at ``target_rate``, of each batch's per-head (mean, std) of q, k, v and the output
        self.target_rate: float | None = None
        self.targets: dict[str, Tensor] = {}  # name -> (2, heads): EMA of the mean and of the std
        self.generator: torch.Generator | None = None  # noise stream of this layer (advances call to call)
        self.active_cache: Any = None  # the AnalogKVCache layer that just received this layer's new K and V

    @property
    def layer_spec(self) -> AttentionSpec:
        """What this layer computes: the model's spec with the layer's own sliding window applied."""
        return layer_spec(self.spec, self.model_window)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, heads={self.q_scale.numel()}, kv_heads={self.k_scale.numel()}"

    def noise_generator(self, device: torch.device) -> torch.Generator | None:
        """This layer's noise stream for tensors on ``device``.  Random streams live on one device (CPU and CUDA draw
        different numbers), so a model moved to another device gets a stream there, seeded as at conversion."""
        if self.generator is not None and self.generator.device != device:
            self.generator = make_generator(self.spec, self.layer, device)  # type: ignore[arg-type]
        return self.generator

    @staticmethod
    def apply(x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + bias.view(1, -1, 1, 1).to(x.dtype)

    def record(self, name: str, x: Tensor) -> None:
        """Accumulate per-head count, sum and sum of squares of x (B, heads, T, D) over batch, tokens, features (while
        ``recorder`` is set); in training with ``target_rate`` set, also update the EMA targets."""
        tracking = self.target_rate is not None and self.training and torch.is_grad_enabled()
        if self.recorder is None and not tracking:
            return
        x = x.detach().double()
        stats = torch.stack([torch.full_like(x[0, :, 0, 0], x[:, 0].numel()), x.sum((0, 2, 3)), (x * x).sum((0, 2, 3))])
        if self.recorder is not None:
            self.recorder[name] = self.recorder[name] + stats if name in self.recorder else stats  # type: ignore[assignment,operator]
        if tracking:
            n, s, ss = stats
            mean = s / n
            batch = torch.stack([mean, (ss / n - mean * mean).clamp(min=0).sqrt()])
            old = self.targets.get(name)  # the first batch starts the average
            # (targets read back from a file sit on the CPU; a model on a GPU records on the GPU)
            self.targets[name] = batch if old is None else old.to(batch).lerp(batch, self.target_rate)  # type: ignore[arg-type]


def layer_spec(spec: AttentionSpec, model_window: int | None) -> AttentionSpec:
    """``spec`` for a layer whose model has its own sliding window ``model_window`` (None: a global layer).

    The layer sees min(spec window, model window) keys: on the arrays, a ring of that many cells.
    """
    if model_window is None:
        return spec
    if isinstance(spec, SoftmaxSpec):
        window = model_window if spec.window is None else min(spec.window, model_window)
        return spec if window == spec.window else SoftmaxSpec(window)
    return spec if spec.window <= model_window else _with_window(spec, model_window)


@functools.lru_cache(maxsize=64)
def _with_window(config: HardwareConfig, window: int) -> HardwareConfig:
    return config.replace(window=window)


def is_converted(model: nn.Module) -> bool:
    return getattr(model, SPEC_ATTRIBUTE, None) is not None


def attention_spec(model: nn.Module) -> AttentionSpec | None:
    """The attention config of a converted model (None if it was never converted)."""
    return getattr(model, SPEC_ATTRIBUTE, None)


def head_maps(model: nn.Module) -> Iterator[HeadMaps]:
    for layer in attention_layers(model):
        maps = getattr(layer.module, "gaincell", None)
        if isinstance(maps, HeadMaps):
            yield maps
