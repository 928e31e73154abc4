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
    from gaincell.attention import head_maps
    from gaincell.model import convert

    for model in (_tiny_model(), convert(_tiny_model(), "paper")):
        map_params = {id(p) for m in head_maps(model) for p in m.parameters()}
        for decay_maps in (True, False):
            opt = torch.optim.AdamW(param_groups(model, 0.1, decay_maps))
            by_index = [p for group in opt.param_groups for p in group["params"]]
            params = dict(model.named_parameters())
            names = param_names(model)
            assert len(names) == len(by_index) == len(params)
            assert all(params[name] is p for name, p in zip(names, by_index, strict=True))
            assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1 if decay_maps else 0.0, 0.0]
            matrices, maps, vectors = (g["params"] for g in opt.param_groups)
            assert all(p.dim() >= 2 for p in matrices) and all(p.dim() < 2 for p in vectors)
            assert {id(p) for p in maps} == map_params
            assert len(maps) == (0 if not map_params else 8 * len(list(head_maps(model))))


def test_decay_head_maps_shrinks_the_maps_and_must_match_on_resume(tmp_path):
    """The only difference between the two settings is the maps group's weight decay (previous test); here its effect:
    the decayed maps end smaller, and a resume cannot silently switch it (the optimizer state carries it)."""
    from gaincell.attention import head_maps

    on = _linear_run(tmp_path, "on", decay_head_maps=True)
    off = _linear_run(tmp_path, "off", decay_head_maps=False)
    maps_on = torch.cat([p.detach().flatten() for m in head_maps(on) for p in m.parameters()])
    maps_off = torch.cat([p.detach().flatten() for m in head_maps(off) for p in m.parameters()])
    assert not torch.equal(maps_on, maps_off)
    # decoupled AdamW decay: on the maps it multiplies by (1 - lr * wd) each step, so the decayed maps are smaller
    assert maps_on.abs().sum() < maps_off.abs().sum()
    with pytest.raises(GaincellError, match="decay_head_maps = True, now False"):
        read_checkpoint(
            tmp_path / "on" / "checkpoint",
            _tiny_model(),
            {**json.loads((tmp_path / "on" / "checkpoint" / "state.json").read_text())["config"], "decay_head_maps": False},
            torch.device("cpu"),
            False,
        )


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


# ---------------------------------------------------------------------------------------------------- best and patience
def _scripted_validation(monkeypatch, losses: dict[int, float]) -> None:
    """Make every evaluation return ``losses[step]`` (step -1: the starting model), so the test chooses when the
    validation loss improves; training itself is real."""
    import gaincell.train as train_module

    state = {"step": -1}
    original = train_module._Run.optimizer_step

    def optimizer_step(self, step, *args):
        state["step"] = step
        return original(self, step, *args)

    monkeypatch.setattr(train_module._Run, "optimizer_step", optimizer_step)
    monkeypatch.setattr(train_module, "evaluate_loss", lambda model, ids, cfg: losses[state["step"]])
    return state


def _weights(folder):
    from gaincell.hub import read_weights

    return read_weights(folder)


def _same(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


BEST_CFG = {"batch_size": 4, "context": 16, "warmup": 1, "eval_every": 2, "save_every": 2, "log_every": 1, "lr": 3e-3}


def test_keep_best_ships_the_weights_of_the_lowest_validation_loss(tmp_path, monkeypatch):
    ids = torch.randint(0, 61, (600,))
    losses = {-1: 5.0, 1: 4.0, 3: 3.0, 5: 3.5, 7: 3.6}  # best after step 3
    state = _scripted_validation(monkeypatch, losses)
    summary = finetune(
        _tiny_model(), ids, ids[:100], TrainConfig(steps=8, keep_best=True, **BEST_CFG), tmp_path / "a", progress=False
    )
    assert summary["best"]["step"] == 3 and "early_stopped_at" not in summary
    state["step"] = -1  # the same run stopped right after step 3: its checkpoint holds the step-3 weights
    finetune(_tiny_model(), ids, ids[:100], TrainConfig(steps=8, **BEST_CFG), tmp_path / "b", stop_after=4, progress=False)
    step3 = _weights(tmp_path / "b" / "checkpoint")
    assert _same(_weights(tmp_path / "a" / "model"), step3) and _same(_weights(tmp_path / "a" / "best"), step3)
    assert not _same(_weights(tmp_path / "a" / "model"), _weights(tmp_path / "a" / "checkpoint"))  # not the last step
    info = json.loads((tmp_path / "a" / "model" / "gaincell.json").read_text())
    assert info["best_step"] == 3 and info["metrics"]["val_ppl"] == pytest.approx(math.exp(3.0))
    first = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[0])
    assert first == {"step": -1, "val_loss": 5.0, "val_ppl": pytest.approx(math.exp(5.0)), "initial": True}


