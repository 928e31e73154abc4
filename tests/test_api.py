"""The public API named in the README and the issues stays importable from the package top level."""

from __future__ import annotations

import torch

import gaincell


def test_public_names():
    for name in gaincell.__all__:
        assert getattr(gaincell, name) is not None, name
    assert callable(gaincell.adapt) and callable(gaincell.convert) and callable(gaincell.load)
    from gaincell.cache import AnalogKVCache

    assert gaincell.AnalogKVCache is AnalogKVCache


def test_readme_kernel_example_runs():
    cfg = gaincell.HardwareConfig.preset("paper").replace(window=256)
    q = torch.rand(1, 2, 300, 64, requires_grad=True)
    out = gaincell.analog_attention(q, torch.rand(1, 2, 300, 64) * 0.9, torch.rand(1, 2, 300, 64) * 0.9, cfg)
    out.sum().backward()
    assert out.shape == (1, 2, 300, 64) and q.grad is not None
