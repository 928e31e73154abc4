"""Randomly initialised causal LMs to pre-train from scratch (``gaincell init``; tests and benchmarks use them too)."""

from __future__ import annotations

from typing import Any

import torch

from gaincell.errors import GaincellError

__all__ = ["ARCHITECTURES", "new_model"]

#: the architectures :func:`new_model` builds
ARCHITECTURES = ("gpt2", "llama")


def new_model(
    arch: str, *, layers: int, width: int, heads: int, kv_heads: int | None, context: int, vocab: int, seed: int
) -> Any:
    """A randomly initialised GPT-2 or Llama causal LM (dropout off), seeded.

    Args:
        arch: ``"gpt2"`` or ``"llama"``.
        layers, width, heads: transformer blocks, hidden size, attention heads (``width`` divisible by ``heads``).
        kv_heads: Llama only: key/value heads for grouped-query attention (default: ``heads``).
        context: positions (GPT-2's ``n_positions``, Llama's ``max_position_embeddings``).
        vocab: vocabulary size; its last id is the BOS/EOS token.
        seed: ``torch.manual_seed`` before the weights are drawn.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch not in ARCHITECTURES:
        raise GaincellError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if width % heads:
        raise GaincellError(f"width {width} must be divisible by heads {heads}")
    torch.manual_seed(seed)
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                n_layer=layers,
                n_embd=width,
                n_head=heads,
                n_positions=context,
                vocab_size=vocab,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                bos_token_id=vocab - 1,
                eos_token_id=vocab - 1,
            )
        )
    kv = kv_heads or heads
    if heads % kv:
        raise GaincellError(f"heads {heads} must be divisible by kv_heads {kv}")
    return LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=width,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            intermediate_size=4 * width,
            max_position_embeddings=context,
            vocab_size=vocab,
            tie_word_embeddings=True,
            bos_token_id=vocab - 1,
            eos_token_id=vocab - 1,
        )
    )
