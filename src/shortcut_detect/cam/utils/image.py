"""Same names as ``pytorch_grad_cam.utils.image``."""

from shortcut_detect.cam.factorization import show_factorization_on_image
from shortcut_detect.cam.image import deprocess_image, preprocess_image, show_cam_on_image

__all__ = [
    "deprocess_image",
    "preprocess_image",
    "show_cam_on_image",
    "show_factorization_on_image",
]
