"""Which Hugging Face model families convert, and how: one generic path, with the family quirks as data.

gaincell plugs into the transformers *attention interface*: a model whose attention modules hand (q, k, v) to
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` can run on the gain-cell arrays without any model code of
gaincell's own.  :func:`attention_layers` walks a model, finds those modules and reads their head counts and head
dimension from the model itself; :func:`refusal` says, before anything is changed, why a model cannot be converted.

What the arrays do with each family quirk (stated once here; ``gaincell models --families`` prints the table):

* **rotary / partial rotary / learned / absolute positions** (Llama, Phi, GPT-NeoX, GPT-J, GPT-2, OPT, ...): applied
  by the model to q and k *before* the attention function, so the arrays receive already-positioned vectors; nothing
  to do.  Models with a learned absolute position table stop with a clear error past their last position.
* **fused qkv projections** (Phi-3, GPT-NeoX, GPT-BigCode): split by the model before the attention function.
* **grouped-query and multi-query attention** (Llama, Qwen, Mistral, Gemma, GPT-BigCode, ...): one K and one V array
  per key/value head, shared by its query heads, exactly as the model shares them.
* **the model's own sliding window** (Mistral, Qwen2/3 and SmolLM3 when enabled, Gemma 2/3 local layers, Phi-3): a
  layer whose window w is shorter than the hardware window W gets a ring of w cells (the hardware window becomes
  min(W, w) for that layer, in the parallel kernel and in the analog KV cache); global layers keep W.  The softmax
  baselines honour the model's window as the model itself does.
* **attention-logit soft-capping** (Gemma 2): tanh capping of the scores has no analog counterpart; the charge-to-pulse
  HardSigmoid already bounds every score to [0, 1], so the analog path does not cap.  The softmax baselines apply the
  cap, so the baseline equals the native model.
* **attention scaling** (1/sqrt(d), Gemma's query_pre_attn_scalar, ...): absorbed by the per-head affine maps on the
  analog path; applied as given on the softmax path.

Refused, with the reason (nothing is changed): encoder-decoder models and cross-attention (the arrays hold one causal
stream of keys), ALiBi position biases (BLOOM, MPT, Falcon with ``alibi``: a per-head distance bias added to the scores
has no place on the arrays, whose only position-dependent term is the leakage), multi-head latent attention
(DeepSeek-V2/V3: K and V are decompressed from a shared latent, not written per head), state-space and linear-attention
models (Mamba, RWKV, ...: no softmax attention to replace), and models whose attention is computed in their own code
instead of through the interface (Falcon today).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from gaincell.errors import GaincellError

__all__ = [
    "FAMILIES",
    "REFUSED",
    "TESTED",
    "AttentionLayer",
    "Family",
    "attention_layers",
    "family_of",
    "position_limit",
    "refusal",
]


@dataclass(frozen=True)
class Family:
    """One model family that converts through the generic path.

    ``quirks``: what the family does differently and what the arrays do with it.  ``position_limit``: the config
    attribute holding the number of learned absolute positions (None for rotary/relative models, which stream on).
    """

    model_type: str
    name: str
    example: str
    quirks: str
    position_limit: str | None = None


#: the families the test matrix covers (tests/test_families.py builds a tiny random model of each)
FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("gpt2", "GPT-2", "gpt2, gpt2-xl", "learned absolute positions", "n_positions"),
        Family("llama", "Llama", "TinyLlama, SmolLM, Llama 3", "rotary, grouped-query attention"),
        Family("qwen2", "Qwen2 / Qwen2.5", "Qwen/Qwen2.5-0.5B", "rotary, GQA, optional sliding window on some layers"),
        Family("qwen3", "Qwen3", "Qwen/Qwen3-0.6B", "rotary, GQA, q/k RMS norms (applied before the arrays)"),
        Family("mistral", "Mistral", "mistralai/Mistral-7B-v0.1", "rotary, GQA, sliding window on every layer"),
        Family("gemma", "Gemma", "google/gemma-2b", "rotary, multi-query (2b) / GQA, scaled embeddings"),
        Family(
            "gemma2",
            "Gemma 2",
            "google/gemma-2-2b",
            "alternating local (sliding) / global layers, attention-logit soft-capping (not on the analog path)",
        ),
        Family("gemma3_text", "Gemma 3 (text)", "google/gemma-3-1b-pt", "mostly local (sliding) layers, some global, q/k norms"),
        Family("phi", "Phi-1/2", "microsoft/phi-2", "partial rotary"),
        Family("phi3", "Phi-3", "microsoft/Phi-3-mini-4k-instruct", "fused qkv, optional sliding window"),
        Family("gpt_neox", "GPT-NeoX / Pythia", "EleutherAI/pythia-70m", "fused qkv, partial rotary, parallel residual"),
        Family("opt", "OPT", "facebook/opt-125m", "learned absolute positions (offset 2)", "max_position_embeddings"),
        Family("olmo", "OLMo", "allenai/OLMo-1B-hf", "rotary, non-parametric layer norm, optional qkv clipping"),
        Family("olmo2", "OLMo 2", "allenai/OLMo-2-0425-1B", "rotary, q/k RMS norms"),
        Family("gptj", "GPT-J", "EleutherAI/gpt-j-6b", "partial rotary (rotary_dim), parallel attention/MLP"),
        Family("gpt_bigcode", "GPT-BigCode / StarCoder", "bigcode/starcoderbase-1b", "multi-query (one K/V head)", "n_positions"),
        Family("stablelm", "StableLM", "stabilityai/stablelm-2-1_6b", "partial rotary, GQA"),
        Family("smollm3", "SmolLM3", "HuggingFaceTB/SmolLM3-3B", "rotary on some layers only (NoPE layers), GQA"),
    )
}

#: what tests/test_families.py checks for every family above (a tiny random model of each, no download)
TESTED = (
    "convert (analog logits finite and different from softmax; the softmax baseline equals the native model)",
    "analog KV cache: token-by-token decoding = parallel forward to 1e-10 (float64, both cells, quantised, window < sequence)",
    "generate() greedy = parallel greedy",
    "save/load gives identical logits",
    "adapt converges",
    "cost: attention shape read from the config",
)

#: architectures that cannot map onto the arrays, with what happens to them (see the module docstring)
REFUSED = {
    "encoder-decoder (T5, BART, ...)": "refused: cross-attention reads a second stream the arrays do not hold",
    "cross-attention layers": "refused: the arrays hold one causal stream of keys",
    "ALiBi (BLOOM, MPT, Falcon with alibi)": "refused: no place for a per-head distance bias on the arrays",
    "multi-head latent attention (DeepSeek-V2/V3)": "refused: K and V come from a shared latent, not per-head cells",
    "state-space / linear attention (Mamba, RWKV, ...)": "refused: no softmax attention to replace",
    "own attention code (Falcon)": "refused: attention is not computed through the transformers interface",
    "any other family using the attention interface": "converts through the generic path (not in the test matrix)",
}

# architectures that cannot map onto the arrays: config signal -> reason
_ALIBI_TYPES = {"bloom", "mpt"}
_RECURRENT_TYPES = {"mamba", "mamba2", "rwkv", "recurrent_gemma", "xlstm", "falcon_mamba"}
_ALIBI = (
    "it uses ALiBi position biases: a per-head distance bias added to the scores has no place on the gain-cell arrays, "
    "whose only position-dependent term is the leakage"
)


@dataclass(frozen=True)
class AttentionLayer:
    """A self-attention module found in a model, with what the arrays need to know about it."""

    index: int
    module: nn.Module
    n_heads: int
    n_kv_heads: int
    head_dim: int
    model_window: int | None  # the model's own sliding window for this layer (None: global attention)


def family_of(model: nn.Module) -> Family | None:
    """The tested family of ``model`` (None for a family that converts but is not in the test matrix)."""
    return FAMILIES.get(getattr(getattr(model, "config", None), "model_type", ""))


def position_limit(model: nn.Module) -> int | None:
    """How many positions a model with learned absolute positions supports (None: no such limit)."""
    family = family_of(model)
    if family is None or family.position_limit is None:
        return None
    return getattr(model.config, family.position_limit, None)


@functools.cache
def _uses_interface(cls: type) -> bool:
    """Does this attention class hand q, k, v to the transformers attention interface?"""
    try:
        return "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]


def refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be converted (one sentence naming its class), or None when it can.  Nothing is changed."""
    why = _why_not(model, _attention_modules(model))
    return None if why is None else f"model class {type(model).__name__} is not supported: {why}"


