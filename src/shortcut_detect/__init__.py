"""shortcut_detect: see where an image model looks, and find the shortcuts it learned."""

from __future__ import annotations

from shortcut_detect.gradcam import (
    AttentionOverlapResult,
    Explanation,
    GradCAMHeatmapGenerator,
    compute_gradcam,
    get_activation_maps,
    get_conv_layers,
    get_top_predictions,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionOverlapResult",
    "Explanation",
    "GradCAMHeatmapGenerator",
    "__version__",
    "compute_gradcam",
    "get_activation_maps",
    "get_conv_layers",
    "get_top_predictions",
]
