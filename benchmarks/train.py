"""Training-step speed with and without ``torch.compile`` (``gaincell finetune --compile``).

One step = forward + backward + AdamW on a 16 x 128 batch of the shipped 4-layer models (softmax and analog), the
compiled model built exactly as ``finetune`` builds it (the analog attention stays eager; the rest is compiled).
Also prints the first-step loss difference, compiled vs eager, and the eager analog step over the eager softmax step
measured alternately (step of one, step of the other, ...; medians after 3 warm-up steps each), so that a drifting
machine slows both alike.  Usage: python benchmarks/train.py [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from gaincell.hub import load
from gaincell.train import TrainConfig, param_groups, sample_batch, training_loss


def step_time(name: str, compiled: bool, device: str, steps: int, batch: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = load(name, device=device).train()
    cfg = TrainConfig(batch_size=batch, context=128)
    run = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (100_000,))
    first = None
    t0 = time.perf_counter()
    times = []
    for i in range(steps):
        x, y = sample_batch(ids, batch, 128, i)
        t = time.perf_counter()
        loss = training_loss(run, x.to(device), y.to(device), None, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        first = float(loss.detach()) if first is None else first
    warm = times[3:] if len(times) > 3 else times
    return sorted(warm)[len(warm) // 2], time.perf_counter() - t0 - sum(warm), first


def paired_step_ratio(device: str, steps: int, batch: int) -> tuple[float, float]:
    """Median eager step (s) of the shipped softmax and nonlinear models, their steps alternating."""
    names = ("shakespeare-softmax", "shakespeare-nonlinear")
    models = {n: load(n, device=device).train() for n in names}
    opts = {n: torch.optim.AdamW(param_groups(m, 0.1), lr=1e-4) for n, m in models.items()}
    cfg = TrainConfig(batch_size=batch, context=128)
    ids = torch.randint(0, 20_000, (100_000,))
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(steps + 3):
        for n in names:
            x, y = sample_batch(ids, batch, 128, i)
            t = time.perf_counter()
            loss = training_loss(models[n], x.to(device), y.to(device), None, cfg)
            loss.backward()
            opts[n].step()
            opts[n].zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 3:
                times[n].append(time.perf_counter() - t)
    soft, analog = (sorted(times[n])[len(times[n]) // 2] for n in names)
    return soft, analog


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, batch {args.batch} x 128")
    print("| model | eager s/step | compiled s/step | speed-up | compile warm-up s | first-step loss diff |")
    print("|---|---|---|---|---|---|")
    for name in ("shakespeare-softmax", "shakespeare-nonlinear"):
        eager, _, l0 = step_time(name, False, args.device, args.steps, args.batch)
        comp, warm, l1 = step_time(name, True, args.device, args.steps, args.batch)
        print(f"| {name} | {eager:.3f} | {comp:.3f} | {eager / comp:.2f}x | {warm:.1f} | {abs(l0 - l1):.1e} |")
    soft, analog = paired_step_ratio(args.device, args.steps, args.batch)
    print(f"\neager steps alternating: softmax {soft:.3f} s, nonlinear {analog:.3f} s -> {analog / soft:.3f}x")


if __name__ == "__main__":
    main()
