"""Perplexity, strided as in the transformers perplexity guide (docs/source/en/perplexity.md).

Windows of ``context`` tokens start every ``stride`` tokens; each window scores only the tokens not scored by the
previous one (the others are context), so every token after the first is predicted exactly once, with up to
``context - 1`` tokens of history.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gaincell.errors import GaincellError

__all__ = ["model_context", "perplexity"]


def model_context(model: nn.Module) -> int:
    """The longest context the model's position scheme supports (GPT-2: n_positions; Llama: max positions)."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(cfg, name, None)
        if value:
            return int(value)
    return 1024


def _windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window, as in the transformers guide."""
    out = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        trg_len = end - prev_end
        out.append((begin, end, max(begin + 1, end - trg_len)))
        prev_end = end
        if end == n:
            break
    return out


def _check_window(n: int, context: int | None, stride: int | None, limit: int) -> tuple[int, int]:
    """The context and stride to use (defaults: the model's ``limit``, then the context), checked against the text."""
    context = limit if context is None else context
    if context < 2:
        raise GaincellError(f"context must be >= 2, got {context}")
    if context > limit:
        raise GaincellError(f"context {context} exceeds the model's {limit} positions")
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise GaincellError(f"stride must be between 1 and the context ({context}), got {stride}")
    if n == 0:
        raise GaincellError("the text is empty (no tokens)")
    if n < context + 1:
        raise GaincellError(f"the text has {n} tokens, fewer than context + 1 = {context + 1}: use a shorter context")
    return context, stride


def _batches(windows: list[tuple[int, int, int]], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Windows grouped into batches of equal length (only the last window of the text can be shorter)."""
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        by_length.setdefault(w[1] - w[0], []).append(w)
    return [ws[i : i + batch_size] for ws in by_length.values() for i in range(0, len(ws), batch_size)]


def _scored_log_probs(model: nn.Module, ids: Tensor, batch: list[tuple[int, int, int]]) -> list[Tensor]:
    """Per window of the batch: the log-probabilities of its scored tokens (those after its context)."""
    device = next(model.parameters()).device
    x = torch.stack([ids[b:e] for b, e, _ in batch]).long().to(device)
    logits = model(input_ids=x, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None])[..., 0]  # predicts x[t+1]
    return [logp[row, first - b - 1 :] for row, (b, _e, first) in enumerate(batch)]


@torch.no_grad()
def perplexity(
    model: nn.Module,
    ids: Tensor,
    *,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "perplexity",
) -> dict[str, Any]:
    """Strided perplexity of ``model`` on the token stream ``ids`` (any shape; read in order).

    Returns ``{"perplexity", "nll", "tokens", "context", "stride", "windows"}`` (nll in nats per token).
    """
    from tqdm import tqdm

    ids = ids.flatten()  # a memory-mapped token file stays one (see gaincell.data.load_tokens)
    context, stride = _check_window(ids.numel(), context, stride, model_context(model))
    vocab = int(model.config.vocab_size)
    batch_size = max(1, min(batch_size, (1 << 28) // (context * vocab)))  # keep the logits under ~1 GiB
    windows = _windows(ids.numel(), context, stride)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with tqdm(total=len(windows), desc=desc, unit="win", leave=False, disable=not progress) as bar:
            for batch in _batches(windows, batch_size):
                for scored in _scored_log_probs(model, ids, batch):
                    total -= float(scored.sum())
                    count += scored.numel()
                bar.update(len(batch))
    finally:
        model.train(was_training)
    nll = total / count
    return {
        "perplexity": math.exp(nll),
        "nll": nll,
        "tokens": count,
        "context": context,
        "stride": stride,
        "windows": len(windows),
    }
