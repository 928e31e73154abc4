"""``gaincell demo``: the paper's Table 1 and Fig. 4c in miniature, on held-out Shakespeare, with the shipped models.

Rows (perplexity on the test plays, same tokenizer and context for all):
softmax baseline; its weights mapped directly onto the linear and the nonlinear hardware; the linear model after
fine-tuning; the nonlinear hardware loaded with the linear model's weights without adaptation; after the adaptation
algorithm (run live here, its curve plotted); the arXiv-era variant of the adaptation, which first resets every
per-head map to a = 1, b = 0 (before and after, its curve plotted: the collapse and the recovery of Fig. 4c); after
adaptation + fine-tuning (the shipped nonlinear model).  Under the table, each row says which code path and which
options produced it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gaincell.errors import GaincellError

if TYPE_CHECKING:
    from gaincell.adapt import AdaptResult

# The paper's figures for the same rows (GPT-2 124M, OpenWebText validation perplexity), for orientation only.
PAPER = {
    "softmax": ("22.2", "GPT-2, OWT val loss 3.10 (code plot script)"),
    "direct-linear": ("~58,800", "GPT-2 weights on the linear model: chance-level loss 10.98"),
    "direct-nonlinear": ("chance", "'chance-level loss' (paper text)"),
    "linear": ("23.2", "linear model fine-tuned from GPT-2, 2,900 iterations"),
    "no-adaptation": ("-", "published code at HEAD keeps the trained maps; no published figure"),
    "adapted": ("-", "published code at HEAD; no published figure"),
    "arxiv-start": ("1,757", "Fig. 4c, start of adaptation (maps reset to a = 1, b = 0)"),
    "arxiv-adapted": ("~21", "Fig. 4c, after adaptation"),
    "adapted-finetuned": ("23.2", "nonlinear model fine-tuned after adaptation"),
}

SHIPPED = ("shakespeare-softmax", "shakespeare-linear", "shakespeare-nonlinear")

#: The rows evaluated on a shipped model as loaded or mapped onto other attention, in table order around the adapted
#: row: (row key, label, shipped model, attention to convert to or None, attention column).
ROWS_BEFORE_ADAPTATION = (
    ("softmax", "softmax baseline (shakespeare-softmax)", "shakespeare-softmax", None, "softmax"),
    (
        "direct-linear",
        "softmax weights mapped directly onto linear hardware",
        "shakespeare-softmax",
        "paper-linear",
        "paper-linear",
    ),
    ("direct-nonlinear", "softmax weights mapped directly onto nonlinear hardware", "shakespeare-softmax", "paper", "paper"),
    ("linear", "linear hardware, fine-tuned (shakespeare-linear)", "shakespeare-linear", None, "paper-linear"),
    ("no-adaptation", "nonlinear hardware, linear weights, no adaptation", "shakespeare-linear", "paper", "paper"),
)
ROWS_AFTER_ADAPTATION = (
    ("adapted-finetuned", "nonlinear, adapted + fine-tuned (shakespeare-nonlinear)", "shakespeare-nonlinear", None, "paper"),
)


def run_demo(out: str | Path, *, quiet: bool = False, max_tokens: int | None = None, context: int = 128) -> dict[str, Any]:
    """Evaluate every row, run the adaptation, write ``table1.md``, ``table1.json`` and ``table1.png`` into ``out``
    (plus the cost report of the final model: ``cost.png``, ``cost.json``, ``cost-by-*.csv``); returns the summary.

    ``max_tokens`` evaluates only the first test tokens; ``quiet`` prints nothing and hides progress bars.
    """
    from gaincell.data import load_text, tokenize
    from gaincell.hub import load_tokenizer
    from gaincell.train import sample_batch

    _require_shipped_models()
    started = time.time()
    out = Path(out)
    tokenizer = load_tokenizer("shakespeare-softmax")
    ids = tokenize(tokenizer, load_text("shakespeare:test"))
    if max_tokens:
        ids = ids[:max_tokens]
    calib, _ = sample_batch(tokenize(tokenizer, load_text("shakespeare:train")), 16, context, 0)
    if not quiet:
        print(f"miniature Table 1: held-out Shakespeare (test plays, {ids.numel()} tokens, context {context})")
    rows, adaptation = evaluate_rows(ids, calib, context=context, quiet=quiet)
    ratios = perplexity_ratios(rows)
    prose = heldout_prose(adaptation.pop("adapted_model"), context=context, quiet=quiet, max_tokens=max_tokens)
    summary = {
        "text": "shakespeare:test",
        "tokens": rows[0]["tokens"],
        "context": context,
        "rows": rows,
        "adaptation": adaptation["head"].to_dict(),
        "adaptation_arxiv": adaptation["arxiv"].to_dict(),
        "ratios": ratios,
        "prose": prose,
        "seconds": round(time.time() - started, 1),
    }
    _write_plot(
        out / "table1.png",
        rows,
        {"HEAD (trained maps)": adaptation["head"].loss, "arXiv-era (reset maps)": adaptation["arxiv"].loss},
    )
    cost = final_model_cost(out)
    summary["cost"] = {k: cost[k] for k in ("energy_per_token_j", "latency_per_token_s", "area_mm2")}
    summary["cost"]["gpus"] = {g: {"speedup": v["speedup"], "energy_ratio": v["energy_ratio"]} for g, v in cost["gpus"].items()}
    _write_table(out, summary, cost)
    if not quiet:
        print(
            f"final/softmax {ratios['final_vs_softmax']:.3f}, adapted/linear {ratios['adapted_vs_linear']:.3f}, "
            f"direct/softmax {ratios['direct_vs_softmax']:.1f}, arXiv-era adaptation {ratios['arxiv_start_vs_linear']:.1f} -> "
            f"{ratios['arxiv_adapted_vs_linear']:.3f} x linear; prose final/softmax {prose['final_vs_softmax']:.3f}  "
            f"({summary['seconds']} s)"
        )
        print(f"wrote {out / 'table1.md'}, {out / 'table1.json'}, {out / 'table1.png'}")
    return summary


def _require_shipped_models() -> None:
    from gaincell.hub import shipped_models

    names = {m["name"] for m in shipped_models()}
    missing = [n for n in SHIPPED if n not in names]
    if missing:
        raise GaincellError(f"shipped models missing: {', '.join(missing)} (re-create them with `make models`)")


def evaluate_rows(
    ids: torch.Tensor, calib: torch.Tensor, *, context: int, quiet: bool
) -> tuple[list[dict[str, Any]], dict[str, AdaptResult]]:
    """Every row of the table in order, the adaptation run live between the mapped rows and the final one;
    returns (rows, {"head": the adaptation result, "arxiv": the arXiv-era one})."""
    from gaincell.hub import load

    def shipped_row(key: str, label: str, name: str, convert_to: str | None, attention: str) -> dict[str, Any]:
        row = evaluate_row(key, label, load(name, attention=convert_to), attention, ids, context=context, quiet=quiet)
        row["provenance"] = shipped_provenance(name, convert_to)
        return row

    rows = [shipped_row(*row) for row in ROWS_BEFORE_ADAPTATION]
    adapted, adaptation = adapt_linear_model(calib, quiet=quiet)
    label = f"nonlinear hardware after adaptation ({adaptation.iterations} iterations)"
    rows.append(evaluate_row("adapted", label, adapted, "paper", ids, context=context, quiet=quiet))
    rows[-1]["provenance"] = (
        f"adapt(shakespeare-linear, 'paper', 16 x {context} calibration tokens of shakespeare:train, seed 0): "
        f"targets {adaptation.target_source}, start = the trained maps (published code at HEAD)"
    )
    start, reset, arxiv = arxiv_adaptation(calib, quiet=quiet)
    label = "nonlinear hardware, linear weights, maps reset to a = 1, b = 0"
    rows.append(evaluate_row("arxiv-start", label, start, "paper", ids, context=context, quiet=quiet))
    rows[-1]["provenance"] = (
        "convert(shakespeare-linear, 'paper'), then reset_head_maps(): a = 1, b = 0 for every map, not adapted"
    )
    label = f"arXiv-era adaptation from the reset maps ({arxiv.iterations} iterations)"
    rows.append(evaluate_row("arxiv-adapted", label, reset, "paper", ids, context=context, quiet=quiet))
    rows[-1]["provenance"] = (
        f"adapt(shakespeare-linear, 'paper', same batch, reset_maps=True) (gaincell adapt --reset-maps): targets "
        f"{arxiv.target_source}, start = a = 1, b = 0 for every map (arXiv-era code)"
    )
    rows += [shipped_row(*row) for row in ROWS_AFTER_ADAPTATION]
    return rows, {"head": adaptation, "arxiv": arxiv, "adapted_model": adapted}


def heldout_prose(adapted: torch.nn.Module, *, context: int, quiet: bool, max_tokens: int | None) -> dict[str, Any]:
    """Generalisation to text of another kind: perplexity on ``evaldata:prose`` (modern prose no model here trained
    on) of the softmax, linear, adapted and final models, and the final model's ratios to the softmax and adapted."""
    from gaincell.data import PROSE_SPEC, load_text, tokenize
    from gaincell.evaluate import perplexity
    from gaincell.hub import load, load_tokenizer

    ids = tokenize(load_tokenizer("shakespeare-softmax"), load_text(PROSE_SPEC))
    if max_tokens:
        ids = ids[:max_tokens]
    models = {
        "softmax": load("shakespeare-softmax"),
        "linear": load("shakespeare-linear"),
        "adapted": adapted,
        "adapted-finetuned": load("shakespeare-nonlinear"),
    }
    ppl = {k: perplexity(m, ids, context=context, progress=not quiet, desc=f"prose {k}")["perplexity"] for k, m in models.items()}
    if not quiet:
        print("  held-out prose (" + PROSE_SPEC + "): " + ", ".join(f"{k} {v:.1f}" for k, v in ppl.items()))
    return {
        "text": PROSE_SPEC,
        "tokens": int(ids.numel()),
        "perplexity": ppl,
        "final_vs_softmax": ppl["adapted-finetuned"] / ppl["softmax"],
        "final_vs_adapted": ppl["adapted-finetuned"] / ppl["adapted"],
    }


