"""What a study found, as files: the trial table (CSV, JSON), the Pareto front (Markdown, PNG), a one-parameter-at-a-
time sensitivity plot, and one self-contained HTML page (plotly with its JavaScript inlined: it opens offline)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from gaincell.explore.spec import COST_OBJECTIVES, StudySpec, objective_direction
from gaincell.files import atomic_write_bytes, atomic_write_text

__all__ = ["pareto_front", "study_rows", "write_outputs"]


def study_rows(spec: StudySpec, trials: list[Any]) -> list[dict[str, Any]]:
    """One row per trial of the study (surplus race trials left out): number, state, one column per space field,
    one per objective, the other metrics, wall time, error."""
    from gaincell.explore.study import trial_params_of

    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("surplus"):
            continue
        metrics = t.user_attrs.get("metrics", {})
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update(trial_params_of(spec, t))
        for name in spec.objectives:
            row[name] = metrics.get(name)
        for name, value in metrics.items():
            row.setdefault(name, value)
        row["feasible"] = all(v <= 0 for v in t.user_attrs.get("constraints", [])) if spec.constraints else True
        row["wall_s"] = t.user_attrs.get("wall_s")
        row["retry_of"] = t.system_attrs.get("failed_trial")
        row["error"] = t.user_attrs.get("error")
        rows.append(row)
    return rows


def pareto_front(points: list[list[float]], directions: list[str]) -> list[int]:
    """Indices of the non-dominated points (each objective minimised or maximised as ``directions`` say)."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    keys = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]
    front = []
    for i, a in enumerate(keys):
        dominated = any(
            all(x <= y for x, y in zip(b, a, strict=True)) and any(x < y for x, y in zip(b, a, strict=True))
            for j, b in enumerate(keys)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def _front_rows(spec: StudySpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
    directions = [objective_direction(o) for o in spec.objectives]
    idx = pareto_front([[float(r[o]) for o in spec.objectives] for r in done], directions)
    return [done[i] for i in idx]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(list(v)) if isinstance(v, tuple) else v for k, v in r.items()})
    return buf.getvalue()


def _columns(spec: StudySpec, rows: list[dict[str, Any]]) -> list[str]:
    head = ["number", "state", *spec.space, *spec.objectives]
    extra = sorted({k for r in rows for k in r} - set(head) - {"feasible", "wall_s", "retry_of", "error"})
    return [*head, *extra, "feasible", "wall_s", "retry_of", "error"]


