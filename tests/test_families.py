"""Every decoder-only family converts through the one generic path: a tiny random model of each (no download), and
the architectures that cannot map onto the arrays are refused with the reason, unchanged."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as hf

from gaincell import HardwareConfig
from gaincell.adapt import adapt
from gaincell.cache import AnalogKVCache
from gaincell.errors import GaincellError
from gaincell.families import FAMILIES, attention_layers, refusal
from gaincell.hub import load, save
from gaincell.model import convert
from helpers import drive_arrays

pytestmark = pytest.mark.slow  # ~18 families x 8 checks: minutes on 2 cores (GPT-2 and Llama stay in the fast tier elsewhere)

V = 61
SAT = {"score_saturation": 8.0, "output_saturation": 4.0}
COMMON = {"vocab_size": V, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
LLAMA_LIKE = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
GQA = {**LLAMA_LIKE, "num_key_value_heads": 2}

# one tiny random config per tested family: 2 layers, 4 heads of 8; sliding windows (16) shorter than the
# hardware window (24) where the family has them, so both windows are exercised
TINY: dict[str, tuple[type, dict]] = {
    "gpt2": (hf.GPT2Config, {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 128}),
    "llama": (hf.LlamaConfig, GQA),
    "qwen2": (hf.Qwen2Config, {**GQA, "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}),
    "qwen3": (hf.Qwen3Config, {**GQA, "head_dim": 8}),
    "mistral": (hf.MistralConfig, {**GQA, "sliding_window": 16}),
    "gemma": (hf.GemmaConfig, {**LLAMA_LIKE, "num_key_value_heads": 1, "head_dim": 8}),
    "gemma2": (hf.Gemma2Config, {**GQA, "head_dim": 8, "sliding_window": 16}),
    "gemma3_text": (hf.Gemma3TextConfig, {**GQA, "head_dim": 8, "sliding_window": 16, "sliding_window_pattern": 2}),
    "phi": (hf.PhiConfig, {**LLAMA_LIKE, "partial_rotary_factor": 0.5}),
    "phi3": (hf.Phi3Config, GQA),
    "gpt_neox": (hf.GPTNeoXConfig, {**LLAMA_LIKE, "rotary_pct": 0.5}),
    "opt": (hf.OPTConfig, {**LLAMA_LIKE, "ffn_dim": 64, "word_embed_proj_dim": 32, "max_position_embeddings": 128}),
    "olmo": (hf.OlmoConfig, LLAMA_LIKE),
    "olmo2": (hf.Olmo2Config, LLAMA_LIKE),
    "gptj": (hf.GPTJConfig, {"n_layer": 2, "n_embd": 32, "n_head": 4, "rotary_dim": 4, "n_positions": 128}),
    "gpt_bigcode": (hf.GPTBigCodeConfig, {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 128, "multi_query": True}),
    "stablelm": (hf.StableLmConfig, GQA),
    "smollm3": (hf.SmolLM3Config, GQA),
}


def tiny(family: str, seed: int = 0) -> torch.nn.Module:
    config_class, kwargs = TINY[family]
    torch.manual_seed(seed)
    model = hf.AutoModelForCausalLM.from_config(config_class(**COMMON, **kwargs))
    return model.to(torch.float64).eval()


def hardware(preset: str) -> HardwareConfig:
    """Quantisation on, a 24-token window of three 8-token arrays, fast leakage: every part of the arrays is used."""
    return HardwareConfig.preset(preset).replace(window=24, array_size=8, decay_per_token=0.01, **SAT)


def test_the_matrix_covers_every_listed_family():
    assert set(TINY) == set(FAMILIES)
    for family in TINY:
        assert tiny(family).config.model_type == family


@pytest.mark.parametrize("family", sorted(TINY))
def test_converts_and_computes_on_the_arrays(family):
    model = tiny(family)
    x = torch.randint(1, V, (2, 40))
    native = model(input_ids=x, use_cache=False).logits
    softmax = convert(model, "softmax")(input_ids=x, use_cache=False).logits
    torch.testing.assert_close(softmax, native, rtol=1e-9, atol=1e-9)  # the softmax baseline is the model itself
    analog = drive_arrays(convert(model, hardware("paper")))(input_ids=x, use_cache=False).logits
    assert torch.isfinite(analog).all()
    assert (analog - softmax).abs().max() > 1e-3
    layers = attention_layers(model)
    assert [layer.index for layer in layers] == [0, 1]
    assert all(layer.n_heads * layer.head_dim == 32 for layer in layers)


def _rms_norm_in_the_model_dtype(self, x):
    """RMSNorm without the float32 round trip some families make whatever the model's dtype (Gemma 2/3, OLMo 2, ...):
    float32 rounding turns 1e-16 differences between two correct summation orders into 1e-9 jumps, which would
    measure the family's norm, not gaincell's arrays."""
    eps = getattr(self, "eps", getattr(self, "variance_epsilon", 1e-6))
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return normed * (1.0 + self.weight) if "Gemma" in type(self).__name__ else normed * self.weight


@pytest.mark.parametrize("preset", ["paper", "paper-linear"])
@pytest.mark.parametrize("family", sorted(TINY))
def test_token_by_token_decoding_equals_the_parallel_forward_past_the_window(family, preset, monkeypatch):
    model = drive_arrays(convert(tiny(family), hardware(preset)))
    for norm in {type(m) for m in model.modules() if type(m).__name__.endswith("RMSNorm")}:
        monkeypatch.setattr(norm, "forward", _rms_norm_in_the_model_dtype)
    x = torch.randint(1, V, (2, 60))  # 60 tokens through a 24-slot ring
    ref = model(input_ids=x, use_cache=False).logits
    cache = AnalogKVCache(model)
    outs = [model(input_ids=x[:, :10], past_key_values=cache, use_cache=True).logits]
    for t in range(10, x.shape[1]):
        outs.append(model(input_ids=x[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(outs, 1), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", sorted(TINY))
def test_generate_greedy_equals_parallel_greedy(family):
    model = drive_arrays(convert(tiny(family), hardware("paper")))
    prompt = torch.randint(1, V, (1, 7))
    out = model.generate(prompt, max_new_tokens=30, do_sample=False, return_dict_in_generate=True, eos_token_id=None)
    assert isinstance(out.past_key_values, AnalogKVCache)
    seq = prompt
    for _ in range(30):
        nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out.sequences, seq)


@pytest.mark.parametrize("family", sorted(TINY))
def test_save_load_round_trip_gives_identical_logits(family, tmp_path):
    model = drive_arrays(convert(tiny(family), hardware("paper")))
    x = torch.randint(1, V, (1, 30))
    save(model, tmp_path / family)
    again = load(tmp_path / family).to(torch.float64)
    torch.testing.assert_close(
        again(input_ids=x, use_cache=False).logits, model(input_ids=x, use_cache=False).logits, rtol=0, atol=0
    )


@pytest.mark.parametrize("family", sorted(TINY))
def test_adaptation_converges(family):
    model = drive_arrays(convert(tiny(family), hardware("paper-linear")), q_scale=4.0, kv_scale=3.0)
    batch = torch.randint(1, V, (4, 48))
    result = adapt(model, hardware("paper"), batch, tol=1e-4, max_iter=100, progress=False)
    assert result.max_std_error[-1] < 0.05 * result.max_std_error[0]


# ---------------------------------------------------------------------------------------------------- refused
def _gpt2_with_cross_attention():
    return hf.GPT2LMHeadModel(hf.GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=V, add_cross_attention=True))


REFUSED = {
    "encoder-decoder": (
        lambda: hf.T5ForConditionalGeneration(hf.T5Config(vocab_size=V, d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8)),
        "encoder-decoder",
    ),
    "cross-attention": (_gpt2_with_cross_attention, "cross-attention"),
    "alibi (bloom)": (lambda: hf.BloomForCausalLM(hf.BloomConfig(vocab_size=V, hidden_size=32, n_layer=1, n_head=4)), "ALiBi"),
    "alibi (mpt)": (lambda: hf.MptForCausalLM(hf.MptConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4)), "ALiBi"),
    "own attention code (falcon)": (
        lambda: hf.FalconForCausalLM(hf.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4)),
        "in its own code",
    ),
    "state space (mamba)": (
        lambda: hf.MambaForCausalLM(hf.MambaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, state_size=4)),
        "state-space",
    ),
    "latent attention (deepseek-v3)": (
        lambda: hf.DeepseekV3ForCausalLM(
            hf.DeepseekV3Config(
                vocab_size=V,
                hidden_size=32,
                intermediate_size=64,
                moe_intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=4,
                kv_lora_rank=8,
                q_lora_rank=8,
                qk_rope_head_dim=4,
                qk_nope_head_dim=4,
                v_head_dim=8,
                n_routed_experts=2,
                num_experts_per_tok=1,
                first_k_dense_replace=1,
            )
        ),
        "latent attention",
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_unmappable_architectures_are_refused_with_the_reason_and_left_unchanged(kind):
    build, reason = REFUSED[kind]
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    implementation = model.config._attn_implementation
    assert reason in (refusal(model) or "")
    with pytest.raises(GaincellError, match=type(model).__name__):
        convert(model, "paper")
    assert model.config._attn_implementation == implementation
    assert not any("gaincell" in name for name, _ in model.named_modules())
    assert getattr(model, "_gaincell_spec", None) is None
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("family", sorted(TINY))
def test_finetune_eval_and_cost_read_the_model(family, tmp_path):
    from gaincell.cost import model_shape_of
    from gaincell.evaluate import perplexity
    from gaincell.train import TrainConfig, finetune

    model = drive_arrays(convert(tiny(family).float(), hardware("paper")))
    ids = torch.randint(1, V, (400,))
    cfg = TrainConfig(steps=2, batch_size=2, context=16, warmup=1, eval_every=2, eval_batches=1, save_every=2, lr=1e-3)
    summary = finetune(model, ids, ids[:100], cfg, tmp_path / "run", progress=False)
    assert math.isfinite(summary["final"]["val_loss"]) and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert math.isfinite(perplexity(model, ids, context=16, progress=False)["perplexity"])
    shape = model_shape_of(model)
    layers = attention_layers(model)
    assert (shape.layers, shape.heads, shape.kv_heads, shape.head_dim) == (
        len(layers),
        layers[0].n_heads,
        layers[0].n_kv_heads,
        layers[0].head_dim,
    )
