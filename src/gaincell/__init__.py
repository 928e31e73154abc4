"""gaincell: simulate, convert, adapt, evaluate, generate with and cost analog gain-cell attention (Leroux et al. 2025)."""

from typing import Any

from gaincell.adapt import adapt
from gaincell.config import PRESETS, HardwareConfig, HardwareConfigError
from gaincell.errors import GaincellError
from gaincell.hub import load, load_tokenizer, save
from gaincell.kernel import analog_attention, attention_map, softmax_attention
from gaincell.model import convert

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AnalogKVCache",
    "GaincellError",
    "HardwareConfig",
    "HardwareConfigError",
    "__version__",
    "adapt",
    "analog_attention",
    "attention_map",
    "convert",
    "load",
    "load_tokenizer",
    "save",
    "softmax_attention",
]


def __getattr__(name: str) -> Any:  # lazy: the cache imports transformers
    if name == "AnalogKVCache":
        from gaincell.cache import AnalogKVCache

        return AnalogKVCache
    raise AttributeError(f"module 'gaincell' has no attribute {name!r}")
