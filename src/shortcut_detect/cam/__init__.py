"""The CAM family on one engine, with a pytorch-grad-cam compatible surface.

Tutorial code written for pytorch-grad-cam runs by changing its imports to this package::

    from shortcut_detect.cam import GradCAM, ClassifierOutputTarget, show_cam_on_image

(``from shortcut_detect.cam.utils.image import ...`` and ``...utils.model_targets`` work
too, mirroring pytorch-grad-cam's module layout.)
"""

from __future__ import annotations

from shortcut_detect.cam.arcc import ARCC, Coherency, Complexity, pearson_per_sample
from shortcut_detect.cam.base import BaseCAM, GradCAM
from shortcut_detect.cam.engine import CAMEngine, Capture, TargetScores
from shortcut_detect.cam.extra_methods import (
    CAM,
    FEM,
    KPCA_CAM,
    FinerCAM,
    RandomCAM,
    RefineCAM,
    SegEigenCAM,
    ShapleyCAM,
    SmoothGradCAMpp,
    fuse_cams,
)
from shortcut_detect.cam.factorization import (
    DeepFeatureFactorization,
    deep_feature_factorization,
    show_factorization_on_image,
)
from shortcut_detect.cam.fullgrad import FullGrad
from shortcut_detect.cam.guided import (
    GuidedBackpropReLUModel,
    guided_backprop,
    guided_backprop_for_scores,
)
from shortcut_detect.cam.image import (
    apply_colormap,
    deprocess_image,
    preprocess_image,
    show_cam_on_image,
)
from shortcut_detect.cam.layers import LayerInfo, default_layer, resolve_layer, spatial_layers
from shortcut_detect.cam.methods import (
    EigenCAM,
    EigenGradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from shortcut_detect.cam.metric_classes import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
)
from shortcut_detect.cam.metrics import (
    ConfidenceChange,
    ROADResult,
    compare_methods,
    confidence_change,
    road,
)
from shortcut_detect.cam.perturbation import AblationCAM, ScoreCAM
from shortcut_detect.cam.reshape import (
    fasterrcnn_reshape_transform,
    swin_reshape_transform,
    vit_reshape_transform,
)
from shortcut_detect.cam.score_family import ISCAM, SSCAM
from shortcut_detect.cam.targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    FinerWeightedTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SoftmaxOutputTarget,
)
from shortcut_detect.cam.torchcam_metrics import ClassificationMetric, DeletionInsertionMetric

METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcamelementwise": GradCAMElementWise,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
}
"""CAM classes by name: lowercase, no punctuation ("gradcam++" keeps its plus signs)."""

MORE_METHODS: dict[str, type[BaseCAM]] = {
    "fullgrad": FullGrad,
    "shapleycam": ShapleyCAM,
    "fem": FEM,
    "randomcam": RandomCAM,
    "kpcacam": KPCA_CAM,
    "segeigencam": SegEigenCAM,
    "cam": CAM,
    "smoothgradcam++": SmoothGradCAMpp,
    "sscam": SSCAM,
    "iscam": ISCAM,
}
"""The issue-#15 methods, found by :func:`get_method` but not listed in :data:`METHODS`
(which the facade and the web app offer): they ignore the target layer (FullGrad), need
extra arguments (CAM's ``fc_layer``) or are baselines (RandomCAM)."""


EXPLAIN_METHODS: dict[str, type[BaseCAM]] = {
    **METHODS,
    "shapleycam": ShapleyCAM,
    "fem": FEM,
    "segeigencam": SegEigenCAM,
    "sscam": SSCAM,
    "iscam": ISCAM,
}
"""The methods offered by ``GradCAMHeatmapGenerator``, ``explain`` / ``audit --method`` and the
web app: :data:`METHODS` plus the issue-#15 methods that draw a map from one layer's
activations for any target (the others need their own call: FullGrad uses every layer,
CAM a classifier target and ``fc_layer``, SmoothGradCAMpp its noisy batch; KPCA_CAM needs
scikit-learn; RandomCAM is a baseline)."""


def _method_key(name: str) -> str:
    key = "".join(ch for ch in str(name).lower() if ch.isalnum() or ch == "+")
    for long_form in ("plusplus", "pp"):
        if key.endswith(long_form) and key[: -len(long_form)] in ("gradcam", "smoothgradcam"):
            key = key[: -len(long_form)] + "++"
    return key


def get_method(method: str | type[BaseCAM]) -> type[BaseCAM]:
    """A CAM class from its name (case and punctuation ignored) or the class itself.

    ``"GradCAMPlusPlus"``, ``"gradcam_pp"`` and ``"Grad-CAM++"`` all give
    :class:`GradCAMPlusPlus`.
    """
    if isinstance(method, type) and issubclass(method, BaseCAM):
        return method
    key = _method_key(str(method))
    known = {**METHODS, **MORE_METHODS}
    if key not in known:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of: {', '.join(known)}")
    return known[key]


def explain_method(method: str | type[BaseCAM]) -> type[BaseCAM]:
    """The CAM class for the explain facade, audit and app (see :data:`EXPLAIN_METHODS`).

    Names must be in :data:`EXPLAIN_METHODS`; a class is accepted unless it is one of the
    built-in methods that need their own call (e.g. :class:`FullGrad`).
    """
    cls = get_method(method)
    offered = set(EXPLAIN_METHODS.values())
    builtin = set(METHODS.values()) | set(MORE_METHODS.values())
    if cls not in offered and cls in builtin:
        raise ValueError(
            f"{cls.__name__} cannot be used here: it needs its own call (use "
            f"shortcut_detect.cam.{cls.__name__} directly). Choose one of: "
            f"{', '.join(EXPLAIN_METHODS)}"
        )
    return cls


__all__ = [
    "ARCC",
    "CAM",
    "EXPLAIN_METHODS",
    "FEM",
    "ISCAM",
    "KPCA_CAM",
    "METHODS",
    "MORE_METHODS",
    "SSCAM",
    "AblationCAM",
    "BaseCAM",
    "BinaryClassifierOutputTarget",
    "CAMEngine",
    "CamMultImageConfidenceChange",
    "Capture",
    "ClassificationMetric",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "Coherency",
    "Complexity",
    "ConfidenceChange",
    "DeepFeatureFactorization",
    "DeletionInsertionMetric",
    "DropInConfidence",
    "EigenCAM",
    "EigenGradCAM",
    "FasterRCNNBoxScoreTarget",
    "FinerCAM",
    "FinerWeightedTarget",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "IncreaseInConfidence",
    "LayerCAM",
    "LayerInfo",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "ROADResult",
    "RandomCAM",
    "RawScoresOutputTarget",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "SemanticSegmentationTarget",
    "ShapleyCAM",
    "SmoothGradCAMpp",
    "SoftmaxOutputTarget",
    "TargetScores",
    "XGradCAM",
    "apply_colormap",
    "compare_methods",
    "confidence_change",
    "deep_feature_factorization",
    "default_layer",
    "deprocess_image",
    "explain_method",
    "fasterrcnn_reshape_transform",
    "fuse_cams",
    "get_method",
    "guided_backprop",
    "guided_backprop_for_scores",
    "pearson_per_sample",
    "preprocess_image",
    "resolve_layer",
    "road",
    "show_cam_on_image",
    "show_factorization_on_image",
    "spatial_layers",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
