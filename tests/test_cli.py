"""The gaincell command: help, hardware show/validate/presets, demo, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gaincell import HardwareConfig
from gaincell.cli import main


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "hardware" in capsys.readouterr().out


def test_hardware_show_prints_every_field_with_unit_and_provenance(capsys):
    assert main(["hardware", "show", "paper"]) == 0
    out = capsys.readouterr().out
    for name in HardwareConfig.field_names():
        assert f"  {name} " in out
    assert "uA/V" in out and "[C] amp_coefficient" in out and "retention_time" in out


def test_hardware_show_json_and_file(tmp_path, capsys):
    path = tmp_path / "hw.yaml"
    HardwareConfig.preset("paper-linear").replace(window=128).save(path)
    assert main(["hardware", "show", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["cell"] == "linear" and data["config"]["window"] == 128
    assert main(["hardware", "validate", str(path)]) == 0
    assert "valid hardware config" in capsys.readouterr().out
    assert main(["hardware", "presets"]) == 0
    assert "paper-linear" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("window: 0\n", "HardwareConfig.window = 0"),
        ("q_levels: 1\n", "q_levels"),
        ("decay_per_token: -1\n", "decay_per_token"),
        ("score_saturation: .inf\n", "score_saturation"),
        ("colour: red\n", "unknown HardwareConfig field 'colour'"),
        ("window: [1\n", "cannot parse"),
    ],
)
def test_invalid_hardware_file_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["hardware", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_preset_and_debug(capsys):
    assert main(["hardware", "show", "no-such-preset"]) == 2
    assert "unknown hardware preset or file" in capsys.readouterr().err
    with pytest.raises(Exception, match="unknown hardware preset"):
        main(["--debug", "hardware", "show", "no-such-preset"])


@pytest.mark.slow
def test_console_script_exit_code():
    res = subprocess.run([sys.executable, "-m", "gaincell", "hardware", "show", "nope"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.startswith("gaincell: error:")
    res = subprocess.run([sys.executable, "-m", "gaincell", "hardware", "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2


def test_hardware_demo_writes_plot_and_tables(tmp_path):
    assert main(["hardware", "demo", "--out", str(tmp_path), "--tokens", "64", "--quiet"]) == 0
    summary = json.loads((tmp_path / "hardware-demo.json").read_text())
    assert summary["tokens"] == 64
    assert summary["paper"]["phi_same_token_mean"] > summary["paper"]["phi_other_token_mean"]
    assert (tmp_path / "hardware-demo.png").stat().st_size > 10_000
    assert "| paper |" in (tmp_path / "hardware-demo.md").read_text()
