"""HardwareConfig: presets, provenance, validation, round trips."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gaincell import PRESETS, HardwareConfig, HardwareConfigError


def test_paper_preset_has_the_papers_constants():
    cfg = HardwareConfig.preset("paper")
    assert cfg.cell == "nonlinear"
    assert (cfg.window, cfg.array_size, cfg.q_levels, cfg.kv_levels, cfg.out_levels) == (1024, 64, 16, 8, 32)
    assert cfg.decay_per_token == 1.6e-4
    assert math.isclose(cfg.retention_time, 5e-3, rel_tol=1e-12)
    assert (cfg.score_saturation, cfg.output_saturation, cfg.kv_max, cfg.kv_offset) == (80.0, 40.0, 0.9, 0.45)
    assert [round(g, 6) for g in cfg.cell_coefficients] == [0.521364, 13.612261, -2.620446, 46.054838]
    assert cfg.n_tiles == 16
    assert not cfg.has_noise


def test_cell_curve_known_values():
    cfg = HardwareConfig.preset("paper")
    assert cfg.cell_current(-0.45) == pytest.approx(-10.33, abs=0.005)
    assert cfg.cell_current(0.0) == pytest.approx(0.52, abs=0.005)
    assert cfg.cell_current(0.45) == pytest.approx(10.31, abs=0.005)
    lin = HardwareConfig.preset("paper-linear")
    assert lin.cell_polynomial == (0.0, 19.3)
    assert lin.cell_current(0.45) == pytest.approx(19.3 * 0.45)


def test_every_field_has_unit_and_provenance():
    cfg = HardwareConfig.preset("paper")
    rows = cfg.describe()
    assert {r["field"] for r in rows} >= set(HardwareConfig.field_names()) | {"retention_time"}
    for r in rows:
        assert r["unit"] and r["provenance"] and r["doc"] and r["allowed"], r


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json_and_yaml(name, tmp_path):
    cfg = HardwareConfig.preset(name)
    assert HardwareConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"hw{suffix}"
        cfg.save(path)
        assert HardwareConfig.load(path) == cfg
        assert HardwareConfig.resolve(str(path)) == cfg


def test_replace_returns_new_validated_config():
    cfg = HardwareConfig.preset("paper")
    new = cfg.replace(window=256)
    assert new.window == 256 and cfg.window == 1024
    with pytest.raises(HardwareConfigError, match="window"):
        cfg.replace(window=0)
    with pytest.raises(AttributeError):
        cfg.window = 5  # type: ignore[misc]


def test_retention_time_and_decay_stay_consistent():
    cfg = HardwareConfig.preset("paper")
    igzo = cfg.replace(retention_time=5.0)
    assert igzo.decay_per_token == pytest.approx(cfg.token_period / 5.0)
    assert cfg.replace(retention_time=None).decay_per_token == 0.0
    assert math.isinf(cfg.replace(decay_per_token=0.0).retention_time)
    with pytest.raises(HardwareConfigError, match="retention_time"):
        HardwareConfig.from_dict({"decay_per_token": 1e-3, "retention_time": 1.0})
    with pytest.raises(HardwareConfigError, match="retention_time"):
        cfg.replace(retention_time=-1.0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"q_levels": 1}, "q_levels"),
        ({"kv_levels": 0}, "kv_levels"),
        ({"out_levels": 1.5}, "out_levels"),
        ({"window": 0}, "window"),
        ({"array_size": -3}, "array_size"),
        ({"decay_per_token": -1e-4}, "decay_per_token"),
        ({"decay_per_token": float("nan")}, "decay_per_token"),
        ({"score_saturation": float("inf")}, "score_saturation"),
        ({"output_saturation": 0}, "output_saturation"),
        ({"cell": "quadratic"}, "cell"),
        ({"out_quantizer": "nearest"}, "out_quantizer"),
        ({"cell_gradient": "none"}, "cell_gradient"),
        ({"write_noise": -0.1}, "write_noise"),
        ({"kv_offset": 1.0}, "kv_offset"),
        ({"cell_coefficients": []}, "cell_coefficients"),
        ({"cell_coefficients": [1.0, float("nan")]}, "cell_coefficients"),
        ({"seed": -1}, "seed"),
        ({"window": True}, "window"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_fields_name_the_field(changes, field):
    with pytest.raises(HardwareConfigError, match=field):
        HardwareConfig.preset("paper").replace(**changes)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(HardwareConfigError, match="unknown hardware preset"):
        HardwareConfig.preset("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: [1, 2\n")
    with pytest.raises(HardwareConfigError, match="cannot parse"):
        HardwareConfig.load(bad)
    with pytest.raises(HardwareConfigError, match="cannot read"):
        HardwareConfig.load(tmp_path / "missing.yaml")
    notmap = tmp_path / "list.json"
    notmap.write_text("[1, 2]")
    with pytest.raises(HardwareConfigError, match="mapping"):
        HardwareConfig.load(notmap)


def test_preset_key_in_file(tmp_path):
    path = tmp_path / "hw.yaml"
    path.write_text("preset: paper-linear\nwindow: 128\n")
    cfg = HardwareConfig.load(path)
    assert cfg.cell == "linear" and cfg.window == 128


@settings(max_examples=50, deadline=None)
@given(
    window=st.integers(1, 5000),
    levels=st.one_of(st.none(), st.integers(2, 256)),
    decay=st.floats(0, 1, allow_nan=False),
    sat=st.floats(1e-3, 1e3),
)
def test_valid_configs_round_trip(window, levels, decay, sat):
    cfg = HardwareConfig.preset("paper").replace(window=window, q_levels=levels, decay_per_token=decay, score_saturation=sat)
    assert HardwareConfig.from_dict(json.loads(cfg.to_json())) == cfg
