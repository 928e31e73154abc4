"""Lets lm-eval's own ``lm_eval`` command find the ``gaincell`` model type.

lm-eval 0.4.13 registers its models from a fixed table in ``lm_eval.models`` and reads no plugin entry points
(upstream issue #3282, PR #3672), so ``lm_eval --model gaincell`` would fail although the package declares the
``lm_eval.models`` entry point.  gaincell installs ``gaincell_lm_eval.pth`` beside itself; at interpreter start-up
it runs :func:`install`, which only puts a small finder on ``sys.meta_path``.  Nothing else is imported: when (and
only when) a program imports ``lm_eval.models``, the finder lets the module load normally and then registers
``gaincell`` as a *lazy* entry (``"gaincell.lm_eval_plugin:GainCellLM"``), exactly as lm-eval registers its own
models, so neither torch nor gaincell is imported until someone asks for ``--model gaincell``.  If lm-eval already
knows the name (a version that reads entry points), nothing is changed.  Set ``GAINCELL_LM_EVAL_HOOK=0`` to disable.

This module imports only the standard library: it runs in every Python process of the environment.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from types import ModuleType
from typing import Any

MODULE = "lm_eval.models"
MODEL_TYPE = "gaincell"
TARGET = "gaincell.lm_eval_plugin:GainCellLM"


def register() -> bool:
    """Register the lazy ``gaincell`` model type with lm-eval's registry; True if it was added now."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if MODEL_TYPE in model_registry:
        return False
    model_registry.register(MODEL_TYPE, target=TARGET)
    return True


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then registers; everything else is the real loader's."""

    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        try:
            register()
        except Exception as exc:  # never break lm-eval itself (e.g. a version with another registry API)
            warnings.warn(f"gaincell could not register its lm-eval model type: {exc!r}", RuntimeWarning, stacklevel=2)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for tracebacks and inspect
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != MODULE:
            return None
        # the path-based finder itself, not sys.meta_path again; once the module is imported nobody asks again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Put the finder on ``sys.meta_path`` (idempotent; a no-op when disabled or lm-eval is already imported)."""
    if os.environ.get("GAINCELL_LM_EVAL_HOOK", "1") == "0":
        return
    if MODULE in sys.modules:
        register()
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
