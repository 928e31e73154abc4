"""Model-level speed: a GPT-2-small-shaped model (12 layers, 768 wide, 12 heads, random weights) on 1 x 1024 tokens.

    python benchmarks/model.py [--threads 2] [--repeats 3] [--device cpu|cuda]

Forward (no grad) with the paper preset vs the same weights with PyTorch SDPA, measured in one process, the two
alternating; also the shipped Shakespeare model (4 layers, 128 wide) on 16 x 128 tokens.  Medians.
"""

from __future__ import annotations

import argparse
import copy

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from common import paired_median_times
from gaincell.model import convert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    dev = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    sdpa = GPT2LMHeadModel(cfg).eval().to(dev)
    sdpa.set_attn_implementation("sdpa")
    print("| model | tokens | SDPA ms | paper ms | ratio | SDPA ms | paper-linear ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    x = torch.randint(0, 50257, (1, 1024), device=dev)
    rows = [("GPT-2-small-shaped (random weights)", sdpa, x)]
    try:
        from gaincell.hub import load

        shipped = load("shakespeare-softmax", device=dev)
        shipped.set_attn_implementation("sdpa")
        rows.append(("shakespeare model (4 x 128)", shipped, torch.randint(0, shipped.config.vocab_size, (16, 128), device=dev)))
    except Exception as exc:
        print(f"(shipped model skipped: {exc})")
    for name, model, inp in rows:
        cells = []
        with torch.no_grad():
            for preset in ("paper", "paper-linear"):  # each against SDPA, alternating (see common.paired_median_times)
                analog = convert(copy.deepcopy(model), preset).eval()
                t_sdpa, t_analog = paired_median_times(
                    lambda m=model, i=inp: m(input_ids=i, use_cache=False),
                    lambda m=analog, i=inp: m(input_ids=i, use_cache=False),
                    args.repeats,
                    dev,
                )
                cells.append(f"{t_sdpa * 1e3:.0f} | {t_analog * 1e3:.0f} | {t_analog / t_sdpa:.2f}x")
        print(f"| {name} | {inp.shape[0]}x{inp.shape[1]} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
