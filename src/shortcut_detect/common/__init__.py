"""Small pieces every layer of the package shares: JSON conversion, risk levels, progress bars,
model mode handling and device choice. Nothing here imports the rest of the package."""

from shortcut_detect.common.device import resolve_device
from shortcut_detect.common.modes import eval_mode, restore_modes, saved_modes
from shortcut_detect.common.progress import ProgressBar
from shortcut_detect.common.risk import Risk
from shortcut_detect.common.serialization import json_default, nan_to_none, to_jsonable

__all__ = [
    "ProgressBar",
    "Risk",
    "eval_mode",
    "json_default",
    "nan_to_none",
    "resolve_device",
    "restore_modes",
    "saved_modes",
    "to_jsonable",
]
