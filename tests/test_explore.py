"""Design-space exploration on Optuna: specs, the study engine (workers, crash and interrupt recovery), outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gaincell.cli import main
from gaincell.explore import StudySpec, explore
from gaincell.explore.report import pareto_front
from gaincell.explore.spec import ExploreSpecError

HEARTBEAT = (1, 3)  # short beats so a killed worker's trial is retried within seconds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer GPT-2 over a closed sub-vocabulary, and an evaluation text."""
    from gaincell.data import shakespeare_plays, subvocab_tokenizer
    from gaincell.factory import new_model
    from gaincell.hub import save
    from gaincell.model import convert

    root = tmp_path_factory.mktemp("explore")
    text = shakespeare_plays()["tempest"][:6000]
    tok = subvocab_tokenizer([text])
    model = convert(new_model("gpt2", layers=1, width=32, heads=2, kv_heads=None, context=64, vocab=len(tok), seed=0), "paper")
    save(model, root / "model", tokenizer=tok)
    (root / "text.txt").write_text(text)
    return root


def _spec(tiny, **changes):
    data = {
        "model": str(tiny / "model"),
        "hardware": "paper",
        "text": str(tiny / "text.txt"),
        "space": {"window": [16, 32, 64], "kv_levels": [4, 8]},
        "objectives": ["perplexity", "energy_per_token_j"],
        "sampler": "grid",
        "trials": 6,
        "seed": 0,
    }
    data.update(changes)
    return data


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _trials(out: Path):
    return json.loads((out / "trials.json").read_text())["trials"]


