"""Decode speed: host tokens/s through the analog KV cache vs Hugging Face's DynamicCache with SDPA.

    python benchmarks/decode.py [--threads 2] [--tokens 256] [--batches 1 8]

Greedy decoding after a 16-token prompt, batch 1 and batch 8 (tokens/s counts every row's tokens): the shipped
Shakespeare nonlinear model, and a GPT-2-small-shaped model (random weights) converted to the paper preset; the
analog cache with its compiled decoding step (the default where a C compiler exists) and with the tensor path, and
the SDPA model, run in turn (median of 5 or 3 runs after a warm-up each).  Then the per-token cost against position for a Llama-shaped
model (RoPE, window 256): flat once the ring is full (O(window), not O(tokens so far)).  Also the prefill of a
whole-context prompt (1 x 128 for the shipped model, 1 x 1024 for the GPT-2-shaped one), writing the cache.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from common import paired_median_times
from gaincell import HardwareConfig
from gaincell.cache import AnalogKVCache
from gaincell.model import convert


@torch.no_grad()
def decode(model, cache, tokens: int, prompt: torch.Tensor) -> list[float]:
    """Per-token wall times of greedy decoding."""
    logits = model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]
    times = []
    for _ in range(tokens):
        nxt = logits.argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        logits = model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1]
        times.append(time.perf_counter() - t0)
    return times


def paired_decode_times(caches, models, tokens: int, prompt: torch.Tensor, repeats: int) -> list[float]:
    """Median total per-token time of each (cache factory, model) pair's decoding, the pairs run in turn (a, b, c, a,
    b, c, ...) after one warm-up run each, so that a machine whose speed drifts slows every side alike."""
    runs: list[list[float]] = [[] for _ in caches]
    for i in range(repeats + 1):
        for make, model, out in zip(caches, models, runs, strict=True):
            total = sum(decode(model, make(), tokens, prompt))
            if i:  # the first round warms up
                out.append(total)
    return [statistics.median(r) for r in runs]


def sdpa_copy(model):
    """The same weights as plain transformers with SDPA attention and a DynamicCache (the gaincell spec removed)."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("sdpa")
    ref._gaincell_spec = None
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = []
    try:
        from gaincell.hub import load

        models.append(("shakespeare-nonlinear (4 x 128)", load("shakespeare-nonlinear"), min(args.tokens, 100), 5))
    except Exception as exc:
        print(f"(shipped model skipped: {exc})")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)).eval()
    models.append(("GPT-2-small-shaped, paper", convert(gpt2, "paper"), args.tokens, 3))
    print(
        "| model | batch | new tokens per row | analog cache tok/s | same, tensor path (compiled=False) tok/s "
        "| DynamicCache + SDPA tok/s | analog speed / SDPA speed | tensor path / SDPA |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, model, n, repeats in models:
        ref = sdpa_copy(model)
        for batch in args.batches:
            prompt = torch.randint(0, model.config.vocab_size, (batch, 16))
            compiled, tensors, digital = paired_decode_times(
                [
                    lambda: AnalogKVCache(model, compiled=True),
                    lambda: AnalogKVCache(model, compiled=False),
                    lambda: DynamicCache(config=ref.config),
                ],
                [model, model, ref],
                n,
                prompt,
                repeats,
            )
            speeds = f"{batch * n / compiled:.1f} | {batch * n / tensors:.1f} | {batch * n / digital:.1f}"
            print(f"| {name} | {batch} | {n} | {speeds} | {digital / compiled:.2f}x | {digital / tensors:.2f}x |", flush=True)
    # prefill: the whole prompt in one forward, the analog cache written on the way (one indexed write per layer)
    print("\n| model | prompt | analog cache prefill ms | DynamicCache + SDPA prefill ms | ratio |")
    print("|---|---|---|---|---|")
    for name, model, _, _ in models:
        ref = sdpa_copy(model)
        length = min(model.config.n_positions, 1024)
        prompt = torch.randint(0, model.config.vocab_size, (1, length))
        with torch.no_grad():
            t_sdpa, t_analog = paired_median_times(
                lambda r=ref, p=prompt: r(input_ids=p, cache=DynamicCache(config=r.config), use_cache=True),
                lambda m=model, p=prompt: m(input_ids=p, cache=AnalogKVCache(m), use_cache=True),
                3,
            )
        print(f"| {name} | 1x{length} | {t_analog * 1e3:.0f} | {t_sdpa * 1e3:.0f} | {t_analog / t_sdpa:.2f}x |", flush=True)
    llama = LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=4,
            hidden_size=256,
            num_attention_heads=4,
            intermediate_size=1024,
            vocab_size=1000,
            max_position_embeddings=128,
        )
    ).eval()
    convert(llama, HardwareConfig.preset("paper").replace(window=256))
    times = decode(llama, AnalogKVCache(llama), 1024, torch.randint(0, 1000, (1, 4)))
    print("\nper-token decode time vs position (Llama-shaped, 4 x 256, window 256; trained context 128):")
    for lo in (0, 128, 256, 512, 768):
        seg = times[lo : lo + 128]
        print(f"  tokens {lo:4d}-{lo + 127:4d}: {1e3 * sum(seg) / len(seg):.2f} ms/token")


if __name__ == "__main__":
    main()
