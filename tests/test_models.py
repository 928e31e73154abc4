"""Model integration: conversion (GPT-2, Llama/GQA), save/load, adaptation, fine-tuning, resume, evaluation, CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from transformers import GPT2LMHeadModel

import gaincell
from gaincell import HardwareConfig
from gaincell.adapt import adapt, head_statistics
from gaincell.attention import attention_spec, head_maps
from gaincell.cli import main
from gaincell.data import shakespeare_plays, subvocab_tokenizer, tokenize
from gaincell.errors import GaincellError
from gaincell.evaluate import perplexity
from gaincell.factory import new_model
from gaincell.hub import load, load_tokenizer, save
from gaincell.model import convert
from gaincell.train import TrainConfig, finetune
from helpers import drive_arrays, tiny_llama


@pytest.fixture(scope="module")
def text():
    plays = shakespeare_plays()
    return plays["tempest"][:30000], plays["macbeth"][:8000]


@pytest.fixture(scope="module")
def tok(text):
    return subvocab_tokenizer([text[0]])


def tiny_gpt2(vocab: int, seed: int = 0) -> GPT2LMHeadModel:
    return new_model("gpt2", layers=2, width=32, heads=2, kv_heads=None, context=64, vocab=vocab, seed=seed).eval()


@pytest.mark.parametrize("factory", [lambda: tiny_gpt2(97), tiny_llama])
def test_softmax_conversion_reproduces_the_original(factory):
    model = factory()
    x = torch.randint(0, 97, (2, 40))
    ref = model(x).logits
    convert(model, "softmax")
    torch.testing.assert_close(model(x).logits, ref, rtol=0, atol=1e-5)


def test_conversion_registers_attention_and_mask_functions():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    model = convert(tiny_gpt2(97), "paper")
    assert "gaincell" in AttentionInterface._global_mapping and "gaincell" in AttentionMaskInterface._global_mapping
    assert model.config._attn_implementation == "gaincell"


@pytest.mark.parametrize("factory", [lambda: tiny_gpt2(97), tiny_llama])
def test_analog_model_is_causal_and_trainable(factory):
    model = convert(factory(), HardwareConfig.preset("paper").replace(score_saturation=8.0, output_saturation=4.0))
    drive_arrays(model)  # random tiny models otherwise read out zeros
    x = torch.randint(0, 97, (2, 40))
    x3 = x.clone()
    x3[:, 5:20] = torch.randint(0, 97, (2, 15))
    assert not torch.allclose(model(x3).logits[:, 25:], model(x).logits[:, 25:])  # the past does matter
    x2 = x.clone()
    x2[:, 25:] = torch.randint(0, 97, (2, 15))
    out = model(x).logits
    torch.testing.assert_close(model(x2).logits[:, :25], out[:, :25], rtol=0, atol=0)
    loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), x.flatten())
    loss.backward()
    maps = list(head_maps(model))
    assert all(m.q_scale.grad is not None and m.k_bias.grad is not None for m in maps)


def test_llama_gqa_maps_have_one_pair_per_kv_head():
    model = convert(tiny_llama(), "paper-linear")
    maps = list(head_maps(model))
    assert maps[0].q_scale.shape == (4,) and maps[0].k_scale.shape == (2,) and maps[0].out_bias.shape == (4,)
    assert maps[0].k_bias[0].item() == pytest.approx(0.45) and maps[0].q_bias[0].item() == 0.0


def test_layer_output_equals_kernel_on_the_mapped_projections():
    model = convert(tiny_gpt2(97), HardwareConfig.preset("paper").replace(score_saturation=2.0, output_saturation=1.0))
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        maps = attn.gaincell
        maps.q_scale.fill_(2.0)
        maps.v_bias.fill_(0.5)
        h = torch.randn(1, 30, 32) * 8
        q, k, v = attn.c_attn(h).split(32, dim=2)
        q, k, v = (t.view(1, 30, 2, 16).transpose(1, 2) for t in (q, k, v))
        ref = gaincell.analog_attention(2.0 * q, k + 0.45, v + 0.5, attention_spec(model))
        assert ref.abs().max() > 0
        got, _ = attn(h)
        torch.testing.assert_close(got, attn.c_proj(ref.transpose(1, 2).reshape(1, 30, 32)), rtol=1e-5, atol=1e-6)


def test_reconversion_swaps_config_and_keeps_maps():
    model = convert(tiny_gpt2(97), "paper-linear")
    with torch.no_grad():
        for m in head_maps(model):
            m.q_scale.fill_(3.0)
    convert(model, HardwareConfig.preset("paper").replace(window=16))
    assert attention_spec(model).window == 16 and attention_spec(model).cell == "nonlinear"
    assert all(m.q_scale[0].item() == 3.0 for m in head_maps(model))


def test_unsupported_model_and_bad_spec():
    with pytest.raises(GaincellError, match="not supported"):
        convert(torch.nn.Linear(2, 2), "paper")
    with pytest.raises(gaincell.HardwareConfigError, match="unknown attention"):
        convert(tiny_gpt2(97), "quantum")


# ---------------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path, tok):
    model = convert(tiny_gpt2(len(tok)), HardwareConfig.preset("paper").replace(window=32))
    with torch.no_grad():
        for m in head_maps(model):
            m.out_scale.fill_(1.5)
    x = torch.randint(0, len(tok), (2, 40))
    ref = model(x).logits
    save(model, tmp_path / "m", tokenizer=tok, metadata={"role": "test"})
    assert not list(tmp_path.glob(".m.*")), "temporary folder left behind"
    loaded = load(tmp_path / "m")
    assert attention_spec(loaded) == attention_spec(model)
    torch.testing.assert_close(loaded(x).logits, ref, rtol=0, atol=0)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied
    assert len(load_tokenizer(tmp_path / "m")) == len(tok)
    save(model, tmp_path / "h", dtype=torch.float16)
    torch.testing.assert_close(load(tmp_path / "h")(x).logits, ref, rtol=0.05, atol=0.05)


def test_local_hf_folder_and_direct_mapping(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "hf")
    x = torch.randint(0, 97, (1, 20))
    plain = load(tmp_path / "hf")
    torch.testing.assert_close(plain(x).logits, model(x).logits)
    assert attention_spec(plain) is None
    mapped = load(tmp_path / "hf", attention="paper")
    assert attention_spec(mapped).name == "paper" and not torch.allclose(mapped(x).logits, model(x).logits)


def test_bad_model_folders(tmp_path, tok):
    with pytest.raises(GaincellError, match="unknown model"):
        load("no-such-model-anywhere-xyz")
    model = convert(tiny_gpt2(len(tok)), "paper")
    save(model, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(GaincellError, match="corrupt weights"):
        load(tmp_path / "m")
    save(model, tmp_path / "m2")
    cfg = json.loads((tmp_path / "m2" / "config.json").read_text())
    cfg["n_embd"] = 48
    (tmp_path / "m2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GaincellError, match="do not match"):
        load(tmp_path / "m2")
    save(model, tmp_path / "m3")
    (tmp_path / "m3" / "model.safetensors").unlink()
    with pytest.raises(GaincellError, match="missing weights"):
        load(tmp_path / "m3")


# ---------------------------------------------------------------------------------------------------- adaptation
def test_adaptation_matches_statistics_and_changes_only_the_maps(text, tok):
    ids = tokenize(tok, [text[0]])
    model = convert(tiny_gpt2(len(tok), seed=1), "paper-linear")
    with torch.no_grad():  # give the maps something to preserve
        for m in head_maps(model):
            m.q_scale.fill_(4.0)
            m.k_scale.fill_(3.0)
    batch = ids[: 4 * 64].view(4, 64)
    targets, _ = head_statistics(model, batch)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "gaincell" not in k}
    result = adapt(model, "paper", batch, tol=1e-4, max_iter=100)
    assert attention_spec(model).cell == "nonlinear"
    assert result.max_std_error[-1] < 0.05 * result.max_std_error[0]
    assert result.max_mean_error[-1] < 0.05 * max(result.max_mean_error[0], 1e-3)
    stats, _ = head_statistics(model, batch)
    for key, (mu_t, sd_t) in targets.items():
        torch.testing.assert_close(stats[key][1], sd_t, rtol=0.02, atol=2e-3)
        torch.testing.assert_close(stats[key][0], mu_t, rtol=0.02, atol=2e-3)
    for k, v in model.state_dict().items():
        if "gaincell" not in k:
            torch.testing.assert_close(v, weights[k], rtol=0, atol=0)


def test_adapt_rejects_bad_inputs(tok):
    model = tiny_gpt2(len(tok))
    with pytest.raises(GaincellError, match="linear hardware"):
        adapt(model, "paper", torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(GaincellError, match="calibration batch"):
        adapt(convert(model, "paper-linear"), "paper", torch.zeros(8, dtype=torch.long))
    with pytest.raises(GaincellError, match="not softmax"):
        adapt(model, "softmax", torch.zeros(2, 8, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- training
def _train(model, ids, out, steps, **kw):
    cfg = TrainConfig(
        steps=steps, batch_size=4, context=32, warmup=2, eval_every=5, eval_batches=2, save_every=2, log_every=1, lr=3e-3, **kw
    )
    return finetune(model, ids, ids[:2000], cfg, out, progress=False)


def test_finetune_lowers_loss_on_the_hardware(tmp_path, text, tok):
    ids = tokenize(tok, [text[0]])
    model = convert(tiny_gpt2(len(tok)), "paper")
    summary = _train(model, ids, tmp_path / "run", 15)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.3 and log[-1]["loss"] < log[0]["loss"]
    assert summary["final"]["step"] == 14
    reloaded = load(tmp_path / "run" / "model")
    assert attention_spec(reloaded).name == "paper"
    assert json.loads((tmp_path / "run" / "model" / "gaincell.json").read_text())["metrics"]["val_ppl"] > 1


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile on CPU needs a C compiler")
@pytest.mark.slow
def test_compiled_training_gives_the_eager_curve(tmp_path, text, tok):
    """--compile: the digital layers compiled (inductor), the analog attention and mask eager; same losses."""
    ids = tokenize(tok, [text[0]])
    curves = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        model = convert(tiny_gpt2(len(tok)), "paper")
        _train(model, ids, tmp_path / str(compiled), 4, compile=compiled)
        curves[compiled] = [
            json.loads(line)["loss"] for line in (tmp_path / str(compiled) / "log.jsonl").read_text().splitlines()
        ]
    assert len(curves[True]) == 4
    assert curves[True] == pytest.approx(curves[False], rel=1e-4)


def test_a_packed_sequence_mask_is_refused_but_one_that_is_plain_causal_is_accepted():
    """Under torch.compile transformers hands the mask function wrapped with a packed-sequence mask; the mask
    function is judged by what it computes."""
    from transformers.masking_utils import and_masks, causal_mask_function, packed_sequence_mask_function

    from gaincell.model import gaincell_mask

    one_sequence = packed_sequence_mask_function(torch.zeros(2, 6, dtype=torch.long))
    two_sequences = packed_sequence_mask_function(torch.tensor([[0, 0, 0, 1, 1, 1]] * 2))
    assert gaincell_mask(2, 6, 6, mask_function=and_masks(causal_mask_function, one_sequence)) is None
    with pytest.raises(GaincellError, match="plain causal"):
        gaincell_mask(2, 6, 6, mask_function=and_masks(causal_mask_function, two_sequences))
    with pytest.raises(GaincellError, match="plain causal"):
        gaincell_mask(2, 6, 6, mask_function=lambda b, h, q, kv: kv <= q + 1)


def test_resume_after_interruption_gives_the_same_curve(tmp_path, text, tok, monkeypatch):
    ids = tokenize(tok, [text[0]])
    full = convert(tiny_gpt2(len(tok), seed=3), "paper")
    _train(full, ids, tmp_path / "a", 8)
    ref = [json.loads(line)["loss"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]

    import gaincell.train as train_mod

    real = train_mod.sample_batch
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # during step 5: steps 0-4 done, last checkpoint at step 3 (+ the Ctrl-C one at 4)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "sample_batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _train(convert(tiny_gpt2(len(tok), seed=3), "paper"), ids, tmp_path / "b", 8)
    monkeypatch.setattr(train_mod, "sample_batch", real)
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 4
    _train(convert(tiny_gpt2(len(tok), seed=99), "paper"), ids, tmp_path / "b", 8)  # resumes; init is overwritten
    got = [json.loads(line)["loss"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert got == ref
    val = [json.loads(line).get("val_loss") for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert val == [json.loads(line).get("val_loss") for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    with pytest.raises(GaincellError, match="cannot resume"):
        _train(convert(tiny_gpt2(len(tok)), "paper"), ids, tmp_path / "b", 9)


def test_a_checkpoint_cut_between_its_two_renames_is_recovered(tmp_path, text, tok):
    """Killed after moving the old checkpoint aside but before moving the new one in: resume finds the old one."""
    ids = tokenize(tok, [text[0]])
    cfg = TrainConfig(
        steps=6, batch_size=4, context=32, warmup=2, eval_every=5, eval_batches=2, save_every=2, log_every=1, lr=3e-3
    )
    finetune(convert(tiny_gpt2(len(tok), seed=3), "paper"), ids, ids[:2000], cfg, tmp_path / "r", progress=False, stop_after=4)
    ckpt = tmp_path / "r" / "checkpoint"
    before = [json.loads(line)["loss"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    ckpt.rename(tmp_path / "r" / ".checkpoint.old")
    finetune(convert(tiny_gpt2(len(tok), seed=99), "paper"), ids, ids[:2000], cfg, tmp_path / "r", progress=False, stop_after=5)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4  # resumed from step 3, not started over
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in log[:4]] == before  # the first run's records kept: not restarted from the new init


def test_noisy_hardware_resumes_with_the_same_noise_stream(tmp_path, text, tok):
    """Read and write noise draw from per-layer streams; a stopped-and-resumed run continues them exactly."""
    ids = tokenize(tok, [text[0]])
    hw = HardwareConfig.preset("paper").replace(read_noise_score=0.05, read_noise_output=0.02, write_noise=0.01)
    _train(drive_arrays(convert(tiny_gpt2(len(tok), seed=3), hw)), ids, tmp_path / "a", 6)
    ref = [json.loads(line)["loss"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    model = drive_arrays(convert(tiny_gpt2(len(tok), seed=3), hw))
    cfg = TrainConfig(
        steps=6, batch_size=4, context=32, warmup=2, eval_every=5, eval_batches=2, save_every=2, log_every=1, lr=3e-3
    )
    finetune(model, ids, ids[:2000], cfg, tmp_path / "b", progress=False, stop_after=3)
    assert (tmp_path / "b" / "checkpoint" / "noise_state.safetensors").is_file()
    _train(drive_arrays(convert(tiny_gpt2(len(tok), seed=99), hw)), ids, tmp_path / "b", 6)
    got = [json.loads(line)["loss"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert got == ref
    # a different noise stream would have given a different curve: the noise really enters the loss
    _train(drive_arrays(convert(tiny_gpt2(len(tok), seed=3), hw.replace(seed=1))), ids, tmp_path / "c", 6)
    assert [json.loads(line)["loss"] for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()] != ref


# ---------------------------------------------------------------------------------------------------- evaluation
def test_strided_perplexity_matches_a_direct_computation(text, tok):
    ids = tokenize(tok, [text[1]])[:300]
    model = tiny_gpt2(len(tok), seed=2)
    res = perplexity(model, ids, context=64, stride=16)
    nll, n = 0.0, 0
    prev_end = 0
    for begin in range(0, 300, 16):  # the transformers guide, one window at a time
        end = min(begin + 64, 300)
        trg = end - prev_end
        x = ids[begin:end][None]
        labels = x.clone()
        labels[:, :-trg] = -100
        out = model(x, labels=labels)
        valid = int((labels[:, 1:] != -100).sum())
        nll += float(out.loss.detach()) * valid
        n += valid
        prev_end = end
        if end == 300:
            break
    assert res["tokens"] == n == 299
    assert res["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    with pytest.raises(GaincellError, match="fewer than context"):
        perplexity(model, ids[:10], context=64)
    with pytest.raises(GaincellError, match="empty"):
        perplexity(model, ids[:0], context=64)


def test_eval_cli_json_and_bad_input(tmp_path, text, tok, capsys):
    model = tiny_gpt2(len(tok))
    save(model, tmp_path / "m", tokenizer=tok)
    (tmp_path / "t.txt").write_text(text[1])
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "m"),
                "--text",
                str(tmp_path / "t.txt"),
                "--json",
                "--quiet",
                "--hardware",
                "paper",
                "--context",
                "64",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["perplexity"] > 1 and res["tokens"] > 100 and res["attention"] == "paper"
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("To be.")
    (tmp_path / "bad.yaml").write_text("window: -4\n")
    cases = [
        (["eval", "--model", "no-such-model-xyz", "--text", str(tmp_path / "t.txt")], "unknown model"),
        (["eval", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "empty.txt")], "empty"),
        (["eval", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "short.txt")], "fewer than context"),
        (["eval", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "none.txt")], "not found"),
        (
            ["eval", "--model", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt"), "--hardware", str(tmp_path / "bad.yaml")],
            "window",
        ),
    ]
    for argv, message in cases:
        assert main([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)


def test_distillation_from_a_teacher(tmp_path, text, tok):
    import copy

    ids = tokenize(tok, [text[0]])
    student = convert(tiny_gpt2(len(tok), seed=4), "paper")
    teacher = copy.deepcopy(student)  # identical distributions: the distillation loss starts at exactly 0
    cfg = TrainConfig(
        steps=3, batch_size=4, context=32, warmup=1, eval_every=3, eval_batches=1, log_every=1, distill_weight=1.0, lr=3e-3
    )
    finetune(student, ids, None, cfg, tmp_path / "kd", teacher=teacher, progress=False)
    log = [json.loads(line) for line in (tmp_path / "kd" / "log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(0.0, abs=1e-6)
    assert log[-1]["loss"] > 0  # the student moved away from the teacher
    mixed = TrainConfig(steps=1, batch_size=4, context=32, warmup=1, log_every=1, distill_weight=0.5)
    finetune(convert(tiny_gpt2(len(tok), seed=4), "paper"), ids, None, mixed, tmp_path / "kd2", teacher=teacher, progress=False)
    ce_only = TrainConfig(steps=1, batch_size=4, context=32, warmup=1, log_every=1)
    finetune(convert(tiny_gpt2(len(tok), seed=4), "paper"), ids, None, ce_only, tmp_path / "ce", progress=False)
    half = json.loads((tmp_path / "kd2" / "log.jsonl").read_text().splitlines()[0])["loss"]
    ce = json.loads((tmp_path / "ce" / "log.jsonl").read_text().splitlines()[0])["loss"]
    assert half == pytest.approx(0.5 * ce, rel=1e-5)  # 0.5 CE + 0.5 x (KL = 0)


def test_adapt_cli_reports_before_and_after_and_saves(tmp_path, text, tok, capsys):
    model = convert(tiny_gpt2(len(tok), seed=1), "paper-linear")
    save(model, tmp_path / "lin", tokenizer=tok)
    (tmp_path / "t.txt").write_text(text[0])
    (tmp_path / "v.txt").write_text(text[1])
    argv = [
        "adapt",
        "--model",
        str(tmp_path / "lin"),
        "--calib",
        str(tmp_path / "t.txt"),
        "--eval",
        str(tmp_path / "v.txt"),
        "--calib-batch",
        "4",
        "--calib-context",
        "64",
        "--out",
        str(tmp_path / "ad"),
        "--json",
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"linear_perplexity", "before_perplexity", "after_perplexity"} <= set(report)
    assert report["before_perplexity"] != report["linear_perplexity"]  # the copy ran on the nonlinear hardware
    adapted = load(tmp_path / "ad")
    assert attention_spec(adapted).cell == "nonlinear"
    assert load(tmp_path / "lin").state_dict().keys() == adapted.state_dict().keys()