def test_keep_best_never_ships_a_model_worse_than_the_one_it_started_from(tmp_path, monkeypatch):
    ids = torch.randint(0, 61, (600,))
    _scripted_validation(monkeypatch, {-1: 3.0, 1: 3.2, 3: 3.1})
    start = {k: v.clone() for k, v in _tiny_model().state_dict().items()}
    summary = finetune(
        _tiny_model(), ids, ids[:100], TrainConfig(steps=4, keep_best=True, **BEST_CFG), tmp_path / "r", progress=False
    )
    assert summary["best"]["step"] == -1
    shipped = _weights(tmp_path / "r" / "model")
    assert all(torch.equal(shipped[k], start[k]) for k in shipped)


def test_without_keep_best_the_last_weights_ship(tmp_path, monkeypatch):
    ids = torch.randint(0, 61, (600,))
    _scripted_validation(monkeypatch, {1: 4.0, 3: 3.0, 5: 3.5})
    finetune(_tiny_model(), ids, ids[:100], TrainConfig(steps=6, **BEST_CFG), tmp_path / "r", progress=False)
    assert _same(_weights(tmp_path / "r" / "model"), _weights(tmp_path / "r" / "checkpoint"))
    assert not (tmp_path / "r" / "best").exists()
    assert json.loads((tmp_path / "r" / "log.jsonl").read_text().splitlines()[0])["step"] == 0  # no initial evaluation


def test_patience_stops_early_and_a_resume_inside_the_patience_window_ends_the_same(tmp_path, monkeypatch):
    ids = torch.randint(0, 61, (600,))
    losses = {-1: 5.0, 1: 4.0, 3: 4.5, 5: 4.6, 7: 1.0, 9: 1.0}  # two evaluations without a new best after step 1
    state = _scripted_validation(monkeypatch, losses)
    cfg = TrainConfig(steps=10, keep_best=True, patience=2, **BEST_CFG)
    whole = finetune(_tiny_model(), ids, ids[:100], cfg, tmp_path / "whole", progress=False)
    assert whole["early_stopped_at"] == 5 and whole["best"]["step"] == 1 and "stopped_at" not in whole
    assert (tmp_path / "whole" / "model" / "model.safetensors").is_file()
    state["step"] = -1
    cut = finetune(_tiny_model(), ids, ids[:100], cfg, tmp_path / "cut", stop_after=4, progress=False)
    assert cut["stopped_at"] == 3  # one evaluation into the patience window
    resumed = finetune(_tiny_model(), ids, ids[:100], cfg, tmp_path / "cut", progress=False)
    assert resumed["early_stopped_at"] == 5 and resumed["best"] == whole["best"]
    assert (tmp_path / "cut" / "log.jsonl").read_text().count("\n") == (tmp_path / "whole" / "log.jsonl").read_text().count("\n")
    assert _same(_weights(tmp_path / "cut" / "model"), _weights(tmp_path / "whole" / "model"))
    again = finetune(_tiny_model(), ids, ids[:100], cfg, tmp_path / "cut", progress=False)  # nothing left to do
    assert again["early_stopped_at"] == 5 and _same(_weights(tmp_path / "cut" / "model"), _weights(tmp_path / "whole" / "model"))
    with pytest.raises(GaincellError, match="patience"):
        TrainConfig(patience=0).validate()


def test_reset_maps_starts_the_adaptation_from_unit_maps_and_changes_nothing_else():
    import copy

    from gaincell.adapt import adapt, head_statistics, reset_head_maps
    from gaincell.attention import head_maps
    from gaincell.model import convert

    linear = convert(_tiny_model(), "paper-linear")
    with torch.no_grad():
        for m in head_maps(linear):
            m.q_scale.fill_(4.0)
            m.k_scale.fill_(3.0)
    batch = torch.randint(0, 61, (4, 24))
    targets, _ = head_statistics(linear, batch)
    by_option = copy.deepcopy(linear)
    by_hand = reset_head_maps(convert(copy.deepcopy(linear), "paper"))
    assert all(
        float(p.abs().sum()) == p.numel() * (1.0 if n.endswith("_scale") else 0.0)
        for m in head_maps(by_hand)
        for n, p in m.named_parameters()
    )
    a = adapt(by_option, "paper", batch, reset_maps=True, max_iter=30)
    b = adapt(by_hand, "paper", batch, targets=targets, max_iter=30)
    assert a.loss == b.loss and a.iterations == b.iterations
    assert all(torch.equal(x, y) for x, y in zip(by_option.state_dict().values(), by_hand.state_dict().values(), strict=True))
    kept = adapt(copy.deepcopy(linear), "paper", batch, max_iter=30)  # the default keeps the trained maps as the start
    assert kept.max_std_error[0] != a.max_std_error[0]