def _why_not(model: nn.Module, modules: list[nn.Module]) -> str | None:
    cfg = getattr(model, "config", None)
    model_type = getattr(cfg, "model_type", "")
    if cfg is None or not hasattr(model, "base_model"):
        return "it is not a Hugging Face model (it has no config)"
    if getattr(cfg, "is_encoder_decoder", False):
        return "it is an encoder-decoder model: its cross-attention reads a second stream the arrays do not hold"
    if getattr(cfg, "add_cross_attention", False):
        return "it has cross-attention layers: the arrays hold one causal stream of keys"
    if model_type in _ALIBI_TYPES or getattr(cfg, "alibi", False):
        return _ALIBI
    if getattr(cfg, "kv_lora_rank", None):
        return (
            "it uses multi-head latent attention: K and V are decompressed from a shared latent at every step, "
            "not written per head into cells"
        )
    if model_type in _RECURRENT_TYPES:
        return "it is a state-space / recurrent model: it has no softmax attention to replace"
    if not modules:
        return "it has no self-attention modules gaincell recognises (decoder-only causal LMs with attention)"
    own = sorted({type(m).__name__ for m in modules if not _uses_interface(type(m))})
    if own:
        return (
            f"it computes attention in its own code ({', '.join(own)}), not through the transformers attention "
            "interface gaincell plugs into"
        )
    return None


