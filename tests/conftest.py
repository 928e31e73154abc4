from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


def drive_arrays(model, q_scale: float = 6.0, kv_scale: float = 3.0):
    """Scale a converted model's per-head maps so a random tiny model really drives the arrays.

    With random weights q, k, v sit near 0 and 0.45 V, every score rounds to zero and the attention output reads out
    as exactly 0; tests of the analog path must not pass on such a model.
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
