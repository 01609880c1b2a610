"""Detectors: embedding-based shortcut tests and heatmap-based ones, one interface.

Every detector has ``fit(...) -> self`` and ``get_report() -> dict`` (see
:mod:`shortcut_detect.detectors.base`); :class:`ShortcutDetector` runs several and sums them
up. Names are imported on first use, so ``import shortcut_detect.detectors`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BaseDetector",
    "GeometricDetector",
    "HBACDetector",
    "ProbeDetector",
    "ShortcutDetector",
    "StatisticalDetector",
    "available_detectors",
    "register_detector",
]

_LAZY = {
    "BaseDetector": "shortcut_detect.detectors.base",
    "GeometricDetector": "shortcut_detect.detectors.geometric",
    "HBACDetector": "shortcut_detect.detectors.hbac",
    "ProbeDetector": "shortcut_detect.detectors.probe",
    "ShortcutDetector": "shortcut_detect.detectors.shortcut_detector",
    "StatisticalDetector": "shortcut_detect.detectors.statistical",
    "available_detectors": "shortcut_detect.detectors.registry",
    "register_detector": "shortcut_detect.detectors.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