# ---------------------------------------------------------------------------------------------------- settings files
@pytest.mark.parametrize(
    ("name", "steps", "batch"),
    [
        ("gpt2-paper-linear", 3000, 1920),
        ("gpt2-paper-nonlinear", 13000, 1920),
        ("gpt2-xl-paper-linear", 10000, 480),
        ("gpt2-xl-paper-nonlinear", 1000, 480),
    ],
)
def test_the_paper_schedules_ship_as_settings_files(name, steps, batch):
    from pathlib import Path

    cfg = TrainConfig.load(Path(__file__).parents[1] / "recipes" / f"{name}.yaml")
    assert (cfg.steps, cfg.batch_size, cfg.context) == (steps, batch, 1024)  # 1,920 x 1,024 tokens per iteration
    assert (cfg.lr, cfg.end_lr, cfg.warmup, cfg.lr_decay_steps) == (6e-4, 6e-5, 2000, 600_000)
    assert (cfg.weight_decay, cfg.beta1, cfg.beta2, cfg.grad_clip, cfg.seed) == (0.1, 0.9, 0.95, 1.0, 1337)
    assert cfg.precision == "bf16" and cfg.keep_best


def test_a_settings_file_fills_the_flags_not_given_and_refuses_unknown_names(tmp_path):
    from gaincell.cli import build_parser
    from gaincell.cli.models import train_config_from

    (tmp_path / "s.yaml").write_text("steps: 7\nlr: 1.0e-3\nkeep_best: true\n")
    args = build_parser().parse_args(
        ["finetune", "--model", "m", "--out", "o", "--config", str(tmp_path / "s.yaml"), "--lr", "2e-3"]
    )
    cfg = train_config_from(args)
    assert (cfg.steps, cfg.lr, cfg.keep_best, cfg.batch_size) == (7, 2e-3, True, TrainConfig().batch_size)
    args = build_parser().parse_args(["finetune", "--model", "m", "--out", "o"])
    assert train_config_from(args) == TrainConfig()  # no file, no flags: the dataclass defaults
    (tmp_path / "bad.yaml").write_text("steps: 7\nlearning_rate: 1\n")
    with pytest.raises(GaincellError, match="unknown training setting 'learning_rate'"):
        TrainConfig.load(tmp_path / "bad.yaml")
    (tmp_path / "range.json").write_text('{"steps": 0}')
    with pytest.raises(GaincellError, match="steps = 0"):
        TrainConfig.load(tmp_path / "range.json")


# ---------------------------------------------------------------------------------------------------- adaptation targets
def test_the_maps_record_an_ema_of_each_batchs_per_head_statistics_only_while_training():
    from gaincell.attention import HeadMaps

    maps = HeadMaps(n_heads=2, n_kv_heads=2, layer=0)
    a, b = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4) * 2 + 1

    def stats(x):
        x = x.double()
        return torch.stack([x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False).sqrt()])

    maps.record("q", a)
    assert maps.targets == {}  # no rate: nothing recorded
    maps.target_rate = 0.1
    maps.train()
    maps.record("q", a)
    torch.testing.assert_close(maps.targets["q"], stats(a))  # the first batch starts the average
    maps.record("q", b)
    torch.testing.assert_close(maps.targets["q"], 0.9 * stats(a) + 0.1 * stats(b))
    maps.eval()
    maps.record("q", b * 10)  # evaluation passes do not count
    torch.testing.assert_close(maps.targets["q"], 0.9 * stats(a) + 0.1 * stats(b))


