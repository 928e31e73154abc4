"""Multi-process fine-tuning: 2 CPU processes (gloo) reproduce the single-process curve; resume across world sizes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gaincell.data import shakespeare_plays, subvocab_tokenizer
from gaincell.factory import new_model
from gaincell.hub import save
from gaincell.model import convert

pytestmark = [
    pytest.mark.slow,  # every test here runs torchrun jobs
    pytest.mark.skipif(
        shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
        reason="torchrun not installed",
    ),
]


def _torchrun() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return local if os.path.exists(local) else "torchrun"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    text = shakespeare_plays()["tempest"][:20000]
    (d / "train.txt").write_text(text)
    tok = subvocab_tokenizer([text])
    model = convert(new_model("gpt2", layers=1, width=32, heads=2, kv_heads=None, context=32, vocab=len(tok), seed=0), "paper")
    save(model, d / "m", tokenizer=tok)
    return d


def _args(d, out, steps=4, extra=()):
    return [
        "finetune",
        "--model",
        str(d / "m"),
        "--train",
        str(d / "train.txt"),
        "--val",
        str(d / "train.txt"),
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--context",
        "32",
        "--warmup",
        "1",
        "--eval-every",
        "2",
        "--eval-batches",
        "2",
        "--save-every",
        "2",
        "--lr",
        "3e-3",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def _run(argv, world=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = (
        [sys.executable, "-m", "gaincell", *argv]
        if world == 1
        else [_torchrun(), "--standalone", f"--nproc_per_node={world}", "-m", "gaincell", *argv]
    )
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _weights(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["aliases"])  # noqa: SIM118


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    """The single-process reference run."""
    out = tmp_path_factory.mktemp("single") / "one"
    _run(_args(setup, out))
    return out


def test_two_processes_reproduce_one_and_resume_across_world_sizes(setup, single, tmp_path):
    d = setup
    _run(_args(d, tmp_path / "two"), world=2)
    one, two = _losses(single), _losses(tmp_path / "two")
    assert len(one) == len(two) == 3  # steps 0, 1 (evaluation) and 3 (evaluation, last)
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    # interrupt a 2-process run after 2 steps, finish it in 1 process: same curve
    _run(_args(d, tmp_path / "mixed", extra=("--stop-after-steps", "2")), world=2)
    assert not (tmp_path / "mixed" / "model").exists()
    _run(_args(d, tmp_path / "mixed"))
    assert _losses(tmp_path / "mixed") == pytest.approx(one, rel=1e-5, abs=1e-6)


def test_fsdp_shards_and_reproduces_the_single_process_run(setup, single, tmp_path):
    """--fsdp: FSDP2 over 2 CPU processes gives the single-process curve and weights; its checkpoints (full tensors,
    optimizer state by index) resume in 1 process, and a 1-process checkpoint resumes under FSDP."""
    d = setup
    res = _run(_args(d, tmp_path / "fsdp", extra=("--fsdp",)), world=2)
    assert res.stdout.count("done:") == 1  # rank 0 reports
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(single), rel=1e-5, abs=1e-6)
    ref, ref_alias = _weights(single / "model")
    got, got_alias = _weights(tmp_path / "fsdp" / "model")
    assert sorted(got) == sorted(ref) and got_alias == ref_alias == {"lm_head.weight": "transformer.wte.weight"}
    assert any(".gaincell." in k for k in got)  # the per-head maps were trained and gathered too
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-4, rtol=1e-4), k
    # FSDP run stopped after 2 steps, finished by 1 process; and the other way round
    _run(_args(d, tmp_path / "a", extra=("--fsdp", "--stop-after-steps", "2")), world=2)
    _run(_args(d, tmp_path / "a"))
    _run(_args(d, tmp_path / "b", extra=("--stop-after-steps", "2")))
    _run(_args(d, tmp_path / "b", extra=("--fsdp",)), world=2)
    for name in ("a", "b"):
        assert _losses(tmp_path / name) == pytest.approx(_losses(single), rel=1e-5, abs=1e-6)


def _workers(parent_pid: int) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes (read from /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != parent_pid:
            continue
        for entry in env:
            if entry.startswith(b"RANK="):
                found[int(entry[5:])] = int(proc.name)
    return found


def _checkpoint_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the worker processes")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_killed_rank_ends_the_job_clearly_and_the_last_checkpoint_resumes(setup, tmp_path, mode):
    d, out = setup, tmp_path / "run"
    argv = _args(
        d, out, steps=5000, extra=("--save-every", "3", "--eval-every", "1000", *(("--fsdp",) if mode == "fsdp" else ()))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "gaincell", *argv]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while _checkpoint_step(out) < 5:
            assert job.poll() is None and time.time() < deadline, "the job ended or stalled before its second checkpoint"
            time.sleep(0.05)
        workers = _workers(job.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        _, err = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0  # the whole job ends
    assert "SIGKILL" in err  # torchrun names the killed rank ...
    # ... and gaincell says what it means: a collective failed (gloo noticed first), or torchrun's SIGTERM arrived first
    assert "rank 0: a collective operation failed" in err or "stopped by SIGTERM" in err, err[-3000:]
    kept = _checkpoint_step(out)
    assert kept >= 5  # a complete checkpoint (periodic, or the one written on SIGTERM)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left behind
    _run(_args(d, out, steps=5000, extra=("--save-every", "3", "--eval-every", "1000", "--stop-after-steps", str(kept + 3))))
    assert _checkpoint_step(out) == kept + 2
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] <= kept + 2  # one record per step, in order


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_checkpoint_a_single_process_run(setup, tmp_path, sig, status):
    """A scheduler's SIGTERM or a Ctrl-C: the step in progress finishes, its checkpoint is written, exit status
    128 + signal; it resumes from there."""
    d, out = setup, tmp_path / "run"
    argv = _args(d, out, steps=5000, extra=("--save-every", "1000", "--eval-every", "1000"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    job = subprocess.Popen([sys.executable, "-m", "gaincell", *argv], stderr=subprocess.PIPE, text=True, env=env)
    log = out / "log.jsonl"
    deadline = time.time() + 300
    while not log.is_file() or len(log.read_text().splitlines()) < 2:  # steps 0 and 10 logged
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.05)
    job.send_signal(sig)
    _, err = job.communicate(timeout=120)
    assert job.returncode == status, err[-2000:]
    assert f"stopped by {sig.name} after step" in err
    kept = _checkpoint_step(out)
    assert kept >= 10 and f"after step {kept}:" in err  # the step it finished, checkpointed
    _run(_args(d, out, steps=5000, extra=("--save-every", "1000", "--eval-every", "1000", "--stop-after-steps", str(kept + 3))))
    assert _checkpoint_step(out) == kept + 2
