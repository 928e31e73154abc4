"""``gaincell demo``: the paper's Table 1 and Fig. 4c in miniature, on held-out Shakespeare, with the shipped models.

Rows (perplexity on the test plays, same tokenizer and context for all):
softmax baseline; its weights mapped directly onto the linear and the nonlinear hardware; the linear model after
fine-tuning; the nonlinear hardware loaded with the linear model's weights without adaptation; after the adaptation
algorithm (run live here, its curve plotted); after adaptation + fine-tuning (the shipped nonlinear model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from gaincell.errors import GaincellError

# The paper's figures for the same rows (GPT-2 124M, OpenWebText validation perplexity), for orientation only.
PAPER = {
    "softmax": ("22.2", "GPT-2, OWT val loss 3.10 (code plot script)"),
    "direct-linear": ("~58,800", "GPT-2 weights on the linear model: chance-level loss 10.98"),
    "direct-nonlinear": ("chance", "'chance-level loss' (paper text)"),
    "linear": ("23.2", "linear model fine-tuned from GPT-2, 2,900 iterations"),
    "no-adaptation": ("1,757", "Fig. 4c, start of adaptation"),
    "adapted": ("~21", "Fig. 4c, after adaptation"),
    "adapted-finetuned": ("23.2", "nonlinear model fine-tuned after adaptation"),
}

SHIPPED = ("shakespeare-softmax", "shakespeare-linear", "shakespeare-nonlinear")


def run_demo(out: str | Path, *, quiet: bool = False, max_tokens: int | None = None, context: int = 128) -> dict[str, Any]:
    """Evaluate every row, run the adaptation, write ``table1.md``, ``table1.json`` and ``table1.png`` into ``out``."""
    from gaincell.adapt import adapt
    from gaincell.data import load_text, tokenize
    from gaincell.evaluate import perplexity
    from gaincell.files import atomic_write_text
    from gaincell.hub import load, load_tokenizer, shipped_models
    from gaincell.train import sample_batch

    names = {m["name"] for m in shipped_models()}
    missing = [n for n in SHIPPED if n not in names]
    if missing:
        raise GaincellError(f"shipped models missing: {', '.join(missing)} (re-create them with `make models`)")
    t0 = time.time()
    out = Path(out)
    tok = load_tokenizer("shakespeare-softmax")
    ids = tokenize(tok, load_text("shakespeare:test"))
    if max_tokens:
        ids = ids[:max_tokens]
    calib, _ = sample_batch(tokenize(tok, load_text("shakespeare:train")), 16, context, 0)

    rows: list[dict[str, Any]] = []

    def add(key: str, label: str, model: torch.nn.Module, attention: str) -> None:
        res = perplexity(model, ids, context=context, progress=not quiet, desc=key)
        rows.append(
            {
                "row": key,
                "model": label,
                "attention": attention,
                "perplexity": res["perplexity"],
                "tokens": res["tokens"],
                "paper": PAPER[key][0],
                "paper_note": PAPER[key][1],
            }
        )
        if not quiet:
            print(f"  {label:<58} {res['perplexity']:>10.2f}")

    if not quiet:
        print(f"miniature Table 1: held-out Shakespeare (test plays, {ids.numel()} tokens, context {context})")
    add("softmax", "softmax baseline (shakespeare-softmax)", load("shakespeare-softmax"), "softmax")
    add(
        "direct-linear",
        "softmax weights mapped directly onto linear hardware",
        load("shakespeare-softmax", attention="paper-linear"),
        "paper-linear",
    )
    add(
        "direct-nonlinear",
        "softmax weights mapped directly onto nonlinear hardware",
        load("shakespeare-softmax", attention="paper"),
        "paper",
    )
    add("linear", "linear hardware, fine-tuned (shakespeare-linear)", load("shakespeare-linear"), "paper-linear")
    add(
        "no-adaptation",
        "nonlinear hardware, linear weights, no adaptation",
        load("shakespeare-linear", attention="paper"),
        "paper",
    )
    adapted = load("shakespeare-linear")
    result = adapt(adapted, "paper", calib, progress=not quiet)
    add("adapted", f"nonlinear hardware after adaptation ({result.iterations} iterations)", adapted, "paper")
    add("adapted-finetuned", "nonlinear, adapted + fine-tuned (shakespeare-nonlinear)", load("shakespeare-nonlinear"), "paper")

    ppl = {r["row"]: r["perplexity"] for r in rows}
    checks = {
        "final_vs_softmax": ppl["adapted-finetuned"] / ppl["softmax"],
        "adapted_vs_linear": ppl["adapted"] / ppl["linear"],
        "direct_vs_softmax": min(ppl["direct-linear"], ppl["direct-nonlinear"]) / ppl["softmax"],
    }
    summary = {
        "text": "shakespeare:test",
        "tokens": rows[0]["tokens"],
        "context": context,
        "rows": rows,
        "adaptation": result.to_dict(),
        "ratios": checks,
        "seconds": round(time.time() - t0, 1),
    }
    _write_plot(out / "table1.png", rows, result.loss)
    # what the shipped nonlinear model's attention costs on the gain-cell engine, and against GPUs
    from gaincell.attention import attention_spec
    from gaincell.cost import compare, model_shape_of, write_report

    final = load("shakespeare-nonlinear")
    hw = attention_spec(final)
    cost = compare(hw, model_shape_of(final), batch=64, gpus=["h100", "rtx4090"])  # type: ignore[arg-type]
    write_report(hw, out, batch=64)  # type: ignore[arg-type]
    summary["cost"] = {k: cost[k] for k in ("energy_per_token_j", "latency_per_token_s", "area_mm2")}
    summary["cost"]["gpus"] = {g: {"speedup": v["speedup"], "energy_ratio": v["energy_ratio"]} for g, v in cost["gpus"].items()}
    md = [
        "# gaincell demo: Table 1 in miniature",
        "",
        f"Perplexity on the held-out Shakespeare test plays ({rows[0]['tokens']} tokens, context {context}); "
        "paper column: GPT-2 on OpenWebText (Leroux et al. 2025), for orientation.",
        "",
        "| row | model | attention | perplexity | × softmax | paper (OWT) |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        md.append(
            f"| {i} | {r['model']} | {r['attention']} | {r['perplexity']:.2f} | {r['perplexity'] / ppl['softmax']:.3f} | {r['paper']} |"
        )
    md += [
        "",
        f"Final nonlinear / softmax: **{checks['final_vs_softmax']:.3f}** (paper 23.2 / 22.2 = 1.045). "
        f"Adapted / linear: **{checks['adapted_vs_linear']:.3f}**. "
        f"Direct mapping / softmax: **{checks['direct_vs_softmax']:.1f}**.",
        "",
        "![perplexities and adaptation curve](table1.png)",
        "",
        "## Cost of the nonlinear model's attention on the gain-cell engine",
        "",
        f"{cost['layers']} layers x {cost['heads']} heads (d = {cost['head_dim']}), window {cost['window']}: "
        f"{cost['energy_per_token_j'] * 1e9:.1f} nJ per token (all layers), {cost['latency_per_token_s'] * 1e9:.0f} ns per token per layer, "
        f"{cost['area_mm2']:.2f} mm^2 (`gaincell cost`).  Against GPU rooflines for the same attention step (batch 64): "
        + ", ".join(f"{g} x{v['speedup']:,.0f} faster / x{v['energy_ratio']:,.0f} less energy" for g, v in cost["gpus"].items())
        + ".  GPT-2-scale sweeps and the component breakdown: cost.png, cost.json, cost-by-*.csv.",
        "",
        "![cost sweeps and breakdown](cost.png)",
        "",
    ]
    atomic_write_text(out / "table1.md", "\n".join(md))
    atomic_write_text(out / "table1.json", json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(
            f"final/softmax {checks['final_vs_softmax']:.3f}, adapted/linear {checks['adapted_vs_linear']:.3f}, "
            f"direct/softmax {checks['direct_vs_softmax']:.1f}  ({summary['seconds']} s)"
        )
        print(f"wrote {out / 'table1.md'}, {out / 'table1.json'}, {out / 'table1.png'}")
    return summary


def _write_plot(path: Path, rows: list[dict[str, Any]], curve: list[float]) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaincell.files import atomic_write

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    labels = [f"{i}. {r['row']}" for i, r in enumerate(rows, 1)]
    values = [r["perplexity"] for r in rows]
    colors = ["#4c72b0", "#c44e52", "#c44e52", "#55a868", "#c44e52", "#8172b2", "#55a868"]
    a.barh(labels[::-1], values[::-1], color=colors[: len(rows)][::-1])
    a.set_xscale("log")
    a.axvline(values[0], color="k", lw=0.8, ls="--")
    for y, v in enumerate(values[::-1]):
        a.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    a.set(xlabel="perplexity on held-out Shakespeare (log scale)", title="Table 1 in miniature")
    b.plot(range(len(curve)), [math.exp(x) for x in curve], marker="o", ms=3)
    b.set_yscale("log")
    b.set(xlabel="adaptation iteration", ylabel="calibration perplexity", title="Adaptation (cf. Fig. 4c)")
    b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
