"""Shared test helpers: tiny random models (GPT-2, Llama with grouped-query attention) and a way to make them drive
the analog arrays.  Plain functions, imported by the tests as ``from helpers import ...``; pytest fixtures and
session settings live in ``conftest.py``."""

from __future__ import annotations

import torch


def drive_arrays(model, q_scale: float = 6.0, kv_scale: float = 3.0):
    """Scale a converted model's per-head maps so a random tiny model really drives the arrays.

    With random weights q, k, v sit near 0 and 0.45 V, every score rounds to zero and the attention output reads out
    as exactly 0; tests of the analog path must not pass on such a model.  Changes ``model`` in place and returns it.
    """
    from gaincell.attention import head_maps

    with torch.no_grad():
        for m in head_maps(model):
            m.q_scale.fill_(q_scale)
            m.k_scale.fill_(kv_scale)
            m.v_scale.fill_(kv_scale)
    return model


def tiny_llama(vocab: int = 97, seed: int = 0, positions: int = 128, dtype: torch.dtype = torch.float32):
    """A 2-layer, 32-wide Llama with grouped-query attention (4 heads, 2 key/value heads), random weights, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=vocab,
        max_position_embeddings=positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(vocab: int = 97, seed: int = 0, positions: int = 128, dtype: torch.dtype = torch.float32):
    """A 2-layer, 32-wide GPT-2 (2 heads), random weights, eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=positions, vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()
