"""Kernel speed and memory against torch's scaled_dot_product_attention, measured in one process.

    python benchmarks/kernel.py [--threads 2] [--repeats 5] [--preset paper] [--device cpu|cuda]

B=1, H=12, D=64, float32.  For each T in {256, 1024, 4096} and W in {256, T}: forward time of the paper kernel and of
SDPA(is_causal=True) on the same tensors, forward+backward of both, and the peak extra memory of one forward
(VmHWM increase minus the output, in a fresh subprocess; Linux only; on CUDA the allocator's peak).  Medians of
``--repeats`` runs, SDPA and analog alternating (a shared machine's drifting speed then slows both alike).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys

import torch

from common import cuda_peak_mib, paired_median_times
from gaincell import HardwareConfig, analog_attention

F = torch.nn.functional


_MEM = """
import sys, torch
from gaincell import HardwareConfig, analog_attention
from gaincell.kernel import release_workspace
torch.set_num_threads({threads})
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
t, w, which = {t}, {w}, '{which}'
q, k, v = torch.rand(1, 12, t, 64), torch.rand(1, 12, t, 64) * 0.9, torch.rand(1, 12, t, 64) * 0.9
cfg = HardwareConfig.preset('{preset}').replace(window=w)
analog_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], cfg)
torch.nn.functional.scaled_dot_product_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], is_causal=True)
release_workspace()
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS')
if which == 'sdpa':
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
else:
    out = analog_attention(q, k, v, cfg)
print((status('VmHWM') - base - out.numel() * 4) / 2**20)
"""


def _peak_mib(t: int, w: int, which: str, preset: str, threads: int) -> float | None:
    if not sys.platform.startswith("linux"):
        return None
    code = _MEM.format(t=t, w=w, which=which, preset=preset, threads=threads)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--no-backward-above", type=int, default=1024, help="skip fwd+bwd for T above this")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = HardwareConfig.preset(args.preset)
    dev = args.device
    where = torch.cuda.get_device_name() if dev.startswith("cuda") else platform.processor() or platform.machine()
    print(f"# {datetime.date.today()} | {where} | torch {torch.__version__} | {args.threads} threads | preset {args.preset}")
    print(
        "| T | W | SDPA fwd ms | analog fwd ms | fwd ratio | SDPA fwd+bwd ms | analog fwd+bwd ms | fwd+bwd ratio |"
        " SDPA peak MiB | analog peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for t in args.lengths:
        gen = torch.Generator().manual_seed(0)
        q = torch.rand(1, 12, t, 64, generator=gen).to(dev)
        k = (torch.rand(1, 12, t, 64, generator=gen) * 0.9).to(dev)
        v = (torch.rand(1, 12, t, 64, generator=gen) * 0.9).to(dev)
        for w in sorted({256, t}):
            cfg = base.replace(window=w)
            reps = args.repeats if t <= 1024 else max(2, args.repeats // 2)
            ts, ta = paired_median_times(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                lambda cfg=cfg: analog_attention(q, k, v, cfg),
                reps,
                dev,
            )
            row = [str(t), str(w), f"{ts * 1e3:.1f}", f"{ta * 1e3:.1f}", f"{ta / ts:.2f}x"]
            if t <= args.no_backward_above:
                qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

                def sdpa_fb():
                    F.scaled_dot_product_attention(qg, kg, vg, is_causal=True).sum().backward()

                def analog_fb(cfg=cfg):
                    analog_attention(qg, kg, vg, cfg).sum().backward()

                tsb, tab = paired_median_times(sdpa_fb, analog_fb, reps, dev)
                row += [f"{tsb * 1e3:.1f}", f"{tab * 1e3:.1f}", f"{tab / tsb:.2f}x"]
            else:
                row += ["-", "-", "-"]
            if dev.startswith("cuda"):
                ms = cuda_peak_mib(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)) if w == t else None
                ma = cuda_peak_mib(lambda cfg=cfg: analog_attention(q, k, v, cfg))
            else:
                ms = _peak_mib(t, w, "sdpa", args.preset, args.threads) if w == t else None
                ma = _peak_mib(t, w, "analog", args.preset, args.threads)
            row += ["-" if ms is None else f"{ms:.1f}", "-" if ma is None else f"{ma:.1f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
