"""The built-in studies: each is a spec, one flag away (``gaincell explore --study NAME --out DIR``).

Costs are wall-clock on the 2-core development machine (see benchmarks/RESULTS.md for the measured figures); every
study evaluates the shipped models on the validation plays (``shakespeare:validation``; 80,000 tokens at most, 40,000
for the cells).
"""

from __future__ import annotations

import copy
from typing import Any

from gaincell.explore.spec import StudySpec

__all__ = ["BUILTIN_STUDIES", "builtin_study"]

_EVAL = {"text": "shakespeare:validation", "max_tokens": 80_000}

#: name -> (what it asks, its cost on 2 cores, the spec)
BUILTIN_STUDIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "cells": (
        "does the adaptation carry over to other multiply curves? per cell: the linear model -> adapt -> 50 "
        "fine-tuning steps -> perplexity on 40,000 validation tokens (unlike the published ablation, the paper preset's "
        "quantisation and leakage stay on)",
        "about 45 s per cell, 6 cells: ~5 minutes",
        {
            "model": "shakespeare-linear",
            "hardware": "paper",
            "text": "shakespeare:validation",
            "max_tokens": 40_000,
            "space": {"cell": ["nonlinear", "linear", "x3", "x5", "sigmoid", "exp"]},
            "pipeline": {"adapt": True, "finetune_steps": 50},
            "objectives": ["perplexity", "energy_per_token_j"],
            "sampler": "grid",
            "trials": 6,
            "name": "cells",
        },
    ),
    "bits": (
        "how many bits do the query DAC, the K/V cells and the readout need? the shipped nonlinear model, evaluated "
        "without retraining",
        "about 11 s per point, 27 points: ~5 minutes",
        {
            "model": "shakespeare-nonlinear",
            "hardware": "paper",
            **_EVAL,
            "space": {"q_levels": [8, 16, 32], "kv_levels": [4, 8, 16], "out_levels": [16, 32, 64]},
            "objectives": ["perplexity", "energy_per_token_j"],
            "sampler": "grid",
            "trials": 27,
            "name": "bits",
        },
    ),
    "window": (
        "what does a shorter window cost in perplexity and save in energy and area? the shipped nonlinear model "
        "(128-token context) at windows of 8 ... 128 tokens",
        "about 12 s per point, 5 points: ~1.5 minutes",
        {
            "model": "shakespeare-nonlinear",
            "hardware": "paper",
            **_EVAL,
            "space": {"window": [8, 16, 32, 64, 128]},
            "objectives": ["perplexity", "energy_per_token_j", "area_mm2"],
            "sampler": "grid",
            "trials": 5,
            "name": "window",
        },
    ),
    "retention": (
        "how leaky may the cells be? the shipped nonlinear model (0.8 us per token, 128-token context) with "
        "retention times from 10 us to the paper's 5 ms",
        "about 12 s per point, 6 points: ~1.5 minutes",
        {
            "model": "shakespeare-nonlinear",
            "hardware": "paper",
            **_EVAL,
            "space": {"retention_time": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 5e-3]},
            "objectives": ["perplexity", "energy_per_token_j"],
            "sampler": "grid",
            "trials": 6,
            "name": "retention",
        },
    ),
}


def builtin_study(name: str, **overrides: Any) -> StudySpec:
    """The built-in study ``name`` as a spec (``overrides`` replace top-level keys, e.g. ``trials``)."""
    if name not in BUILTIN_STUDIES:
        from gaincell.explore.spec import ExploreSpecError

        raise ExploreSpecError(f"unknown study {name!r}: choose one of {', '.join(BUILTIN_STUDIES)}")
    data = copy.deepcopy(BUILTIN_STUDIES[name][2])
    data.update(overrides)
    return StudySpec.from_dict(data, source=f"study {name}")