def shipped_provenance(name: str, convert_to: str | None) -> str:
    """How a shipped model was made (from its training log: stage, hardware, shipped step) and how it is used here."""
    from gaincell.hub import resolve_model_path

    folder = resolve_model_path(name)
    made = f"shipped {name}"
    log = None if folder is None else folder / "train-log.jsonl"
    if log is not None and log.is_file():
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        evals = [r for r in lines if "val_loss" in r]
        steps = max((r["step"] for r in lines if "step" in r), default=-1) + 1
        best = min(evals, key=lambda r: r["val_loss"]) if evals else None
        made += f" (recipes/shakespeare.sh: finetune, {steps} steps"
        if best is not None:
            shipped = "the starting model" if best["step"] < 0 else f"step {best['step']}"
            made += f"; lowest validation loss at {shipped}"
        made += ")"
    if convert_to is None:
        return made + ", evaluated as saved"
    return made + f", converted with convert(model, {convert_to!r}) (maps as trained)"


def evaluate_row(
    key: str, label: str, model: torch.nn.Module, attention: str, ids: torch.Tensor, *, context: int, quiet: bool
) -> dict[str, Any]:
    """One table row: the model's perplexity on ``ids`` next to the paper's figure for the same row."""
    from gaincell.evaluate import perplexity

    res = perplexity(model, ids, context=context, progress=not quiet, desc=key)
    if not quiet:
        print(f"  {label:<58} {res['perplexity']:>10.2f}")
    return {
        "row": key,
        "model": label,
        "attention": attention,
        "perplexity": res["perplexity"],
        "tokens": res["tokens"],
        "paper": PAPER[key][0],
        "paper_note": PAPER[key][1],
        "provenance": "",
    }


