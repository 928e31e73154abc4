"""lm-evaluation-harness integration, offline: local task definitions over local JSONL (slices of BIG-bench data)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from gaincell.cli import main  # noqa: E402
from gaincell.data import shakespeare_plays, subvocab_tokenizer  # noqa: E402
from gaincell.factory import new_model  # noqa: E402
from gaincell.hub import load, load_tokenizer, save  # noqa: E402
from gaincell.model import convert  # noqa: E402

EVALDATA = Path(__file__).parent.parent / "src" / "gaincell" / "evaldata"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    text = shakespeare_plays()["tempest"][:20000]
    tok = subvocab_tokenizer([text])
    model = convert(new_model("gpt2", layers=1, width=32, heads=2, kv_heads=None, context=64, vocab=len(tok), seed=0), "paper")
    save(model, d / "m", tokenizer=tok)
    # slices of the real data (BIG-bench social_iqa, CC-BY 4.0 / Apache-2.0; see src/gaincell/evaldata/README.md)
    rows = EVALDATA.joinpath("social_iqa.jsonl").read_text().splitlines()[:6]
    (d / "mc.jsonl").write_text("\n".join(rows) + "\n")
    (d / "roll.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (text[:900], text[5000:5600])))
    gen = [{"prompt": "Where should this music", "target": "be"}, {"prompt": "Sit still, and hear", "target": "the"}]
    (d / "gen.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gen))
    tasks = d / "tasks"
    tasks.mkdir()
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (tasks / "mc.yaml").write_text(
        f"task: t_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\noutput_type: multiple_choice\n"
        'doc_to_text: "{{input}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (tasks / "roll.yaml").write_text(
        f"task: t_roll\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'roll.jsonl'}\n"
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n"
    )
    (tasks / "gen.yaml").write_text(
        f"task: t_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {d / 'gen.jsonl'}\n"
        'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 4\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return d


@pytest.mark.slow
def test_simple_evaluate_with_the_gaincell_model_type(setup):
    from lm_eval.tasks import TaskManager

    import gaincell.lm_eval_plugin  # noqa: F401

    tm = TaskManager(include_path=str(setup / "tasks"))
    res = lm_eval.simple_evaluate(
        model="gaincell",
        model_args=f"pretrained={setup / 'm'},hardware=paper-linear",
        tasks=["t_mc", "t_roll", "t_gen"],
        task_manager=tm,
        batch_size=2,
    )
    r = res["results"]
    assert 0 <= r["t_mc"]["acc,none"] <= 1 and r["t_mc"]["alias"] == "t_mc"
    assert r["t_roll"]["word_perplexity,none"] > 1
    assert 0 <= r["t_gen"]["exact_match,none"] <= 1
    # the accuracy is the one the model's own log-likelihoods give on the same six items, scored here without lm-eval
    model, tok = load(setup / "m", attention="paper-linear"), load_tokenizer(setup / "m")
    samples = res["samples"]["t_mc"]
    assert len(samples) == 6
    correct = []
    for sample in samples:
        scores = [continuation_loglikelihood(model, tok, context, cont) for context, cont in sample["arguments"]]
        logged = [choice_resps[0][0] for choice_resps in sample["resps"]]  # one (loglikelihood, is_greedy) per choice
        assert logged == pytest.approx(scores, rel=1e-4, abs=1e-4)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == int(sample["target"]))
    assert r["t_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    # exact match is the share of generations equal to their target
    gens = res["samples"]["t_gen"]
    assert r["t_gen"]["exact_match,none"] == pytest.approx(sum(s["filtered_resps"][0] == s["target"] for s in gens) / len(gens))


def continuation_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) summed over its tokens, computed directly from the model's logits.

    Tokenised as a causal LM evaluator does: the whole text at once, the continuation being what follows the
    context's tokens; only the last n_positions + 1 tokens are kept (left truncation)."""
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    cont_ids = tok(context + continuation, add_special_tokens=False)["input_ids"][len(ctx_ids) :]
    ids = (ctx_ids + cont_ids)[-(model.config.n_positions + 1) :]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]]), use_cache=False).logits[0].double(), -1)
    n = len(ids) - 1
    return sum(float(logp[n - len(cont_ids) + i, t]) for i, t in enumerate(cont_ids))


