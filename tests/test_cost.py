"""Cost model: the paper's numbers, the scaling laws, GPU baselines, the CLI."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from gaincell import HardwareConfig
from gaincell.cli import main
from gaincell.cost import BUILTIN_SHAPES, COMPONENTS, analog_cost, compare, gpu_roofline, model_shape

PAPER = HardwareConfig.preset("paper")
GPT2 = BUILTIN_SHAPES["gpt2"]


def test_paper_design_point_is_reproduced_exactly():
    r = compare(PAPER, GPT2)
    assert r["energy_per_token_per_head_j"] == pytest.approx(6.15e-9, rel=1e-12)
    assert r["latency_per_token_s"] == pytest.approx(65e-9, rel=1e-12)
    assert r["area_per_head_mm2"] == pytest.approx(0.5, rel=1e-12)
    parts = r["energy_breakdown_per_head_j"]
    assert parts["k_cells"] + parts["k_charge_to_pulse"] == pytest.approx(1120e-12)
    assert parts["v_cells"] + parts["v_readout_counters"] == pytest.approx(700e-12)
    assert parts["dac_writes"] == pytest.approx(330e-12) and parts["digital_sum_routing"] == pytest.approx(4000e-12)
    assert parts["digital_sum_routing"] / r["energy_per_token_per_head_j"] == pytest.approx(0.65, abs=0.01)
    assert r["energy_per_token_per_layer_j"] == pytest.approx(73.8e-9)


@pytest.mark.parametrize(
    ("gpu", "speedup", "energy"),
    [("rtx4090-measured", 300, 90_000), ("jetson-nano-measured", 7_000, 40_000), ("h100-paper", 100, 70_000)],
)
def test_paper_ratios_against_measured_gpus(gpu, speedup, energy):
    g = compare(PAPER, GPT2)["gpus"][gpu]
    # the paper rounds down to one significant figure (344 -> x300, 97,263 -> x90,000, 7,522 -> x7,000)
    assert speedup <= g["speedup"] < speedup * 1.2
    assert energy <= g["energy_ratio"] < energy * 1.1
    assert g["paper"] == {"speedup": speedup, "energy_ratio": energy}


def test_energy_is_linear_in_window_and_heads_and_layers():
    e = [analog_cost(PAPER, GPT2, window=m)["energy_per_token_per_head_j"] for m in (256, 512, 1024, 2048, 4096)]
    slopes = [(b - a) / 256 for a, b in itertools.pairwise(e)]
    per_token = [s / (2**i) for i, s in enumerate(slopes)]  # windows double: increments double
    assert all(math.isclose(p, per_token[0], rel_tol=1e-9) for p in per_token)
    base = analog_cost(PAPER, GPT2)
    assert base["energy_per_token_j"] == pytest.approx(base["energy_per_token_per_head_j"] * 12 * 12)
    xl = analog_cost(PAPER, BUILTIN_SHAPES["gpt2-xl"])
    assert xl["energy_per_token_j"] == pytest.approx(base["energy_per_token_per_head_j"] * 25 * 48)


def test_latency_flat_in_window_except_the_adder_tree():
    lat = {m: analog_cost(PAPER, GPT2, window=m)["latency_per_token_s"] for m in (64, 128, 1024, 2048, 16384)}
    t_add = COMPONENTS["t_add"].value
    assert lat[128] - lat[64] == pytest.approx(t_add)  # 1 -> 2 tiles: one adder stage
    assert lat[2048] - lat[1024] == pytest.approx(t_add)  # 16 -> 32 tiles: one more stage
    assert lat[16384] - lat[1024] == pytest.approx(4 * t_add)  # log2 growth, not linear
    assert analog_cost(PAPER, GPT2, window=1000)["latency_per_token_s"] == lat[1024]  # same tiles, same latency


def test_area_linear_in_window():
    a = [analog_cost(PAPER, GPT2, window=m)["area_per_head_mm2"] for m in (512, 1024, 2048)]
    assert a[1] == pytest.approx(2 * a[0]) and a[2] == pytest.approx(2 * a[1])


def test_gpu_roofline_moves_the_kv_cache():
    r = gpu_roofline("h100", GPT2, window=1024, batch=64)
    assert r["kv_bytes_per_step"] == 64 * 2 * 1024 * 64 * 12 * 2
    assert r["bound"] == "memory"
    assert r["latency_s"] == pytest.approx(r["kv_bytes_per_step"] / 3.35e12 / 64)
    # doubling the window doubles the GPU's time; the gain cells barely change
    r2 = gpu_roofline("h100", GPT2, window=2048, batch=64)
    assert r2["latency_s"] == pytest.approx(2 * r["latency_s"])
    # measured points only exist at the paper's operating point
    assert "rtx4090-measured" not in compare(PAPER, GPT2, window=2048)["gpus"]


def test_model_shapes_offline(tmp_path):
    assert model_shape("gpt2-xl").heads == 25
    assert model_shape("openai-community/gpt2").layers == 12
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2).save_pretrained(tmp_path)
    s = model_shape(str(tmp_path))
    assert (s.layers, s.heads, s.kv_heads, s.head_dim) == (3, 4, 2, 16)


def test_cost_cli_json_and_plots(tmp_path, capsys):
    assert main(["cost", "--hardware", "paper", "--model", "gpt2", "--json", "--plots", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["energy_per_token_per_head_j"] == pytest.approx(6.15e-9)
    assert r["latency_per_token_s"] == pytest.approx(65e-9)
    assert r["area_per_head_mm2"] == pytest.approx(0.5)
    for g in r["gpus"].values():
        assert g["speedup"] > 1 and g["energy_ratio"] > 1
    assert (tmp_path / "cost.png").stat().st_size > 20_000
    assert "window" in (tmp_path / "cost-by-window.csv").read_text().splitlines()[0]
    assert main(["cost"]) == 0
    out = capsys.readouterr().out
    assert "6.15 nJ per head" in out and "65 ns" in out and "0.500 mm^2" in out and "x300" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cost", "--gpu", "voodoo"], "unknown GPU"),
        (["cost", "--window", "0"], "--window"),
        (["cost", "--window", "1000"], "whole number"),
        (["cost", "--batch", "0"], "batch"),
        (["cost", "--model", "not-a-model-xyz"], "unknown model"),
        (["cost", "--hardware", "paper-ish"], "unknown hardware preset"),
    ],
)
def test_cost_cli_bad_input(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_gpu_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the measurement itself is exercised by the benchmark, not the tests")
    assert main(["bench-gpu"]) == 0
    assert "nothing measured" in capsys.readouterr().out


def test_bit_widths_array_size_and_pulse_width_scale():
    base = analog_cost(PAPER, GPT2)
    more_dac = analog_cost(PAPER.replace(kv_levels=16), GPT2)["energy_breakdown_per_head_j"]
    assert more_dac["dac_writes"] == pytest.approx(base["energy_breakdown_per_head_j"]["dac_writes"] * 15 / 7)
    wide_out = analog_cost(PAPER.replace(out_levels=64), GPT2)
    assert wide_out["energy_breakdown_per_head_j"]["v_readout_counters"] == pytest.approx(
        base["energy_breakdown_per_head_j"]["v_readout_counters"] * 6 / 5
    )
    assert wide_out["latency_per_token_s"] == pytest.approx(base["latency_per_token_s"] + 16e-9)
    small = analog_cost(PAPER.replace(array_size=32), GPT2)
    assert small["tiles_per_head"] == 32 and small["arrays_per_head"] == 2 * 32 * 2  # d = 64 rows: two stacked arrays
    assert small["energy_breakdown_per_head_j"]["digital_sum_routing"] == pytest.approx(
        2 * base["energy_breakdown_per_head_j"]["digital_sum_routing"]
    )
    assert small["latency_per_token_s"] == pytest.approx(base["latency_per_token_s"] + COMPONENTS["t_add"].value)
    fast = analog_cost(PAPER.replace(max_pulse_width=5e-9), GPT2)
    assert fast["latency_per_token_s"] == pytest.approx(base["latency_per_token_s"] - 20e-9)


# ---------------------------------------------------------------------------------------------------- provenance (issue 12)
def test_every_gpu_entry_has_a_kind_and_a_source():
    res = compare(PAPER, GPT2)
    assert {g["kind"] for g in res["gpus"].values()} == {"measured", "paper-ratio", "roofline"}
    for name, g in res["gpus"].items():
        assert g["kind"] in {"measured", "paper-ratio", "roofline"}, name
        assert g["source"], name
    assert res["gpus"]["h100-paper"]["kind"] == "paper-ratio"  # computed back from the paper's ratios: not a measurement
    assert "fp32" in res["gpus"]["rtx4090-measured"]["source"] and "batch 64" in res["gpus"]["rtx4090-measured"]["source"]
    assert "KV bytes" in res["gpus"]["h100"]["source"]  # the roofline states its formula


def test_every_constant_has_a_status_and_every_assumed_one_a_range():
    from gaincell.cost import ASSUMPTIONS, CostAssumptions, constants_table

    rows = constants_table()
    assert {r["status"] for r in rows} == {"published", "derived", "assumed"}
    for r in rows:
        assert r["source"] and r["unit"], r["name"]
        if r["status"] == "assumed":
            assert r["low"] is not None and r["high"] is not None and r["low"] != r["high"], r["name"]
            CostAssumptions(**{r["name"]: r["low"]})  # both ends of every range are valid assumptions
            CostAssumptions(**{r["name"]: r["high"]})
    assert set(ASSUMPTIONS) == {f.name for f in __import__("dataclasses").fields(CostAssumptions)}


@pytest.mark.parametrize("reading", ["cells", "crossbars"])
def test_both_area_readings_keep_the_design_point_exact(reading):
    from gaincell.cost import CostAssumptions

    assumptions = CostAssumptions(area_reading=reading)
    r = analog_cost(PAPER, GPT2, assumptions=assumptions)
    assert r["area_per_head_mm2"] == pytest.approx(0.5, rel=1e-12)
    assert r["energy_per_token_per_head_j"] == pytest.approx(6.15e-9, rel=1e-12)
    assert r["latency_per_token_s"] == pytest.approx(65e-9, rel=1e-12)
    assert analog_cost(PAPER, GPT2, window=2048, assumptions=assumptions)["area_per_head_mm2"] == pytest.approx(1.0)
    # 32-cell arrays: the same cells, twice the periphery (4x the arrays at half the periphery each): the reading matters
    small = analog_cost(PAPER.replace(array_size=32), GPT2, assumptions=assumptions)["area_per_head_mm2"]
    cells = 2 * 1024 * 64 * 1e-6 if reading == "cells" else 15.7e-3
    assert small == pytest.approx(cells + 2 * (0.5 - cells))


def test_analog_assumptions_do_not_move_the_design_point_but_do_move_other_windows():
    from dataclasses import replace

    from gaincell.cost import ASSUMPTIONS, DEFAULT_ASSUMPTIONS

    for name in ("cell_fraction", "t_counter", "dac_exponent", "counter_exponent"):
        for end in (ASSUMPTIONS[name].low, ASSUMPTIONS[name].high):
            a = replace(DEFAULT_ASSUMPTIONS, **{name: end})
            r = analog_cost(PAPER, GPT2, assumptions=a)
            assert r["energy_per_token_per_head_j"] == pytest.approx(6.15e-9) and r["latency_per_token_s"] == pytest.approx(65e-9)
    off = HardwareConfig.preset("paper").replace(kv_levels=16)
    low = analog_cost(off, GPT2, assumptions=replace(DEFAULT_ASSUMPTIONS, dac_exponent=0.5))["energy_breakdown_per_head_j"]
    high = analog_cost(off, GPT2, assumptions=replace(DEFAULT_ASSUMPTIONS, dac_exponent=2.0))["energy_breakdown_per_head_j"]
    assert low["dac_writes"] == pytest.approx(330e-12 * (15 / 7) ** 0.5) and high["dac_writes"] == pytest.approx(
        330e-12 * (15 / 7) ** 2
    )
    t_low = analog_cost(PAPER, GPT2, window=4096, assumptions=replace(DEFAULT_ASSUMPTIONS, t_counter=4e-9))
    t_high = analog_cost(PAPER, GPT2, window=4096, assumptions=replace(DEFAULT_ASSUMPTIONS, t_counter=32e-9))
    assert t_low["latency_per_token_s"] != pytest.approx(t_high["latency_per_token_s"])


def test_sensitivity_moves_each_ratio_as_its_assumption_says(tmp_path):
    from gaincell.cost_report import sensitivity, write_sensitivity_plot

    data = sensitivity(PAPER, GPT2)
    assert "h100-paper" not in data["base"]  # the paper's claim is not a baseline
    rows = {r["constant"]: r for r in data["rows"]}
    h100 = data["base"]["h100"]
    power = rows["gpu_power_fraction"]["gpus"]["h100"]["energy_ratio"]
    assert power[0] == pytest.approx(0.3 * h100["energy_ratio"]) and power[2] == pytest.approx(h100["energy_ratio"])
    bytes_ = rows["kv_bytes_per_value"]["gpus"]["h100"]["speedup"]  # memory-bound: time linear in the bytes
    assert bytes_[0] == pytest.approx(h100["speedup"] / 2) and bytes_[2] == pytest.approx(2 * h100["speedup"])
    for name in ("cell_fraction", "t_counter", "area_reading"):  # the design point's totals are published
        assert all(v[0] == v[2] for g in rows[name]["gpus"].values() for v in g.values())
    worst = data["worst"]["h100"]
    assert worst["energy_ratio"] < min(r["gpus"]["h100"]["energy_ratio"][0] for r in data["rows"])
    assert worst["energy_ratio"] == pytest.approx(h100["energy_ratio"] * 0.3 / 2)  # 30 % power, 1-byte cache
    write_sensitivity_plot(data, tmp_path / "sensitivity.png")
    assert (tmp_path / "sensitivity.png").stat().st_size > 20_000


def test_cost_cli_explain_and_sensitivity(capsys):
    assert main(["cost", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "published:" in out and "assumed:" in out and "derived:" in out and "cell_fraction" in out and "try" in out
    assert main(["cost", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(c["name"] == "A_kv_crossbars" and c["status"] == "published" for c in data["constants"])
    assert main(["cost", "--sensitivity", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "gpu_power_fraction" in out and "worst case" in out and "no effect here" in out
    with pytest.raises(SystemExit) as exc:
        main(["cost", "--area-reading", "nope"])
    assert exc.value.code == 2


def test_the_igzo_preset_takes_its_retention_from_a_cited_measurement():
    from gaincell.config import PRESETS

    igzo = HardwareConfig.preset("igzo")
    assert igzo.retention_time == pytest.approx(100.0)
    assert "[Li25]" in PRESETS["igzo"]["doc"] and "still the silicon cell's" in PRESETS["igzo"]["doc"]
    rows = {r["field"]: r for r in igzo.describe()}
    assert "[Li25]" in rows["decay_per_token"]["provenance"] and "[Li25]" in rows["retention_time"]["provenance"]
    paper_only = {k for k, v in igzo.to_dict().items() if v != HardwareConfig.preset("paper").to_dict()[k]}
    assert paper_only <= {"name", "decay_per_token", "retention_time"}  # nothing else of the silicon model changes
    assert "[Li25]" not in {r["provenance"] for r in igzo.replace(retention_time=1.0).describe()}


def test_bench_gpu_methods_say_what_they_do(capsys):
    from gaincell.gpu_bench import METHODS, bench_gpu

    assert set(METHODS) == {"paper", "corrected"}
    assert METHODS["paper"]["precision"] == "fp32" and "is_causal=True" in METHODS["paper"]["attention"]
    assert METHODS["corrected"]["precision"] == "fp16" and "is_causal=False" in METHODS["corrected"]["attention"]
    with pytest.raises(ValueError, match="method"):
        bench_gpu(method="faster")
    assert main(["bench-gpu", "--method", "corrected"]) == 0
    assert "is_causal=False" in capsys.readouterr().out


def test_every_provenance_tag_resolves_in_the_bibliography():
    import re
    from pathlib import Path

    from gaincell.config import PRESETS

    bib = (Path(__file__).parents[1] / "docs" / "bibliography.md").read_text()
    anchors = set(re.findall(r"\{#([a-z0-9-]+)\}", bib))
    texts = [r["provenance"] for name in PRESETS for r in HardwareConfig.preset(name).describe()]
    texts += [p["doc"] for p in PRESETS.values()]
    from gaincell.cost import constants_table

    texts += [str(r["source"]) for r in constants_table()] + [g["source"] for g in compare(PAPER, GPT2)["gpus"].values()]
    tags = {
        t.strip()
        for text in texts
        for group in re.findall(r"\[([A-Za-z0-9-]+(?:,\s*[A-Za-z0-9-]+)*)\]", text)
        for t in group.split(",")
    }
    tags = {t for t in tags if re.fullmatch(r"[A-Z][A-Za-z0-9-]*", t)}  # tags, not ranges like [0, 1]
    assert tags >= {"N-M", "C", "S1", "INF", "Li25"}
    for tag in tags:
        assert tag.lower() in anchors, f"[{tag}] has no entry in docs/bibliography.md"


def test_an_assumption_out_of_range_names_the_field_and_the_allowed_range():
    from gaincell.cost import CostAssumptions
    from gaincell.errors import GaincellError

    with pytest.raises(GaincellError, match=r"cell_fraction = 2 .*allowed: 0 to 1"):
        CostAssumptions(cell_fraction=2)
    with pytest.raises(GaincellError, match="t_counter"):
        CostAssumptions(t_counter=40e-9)  # would leave a negative adder-stage time
