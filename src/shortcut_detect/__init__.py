"""shortcut_detect: see where an image model looks, and find the shortcuts it learned.

The Grad-CAM engine and the seed-compatible API are imported eagerly (they need only torch
and numpy); the analysis, detectors and figures are imported on first use, so that
``import shortcut_detect`` stays light and loads neither scikit-learn, matplotlib nor Gradio.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from typing import Any

if "torch" not in sys.modules:
    # OpenMP threads that spin while idle steal the cores from the audit's decoding workers
    # (and from anything else running): on 2 cores a small model's heatmaps became several
    # times slower. Sleeping idle threads cost ~1% when the machine is quiet. Read once, when
    # torch loads; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from shortcut_detect.gradcam import (
    GradCAMHeatmapGenerator,
    class_probabilities,
    compute_gradcam,
    get_activation_maps,
    get_conv_layers,
    get_top_predictions,
    top_predictions,
)
from shortcut_detect.results import AttentionOverlapResult, Explanation, HeatmapGenerator

try:  # the version is written once, in pyproject.toml
    __version__ = importlib.metadata.version("shortcut-detect")
except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
    __version__ = "0+unknown"

_LAZY = {
    # CAM family (the full pytorch-grad-cam style surface lives in shortcut_detect.cam)
    "GuidedBackpropReLUModel": "shortcut_detect.cam",
    "vit_reshape_transform": "shortcut_detect.cam",
    "swin_reshape_transform": "shortcut_detect.cam",
    "show_cam_on_image": "shortcut_detect.cam",
    "get_method": "shortcut_detect.cam",
    "confidence_change": "shortcut_detect.cam",
    "road": "shortcut_detect.cam",
    "compare_methods": "shortcut_detect.cam",
    # visual analysis
    "compare_groups": "shortcut_detect.analysis.groups",
    "attention_in_region": "shortcut_detect.analysis.regions",
    "RegionAttention": "shortcut_detect.analysis.regions",
    "head_overlap_over_dataset": "shortcut_detect.analysis.heads",
    "peak_locations": "shortcut_detect.analysis.maps",
    "entropy": "shortcut_detect.analysis.maps",
    "embedding_map": "shortcut_detect.analysis.embedding_map",
    "describe_embedding_map": "shortcut_detect.analysis.embedding_map",
    "activation_grid": "shortcut_detect.analysis.activations",
    "explain_lime": "shortcut_detect.lime",
    # detectors
    "GradCAMMaskOverlapDetector": "shortcut_detect.detectors.mask_overlap",
    "SpRAyDetector": "shortcut_detect.detectors.spray",
    "ShortcutDetector": "shortcut_detect.detectors.shortcut_detector",
    "ProbeDetector": "shortcut_detect.detectors.probe",
    "StatisticalDetector": "shortcut_detect.detectors.statistical",
    "HBACDetector": "shortcut_detect.detectors.hbac",
    "GeometricDetector": "shortcut_detect.detectors.geometric",
    "register_detector": "shortcut_detect.detectors.registry",
    "available_detectors": "shortcut_detect.detectors.registry",
    "extract_embeddings": "shortcut_detect.embeddings",
    "EmbeddingExtractor": "shortcut_detect.embeddings",
    # interventions: proving reliance, discovery without metadata
    "intervene": "shortcut_detect.interventions",
    "find_shortcuts": "shortcut_detect.interventions",
    "discover_candidates": "shortcut_detect.interventions",
    "confirm_candidates": "shortcut_detect.interventions",
    # figures and overlays
    "overlay_heatmap": "shortcut_detect.viz",
    "plot_explanation": "shortcut_detect.viz",
    "plot_group_comparison": "shortcut_detect.viz",
    "plot_spray_clusters": "shortcut_detect.viz",
    "plot_top_attention_grid": "shortcut_detect.viz",
    "plot_embedding_map": "shortcut_detect.viz_embeddings",
    "plot_activation_grid": "shortcut_detect.viz_embeddings",
    "plot_lime": "shortcut_detect.viz_embeddings",
    # data, models
    "make_shortcut_dataset": "shortcut_detect.data.synthetic",
    "train_shortcut_model": "shortcut_detect.data.synthetic",
    "load_model": "shortcut_detect.models",
}

__all__ = [
    "AttentionOverlapResult",
    "Explanation",
    "GradCAMHeatmapGenerator",
    "HeatmapGenerator",
    "__version__",
    "class_probabilities",
    "compute_gradcam",
    "get_activation_maps",
    "get_conv_layers",
    "get_top_predictions",
    "top_predictions",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
