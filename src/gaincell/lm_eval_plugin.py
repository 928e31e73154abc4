"""lm-evaluation-harness integration: the ``gaincell`` model type.

``GainCellLM`` is lm-eval's Hugging Face model (``HFLM``: batching, ``loglikelihood``, ``loglikelihood_rolling``,
``generate_until``) around a model loaded by :func:`gaincell.load`, so any shipped name, gaincell folder, Hugging Face
folder or hub id works, converted or not; ``hardware=`` converts it (an unconverted model: direct mapping).
Generation goes through the analog KV cache.

    lm_eval --model gaincell --model_args pretrained=shakespeare-nonlinear,hardware=paper --tasks ...
    gaincell lm-eval --model gaincell --model_args ... --tasks ...     (same arguments; see below)
    lm_eval.simple_evaluate(model="gaincell", model_args="pretrained=...,hardware=paper", tasks=[...])

Registration: importing this module registers ``gaincell`` with lm-eval's model registry, and the package declares
the ``lm_eval.models`` entry point.  lm-eval 0.4.13 reads no model entry points (upstream issue #3282), so the package
also installs ``gaincell_lm_eval.pth``: a start-up hook that registers ``gaincell`` lazily whenever lm-eval loads its
model table (see ``gaincell_lm_eval_hook``), which is what makes the bare ``lm_eval --model gaincell`` work.
``gaincell lm-eval`` is the same command with the offline tasks on the include path.
"""

from __future__ import annotations

from typing import Any

from gaincell.errors import GaincellError

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as exc:  # pragma: no cover - exercised only without lm-eval
    raise GaincellError("the lm-eval integration needs lm-evaluation-harness: pip install 'lm-eval==0.4.13'") from exc

__all__ = ["GainCellLM"]


@register_model("gaincell")
class GainCellLM(HFLM):
    """lm-eval model: ``pretrained`` = shipped name / folder / hub id; ``hardware`` = preset, file, ``softmax``."""

    def __init__(self, pretrained: str = "shakespeare-nonlinear", hardware: str | None = None, **kwargs: Any):
        from gaincell.hub import load, load_tokenizer

        model = load(pretrained, attention=hardware)
        tokenizer = load_tokenizer(pretrained)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        kwargs.pop("tokenizer", None)
        kwargs.setdefault("device", "cpu")
        super().__init__(pretrained=model, tokenizer=tokenizer, **kwargs)
        self.gaincell_name = pretrained
        self.gaincell_hardware = hardware
