"""The shipped reference models and the demo (Table 1 in miniature) with its targets."""

from __future__ import annotations

import json

import pytest

from gaincell.attention import attention_spec
from gaincell.cli import main
from gaincell.hub import load, shipped_models

pytestmark = pytest.mark.skipif(len(shipped_models()) < 3, reason="shipped models not built (make models)")


def test_models_listing(capsys):
    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {m["role"] for m in models.values()} == {"softmax", "linear", "nonlinear"}
    assert models["shakespeare-linear"]["parent"] == "shakespeare-softmax"
    assert models["shakespeare-nonlinear"]["parent"] == "shakespeare-linear"
    for m in models.values():
        assert m["data"] == "shakespeare:train" and 1 < m["perplexity"] < 1000
    assert main(["models"]) == 0
    assert "shakespeare-nonlinear" in capsys.readouterr().out


def test_shipped_models_load_by_name_with_their_attention():
    assert attention_spec(load("shakespeare-softmax")).name == "softmax"
    assert attention_spec(load("shakespeare-linear")).cell == "linear"
    nonlinear = attention_spec(load("shakespeare-nonlinear"))
    assert nonlinear.cell == "nonlinear" and nonlinear.name == "paper"


@pytest.mark.slow
def test_demo_reproduces_the_table_1_targets(tmp_path):
    """The full demo on the held-out plays: the targets of the model issue hold for the shipped models."""
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "table1.json").read_text())
    assert [r["row"] for r in data["rows"]] == [
        "softmax",
        "direct-linear",
        "direct-nonlinear",
        "linear",
        "no-adaptation",
        "adapted",
        "arxiv-start",
        "arxiv-adapted",
        "adapted-finetuned",
    ]
    r = data["ratios"]
    assert r["final_vs_softmax"] <= 1.05  # issue 13's target on the test plays
    assert r["final_vs_adapted"] <= 1.0  # the last stage never made the held-out plays worse
    assert data["prose"]["final_vs_softmax"] <= 1.10  # text of another kind, never trained on
    assert r["adapted_vs_linear"] <= 1.25
    assert r["arxiv_start_vs_linear"] > 1.25 * r["arxiv_adapted_vs_linear"]  # the reset collapses, adaptation recovers
    assert r["arxiv_adapted_vs_linear"] <= 1.25
    assert all(row["provenance"] for row in data["rows"])
    assert "Where each row comes from" in (tmp_path / "table1.md").read_text()
    assert r["direct_vs_softmax"] >= 2.0  # direct mapping is far worse
    assert data["adaptation"]["converged"]
    assert (tmp_path / "table1.png").stat().st_size > 20_000
    assert "Table 1 in miniature" in (tmp_path / "table1.md").read_text()
