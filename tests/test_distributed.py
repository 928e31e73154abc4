"""Multi-process fine-tuning: 2 CPU processes (gloo) reproduce the single-process curve; resume across world sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from gaincell.commands import new_model
from gaincell.data import shakespeare_plays, subvocab_tokenizer
from gaincell.hub import save
from gaincell.model import convert

pytestmark = pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)


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


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_processes_reproduce_one_and_resume_across_world_sizes(setup, tmp_path):
    d = setup
    _run(_args(d, tmp_path / "one"))
    _run(_args(d, tmp_path / "two"), world=2)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 3  # steps 0, 1 (evaluation) and 3 (evaluation, last)
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    # interrupt a 2-process run after 2 steps, finish it in 1 process: same curve
    _run(_args(d, tmp_path / "mixed", extra=("--stop-after-steps", "2")), world=2)
    assert not (tmp_path / "mixed" / "model").exists()
    _run(_args(d, tmp_path / "mixed"))
    assert _losses(tmp_path / "mixed") == pytest.approx(one, rel=1e-5, abs=1e-6)
