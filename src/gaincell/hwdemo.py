"""Hardware demo: the paper's array on real text, with a documented synthetic mapping into the DAC domain.

Workload ("token recall"): the first ``tokens`` GPT-2 tokens of Hamlet.  Every token id gets a fixed random sign
vector e in {-1, +1}^64 (seeded).  Keys and values store y = 0.45 e (the extreme DAC levels, 0 V / 0.9 V); queries are
pulse widths q = (1 + e) / 2.  A query then drives exactly the rows where its own sign vector is +1, so earlier
occurrences of the same token give S ~ 32 * f(0.45) ~ 330 (HardSigmoid saturates) while other tokens give sums of
mixed signs around 0.  It exercises the cubic cell, the leakage over the window, both saturations and the tiles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gaincell.config import HardwareConfig
from gaincell.kernel import analog_attention, attention_map, softmax_attention


def recall_workload(tokens: int, heads: int = 4, dim: int = 64, seed: int = 0) -> dict[str, Any]:
    """q, k, v in the DAC domain for the token-recall workload, plus the token ids and text."""
    from gaincell.data import gpt2_tokenizer, shakespeare_plays

    tok = gpt2_tokenizer()
    text = shakespeare_plays()["hamlet"]
    ids = torch.tensor(tok(text[:20000])["input_ids"][:tokens])
    if len(ids) < tokens:
        raise ValueError(f"tokens = {tokens}: the workload text has only {len(ids)} tokens")
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(0, 2, (heads, 50257, dim), generator=gen).float() * 2 - 1
    e = table[:, ids]  # (H, T, D)
    q = ((1 + e) / 2)[None]
    kv = (0.45 + 0.45 * e)[None]
    return {"q": q, "k": kv, "v": kv, "ids": ids, "text": tok.decode(ids)}


def run_hardware_demo(out: str | Path, *, tokens: int = 256, quiet: bool = False) -> dict[str, Any]:
    """Write ``hardware-demo.json``, ``hardware-demo.md`` and ``hardware-demo.png`` into ``out``; returns the summary.

    ``tokens`` (8 to 4096) is the sequence length; ``quiet`` prints nothing.
    """
    if tokens < 8 or tokens > 4096:
        raise ValueError(f"tokens must be between 8 and 4096, got {tokens}")
    out = Path(out)
    workload = recall_workload(tokens)
    summary, maps = measure_arrays(workload)
    png = out / "hardware-demo.png"
    _write_plot(png, maps, tokens)
    md = _write_summary(out, summary)
    if not quiet:
        print("\n".join(md[4:-2]))
        print(f"\nwrote {out / 'hardware-demo.md'}, {out / 'hardware-demo.json'}, {png}")
    return summary


def measure_arrays(workload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Attention weights phi and outputs of the paper, linear and ideal arrays on the workload, against the ideal
    array and a digital softmax: (summary, phi maps (H, T, T) per config)."""
    q, k, v, ids = workload["q"], workload["k"], workload["v"], workload["ids"]
    tokens = len(ids)
    earlier = torch.tril(torch.ones(tokens, tokens, dtype=torch.bool), -1)
    same = (ids[:, None] == ids[None, :]) & earlier  # (query, key) pairs where the key repeats the query's token
    other = ~(ids[:, None] == ids[None, :]) & earlier
    summary: dict[str, Any] = {"workload": __doc__.split("\n\n")[1].replace("\n", " "), "tokens": tokens, "heads": q.shape[1]}
    configs = {name: HardwareConfig.preset(name) for name in ("paper", "paper-linear", "ideal")}
    maps = {}
    for name, cfg in configs.items():
        phi = attention_map(q, k, cfg)[0]  # (H, T, T)
        maps[name] = phi
        outp = analog_attention(q, k, v, cfg)
        summary[name] = {
            "phi_same_token_mean": float(phi[:, same].mean()) if same.any() else None,
            "phi_other_token_mean": float(phi[:, other].mean()),
            "phi_saturated_fraction": float((phi[:, other | same] >= 1).float().mean()),
            "output_abs_mean": float(outp.abs().mean()),
        }
    ref = analog_attention(q, k, v, configs["ideal"])
    for name in ("paper", "paper-linear"):
        o = analog_attention(q, k, v, configs[name])
        summary[name]["output_rel_error_vs_ideal"] = float((o - ref).norm() / ref.norm())
    soft = softmax_attention(q - 0.5, k - 0.45, v - 0.45)  # same vectors, digital softmax baseline
    summary["softmax_output_abs_mean"] = float(soft.abs().mean())
    return summary, maps


