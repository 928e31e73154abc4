"""Units of the training and evaluation layer: settings, the large token-file view, checkpoint helpers, processes."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import gaincell.data
from gaincell.checkpoint import param_groups, param_names, read_checkpoint, redo_cut_evaluation
from gaincell.data import load_tokens
from gaincell.distributed import Distributed, is_peer_failure, resolve_device
from gaincell.errors import GaincellError
from gaincell.evaluate import perplexity
from gaincell.train import TrainConfig, finetune, sample_batch, training_loss


def _tiny_model(vocab: int = 61, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=vocab, resid_pdrop=0.0)
    cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    return GPT2LMHeadModel(cfg).eval()


def _write_token_file(path, ids: np.ndarray) -> None:
    """A token file as ``gaincell prepare`` writes it: raw ids and a JSON sidecar."""
    ids.astype(np.uint16).tofile(path)
    meta = {"source": "test", "dtype": "uint16", "tokens": int(ids.size), "documents": 1, "vocab": 61}
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(meta))


# ---------------------------------------------------------------------------------------------------- token files
def test_a_large_token_file_stays_mapped_and_gives_the_in_memory_perplexity(tmp_path, monkeypatch):
    ids = np.random.default_rng(0).integers(0, 61, 700)
    _write_token_file(tmp_path / "t.bin", ids)
    in_memory = load_tokens(tmp_path / "t.bin")
    assert isinstance(in_memory, torch.Tensor) and in_memory.dtype == torch.long
    monkeypatch.setattr(gaincell.data, "IN_MEMORY_TOKENS", 500)  # 700 tokens count as a large file now
    mapped = load_tokens(tmp_path / "t.bin")
    assert not isinstance(mapped, torch.Tensor) and mapped.numel() == 700
    assert torch.equal(mapped[100:140], in_memory[100:140]) and mapped[100:140].dtype == torch.long
    model = _tiny_model()
    for stride in (32, 10):
        want = perplexity(model, in_memory, context=32, stride=stride)
        assert perplexity(model, mapped, context=32, stride=stride, progress=True) == want
    # the trainer draws the same batches from either
    for a, b in zip(sample_batch(mapped, 3, 16, seed=5), sample_batch(in_memory, 3, 16, seed=5), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------- settings
def test_every_training_setting_has_a_help_line():
    for f in dataclasses.fields(TrainConfig):
        help_text = f.metadata.get("help", "")
        assert help_text and "\n" not in help_text and "--" not in help_text, f.name


def test_min_lr_defaults_to_a_tenth_of_lr_and_ends_the_cosine():
    cfg = TrainConfig(steps=50, warmup=5, lr=3e-3)
    assert cfg.min_lr is None and cfg.end_lr == pytest.approx(3e-4)
    assert cfg.lr_at(50) == pytest.approx(3e-4) and cfg.lr_at(4) == pytest.approx(3e-3)
    explicit = TrainConfig(steps=50, warmup=5, lr=3e-3, min_lr=0.0)
    assert explicit.lr_at(50) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig().end_lr == pytest.approx(6e-5)  # the former default, for the default lr
    with pytest.raises(GaincellError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=2e-3).validate()


def test_distill_weight_applies_only_with_a_teacher():
    cfg = TrainConfig(context=16)
    assert cfg.distill_weight == 0.5
    model = _tiny_model()
    x, y = sample_batch(torch.arange(200) % 61, 2, 16, seed=1)
    ce = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(training_loss(model, x, y, None, cfg), ce)
    # a teacher identical to the student: the KL term is 0 and the loss is half the cross-entropy
    torch.testing.assert_close(training_loss(model, x, y, model, cfg), 0.5 * ce)


def test_a_checkpoint_written_with_the_former_defaults_resumes(tmp_path):
    """state.json of older runs stores min_lr = 6e-5 and distill_weight = 0.0: resuming does not depend on them."""
    ids = torch.arange(3000) % 61
    cfg = TrainConfig(steps=4, batch_size=2, context=16, warmup=1, eval_every=2, eval_batches=1, save_every=2, log_every=1)
    finetune(_tiny_model(), ids, ids[:500], cfg, tmp_path / "run", progress=False, stop_after=2)
    state_path = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    assert state["config"]["min_lr"] is None
    state["config"].update(min_lr=6e-5, distill_weight=0.0)
    state_path.write_text(json.dumps(state))
    summary = finetune(_tiny_model(seed=9), ids, ids[:500], cfg, tmp_path / "run", progress=False)
    assert summary["final"]["step"] == 3 and "stopped_at" not in summary
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    with pytest.raises(GaincellError, match=r"cannot resume .* context = 16, now 8"):
        read_checkpoint(
            tmp_path / "run" / "checkpoint", _tiny_model(), {**state["config"], "context": 8}, torch.device("cpu"), False
        )


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_param_names_follow_the_optimizer_index():
    model = _tiny_model()
    opt = torch.optim.AdamW(param_groups(model, 0.1))
    by_index = [p for group in opt.param_groups for p in group["params"]]
    params = dict(model.named_parameters())
    names = param_names(model)
    assert len(names) == len(by_index) == len(params)
    assert all(params[name] is p for name, p in zip(names, by_index, strict=True))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(p.dim() >= 2 for p in opt.param_groups[0]["params"]) and all(p.dim() < 2 for p in opt.param_groups[1]["params"])


def test_an_evaluation_cut_by_an_interruption_is_redone(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"step": 0, "loss": 3.0}, {"step": 1, "loss": 2.5, "lr": 1e-3, "interrupted": True}]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    redo_cut_evaluation(log, 0, lambda: 9.0, write=True)  # not the checkpointed step: untouched
    assert [json.loads(line) for line in log.read_text().splitlines()] == records
    redo_cut_evaluation(log, 1, lambda: 2.0, write=True)
    last = json.loads(log.read_text().splitlines()[-1])
    assert last == {"step": 1, "loss": 2.5, "lr": 1e-3, "val_loss": 2.0, "val_ppl": math.exp(2.0)}
    # a step with no scheduled evaluation only loses its mark
    log.write_text(json.dumps({"step": 4, "loss": 1.0, "interrupted": True}) + "\n")
    redo_cut_evaluation(log, 4, None, write=True)
    assert json.loads(log.read_text()) == {"step": 4, "loss": 1.0}


# ---------------------------------------------------------------------------------------------------- processes
def test_one_process_is_a_plain_run(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = Distributed(fsdp=True)
    assert (dist.world, dist.rank, dist.enabled, dist.fsdp, dist.main) == (1, 0, False, False, True)
    assert dist.mean_and_any(2.5, True) == (2.5, True) and dist.mean(1.5) == 1.5
    model = _tiny_model()
    assert dist.wrap(model, torch.device("cpu")) is model
    dist.barrier()


def test_device_errors_name_the_parameter_not_a_flag():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GaincellError, match="unknown device 'tpu'") as info:
        resolve_device("tpu")
    assert "--" not in str(info.value)
    if not torch.cuda.is_available():
        with pytest.raises(GaincellError, match="no CUDA GPU") as info:
            resolve_device("cuda")
        assert "--" not in str(info.value)


def test_peer_failures_are_told_apart_from_other_errors():
    assert is_peer_failure(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:29500"))
    assert is_peer_failure(RuntimeError("NCCL communicator was aborted on rank 0"))
    assert not is_peer_failure(RuntimeError("CUDA out of memory"))


def test_training_errors_name_parameters_not_flags():
    model = _tiny_model()
    with pytest.raises(GaincellError) as info:
        perplexity(model, torch.arange(100) % 61, context=64)
    assert "context 64 exceeds" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(GaincellError) as info:
        perplexity(model, torch.arange(100) % 61, context=16, stride=17)
    assert "stride must be" in str(info.value) and "--" not in str(info.value)