def test_loglikelihood_matches_the_model_and_rolling_covers_every_token(setup):
    from lm_eval.api.instance import Instance

    from gaincell.hub import load_tokenizer
    from gaincell.lm_eval_plugin import GainCellLM

    lm = GainCellLM(pretrained=str(setup / "m"), batch_size=2)
    model, tok = load(setup / "m"), load_tokenizer(setup / "m")
    context, cont = "Where should this music be?", " I' th' air or th' earth?"
    req = Instance(request_type="loglikelihood", doc={}, arguments=(context, cont), idx=0)
    ((ll, _greedy),) = lm.loglikelihood([req])
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].double(), -1)
    manual = sum(float(logp[len(ctx_ids) - 1 + i, t]) for i, t in enumerate(cont_ids))  # the off-by-one the guide warns of
    assert ll == pytest.approx(manual, rel=1e-4, abs=1e-4)
    text = "Full fathom five thy father lies; of his bones are coral made."
    roll = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (total,) = lm.loglikelihood_rolling([roll])
    assert math.isfinite(total) and total < 0


@pytest.mark.slow
def test_bench_command_writes_a_table(setup, tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--models",
                str(setup / "m"),
                "--tasks",
                "gaincell_physical_intuition",
                "--limit",
                "4",
                "--out",
                str(tmp_path),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    md = (tmp_path / "bench.md").read_text()
    assert "gaincell_physical_intuition" in md and "avg acc" in md
    data = json.loads((tmp_path / "bench.json").read_text())
    acc = data["rows"][0]["results"]["gaincell_physical_intuition"]["acc,none"]
    assert acc >= 0
    assert acc <= 1 and acc * 4 == round(acc * 4)  # a share of the 4 items that --limit 4 keeps
    assert main(["bench", "--models", str(setup / "m"), "--tasks", "no_such_task", "--out", str(tmp_path)]) == 2
    assert "unknown lm-eval task" in capsys.readouterr().err


@pytest.mark.slow
def test_lm_eval_cli_passthrough(setup):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gaincell",
            "lm-eval",
            "--model",
            "gaincell",
            "--model_args",
            f"pretrained={setup / 'm'}",
            "--tasks",
            "gaincell_physical_intuition",
            "--limit",
            "3",
            "--batch_size",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gaincell_physical_intuition" in res.stdout and "acc" in res.stdout


def _lm_eval_command() -> Path:
    exe = Path(sys.executable).parent / "lm_eval"
    if not exe.is_file():
        pytest.skip("lm-eval's console script is not installed beside this Python")
    return exe


@pytest.mark.slow
def test_bare_lm_eval_command_finds_the_gaincell_model_type(setup):
    """`lm_eval --model gaincell` itself: the installed gaincell_lm_eval.pth registers the type when lm-eval loads."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("GAINCELL_LM_EVAL_HOOK", None)
    cmd = [str(_lm_eval_command()), "--model", "gaincell", "--model_args", f"pretrained={setup / 'm'},hardware=paper"]
    cmd += ["--tasks", "t_mc", "--include_path", str(setup / "tasks"), "--batch_size", "4"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "t_mc" in res.stdout and "acc" in res.stdout
    # and it can be switched off: then lm-eval does not know the name
    res = subprocess.run(cmd, capture_output=True, text=True, env={**env, "GAINCELL_LM_EVAL_HOOK": "0"}, timeout=600)
    assert res.returncode != 0
    assert "no model for this name found" in res.stderr


@pytest.mark.slow
def test_the_start_up_hook_imports_nothing_heavy_and_registers_lazily():
    code = (
        "import sys\n"
        "assert 'gaincell_lm_eval_hook' in sys.modules, 'gaincell_lm_eval.pth is not installed'\n"
        "assert 'torch' not in sys.modules and 'gaincell' not in sys.modules\n"
        "import lm_eval.models\n"
        "from lm_eval.api.registry import model_registry\n"
        "assert 'gaincell' in model_registry and 'hf' in model_registry\n"
        "assert 'gaincell' not in sys.modules  # a lazy placeholder until someone asks for it\n"
        "from lm_eval.api.registry import get_model\n"
        "from gaincell.lm_eval_plugin import GainCellLM\n"
        "assert get_model('gaincell') is GainCellLM\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GAINCELL_LM_EVAL_HOOK"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