def _write_plot(path: Path, maps: dict[str, Tensor], tokens: int) -> None:
    """The cell's multiply curve (top left) and head 0's attention map on each array."""
    from matplotlib.figure import Figure

    from gaincell.files import atomic_write

    paper = HardwareConfig.preset("paper")
    fig = Figure(figsize=(11, 9))
    ax = fig.subplots(2, 2)
    _plot_cell_curve(ax[0, 0], paper)
    for a, name in ((ax[0, 1], "paper"), (ax[1, 0], "paper-linear"), (ax[1, 1], "ideal")):
        im = a.imshow(maps[name][0].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        a.set(title=f"phi = HardSigmoid(S/80), head 0, {name}", xlabel="key token", ylabel="query token")
        fig.colorbar(im, ax=a, fraction=0.046)
    fig.suptitle(f"gaincell hardware demo: token recall on {tokens} tokens of Hamlet")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))


def _plot_cell_curve(a: Any, paper: HardwareConfig) -> None:
    """The SPICE cubic against the linear model, for a fresh key and for the oldest key in the window, with the
    3-bit write levels marked."""
    y = torch.linspace(-0.45, 0.45, 201).numpy()
    a.plot(y, [paper.cell_current(float(t)) for t in y], label="SPICE cubic f(y)")
    a.plot(y, 19.3 * y, "--", label="linear model 19.3 y")
    d_old = float(torch.exp(torch.tensor(-paper.decay_per_token * (paper.window - 1))))
    a.plot(y, [paper.cell_current(d_old * float(t)) for t in y], ":", label=f"oldest key in window (d = {d_old:.3f})")
    levels = (torch.linspace(0, 0.9, 8) - 0.45).numpy()
    a.plot(levels, [paper.cell_current(float(t)) for t in levels], "o", label="3-bit write levels")
    a.set(xlabel="stored voltage - 0.45 V (V)", ylabel="cell current (uA, full pulse)", title="Gain-cell multiply")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)


def _write_summary(out: Path, summary: dict[str, Any]) -> list[str]:
    """``hardware-demo.md`` (one table row per config) and ``hardware-demo.json``; returns the markdown lines."""
    from gaincell.files import atomic_write_text

    md = [
        "# gaincell hardware demo",
        "",
        summary["workload"],
        "",
        "| config | mean phi, same token | mean phi, other tokens | saturated phi | rel. error vs ideal array |",
        "|---|---|---|---|---|",
    ]
    for name in ("paper", "paper-linear", "ideal"):
        s = summary[name]
        err = s.get("output_rel_error_vs_ideal", 0.0)
        same_mean = "n/a" if s["phi_same_token_mean"] is None else f"{s['phi_same_token_mean']:.3f}"
        md.append(f"| {name} | {same_mean} | {s['phi_other_token_mean']:.3f} | {s['phi_saturated_fraction']:.3f} | {err:.3f} |")
    md += ["", "![cell curve and attention maps](hardware-demo.png)", ""]
    atomic_write_text(out / "hardware-demo.md", "\n".join(md))
    atomic_write_text(out / "hardware-demo.json", json.dumps(summary, indent=2) + "\n")
    return md