def _head_counts(module: nn.Module, cfg: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of an attention module, read from the module, else its config."""
    n_heads = (
        getattr(module, "num_heads", None)
        or getattr(cfg, "num_attention_heads", None)
        or getattr(cfg, "n_head", None)
        or getattr(cfg, "num_heads", None)
    )
    if not n_heads:
        raise GaincellError(f"cannot tell how many attention heads {type(module).__name__} has")
    groups = getattr(module, "num_key_value_groups", None)
    if groups:
        n_kv = n_heads // groups
    elif getattr(cfg, "multi_query", False):
        n_kv = 1
    else:
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(module, "head_dim", None) or getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return int(n_heads), int(n_kv), int(head_dim)


def _model_window(module: nn.Module, cfg: Any) -> int | None:
    """The layer's own sliding window: the module's attribute where the family sets one per layer (Qwen, Gemma,
    SmolLM3: None on global layers), else the config's, which the module passes for every layer (Mistral, Phi-3)."""
    window = (
        getattr(module, "sliding_window", None) if hasattr(module, "sliding_window") else getattr(cfg, "sliding_window", None)
    )
    return int(window) if window else None


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """The self-attention modules of a convertible causal LM, in layer order; raises with the reason otherwise."""
    modules = _attention_modules(model)
    why = _why_not(model, modules)
    if why is not None:
        raise GaincellError(f"model class {type(model).__name__} is not supported: {why}")
    cfg = model.config
    layers = []
    for module in modules:
        if getattr(module, "is_cross_attention", False):
            continue
        n_heads, n_kv, head_dim = _head_counts(module, cfg)
        layers.append(AttentionLayer(int(module.layer_idx), module, n_heads, n_kv, head_dim, _model_window(module, cfg)))
    return sorted(layers, key=lambda layer: layer.index)