# ---------------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"space": {"windw": [16]}}, "unknown field 'windw'"),
        ({"space": {"kv_levels": [1, 8]}}, "space.kv_levels: value 1"),
        ({"space": {"window": {"low": 0, "high": 64}}}, "space.window"),
        ({"space": {}}, "space: give at least one"),
        ({"objectives": ["perplexity", "joules"]}, "unknown objective 'joules'"),
        ({"sampler": "anneal"}, "sampler: 'anneal'"),
        ({"trials": 7}, "trials: 7 > the 6 points"),
        ({"constraints": ["area_mm2 <= 1"]}, "the grid sampler takes no constraints"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"model": "/no/such/model"}, "unknown model '/no/such/model'"),
    ],
)
def test_a_bad_spec_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path, capsys, changes, message):
    out = tmp_path / "out"
    assert main(["explore", "--spec", str(_write(tmp_path / "s.json", _spec(tiny, **changes))), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_spec_that_is_not_yaml_and_a_storage_that_cannot_open_are_refused(tiny, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n  space: {")
    assert main(["explore", "--spec", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    spec = _write(tmp_path / "s.json", _spec(tiny))
    assert main(["explore", "--spec", str(spec), "--out", str(tmp_path / "o"), "--storage", "nosuchdb://x/y"]) == 2
    assert "cannot open storage 'nosuchdb://x/y'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_example_spec_of_the_issue_reads_as_written():
    spec = StudySpec.from_dict(
        {
            "model": "shakespeare-linear",
            "hardware": "paper",
            "text": "shakespeare:validation",
            "space": {
                "window": [64, 128, 256, 1024],
                "kv_levels": [4, 8, 16],
                "retention_time": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
            },
            "pipeline": {"adapt": True, "finetune_steps": 0},
            "objectives": ["perplexity", "energy_per_token_j"],
            "sampler": "tpe",
            "trials": 12,
            "seed": 0,
        }
    )
    assert spec.space["retention_time"].log and spec.pipeline.adapt
    hw = spec.hardware_for({"window": 256, "kv_levels": 4, "retention_time": 1e-3})
    assert hw.window == 256 and hw.retention_time == pytest.approx(1e-3)


def test_pareto_front_on_a_synthetic_case():
    points = [[1.0, 5.0], [2.0, 3.0], [3.0, 4.0], [4.0, 1.0], [2.0, 3.0], [5.0, 5.0]]
    assert pareto_front(points, ["minimize", "minimize"]) == [0, 1, 3, 4]  # ties are both kept
    assert pareto_front([[1.0, 0.2], [2.0, 0.9], [3.0, 0.5]], ["minimize", "maximize"]) == [0, 1]
    with pytest.raises(ExploreSpecError):
        StudySpec.from_dict({"model": "m", "space": {"window": [8]}, "objectives": []})


# ---------------------------------------------------------------------------------------------------- the study
def test_the_grid_is_covered_exactly_and_a_trial_equals_eval_and_cost(tiny, tmp_path, capsys):
    out = tmp_path / "grid"
    summary = explore(_spec(tiny), out, progress=False)
    rows = _trials(out)
    assert summary["complete"] == 6 and len(rows) == 6
    assert sorted((r["window"], r["kv_levels"]) for r in rows) == sorted((w, k) for w in (16, 32, 64) for k in (4, 8))
    # one trial against the commands, on the hardware file the trial wrote
    from gaincell.explore.point import point_key

    row = rows[0]
    hw = out / "points" / point_key({"window": row["window"], "kv_levels": row["kv_levels"]}) / "hardware.yaml"
    assert (
        main(
            ["eval", "--model", str(tiny / "model"), "--hardware", str(hw), "--text", str(tiny / "text.txt"), "--json", "--quiet"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["perplexity"] == row["perplexity"]
    assert main(["cost", "--model", str(tiny / "model"), "--hardware", str(hw), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["energy_per_token_j"] == row["energy_per_token_j"]
    # outputs
    front = {r["number"] for r in summary["pareto"]}
    pts = [[r["perplexity"], r["energy_per_token_j"]] for r in rows]
    assert front == {rows[i]["number"] for i in pareto_front(pts, ["minimize", "minimize"])}
    assert (
        (out / "trials.csv").read_text().splitlines()[0].startswith("number,state,window,kv_levels,perplexity,energy_per_token_j")
    )
    assert "| trial |" in (out / "pareto.md").read_text()
    for name in ("pareto.png", "sensitivity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    data = json.loads(page.split("<script type='application/json' id='trials'>")[1].split("</script>")[0])
    assert [r["number"] for r in data] == [r["number"] for r in rows]
    # nothing is fetched: no external script, stylesheet or image tag (plotly's JavaScript is inlined; URLs inside
    # it belong to map features a scatter plot never uses)
    import re

    assert not re.search(r"<script[^>]*\bsrc=", page) and "<link" not in page and "<img" not in page
    assert "Plotly.newPlot" in page and len(page) > 1_000_000
    # running it again resumes: nothing new runs, same table
    again = explore(_spec(tiny), out, progress=False)
    assert again["complete"] == 6 and _trials(out) == rows
    # the same folder with another spec is refused and left alone
    with pytest.raises(Exception, match="made from another spec"):
        explore(_spec(tiny, seed=1), out, progress=False)
    assert _trials(out) == rows


def test_seeded_samplers_give_the_same_trials(tiny, tmp_path):
    spec = _spec(tiny, space={"window": {"low": 8, "high": 64}, "kv_levels": [4, 8, 16]}, sampler="random", trials=3)
    spec["objectives"] = ["energy_per_token_j", "area_mm2"]  # cost only: no model run
    a = explore(spec, tmp_path / "a", progress=False)
    explore(spec, tmp_path / "b", progress=False)
    assert a["complete"] == 3
    params = [[(r["window"], r["kv_levels"]) for r in _trials(tmp_path / d)] for d in ("a", "b")]
    assert params[0] == params[1] and len(set(params[0])) > 1


def test_constraints_reach_the_sampler(tiny, tmp_path):
    spec = _spec(tiny, sampler="tpe", trials=4, constraints=["area_mm2 <= 0.4"])
    spec["objectives"] = ["energy_per_token_j", "latency_per_token_s"]
    summary = explore(spec, tmp_path / "c", progress=False)
    import optuna

    study = optuna.load_study(study_name="gaincell-explore", storage=summary["storage"])
    assert all("constraints" in t.user_attrs for t in study.trials)
    from gaincell.explore.study import sampler_for

    assert sampler_for(StudySpec.from_dict(spec), 0)._constraints_func is not None  # given to TPE, not a filter afterwards
    rows = _trials(tmp_path / "c")
    assert all(r["feasible"] == (r["area_mm2"] <= 0.4) for r in rows)
    assert all(p["number"] in {r["number"] for r in rows if r["feasible"]} for p in summary["pareto"])


_RUN = textwrap.dedent(
    """
    import json, signal, sys
    # Ctrl-C as in a terminal: a test runner started in the background (a non-interactive shell's `&`, nohup) passes
    # SIGINT down as ignored, and Python then installs no KeyboardInterrupt handler of its own
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from gaincell.explore import explore
    explore(json.loads(sys.argv[1]), sys.argv[2], workers=int(sys.argv[3]), progress=False, heartbeat=(1, 3))
    """
)


def _run(spec, out, workers=1):
    return subprocess.Popen(
        [sys.executable, "-c", _RUN, json.dumps(spec), str(out), str(workers)], start_new_session=True, stderr=subprocess.PIPE
    )


def _wait_running(out: Path, worker: subprocess.Popen, timeout=120) -> int:
    """Wait until a trial has been running for 1.5 s (past its first heartbeat, every second here) and return its
    number: the kill then lands mid-trial.  A worker that exits first fails the wait with its error output."""
    import datetime

    import optuna

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise AssertionError(
                f"the worker exited ({worker.returncode}) before a trial ran: {worker.stderr.read().decode()[-2000:]}"
            )
        if (out / "study.db").exists():
            try:
                study = optuna.load_study(study_name="gaincell-explore", storage=f"sqlite:///{out / 'study.db'}")
                now = datetime.datetime.now()
                for t in study.get_trials(deepcopy=False):
                    if t.state.name == "RUNNING" and (now - t.datetime_start).total_seconds() >= 1.5:
                        return t.number
            except Exception:
                pass
        time.sleep(0.2)
    states = _db_states(out) if (out / "study.db").exists() else "no study.db"
    raise AssertionError(f"no trial ran for 1.5 s within {timeout} s; trials: {states}")


def _slow_spec(tiny, **changes):
    """Trials of several seconds each (the shipped 4-layer model on 40,000 tokens), so a kill lands mid-trial."""
    return _spec(tiny, model="shakespeare-nonlinear", text="shakespeare:validation", max_tokens=40_000, **changes)


@pytest.mark.slow
def test_two_workers_on_one_storage_finish_exactly_the_trials_without_duplicates(tiny, tmp_path):
    out = tmp_path / "two"
    p = _run(_spec(tiny, space={"window": [8, 16, 32, 48, 64], "kv_levels": [4, 8]}, trials=10), out, workers=2)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    rows = _trials(out)
    assert len(rows) == 10 and all(r["state"] == "COMPLETE" for r in rows)
    assert len({(r["window"], r["kv_levels"]) for r in rows}) == 10


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_retried_and_the_study_completes(tiny, tmp_path):
    out = tmp_path / "killed"
    spec = _slow_spec(tiny, trials=3)
    p = _run(spec, out)
    killed = _wait_running(out, p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    again = _run(spec, out)
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
    rows = _trials(out)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(done) == 3 and len({(r["window"], r["kv_levels"]) for r in done}) == 3
    assert [r["number"] for r in failed] == [killed] and any(r["retry_of"] == killed for r in done)
    assert (failed[0]["window"], failed[0]["kv_levels"]) in {(r["window"], r["kv_levels"]) for r in done}


@pytest.mark.slow
def test_ctrl_c_then_resume(tiny, tmp_path):
    out = tmp_path / "interrupted"
    spec = _slow_spec(tiny, trials=3)
    p = _run(spec, out)
    interrupted = _wait_running(out, p)
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(timeout=120) != 0
    rows_before = json.loads(json.dumps(_db_states(out)))
    assert "WAITING" in rows_before  # the interrupted trial went back into the queue at once
    again = _run(spec, out)
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
    rows = _trials(out)
    assert sum(r["state"] == "COMPLETE" for r in rows) == 3
    assert any(r["retry_of"] == interrupted and r["state"] == "COMPLETE" for r in rows)


def _db_states(out: Path) -> list[str]:
    import optuna

    study = optuna.load_study(study_name="gaincell-explore", storage=f"sqlite:///{out / 'study.db'}")
    return [t.state.name for t in study.trials]


@pytest.mark.slow
def test_an_lm_eval_accuracy_is_an_objective(tiny, tmp_path):
    """acc:TASK runs the offline lm-eval task on each point's hardware and is maximised."""
    spec = _spec(tiny, space={"window": [16, 64]}, trials=2, objectives=["acc:gaincell_physical_intuition", "energy_per_token_j"])
    spec["lm_eval_limit"] = 8
    summary = explore(spec, tmp_path / "acc", progress=False)
    rows = _trials(tmp_path / "acc")
    assert summary["complete"] == 2
    assert all(0.0 <= r["acc:gaincell_physical_intuition"] <= 1.0 for r in rows)
    from gaincell.explore.spec import objective_direction

    assert objective_direction("acc:gaincell_physical_intuition") == "maximize"
