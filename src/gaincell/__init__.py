"""gaincell: simulate, convert, adapt, evaluate and cost analog gain-cell attention (Leroux et al. 2025)."""

from gaincell.config import PRESETS, HardwareConfig, HardwareConfigError
from gaincell.kernel import analog_attention, attention_map, softmax_attention

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "HardwareConfig",
    "HardwareConfigError",
    "__version__",
    "analog_attention",
    "attention_map",
    "softmax_attention",
]
