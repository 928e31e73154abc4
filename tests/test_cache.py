"""The analog KV cache: consistency with the parallel kernel, leakage in time, refresh, noise, generate(), CLI."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gaincell import HardwareConfig
from gaincell.attention import attention_spec
from gaincell.cache import AnalogKVCache
from gaincell.cli import main
from gaincell.errors import GaincellError
from gaincell.generation import cache_perplexity, generate, retention_study
from gaincell.hub import save
from gaincell.model import convert
from helpers import drive_arrays as active
from helpers import tiny_llama

V = 61
SAT = {"score_saturation": 8.0, "output_saturation": 4.0}
HW = HardwareConfig.preset("paper").replace(window=24, array_size=8, decay_per_token=0.01, **SAT)


def attention_output_std(model, x):
    from gaincell.attention import head_maps

    maps = list(head_maps(model))
    for m in maps:
        m.recorder = {}
    model(input_ids=x, use_cache=False)
    stds = []
    for m in maps:
        n, s1, s2 = m.recorder["out"]
        stds.append(float(((s2 / n) - (s1 / n) ** 2).clamp(min=0).sqrt().min()))
        m.recorder = None
    return min(stds)


def llama(seed=0, positions=512, dtype=torch.float64):
    return tiny_llama(V, seed, positions, dtype)


def gpt2(seed=0, positions=128, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=positions, vocab_size=V, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).to(dtype).eval()


# the compiled decoding step needs a C compiler (gaincell.native); without one these tests are skipped, saying so
NEEDS_COMPILER = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler (cc / $CC)")


def _decode(model, x, prefill, compiled=None):
    cache = AnalogKVCache(model, compiled=compiled)
    outs = [model(input_ids=x[:, :prefill], cache=cache, use_cache=True).logits]
    for t in range(prefill, x.shape[1]):
        outs.append(model(input_ids=x[:, t : t + 1], cache=cache, use_cache=True).logits)
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("factory", [llama, gpt2])
@pytest.mark.parametrize("preset", ["paper", "paper-linear"])
def test_token_by_token_equals_parallel_past_the_window(factory, preset):
    hw = HardwareConfig.preset(preset).replace(window=24, array_size=8, decay_per_token=0.01, **SAT)
    model = active(convert(factory(), hw))
    x = torch.randint(1, V, (2, 90))  # 90 tokens through a 24-slot ring: it wraps three times
    assert attention_output_std(model, x) > 0.05  # every head's arrays produce a real signal
    ref = model(input_ids=x, use_cache=False).logits
    got, cache = _decode(model, x, prefill=20)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert cache.layers[0].yk.shape[2] == 24 and cache.get_seq_length() == 90


def test_a_prompt_longer_than_the_window_is_written_as_token_by_token_writes_leave_it():
    """Prefill writes the whole prompt with one indexed write per layer; the ring (voltage powers, write times,
    counts) must end exactly as writing it token by token does, also when the prompt wraps the ring."""
    model = active(convert(llama(), HW))
    x = torch.randint(1, V, (2, 70))
    ref = model(input_ids=x, use_cache=False).logits
    got, cache = _decode(model, x, prefill=50)  # 50 prompt tokens through a 24-slot ring, then 20 decoded
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert all(layer.steps == 70 and layer.written.tolist() == [70, 70] for layer in cache.layers)
    d = cache.layers[0].powers.shape[-1]
    run, single = AnalogKVCache(model).layers[0], AnalogKVCache(model).layers[0]
    for layer in (run, single):
        layer.lazy_initialization(torch.zeros(2, 2, 1, d, dtype=torch.float64), None)
    y = torch.randn(2, 2, 2, 50, d, dtype=torch.float64)  # (B, Hkv, K/V, tokens, D)
    run._write_run(y)
    for t in range(50):
        single._write(y[:, :, :, t], None, single.now(single.steps))
        single.steps += 1
    for name in ("powers", "t_write", "written"):
        assert torch.equal(getattr(run, name), getattr(single, name)), name
    assert (run.uniform, run.steps) == (single.uniform, single.steps) == (50, 50)


@pytest.mark.parametrize(
    "changes",
    [
        {},  # cubic cell, leakage, published readout grid
        {"cell": "linear"},  # one power
        {"cell": "x5"},  # six powers
        {"out_quantizer": "exact"},  # only tiles that hold a key are read out
        {"out_levels": None, "q_levels": None},  # no quantisers
        {"decay_per_token": 0.0},  # no leakage: the gains need no leak factor
        {"window": 20, "array_size": 8},  # a partial last array: the cache reads through the kernel instead
    ],
)
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=NEEDS_COMPILER)], ids=["tensors", "compiled"])
def test_a_decoding_step_reads_the_stored_powers_exactly(changes, compiled, monkeypatch):
    """The cache's decoding step reads sum_p g_p e^p (q . y^p) from stored powers: equal to the parallel kernel for a
    batch of grouped-query rows, through the first partly filled arrays and past several ring wraps; and it is the
    path taken whenever the reads are quiet and the window is a whole number of arrays — as tensor operations
    (``_read_expanded``) or as one compiled call per layer (``_compiled_step``, decode_step.c)."""
    from gaincell.cache import AnalogCacheLayer

    hw = HW.replace(**changes)
    expanded = hw.window % hw.array_size == 0
    calls = []
    path = "_compiled_step" if compiled else "_read_expanded"
    original = getattr(AnalogCacheLayer, path)
    monkeypatch.setattr(AnalogCacheLayer, path, lambda self, *a: calls.append(1) or original(self, *a))
    model = active(convert(llama(), hw))  # 4 query heads on 2 key/value heads
    x = torch.randint(1, V, (3, 70))  # 3 rows; 70 tokens through a 20- or 24-slot ring
    ref = model(input_ids=x, use_cache=False).logits
    got, _ = _decode(model, x, prefill=3, compiled=compiled)  # decoding starts inside the first array
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert len(calls) == (2 * 67 if expanded else 0)  # 2 layers x 67 decoding steps


def test_noisy_reads_and_padded_rows_decode_through_the_kernel(monkeypatch):
    """Read noise or cell variation, or rows with different numbers of written slots, leave the expanded read and
    the compiled step (which needs every row on the same slot)."""
    from gaincell.cache import AnalogCacheLayer

    calls, compiled_calls = [], []
    original = AnalogCacheLayer._read_expanded
    monkeypatch.setattr(AnalogCacheLayer, "_read_expanded", lambda self, *a: calls.append(1) or original(self, *a))
    compiled_step = AnalogCacheLayer._compiled_step
    monkeypatch.setattr(AnalogCacheLayer, "_compiled_step", lambda self, *a: compiled_calls.append(1) or compiled_step(self, *a))
    for hw in (HW.replace(read_noise_output=0.01), HW.replace(cell_gain_variation=0.05)):
        _decode(convert(llama(), hw), torch.randint(1, V, (1, 12)), prefill=4)
    assert calls == [] and compiled_calls == []
    _decode(convert(llama(), HW.replace(write_noise=0.01)), torch.randint(1, V, (1, 12)), prefill=4)
    assert len(calls) == 2 * 8 and compiled_calls == []  # write noise: exact reads, written by the tensor path
    calls.clear()
    model = active(convert(llama(), HW))
    cache = AnalogKVCache(model)
    batch, mask = torch.randint(1, V, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # the second row starts 2 tokens later
    model(input_ids=batch, attention_mask=mask, cache=cache, use_cache=True)
    for _ in range(30):  # after step t the rows hold 7 + t and 5 + t slots (at most the 24 of the ring)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        model(input_ids=torch.randint(1, V, (2, 1)), attention_mask=mask, cache=cache, use_cache=True)
    assert len(calls) == 2 * (30 - 19)  # the expanded read once both rows' rings are full (t >= 19)
    assert compiled_calls == []


@NEEDS_COMPILER
def test_compiled_steps_leave_the_ring_as_tensor_steps_do_and_decode_the_same_tokens():
    """float32, the paper preset's quantisers: the compiled step writes the same stored powers and times as the tensor
    path (to rounding: its powers are products, the tensor path's are pow) and decodes the same greedy tokens with
    logits equal to float32 rounding; a slot is never read before it is written."""
    model = active(convert(llama(dtype=torch.float32), HW))
    x = torch.randint(1, V, (2, 60))
    got, compiled = _decode(model, x, prefill=5, compiled=True)
    ref, tensors = _decode(model, x, prefill=5, compiled=False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    for a, b in zip(compiled.layers, tensors.layers, strict=True):
        torch.testing.assert_close(a.powers, b.powers, rtol=1e-6, atol=1e-7)
        assert torch.equal(a.t_write, b.t_write) and torch.equal(a.written, b.written)
        assert (a.uniform, a.steps) == (b.uniform, b.steps) == (60, 60)


@NEEDS_COMPILER
def test_a_batch_shrunk_or_grown_mid_decoding_decodes_the_same_through_both_paths():
    """Selecting or repeating batch rows between decoding steps (contrastive search, beam set-up) rebuilds the compiled
    step's parameters, which hold the batch size: both paths then decode the kept rows alike (float64, 1e-10)."""
    model = active(convert(llama(), HW))
    x = torch.randint(1, V, (3, 40))
    logits = {}
    for compiled in (True, False):
        cache = AnalogKVCache(model, compiled=compiled)
        outs = [model(input_ids=x[:, :5], cache=cache, use_cache=True).logits]
        for t in range(5, 20):
            outs.append(model(input_ids=x[:, t : t + 1], cache=cache, use_cache=True).logits)
        cache.batch_select_indices(torch.tensor([0, 2]))  # 3 rows -> 2
        for t in range(20, 30):
            outs.append(model(input_ids=x[[0, 2], t : t + 1], cache=cache, use_cache=True).logits)
        cache.batch_repeat_interleave(2)  # 2 rows -> 4
        for t in range(30, 40):
            outs.append(model(input_ids=x[[0, 0, 2, 2], t : t + 1], cache=cache, use_cache=True).logits)
        logits[compiled] = outs
    for a, b in zip(logits[True], logits[False], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_compiled_step_needs_a_compiler_and_says_so(monkeypatch, tmp_path):
    """Without a C compiler: compiled=True is an error naming the reason, the default decodes with tensor operations
    and warns, compiled=False says nothing; all three decode the same logits."""
    from gaincell import native

    monkeypatch.setenv("CC", "no-such-compiler-gaincell")
    monkeypatch.setenv("GAINCELL_NATIVE_DIR", str(tmp_path))
    native._load.cache_clear()
    try:
        model = active(convert(llama(), HW))
        x = torch.randint(1, V, (1, 8))
        with pytest.raises(GaincellError, match="no C compiler: 'no-such-compiler-gaincell'"):
            _decode(model, x, prefill=4, compiled=True)
        with pytest.warns(RuntimeWarning, match="tensor operations"):
            default, _ = _decode(model, x, prefill=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tensors, _ = _decode(model, x, prefill=4, compiled=False)
        assert torch.equal(default, tensors)
    finally:
        native._load.cache_clear()
    assert not list(tmp_path.iterdir())  # nothing half-built left behind


def test_float32_decoding_within_float32_tolerance_and_same_greedy_tokens():
    model = active(convert(llama(dtype=torch.float32), HW))
    x = torch.randint(1, V, (1, 80))
    ref = model(input_ids=x, use_cache=False).logits
    got, _ = _decode(model, x, prefill=10)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


def _parallel_greedy(model, prompt, n):
    seq = prompt
    for _ in range(n):
        nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    return seq


def test_hf_generate_uses_the_analog_cache_and_matches_parallel_greedy():
    model = active(convert(llama(), HW))
    prompt = torch.randint(1, V, (1, 9))
    out = model.generate(prompt, max_new_tokens=40, do_sample=False, return_dict_in_generate=True)
    assert isinstance(out.past_key_values, AnalogKVCache)
    assert torch.equal(out.sequences, _parallel_greedy(model, prompt, 40))


def test_a_deep_copy_of_a_converted_model_builds_caches_from_its_own_maps():
    import copy

    from gaincell.attention import head_maps

    model = active(convert(llama(), HW))
    twin = copy.deepcopy(model)
    out = twin.generate(torch.randint(1, V, (1, 5)), max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert out.past_key_values.maps[0] is next(head_maps(twin))
    twin._gaincell_spec = None  # the copy made digital again (as the decode benchmark does): a DynamicCache stays one
    out = twin.generate(torch.randint(1, V, (1, 5)), max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert not isinstance(out.past_key_values, AnalogKVCache)


def test_left_padded_batch_equals_each_sequence_alone():
    model = active(convert(llama(), HW))
    a, b = torch.randint(1, V, (1, 15)), torch.randint(1, V, (1, 8))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 7, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :7] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=35, do_sample=False)
    assert torch.equal(out[0], model.generate(a, max_new_tokens=35, do_sample=False)[0])
    assert torch.equal(out[1, 7:], model.generate(b, max_new_tokens=35, do_sample=False)[0])


def test_an_idle_cell_holds_exp_minus_k_of_its_voltage():
    hw = HW.replace(q_levels=None, kv_levels=None, out_levels=None, token_period=1e-9, retention_time=1e-3)
    model = active(convert(llama(), hw))
    cache = AnalogKVCache(model)
    model(input_ids=torch.randint(1, V, (1, 1)), cache=cache, use_cache=True)
    layer = cache.layers[0]
    y0 = layer.yk[:, :, :1].clone()
    for k in (0.5, 1.0, 3.0):
        now = layer.now(layer.steps) + k * 1e-3
        yk, _ = layer._decayed(torch.tensor([0]), 1, now)
        torch.testing.assert_close(yk, y0 * math.exp(-k - 1e-9 / 1e-3), rtol=1e-9, atol=0)  # + one token period
    cache.advance_time(2e-3)
    assert cache.time == pytest.approx(1e-9 + 2e-3)


def test_leakage_in_time_changes_outputs_and_refresh_restores_them():
    hw = HW.replace(token_period=1e-6, retention_time=1e-3)
    model = active(convert(llama(), hw))
    x = torch.randint(1, V, (1, 40))

    def run(refresh_period=None, idle=0.0):
        cache = AnalogKVCache(model, refresh="periodic" if refresh_period else "none", refresh_period=refresh_period)
        outs = []
        for t in range(40):
            if t:
                cache.advance_time(idle)
            outs.append(model(input_ids=x[:, t : t + 1], cache=cache, use_cache=True).logits)
        return torch.cat(outs, 1), cache

    fast, _ = run()
    slow, _ = run(idle=2e-4)  # long pauses: the charge leaks
    # refresh on its own clock, every microsecond, also while idle: every read sees freshly restored levels
    refreshed, cache = run(refresh_period=1e-6, idle=2e-4)
    convert(model, hw.replace(retention_time=None))
    no_leak, _ = run()
    convert(model, hw)
    assert not torch.allclose(slow, fast, atol=1e-3)
    torch.testing.assert_close(refreshed, no_leak, rtol=0, atol=1e-9)
    # ~201 refreshes per token (1 us apart over 1 us + 200 us), each rewriting every written K and V cell
    assert cache.refresh_writes > 100 * 39 * 2 * 2 * 8
    # refreshed voltages sit exactly on DAC levels again (y + 0.45 = k * 0.9/7)
    levels = (cache.layers[0].yk[:, :, :24] + 0.45) / (0.9 / 7)
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-9)


def test_noisy_cache_is_reproducible():
    hw = HW.replace(write_noise=0.02, read_noise_score=0.5, read_noise_output=0.2, seed=3)
    x = torch.randint(1, V, (1, 30))
    a, _ = _decode(active(convert(llama(), hw)), x, prefill=5)
    b, _ = _decode(active(convert(llama(), hw)), x, prefill=5)
    c, _ = _decode(active(convert(llama(), hw.replace(seed=4))), x, prefill=5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_rope_model_streams_past_its_context_in_constant_memory():
    model = active(convert(llama(positions=32), HW))
    prompt = torch.randint(1, V, (1, 10))
    out = model.generate(prompt, max_new_tokens=120, do_sample=False, return_dict_in_generate=True)
    assert out.sequences.shape[1] == 130
    cache = out.past_key_values
    assert cache.layers[0].yk.shape == (1, 2, 24, 8) and cache.get_seq_length() >= 129


def test_gpt2_past_n_positions_is_a_clear_error():
    model = convert(gpt2(positions=32), HW)
    with pytest.raises(GaincellError, match="absolute positions"):
        model.generate(torch.randint(1, V, (1, 20)), max_new_tokens=30, do_sample=False)


def test_bad_input():
    model = active(convert(llama(), HW))
    cache = AnalogKVCache(model)
    with pytest.raises(GaincellError, match="seconds"):
        cache.advance_time(-1.0)
    with pytest.raises(GaincellError, match="refresh_period"):
        AnalogKVCache(model, refresh="periodic", refresh_period=0.0)
    with pytest.raises(GaincellError, match="refresh must be"):
        AnalogKVCache(model, refresh="sometimes")
    with pytest.raises(ValueError, match="retention_time"):
        HW.replace(retention_time=0.0)
    with pytest.raises(ValueError, match="window"):
        HW.replace(window=0)
    model(input_ids=torch.randint(1, V, (1, 5)), cache=cache, use_cache=True)
    other = convert(gpt2(), HW)
    with pytest.raises(GaincellError, match="reused across"):
        other(input_ids=torch.randint(1, V, (1, 1)), cache=cache, use_cache=True)
    with pytest.raises(GaincellError, match="analog hardware"):
        AnalogKVCache(convert(llama(), "softmax"))


class _Tok:
    eos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + (ord(c) % (V - 1)) for c in text]}

    def decode(self, ids):
        return "".join(chr(97 + i % 26) for i in ids)


def test_generate_function_reports_hardware_time_and_energy():
    model = active(convert(llama(), HW))
    res = generate(model, _Tok(), "hello", max_new_tokens=6, idle=1e-3)
    assert res["new_tokens"] == 6 and res["tokens_per_s"] > 0
    # 5 prompt + 6 new tokens were written; idle between the 5 decode steps after the first
    expected = 10 * HW.token_period + 5e-3
    assert res["hardware_time_s"] == pytest.approx(expected)
    assert res["energy_per_token_j"] > 0 and res["attention_latency_per_token_s"] > 0
    with pytest.raises(GaincellError, match="empty"):
        generate(model, _Tok(), "", max_new_tokens=3)
    with pytest.raises(GaincellError, match="idle"):
        generate(model, _Tok(), "x", idle=-1.0)


def _greedy_by_hand(model, prompt_ids, n, hardware=None, idle=0.0):
    """Greedy decoding token by token through a fresh analog cache (``idle`` seconds before every decode step),
    written out without transformers' generate()."""
    cache = AnalogKVCache(model, hardware=hardware)
    new = []
    logits = model(input_ids=torch.tensor([prompt_ids]), cache=cache, use_cache=True).logits[:, -1]
    while True:
        new.append(int(logits.float().argmax(-1)))
        if len(new) == n:
            return new
        cache.advance_time(idle)
        logits = model(input_ids=torch.tensor([[new[-1]]]), cache=cache, use_cache=True).logits[:, -1]


def test_generate_streams_the_greedy_tokens_of_a_hand_written_decoding_loop():
    model = active(convert(llama(), HW))
    tok, stream = _Tok(), io.StringIO()
    res = generate(model, tok, "hello", max_new_tokens=8, stream=stream)
    assert res["text"] == tok.decode(_greedy_by_hand(model, tok("hello")["input_ids"], 8)) == stream.getvalue()


def test_generate_runs_the_cache_on_its_own_clock_and_leaves_the_model_as_converted():
    model = active(convert(llama(), HW))
    tok = _Tok()
    res = generate(model, tok, "hello", max_new_tokens=5, token_period=2e-9, idle=1e-3)
    assert attention_spec(model) == HW and res["token_period_s"] == 2e-9
    assert res["retention_time_s"] == pytest.approx(HW.retention_time)
    # 5 prompt + 4 decoded tokens written on the 2 ns clock, and the arrays idled between consecutive new tokens
    assert res["hardware_time_s"] == pytest.approx(9 * 2e-9 + 4 * 1e-3)
    fast = HW.replace(token_period=2e-9, retention_time=HW.retention_time)
    assert res["text"] == tok.decode(_greedy_by_hand(model, tok("hello")["input_ids"], 5, fast, idle=1e-3))
    ids = torch.randint(1, V, (80,))
    cache_perplexity(model, ids, context=40, hardware=HW.replace(retention_time=1e-6))
    assert attention_spec(model) == HW


def test_generation_stopped_by_the_end_of_text_token_idles_no_further():
    model = active(convert(llama(), HW))
    tok = _Tok()
    tok.eos_token_id = _greedy_by_hand(model, tok("hello")["input_ids"], 1)[0]
    res = generate(model, tok, "hello", max_new_tokens=5, idle=1e-3)
    assert res["new_tokens"] == 1 and res["hardware_time_s"] == pytest.approx(5 * HW.token_period)


def test_retention_study_degrades_at_short_tau():
    model = active(convert(llama(dtype=torch.float32), HW.replace(token_period=1e-6)))
    ids = torch.randint(1, V, (160,))
    data = retention_study(model, ids, context=40, taus=[1e-6, 1e2], idles=[0.0], progress=False)
    rows = {(r["retention_time_s"], r["refresh"]): r["perplexity"] for r in data["rows"]}
    ideal = data["no_leak_perplexity"]
    assert rows[(1e2, False)] == pytest.approx(ideal, rel=1e-5)  # tau >> the sequence: as if nothing leaked
    assert abs(rows[(1e-6, False)] / ideal - 1) > 1e-4  # tau = one token period: the window is wiped
    assert cache_perplexity(model, ids, context=40, hardware=HW)["tokens"] == 4 * 39


def test_generate_and_retention_cli(tmp_path, capsys):
    from gaincell.data import shakespeare_plays, subvocab_tokenizer
    from gaincell.factory import new_model

    text = shakespeare_plays()["tempest"][:5000]
    tok = subvocab_tokenizer([text])
    model = convert(new_model("gpt2", layers=1, width=32, heads=2, kv_heads=None, context=48, vocab=len(tok), seed=0), HW)
    save(model, tmp_path / "m", tokenizer=tok)
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "Thou", "--max-new-tokens", "5", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["new_tokens"] == 5 and res["hardware"] == HW.name
    (tmp_path / "t.txt").write_text(text)
    assert (
        main(
            [
                "retention",
                "--model",
                str(tmp_path / "m"),
                "--text",
                str(tmp_path / "t.txt"),
                "--tokens",
                "200",
                "--taus",
                "1e-5,1",
                "--idle",
                "0",
                "--out",
                str(tmp_path / "r"),
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 4 and (tmp_path / "r" / "retention.png").stat().st_size > 10_000
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", ""]) == 2
    assert "empty" in capsys.readouterr().err
