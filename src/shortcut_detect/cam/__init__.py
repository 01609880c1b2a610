"""The CAM family on one engine, with a pytorch-grad-cam compatible surface.

Tutorial code written for pytorch-grad-cam runs by changing its imports to this package::

    from shortcut_detect.cam import GradCAM, ClassifierOutputTarget, show_cam_on_image
"""

from __future__ import annotations

from shortcut_detect.cam.base import BaseCAM, GradCAM
from shortcut_detect.cam.engine import CAMEngine, Capture, TargetScores
from shortcut_detect.cam.layers import LayerInfo, default_layer, resolve_layer, spatial_layers
from shortcut_detect.cam.targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
)

METHODS: dict[str, type[BaseCAM]] = {"gradcam": GradCAM}


def get_method(method: str | type[BaseCAM]) -> type[BaseCAM]:
    """A CAM class from its name (case and punctuation ignored) or the class itself."""
    if isinstance(method, type) and issubclass(method, BaseCAM):
        return method
    key = str(method).lower().replace("-", "").replace("_", "").replace(" ", "")
    key = key.replace("plusplus", "++")
    if key not in METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[key]


__all__ = [
    "METHODS",
    "BaseCAM",
    "BinaryClassifierOutputTarget",
    "CAMEngine",
    "Capture",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "GradCAM",
    "LayerInfo",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "TargetScores",
    "default_layer",
    "get_method",
    "resolve_layer",
    "spatial_layers",
]
