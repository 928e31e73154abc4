"""Benchmarks through lm-evaluation-harness: offline task definitions, ``gaincell bench`` and ``gaincell lm-eval``.

Offline tasks (local data, no hub): ``gaincell_social_iqa`` and ``gaincell_physical_intuition`` (multiple choice,
BIG-bench data in ``evaldata/``), ``gaincell_shakespeare_ppl`` (rolling log-likelihood of the held-out plays) and
``gaincell_shakespeare_lines`` (generate_until: finish a line of the held-out plays, exact match).  Any standard
lm-eval task (wikitext, lambada_openai, hellaswag, arc_easy, ...) works too wherever its data can be downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gaincell.errors import GaincellError

OFFLINE_TASKS = ("gaincell_social_iqa", "gaincell_physical_intuition", "gaincell_shakespeare_ppl", "gaincell_shakespeare_lines")

_MC = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{input}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_PPL = """task: gaincell_shakespeare_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

_GEN = """task: gaincell_shakespeare_lines
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
filter_list:
  - name: first_word
    filter:
      - function: regex
        regex_pattern: "^\\\\s*(\\\\S+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_punctuation: true
    ignore_case: true
metadata:
  version: 1.0
"""


def task_dir() -> Path:
    """Write the offline task YAMLs (with absolute data paths) into the cache and return the folder."""
    from gaincell.data import SHAKESPEARE_SPLITS, cache_dir, shakespeare_plays
    from gaincell.files import atomic_write_text

    data = Path(__file__).parent / "evaldata"
    out = cache_dir() / "lm_eval_tasks"
    plays = shakespeare_plays()
    ppl = out / "shakespeare_ppl.jsonl"
    lines = out / "shakespeare_lines.jsonl"
    if not ppl.is_file():
        atomic_write_text(ppl, "".join(json.dumps({"text": plays[n]}) + "\n" for n in SHAKESPEARE_SPLITS["test"]))
    if not lines.is_file():
        rows = []
        for name in SHAKESPEARE_SPLITS["test"]:
            text = plays[name]
            for line in text.splitlines():
                words = line.strip().split()
                if len(words) >= 6 and line.startswith("  ") is False and words[-1].isalpha():
                    context = text[: text.index(line)][-400:]
                    rows.append({"prompt": context + " ".join(words[:-1]), "target": words[-1]})
                if len(rows) >= 100 * (SHAKESPEARE_SPLITS["test"].index(name) + 1):
                    break
        atomic_write_text(lines, "".join(json.dumps(r) + "\n" for r in rows))
    for name, fname in (("gaincell_social_iqa", "social_iqa.jsonl"), ("gaincell_physical_intuition", "physical_intuition.jsonl")):
        atomic_write_text(out / f"{name}.yaml", _MC.format(name=name, path=data / fname))
    atomic_write_text(out / "gaincell_shakespeare_ppl.yaml", _PPL.format(path=ppl))
    atomic_write_text(out / "gaincell_shakespeare_lines.yaml", _GEN.format(path=lines))
    return out


def evaluate_models(
    models: list[str], tasks: list[str], *, hardware: str | None = None, limit: int | None = None, batch_size: int = 8
) -> dict[str, Any]:
    """Run lm-eval on every model for every task; returns {"rows": [...], "tasks": [...]}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import gaincell.lm_eval_plugin  # noqa: F401 - registers the "gaincell" model type

    tm = TaskManager(include_path=str(task_dir()))
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise GaincellError(f"unknown lm-eval task(s): {', '.join(unknown)} (offline tasks: {', '.join(OFFLINE_TASKS)})")
    rows = []
    for name in models:
        args = f"pretrained={name}" + (f",hardware={hardware}" if hardware else "")
        res = lm_eval.simple_evaluate(
            model="gaincell", model_args=args, tasks=tasks, task_manager=tm, batch_size=batch_size, limit=limit, log_samples=False
        )
        rows.append({"model": name, "hardware": hardware, "results": res["results"]})
    return {"tasks": tasks, "limit": limit, "rows": rows}


def main_metric(task_result: dict[str, Any]) -> tuple[str, float | None]:
    for key in ("acc_norm,none", "acc,none", "exact_match,first_word", "exact_match,none", "word_perplexity,none"):
        if key in task_result:
            return key.split(",")[0], task_result[key]
    return "-", None


def table(data: dict[str, Any]) -> list[str]:
    """Markdown: model rows x task columns (main metric), average accuracy, perplexity."""
    tasks = data["tasks"]
    head = "| model | " + " | ".join(tasks) + " | avg acc |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    for row in data["rows"]:
        cells, accs = [], []
        for t in tasks:
            metric, value = main_metric(row["results"].get(t, {}))
            if value is None:
                cells.append("-")
            elif metric == "word_perplexity":
                cells.append(f"{value:.1f} ppl")
            else:
                cells.append(f"{100 * value:.1f}")
                accs.append(100 * value)
        avg = f"{sum(accs) / len(accs):.1f}" if accs else "-"
        lines.append(f"| {row['model']} | " + " | ".join(cells) + f" | {avg} |")
    return lines