def adapt_linear_model(calib: torch.Tensor, *, quiet: bool) -> tuple[torch.nn.Module, AdaptResult]:
    """The linear model adapted to the nonlinear hardware on the calibration batch: (model, adaptation result)."""
    from gaincell.adapt import adapt
    from gaincell.hub import load

    model = load("shakespeare-linear")
    return model, adapt(model, "paper", calib, progress=not quiet)


def arxiv_adaptation(calib: torch.Tensor, *, quiet: bool) -> tuple[torch.nn.Module, torch.nn.Module, AdaptResult]:
    """The arXiv-era variant: (the linear weights on the nonlinear hardware with every map reset, not adapted; the
    same adapted from that start; its adaptation result)."""
    from gaincell.adapt import adapt, reset_head_maps
    from gaincell.hub import load

    start = reset_head_maps(load("shakespeare-linear", attention="paper"))
    model = load("shakespeare-linear")
    return start, model, adapt(model, "paper", calib, reset_maps=True, progress=not quiet)


def perplexity_ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The ratios the paper's claims rest on: final vs softmax, adapted vs linear, direct mapping vs softmax, and the
    arXiv-era adaptation's collapse and recovery against the linear model."""
    ppl = {r["row"]: r["perplexity"] for r in rows}
    return {
        "final_vs_softmax": ppl["adapted-finetuned"] / ppl["softmax"],
        "final_vs_adapted": ppl["adapted-finetuned"] / ppl["adapted"],
        "adapted_vs_linear": ppl["adapted"] / ppl["linear"],
        "direct_vs_softmax": min(ppl["direct-linear"], ppl["direct-nonlinear"]) / ppl["softmax"],
        "arxiv_start_vs_linear": ppl["arxiv-start"] / ppl["linear"],
        "arxiv_adapted_vs_linear": ppl["arxiv-adapted"] / ppl["linear"],
    }


