"""What several command groups share: loading a model with its tokenizer, printing a result as JSON or as lines."""

from __future__ import annotations

import json
from typing import Any


def load_model(model: str, hardware: str | None = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model converted to ``hardware`` if given, on ``device``; its tokenizer)."""
    from gaincell.hub import load, load_tokenizer
    from gaincell.train import resolve_device

    return load(model, attention=hardware, device=resolve_device(device)), load_tokenizer(model)


def print_result(result: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """The result as indented JSON (``--json``) or as the human-readable lines."""
    print(json.dumps(result, indent=2) if as_json else "\n".join(lines))
