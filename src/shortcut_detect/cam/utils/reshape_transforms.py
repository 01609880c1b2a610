"""Same role as ``pytorch_grad_cam.utils.reshape_transforms`` (grids are inferred here)."""

from shortcut_detect.cam.reshape import (
    fasterrcnn_reshape_transform,
    swin_reshape_transform,
    vit_reshape_transform,
)

swinT_reshape_transform = swin_reshape_transform

__all__ = [
    "fasterrcnn_reshape_transform",
    "swinT_reshape_transform",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
