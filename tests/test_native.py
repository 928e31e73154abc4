"""gaincell.native: building, caching and refusing the compiled decode step (its numbers are tested in test_cache.py)."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch

from gaincell import native

NEEDS_COMPILER = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler (cc / $CC)")


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty build folder and no library loaded yet in this process (restored afterwards)."""
    monkeypatch.setenv("GAINCELL_NATIVE_DIR", str(tmp_path / "build"))
    native._load.cache_clear()
    yield tmp_path / "build"
    native._load.cache_clear()


@NEEDS_COMPILER
def test_the_library_is_built_once_per_dtype_into_the_build_folder_and_reused(fresh_build):
    assert native.decode_function(torch.float32) is native.decode_function(torch.float32)  # loaded once per process
    native.decode_function(torch.float64)
    built = sorted(p.name for p in fresh_build.iterdir())
    assert len(built) == 2 and built[0].startswith("decode_step_double_") and built[1].startswith("decode_step_float_")
    stamps = {p.name: p.stat().st_mtime_ns for p in fresh_build.iterdir()}
    native._load.cache_clear()  # a new process: finds the built files, compiles nothing
    native.decode_function(torch.float32)
    assert {p.name: p.stat().st_mtime_ns for p in fresh_build.iterdir()} == stamps


def test_a_failing_compiler_is_reported_with_its_message_and_leaves_nothing(fresh_build, monkeypatch, tmp_path):
    compiler = tmp_path / "broken-cc"
    calls = tmp_path / "calls"
    compiler.write_text(f"#!/bin/sh\necho run >> {calls}\necho 'decode_step.c:1: error: the compiler broke' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    with pytest.raises(native.NativeUnavailable, match=re.escape("failed:\ndecode_step.c:1: error: the compiler broke")):
        native.decode_function(torch.float32)
    with pytest.raises(native.NativeUnavailable):  # remembered: not rebuilt on every decoding step
        native.decode_function(torch.float32)
    assert calls.read_text() == "run\nrun\n"  # with the processor clones, then the baseline alone; not again
    assert list(fresh_build.iterdir()) == []
    with pytest.raises(native.NativeUnavailable, match=re.escape("float32 and float64, not torch.bfloat16")):
        native.decode_function(torch.bfloat16)