def final_model_cost(out: Path) -> dict[str, Any]:
    """What the shipped nonlinear model's attention costs on the gain-cell engine and against GPUs (batch 64);
    also writes the cost report (sweeps and breakdown) into ``out``."""
    from gaincell.attention import attention_spec
    from gaincell.cost import compare, model_shape_of
    from gaincell.cost_report import write_report
    from gaincell.hub import load

    final = load("shakespeare-nonlinear")
    hw = attention_spec(final)
    cost = compare(hw, model_shape_of(final), batch=64, gpus=["h100", "rtx4090"])  # type: ignore[arg-type]
    write_report(hw, out, batch=64)  # type: ignore[arg-type]
    return cost


def _write_table(out: Path, summary: dict[str, Any], cost: dict[str, Any]) -> None:
    """``table1.md`` (the table, the ratios and the cost section) and ``table1.json`` (the summary)."""
    from gaincell.files import atomic_write_text

    rows, ratios, context = summary["rows"], summary["ratios"], summary["context"]
    softmax = rows[0]["perplexity"]
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
            f"| {i} | {r['model']} | {r['attention']} | {r['perplexity']:.2f} | {r['perplexity'] / softmax:.3f} | {r['paper']} |"
        )
    md += [
        "",
        f"Final nonlinear / softmax: **{ratios['final_vs_softmax']:.3f}** (paper 23.2 / 22.2 = 1.045). "
        f"Adapted / linear: **{ratios['adapted_vs_linear']:.3f}**. "
        f"Direct mapping / softmax: **{ratios['direct_vs_softmax']:.1f}**.",
        f"arXiv-era adaptation (maps reset to a = 1, b = 0): {ratios['arxiv_start_vs_linear']:.1f} x the linear model "
        f"before, **{ratios['arxiv_adapted_vs_linear']:.3f}** after (paper, Fig. 4c: 1,757 -> ~21 against 23.2). "
        f"Final / adapted: **{ratios['final_vs_adapted']:.3f}**.",
        "",
        f"Held-out text of another kind ({summary['prose']['text']}: {summary['prose']['tokens']} tokens of modern prose "
        "no model here trained on): "
        + ", ".join(f"{k} {v:.1f}" for k, v in summary["prose"]["perplexity"].items())
        + f"; final / softmax **{summary['prose']['final_vs_softmax']:.3f}**, final / adapted "
        f"**{summary['prose']['final_vs_adapted']:.3f}**.",
        "",
        "Where each row comes from:",
        "",
        *[f"{i}. {r['row']}: {r['provenance']}" for i, r in enumerate(rows, 1)],
        "",
        "![perplexities and adaptation curves](table1.png)",
        "",
        *_cost_section(cost),
    ]
    atomic_write_text(out / "table1.md", "\n".join(md))
    atomic_write_text(out / "table1.json", json.dumps(summary, indent=2) + "\n")


def _cost_section(cost: dict[str, Any]) -> list[str]:
    return [
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


def _write_plot(path: Path, rows: list[dict[str, Any]], curves: dict[str, list[float]]) -> None:
    """Left: every row's perplexity (log scale, softmax dashed); right: the adaptation curves (cf. Fig. 4c)."""
    import math

    from matplotlib.figure import Figure

    from gaincell.files import atomic_write

    fig = Figure(figsize=(13, 4.8))
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    labels = [f"{i}. {r['row']}" for i, r in enumerate(rows, 1)]
    values = [r["perplexity"] for r in rows]
    colors = ["#4c72b0", "#c44e52", "#c44e52", "#55a868", "#c44e52", "#8172b2", "#c44e52", "#8172b2", "#55a868"]
    a.barh(labels[::-1], values[::-1], color=colors[: len(rows)][::-1])
    a.set_xscale("log")
    a.axvline(values[0], color="k", lw=0.8, ls="--")
    for y, v in enumerate(values[::-1]):
        a.text(v, y, f" {v:.1f}", va="center", fontsize=8)
    a.set(xlabel="perplexity on held-out Shakespeare (log scale)", title="Table 1 in miniature")
    for name, curve in curves.items():
        b.plot(range(len(curve)), [math.exp(x) for x in curve], marker="o", ms=3, label=name)
    b.legend(fontsize=8)
    b.set_yscale("log")
    b.set(xlabel="adaptation iteration", ylabel="calibration perplexity", title="Adaptation (cf. Fig. 4c)")
    b.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