def _markdown(spec: StudySpec, front: list[dict[str, Any]], reference: dict[str, Any] | None) -> str:
    cols = [*spec.space, *spec.objectives]
    lines = [
        f"# Pareto front of study {spec.name}",
        "",
        f"Model {spec.model}, base hardware {spec.hardware}, text {spec.text}; objectives: "
        + ", ".join(f"{o} ({objective_direction(o)[:3]})" for o in spec.objectives)
        + (f"; constraints: {', '.join(map(str, spec.constraints))}" if spec.constraints else "")
        + f". {len(front)} non-dominated trial(s), measured by gaincell (perplexity as `gaincell eval`, costs as "
        "`gaincell cost`, whose constants carry their sources: `gaincell cost --explain`).",
        "",
        "| trial | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for r in sorted(front, key=lambda r: r[spec.objectives[0]]):
        lines.append(f"| {r['number']} | " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    if reference:
        lines += [
            "",
            f"Base hardware ({spec.hardware}) for reference: "
            + ", ".join(f"{o} = {_fmt(reference.get(o))}" for o in spec.objectives),
        ]
    return "\n".join(lines) + "\n"


def _pareto_png(
    spec: StudySpec, rows: list[dict[str, Any]], front: list[dict[str, Any]], reference: dict[str, Any] | None
) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    quality = [o for o in spec.objectives if o not in COST_OBJECTIVES]
    costs = [o for o in spec.objectives if o in COST_OBJECTIVES]
    if not quality or not costs:
        return None
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fig = Figure(figsize=(5.2 * len(costs), 4.2 * len(quality)), layout="constrained")
    axes = fig.subplots(len(quality), len(costs), squeeze=False)
    for i, q in enumerate(quality):
        for j, c in enumerate(costs):
            ax = axes[i][j]
            ax.scatter([r[c] for r in done], [r[q] for r in done], s=18, c="0.6", label="trials")
            pts = sorted(((r[c], r[q]) for r in front), key=lambda p: p[0])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="C3", ms=5, label="Pareto front (all objectives)")
            if reference and reference.get(c) is not None and reference.get(q) is not None:
                ax.scatter([reference[c]], [reference[q]], marker="*", s=160, c="C0", label=f"{spec.hardware} preset", zorder=5)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # major ticks only: the minor labels overlap
            ax.set_xlabel(c)
            ax.set_ylabel(q)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: {spec.model} on {spec.text}")
    return fig


def _sensitivity(spec: StudySpec, rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per field: the completed trials where every other field is at the base hardware's value."""
    base = spec.base_hardware
    base_values = {f: (base.retention_time if f == "retention_time" else getattr(base, f)) for f in spec.space}
    done = [r for r in rows if r["state"] == "COMPLETE"]
    out = {}
    for f in spec.space:
        others = [g for g in spec.space if g != f]
        sel = [r for r in done if all(_same(r[g], base_values[g]) for g in others)]
        if len({json.dumps(r[f], default=str) for r in sel}) >= 2:
            out[f] = sorted(sel, key=lambda r: (str(type(r[f])), r[f] if not isinstance(r[f], tuple) else str(r[f])))
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9) or (math.isinf(a) and math.isinf(b))
    return a == b


def _sensitivity_png(spec: StudySpec, sens: dict[str, list[dict[str, Any]]]) -> Any:
    from matplotlib.figure import Figure

    if not sens:
        return None
    fig = Figure(figsize=(4.6 * len(sens), 3.4 * len(spec.objectives)), layout="constrained")
    axes = fig.subplots(len(spec.objectives), len(sens), squeeze=False)
    for j, (f, sel) in enumerate(sens.items()):
        xs = [str(r[f]) for r in sel]
        for i, o in enumerate(spec.objectives):
            ax = axes[i][j]
            ax.plot(xs, [r[o] for r in sel], "o-")
            ax.set_xlabel(f"{f} (others at {spec.hardware})")
            ax.set_ylabel(o)
            ax.grid(alpha=0.3)
    fig.suptitle("one parameter at a time")
    return fig


def _html(spec: StudySpec, rows: list[dict[str, Any]], front: list[dict[str, Any]], columns: list[str]) -> str:
    import html

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    quality = [o for o in spec.objectives if o not in COST_OBJECTIVES] or [spec.objectives[0]]
    costs = [o for o in spec.objectives if o not in quality] or [spec.objectives[-1]]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    fig = make_subplots(rows=1, cols=len(costs), subplot_titles=[f"{quality[0]} vs {c}" for c in costs])
    for j, c in enumerate(costs, start=1):
        hover = [", ".join(f"{f}={r[f]}" for f in spec.space) + f" (trial {r['number']})" for r in done]
        fig.add_trace(
            go.Scatter(
                x=[r[c] for r in done],
                y=[r[quality[0]] for r in done],
                mode="markers",
                name="trials",
                text=hover,
                marker={"color": "gray"},
            ),
            row=1,
            col=j,
        )
        pts = sorted(front, key=lambda r: r[c])
        fig.add_trace(
            go.Scatter(
                x=[r[c] for r in pts],
                y=[r[quality[0]] for r in pts],
                mode="lines+markers",
                name="Pareto front",
                text=[f"trial {r['number']}" for r in pts],
                marker={"color": "crimson"},
            ),
            row=1,
            col=j,
        )
        fig.update_xaxes(title_text=c, type="log", row=1, col=j)
        fig.update_yaxes(title_text=quality[0], row=1, col=j)
    plot = fig.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    data = json.dumps(rows, default=str).replace("</", "<\\/")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>gaincell study "
        + html.escape(spec.name)
        + "</title><style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>Study {html.escape(spec.name)}</h1><p>model {html.escape(spec.model)}, base hardware {html.escape(spec.hardware)}, "
        f"text {html.escape(spec.text)}, sampler {spec.sampler}, {len(done)} completed trials of {spec.trials}.</p>"
        + plot
        + f"<h2>Trials</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        + f"<script type='application/json' id='trials'>{data}</script></body></html>"
    )


def write_outputs(spec: StudySpec, trials: list[Any], out: Path, reference: dict[str, Any] | None) -> dict[str, Any]:
    """Write every output file into ``out``; returns the summary (trial counts, the front, the paths)."""
    rows = study_rows(spec, trials)
    columns = _columns(spec, rows)
    front = _front_rows(spec, rows)
    paths = {"trials_csv": out / "trials.csv", "trials_json": out / "trials.json", "pareto_md": out / "pareto.md"}
    atomic_write_text(paths["trials_csv"], _csv(rows, columns))
    atomic_write_text(paths["trials_json"], json.dumps({"spec": spec.to_dict(), "trials": rows}, indent=1, default=str) + "\n")
    atomic_write_text(paths["pareto_md"], _markdown(spec, front, reference))
    sens = _sensitivity(spec, rows)
    for key, fig in (
        ("pareto_png", _pareto_png(spec, rows, front, reference)),
        ("sensitivity_png", _sensitivity_png(spec, sens)),
    ):
        if fig is not None:
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=120)
            paths[key] = out / key.replace("_png", ".png")
            atomic_write_bytes(paths[key], png.getvalue())
    paths["report_html"] = out / "report.html"
    atomic_write_text(paths["report_html"], _html(spec, rows, front, columns))
    states = [r["state"] for r in rows]
    return {
        "study": spec.name,
        "trials": spec.trials,
        "complete": states.count("COMPLETE"),
        "failed": states.count("FAIL"),
        "pareto": [{k: r.get(k) for k in ["number", *spec.space, *spec.objectives]} for r in front],
        "reference": reference,
        "sensitivity_fields": list(sens),
        "paths": {k: str(v) for k, v in paths.items()},
    }
