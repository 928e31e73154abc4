"""What several command groups share: loading a model with its tokenizer, turning a text spec into token ids,
printing a result as JSON or as lines."""

from __future__ import annotations

import json
from typing import Any

import torch

from gaincell.errors import GaincellError


def text_ids(spec: str, tokenizer: Any) -> torch.Tensor:
    """Token ids of a text spec (file, folder, ``shakespeare:SPLIT``, ``hf:NAME:SPLIT``) or of a ``.bin`` token file
    written by ``gaincell prepare`` (memory-mapped; its ids are checked against the tokenizer's vocabulary)."""
    from gaincell.data import load_text, load_tokens, tokenize

    if spec.endswith(".bin"):
        ids = load_tokens(spec)
        if len(tokenizer) > 0 and ids.numel() and int(ids[: min(ids.numel(), 1 << 20)].max()) >= len(tokenizer):
            raise GaincellError(
                f"{spec} holds token ids beyond this model's vocabulary ({len(tokenizer)}): prepared with another tokenizer?"
            )
        return ids
    ids = tokenize(tokenizer, load_text(spec))
    if ids.numel() == 0:
        raise GaincellError(f"text {spec!r} has no tokens")
    return ids


def load_model(model: str, hardware: str | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model converted to ``hardware`` if given, on ``device``; its tokenizer)."""
    from gaincell.hub import load, load_tokenizer
    from gaincell.train import resolve_device

    return load(model, attention=hardware, device=resolve_device(device)), load_tokenizer(model)


def print_result(result: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """The result as indented JSON (``--json``) or as the human-readable lines."""
    print(json.dumps(result, indent=2) if as_json else "\n".join(lines))
