"""The public API named in the README and the issues stays importable from the package top level."""

from __future__ import annotations

import importlib
import importlib.metadata

import torch

import gaincell


def test_public_names():
    assert len(set(gaincell.__all__)) == len(gaincell.__all__)
    assert {"HardwareConfig", "analog_attention", "convert", "adapt", "load", "save", "AnalogKVCache"} <= set(gaincell.__all__)
    for name in gaincell.__all__:
        obj = getattr(gaincell, name)  # AttributeError for a listed name the package lacks
        assert obj is not None, name
        if callable(obj):  # each function or class is the very object its defining gaincell module holds
            assert obj.__module__.startswith("gaincell."), name
            assert getattr(importlib.import_module(obj.__module__), obj.__qualname__) is obj, name
    assert gaincell.__version__ == importlib.metadata.version("gaincell")
    assert isinstance(gaincell.PRESETS, dict) and "paper" in gaincell.PRESETS
    assert callable(gaincell.adapt) and callable(gaincell.convert) and callable(gaincell.load)
    from gaincell.cache import AnalogKVCache

    assert gaincell.AnalogKVCache is AnalogKVCache


def test_readme_kernel_example_runs():
    cfg = gaincell.HardwareConfig.preset("paper").replace(window=256)
    q = torch.rand(1, 2, 300, 64, requires_grad=True)
    out = gaincell.analog_attention(q, torch.rand(1, 2, 300, 64) * 0.9, torch.rand(1, 2, 300, 64) * 0.9, cfg)
    out.sum().backward()
    assert out.shape == (1, 2, 300, 64) and q.grad is not None