def _linear_run(tmp_path, name, stop_after=None, **kw):
    from gaincell.attention import head_maps
    from gaincell.model import convert

    model = convert(_tiny_model(), "paper-linear")
    with torch.no_grad():
        for m in head_maps(model):
            m.q_scale.fill_(4.0)
            m.k_scale.fill_(3.0)
    ids = torch.randint(0, 61, (600,), generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(steps=6, batch_size=4, context=16, warmup=1, eval_every=3, save_every=2, log_every=1, lr=1e-3)
    finetune(model, ids, ids[:100], dataclasses.replace(cfg, **kw), tmp_path / name, stop_after=stop_after, progress=False)
    return model


def test_the_linear_fine_tune_saves_its_targets_and_adapt_uses_them(tmp_path):
    from gaincell.adapt import adapt, head_statistics, recorded_targets
    from gaincell.attention import head_maps
    from gaincell.hub import load

    trained = _linear_run(tmp_path, "lin")
    assert all(m.target_rate is None for m in head_maps(trained))  # finetune leaves the model recording nothing
    assert (tmp_path / "lin" / "model" / "targets.safetensors").is_file()
    model = load(tmp_path / "lin" / "model")
    recorded = recorded_targets(model)
    assert recorded is not None and set(recorded) == {(0, n) for n in ("q", "k", "v", "out")}
    for (layer, name), (mean, std) in recorded.items():
        want = next(m for m in head_maps(trained) if m.layer == layer).targets[name]
        assert torch.equal(mean, want[0]) and torch.equal(std, want[1])
    batch = torch.randint(0, 61, (4, 16))
    result = adapt(model, "paper", batch, max_iter=60)
    assert result.target_source == "recorded" and result.to_dict()["target_source"] == "recorded"
    stats, _ = head_statistics(model, batch)
    for key, (mean, std) in recorded.items():  # the adapted model matches the recorded targets, not the batch's own
        torch.testing.assert_close(stats[key][1], std, rtol=0.05, atol=5e-3)
        torch.testing.assert_close(stats[key][0], mean, rtol=0.05, atol=5e-3)
    again = adapt(load(tmp_path / "lin" / "model"), "paper", batch, max_iter=5, target_source="batch")
    assert again.target_source == "batch"
    from gaincell.model import convert

    with pytest.raises(GaincellError, match="no recorded adaptation targets"):
        adapt(convert(_tiny_model(), "paper-linear"), "paper", batch, target_source="recorded")


def test_recorded_targets_resume_exactly_and_can_be_switched_off(tmp_path):
    from gaincell.attention import head_maps
    from gaincell.model import convert

    whole = _linear_run(tmp_path, "whole")
    _linear_run(tmp_path, "cut", stop_after=3)
    resumed = convert(_tiny_model(), "paper-linear")  # as a fresh process: everything comes from the checkpoint
    ids = torch.randint(0, 61, (600,), generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(steps=6, batch_size=4, context=16, warmup=1, eval_every=3, save_every=2, log_every=1, lr=1e-3)
    finetune(resumed, ids, ids[:100], cfg, tmp_path / "cut", progress=False)
    for a, b in zip(head_maps(whole), head_maps(resumed), strict=True):
        assert set(a.targets) == {"q", "k", "v", "out"} == set(b.targets)
        assert all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)
    off = _linear_run(tmp_path, "off", target_ema=None)
    assert all(m.targets == {} for m in head_maps(off)) and not (tmp_path / "off" / "model" / "targets.safetensors").exists()


@pytest.mark.parametrize(
    ("which", "maps"), [("head-maps", ("q", "k", "v", "out")), ("head-maps:v,out", ("v", "out")), ("head-maps:k", ("k",))]
)
def test_trainable_maps_train_only_those_maps_and_unfreeze_after(tmp_path, which, maps):
    from gaincell.attention import head_maps
    from gaincell.model import convert

    model = convert(_tiny_model(), "paper-linear")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chosen = [getattr(m, f"{name}_{part}") for m in head_maps(model) for name in maps for part in ("scale", "bias")]
    names = {n for n, p in model.named_parameters() if any(p is q for q in chosen)}
    ids = torch.randint(0, 61, (600,), generator=torch.Generator().manual_seed(3))
    cfg = TrainConfig(steps=3, batch_size=4, context=16, warmup=1, eval_every=3, save_every=3, log_every=1, lr=1e-2)
    finetune(model, ids, None, dataclasses.replace(cfg, trainable=which), tmp_path / "maps", progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == names  # every chosen map moved, nothing else did
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after the run
    with pytest.raises(GaincellError, match="trainable"):
        finetune(_tiny_model(), ids, None, dataclasses.replace(cfg, trainable=which), tmp_path / "plain", progress=False)
    for bad in ("embeddings", "head-maps:", "head-maps:x", "head-maps:v,v", "head-maps:v out"):
        with pytest.raises(GaincellError, match=r"trainable = .*q, k, v, out"):
            dataclasses.replace(cfg, trainable=bad).validate()


def test_the_held_out_prose_is_the_evaluation_data_and_not_the_plays():
    from gaincell.data import PROSE_SPEC, evaldata_prose, load_text, shakespeare_split

    (text,) = load_text(PROSE_SPEC)
    assert text == evaldata_prose()
    lines = text.splitlines()
    assert len(lines) == 1954 + 81  # every question of both tasks, each with its correct answer
    assert lines[0].endswith("Find somewhere to go.")  # Social IQa row 1: label 2 of its three answers
    train = "".join(shakespeare_split("train"))
    assert not any(line in train for line in lines[:200])
