"""Method name -> detector class, imported only when a method is used.

Built-in names: ``probe``, ``statistical``, ``hbac``, ``geometric`` (embedding tests) and
``gradcam_mask_overlap``, ``spray`` (heatmap tests). Add your own with
:func:`register_detector`.
"""

from __future__ import annotations

import importlib

from shortcut_detect.detectors.base import BaseDetector

__all__ = [
    "EMBEDDING_METHODS",
    "HEATMAP_METHODS",
    "available_detectors",
    "get_detector_class",
    "register_detector",
    "unregister_detector",
]

EMBEDDING_METHODS = ("probe", "statistical", "hbac", "geometric")
HEATMAP_METHODS = ("gradcam_mask_overlap", "spray")

_BUILTIN: dict[str, str] = {
    "probe": "shortcut_detect.detectors.probe:ProbeDetector",
    "statistical": "shortcut_detect.detectors.statistical:StatisticalDetector",
    "hbac": "shortcut_detect.detectors.hbac:HBACDetector",
    "geometric": "shortcut_detect.detectors.geometric:GeometricDetector",
    "gradcam_mask_overlap": "shortcut_detect.detectors.mask_overlap:GradCAMMaskOverlapDetector",
    "spray": "shortcut_detect.detectors.spray:SpRAyDetector",
}

_REGISTRY: dict[str, str | type[BaseDetector]] = dict(_BUILTIN)


def available_detectors() -> list[str]:
    """Registered method names, built-ins first."""
    return list(_REGISTRY)


def register_detector(
    name: str, detector: str | type[BaseDetector], *, overwrite: bool = False
) -> None:
    """Register a detector class under ``name``.

    Parameters
    ----------
    name:
        Method name used in ``ShortcutDetector(methods=[name])``.
    detector:
        A :class:`~shortcut_detect.detectors.base.BaseDetector` subclass, or
        ``"package.module:ClassName"`` to import on first use.
    overwrite:
        Replace an existing registration (otherwise that is an error).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"detector name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a detector named {name!r} is already registered; pass overwrite=True")
    if isinstance(detector, str):
        if ":" not in detector:
            raise ValueError(f"give the class as 'package.module:ClassName', got {detector!r}")
    elif not (isinstance(detector, type) and issubclass(detector, BaseDetector)):
        raise TypeError(
            f"detector must be a BaseDetector subclass or an import path, got {detector!r}"
        )
    _REGISTRY[name] = detector


def unregister_detector(name: str) -> None:
    """Remove a registration; a built-in name goes back to its built-in class."""
    if name not in _REGISTRY:
        raise KeyError(f"no detector named {name!r} is registered")
    if name in _BUILTIN:
        _REGISTRY[name] = _BUILTIN[name]
    else:
        del _REGISTRY[name]


def get_detector_class(name: str) -> type[BaseDetector]:
    """The detector class registered under ``name`` (importing it if needed).

    Raises
    ------
    KeyError
        Unknown name (the message lists the registered ones).
    ImportError
        The module of a lazily registered class cannot be imported.
    """
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown shortcut detection method {name!r}; available: {', '.join(_REGISTRY)}"
        )
    entry = _REGISTRY[name]
    if not isinstance(entry, str):
        return entry
    module_name, _, class_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(
            f"method {name!r} needs {module_name}, which could not be imported: {error}"
        ) from error
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"method {name!r}: {module_name} has no class {class_name}") from None
    return cls
