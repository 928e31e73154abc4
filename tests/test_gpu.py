"""The CUDA path: the same results as on the CPU.  Runs only where a CUDA GPU is present (skipped elsewhere: the
development machine and CI have none, see benchmarks/RESULTS.md), e.g. by ``benchmarks/gpu.sh``."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gaincell import HardwareConfig, analog_attention
from gaincell.model import convert
from helpers import drive_arrays

# GAINCELL_TEST_DEVICE=cpu runs these tests CPU-against-CPU: a check of the tests themselves where there is no GPU
DEVICE = os.environ.get("GAINCELL_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

SAT = {"score_saturation": 8.0, "output_saturation": 4.0}


def _qkv(t: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(2, 3, t, 32, generator=g, dtype=dtype),
        torch.rand(2, 3, t, 32, generator=g, dtype=dtype) * 0.9,
        torch.rand(2, 3, t, 32, generator=g, dtype=dtype) * 0.9,
    )


@pytest.mark.parametrize("preset", ["paper", "paper-linear"])
def test_kernel_on_cuda_equals_cpu_in_float64_forward_and_backward(preset):
    cfg = HardwareConfig.preset(preset).replace(window=96, array_size=32, **SAT)
    cpu = [x.requires_grad_() for x in _qkv(200, torch.float64)]
    gpu = [x.detach().to(DEVICE).requires_grad_() for x in cpu]
    out_c, out_g = analog_attention(*cpu, cfg), analog_attention(*gpu, cfg)
    assert float(out_c.detach().std()) > 0.01  # the arrays really read out
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=0, atol=1e-9)
    w = torch.randn_like(out_c)
    (out_c * w).sum().backward()
    (out_g * w.to(DEVICE)).sum().backward()
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=0, atol=1e-8)


def test_kernel_on_cuda_in_float32_differs_from_cpu_only_rarely_and_by_readout_levels():
    cfg = HardwareConfig.preset("paper").replace(window=256, **SAT)
    cpu = _qkv(512, torch.float32)
    out_c = analog_attention(*cpu, cfg)
    out_g = analog_attention(*(x.to(DEVICE) for x in cpu), cfg).cpu()
    diff = (out_g - out_c).abs()
    level = 2 * cfg.output_saturation / (cfg.out_levels - 1)  # one counter step of the 5-bit readout (upper bound)
    assert float(diff.max()) <= 2 * level
    assert float((diff > 1e-4).float().mean()) < 1e-3


def test_converted_model_logits_on_cuda_equal_cpu():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=101)
    hw = HardwareConfig.preset("paper").replace(window=48, array_size=16, **SAT)
    model = drive_arrays(convert(GPT2LMHeadModel(cfg).double().eval(), hw))
    x = torch.randint(0, 101, (2, 100))
    ref = model(input_ids=x, use_cache=False).logits
    got = model.to(DEVICE)(input_ids=x.to(DEVICE), use_cache=False).logits.cpu()
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-8)


def test_generation_through_the_analog_cache_on_cuda_matches_cpu():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=101, bos_token_id=0, eos_token_id=0)
    hw = HardwareConfig.preset("paper").replace(window=24, array_size=8, decay_per_token=0.01, **SAT)
    model = drive_arrays(convert(GPT2LMHeadModel(cfg).double().eval(), hw))
    prompt = torch.randint(1, 101, (1, 7))
    ref = model.generate(prompt, max_new_tokens=40, do_sample=False)
    got = model.to(DEVICE).generate(prompt.to(DEVICE), max_new_tokens=40, do_sample=False).cpu()
    assert torch.equal(got, ref)


def test_noisy_model_moved_to_cuda_draws_its_noise_there():
    hw = HardwareConfig.preset("paper").replace(read_noise_score=0.05, write_noise=0.01, **SAT)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=50)
    model = drive_arrays(convert(GPT2LMHeadModel(cfg).eval(), hw)).to(DEVICE)
    x = torch.randint(0, 50, (1, 40), device=DEVICE)
    a, b = model(input_ids=x, use_cache=False).logits, model(input_ids=x, use_cache=False).logits
    assert torch.isfinite(a).all() and not torch.equal(a, b)  # the stream advances call to call


def test_bf16_training_step_on_cuda(tmp_path):
    from gaincell.train import TrainConfig, finetune

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=64, vocab_size=101)
    model = drive_arrays(convert(GPT2LMHeadModel(cfg), HardwareConfig.preset("paper").replace(**SAT))).to(DEVICE)
    ids = torch.randint(0, 101, (5000,))
    tc = TrainConfig(steps=6, batch_size=8, context=64, warmup=1, eval_every=3, eval_batches=2, save_every=3, lr=3e-3)
    tc.precision = "bf16"
    summary = finetune(model, ids, ids, tc, tmp_path / "run", progress=False, device=DEVICE)
    assert summary["final"]["step"] == 5 and summary["final"]["val_loss"] < 4.7  # ln(101) = 4.62 at the start
