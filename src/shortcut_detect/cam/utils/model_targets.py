"""Same names as ``pytorch_grad_cam.utils.model_targets``."""

from shortcut_detect.cam.targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
)

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
]
