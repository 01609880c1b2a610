"""Deep Feature Factorization (Collins et al. 2018) with pytorch-grad-cam's surface.

The activations of one layer, over every position of every image in the batch, are
factorised by non-negative matrix factorisation into ``n_components`` concepts: each concept
is a channel vector (an embedding the classifier head can score) and has a heatmap per
image showing where it is present. The NMF is scikit-learn's with pytorch-grad-cam's
settings (random initialisation, seed 0), so concepts and heatmaps are the same as
pytorch-grad-cam 1.5's. Needs scikit-learn (the ``analysis`` extra); the legend of
:func:`show_factorization_on_image` needs matplotlib.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import (
    CAMEngine,
    ReshapeTransform,
    prepare_inputs,
    upsample,
)
from shortcut_detect.cam.layers import LayerSpec
from shortcut_detect.common.validation import positive_int

__all__ = [
    "DeepFeatureFactorization",
    "deep_feature_factorization",
    "factorization_colors",
    "show_factorization_on_image",
]


def deep_feature_factorization(
    activations: np.ndarray, n_components: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative factorisation of ``(B, C, *spatial)`` activations into concepts.

    Each channel is shifted by its minimum over the batch (NMF needs non-negative data),
    the ``(C, B * positions)`` matrix is factorised as ``W @ H`` and the shift is added back
    to ``W``. NaNs count as 0.

    Returns
    -------
    concepts:
        ``(C, n_components)``: one channel vector per concept.
    explanations:
        ``(B, n_components, *spatial)``: each concept's unnormalised heatmap per image.
    """
    try:
        from sklearn.decomposition import NMF
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DeepFeatureFactorization needs scikit-learn: pip install 'shortcut-detect[analysis]'"
        ) from error
    n_components = positive_int("n_components", n_components)
    activations = np.asarray(activations)
    if activations.ndim < 3:
        raise ValueError(
            f"activations must be (B, C, *spatial), got shape {activations.shape}; "
            "token layers need a reshape_transform"
        )
    batch, channels, *spatial = activations.shape
    matrix = np.nan_to_num(np.moveaxis(activations, 1, 0).reshape(channels, -1), nan=0.0)
    offset = matrix.min(axis=1)
    factorizer = NMF(n_components=int(n_components), init="random", random_state=0)
    weights = factorizer.fit_transform(matrix - offset[:, None])
    concepts = weights + offset[:, None]
    explanations = factorizer.components_.reshape(n_components, batch, *spatial)
    return concepts, np.moveaxis(explanations, 1, 0)


class DeepFeatureFactorization:
    """Concepts of one layer and where they appear: NMF of its activations.

    Parameters
    ----------
    model:
        The model whose layer is factorised.
    target_layer:
        The layer (module or dotted path).
    reshape_transform:
        For token layers (ViT, Swin); see :mod:`shortcut_detect.cam.reshape`.
    computation_on_concepts:
        Optional callable on the ``(n_components, C)`` float32 concept tensor, e.g. the
        model's classifier head; its output is returned as a third value.
    device:
        As for :class:`~shortcut_detect.cam.base.BaseCAM`.

    Calling it with ``(input_tensor, n_components=16)`` returns ``(concepts,
    explanations[, concept_outputs])``: concepts ``(C, n_components)``; explanations
    ``(B, n_components, *input_size)`` float32, each heatmap min-max scaled to [0, 1] at the
    layer's resolution and resized (bilinear) to the input; concept outputs as numpy.
    One forward pass without gradients.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec,
        reshape_transform: ReshapeTransform | None = None,
        computation_on_concepts: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self.engine = CAMEngine(model, [target_layer], reshape_transform, device)
        self.device = self.engine.device
        self.computation_on_concepts = computation_on_concepts

    def __call__(
        self, input_tensor: torch.Tensor, n_components: int = 16
    ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        inputs = prepare_inputs(input_tensor, self.device)
        capture = self.engine.capture(inputs, [], need_gradients=False)
        activations = capture.activations[0].float().cpu().numpy()
        concepts, explanations = deep_feature_factorization(activations, n_components)
        heatmaps = torch.from_numpy(np.ascontiguousarray(explanations, dtype=np.float32))
        batch, components = heatmaps.shape[:2]
        flat = heatmaps.reshape(batch * components, *heatmaps.shape[2:])
        # pytorch-grad-cam's scale_cam_image: (x - min) / (max + 1e-7), then resize.
        rows = flat.reshape(len(flat), -1)
        low = rows.min(dim=1, keepdim=True).values
        rows = (rows - low) / ((rows - low).max(dim=1, keepdim=True).values + 1e-7)
        flat = rows.reshape(flat.shape)
        resized = upsample(flat, capture.input_size)
        scaled = resized.reshape(batch, components, *resized.shape[1:]).numpy()
        if self.computation_on_concepts is None:
            return concepts, scaled
        with torch.no_grad():
            concept_tensor = torch.from_numpy(np.float32(concepts).T.copy()).to(self.device)
            outputs = self.computation_on_concepts(concept_tensor)
        return concepts, scaled, outputs.detach().cpu().numpy()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        self.engine.close()

    def __enter__(self) -> DeepFeatureFactorization:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def factorization_colors(n_components: int) -> list[np.ndarray]:
    """pytorch-grad-cam's default concept colours: ``gist_rainbow`` at ``i / n`` (RGBA)."""
    try:
        from matplotlib import colormaps
    except ImportError as error:  # pragma: no cover - matplotlib is in the analysis extra
        raise ImportError(
            "Default concept colours need matplotlib (pip install 'shortcut-detect[analysis]'); "
            "or pass colors=[...] (one RGB triple in [0, 1] per component)."
        ) from error
    cmap = colormaps["gist_rainbow"]
    return [np.array(cmap(i)) for i in np.arange(0, 1, 1.0 / n_components)][:n_components]


def _legend_image(
    colors: Sequence[np.ndarray], labels: Sequence[str], height: int, width: int
) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 picture of a legend: one coloured line per label."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as error:  # pragma: no cover - matplotlib is in the analysis extra
        raise ImportError(
            "concept_labels needs matplotlib (pip install 'shortcut-detect[analysis]')"
        ) from error
    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    line_width = 5 * height / 256
    lines = [Line2D([0], [0], color=color, lw=line_width) for color in colors]
    font_size = int(14 * height / 256 / max(1, len(labels) / 6))
    axes.legend(lines, list(labels), mode="expand", fancybox=True, shadow=True, fontsize=font_size)
    canvas.draw()
    picture = np.asarray(canvas.buffer_rgba())[..., :3]
    # Nearest-neighbour resize in case the canvas rounded the size.
    rows = np.arange(height) * picture.shape[0] // height
    cols = np.arange(width) * picture.shape[1] // width
    return np.ascontiguousarray(picture[rows][:, cols])


def show_factorization_on_image(
    img: np.ndarray,
    explanations: np.ndarray,
    colors: Sequence[Any] | None = None,
    image_weight: float = 0.5,
    concept_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Colour each pixel by the concept with the strongest heatmap there: uint8 ``(H, W, 3)``.

    The winning concept's colour is dimmed by its heatmap value (the V channel of HSV, as
    pytorch-grad-cam does with OpenCV) and blended with the image:
    ``image_weight * img + (1 - image_weight) * colours``. With ``concept_labels`` a legend
    of the same size is placed to the right (width doubles). ``explanations`` is not
    modified (pytorch-grad-cam zeroes it in place).

    Parameters
    ----------
    img:
        Float RGB image in [0, 1], ``(H, W, 3)``.
    explanations:
        ``(n_components, H, W)`` heatmaps in [0, 1] (one image's output of
        :class:`DeepFeatureFactorization`).
    colors:
        One RGB(A) colour in [0, 1] per component; ``None`` uses :func:`factorization_colors`.
    image_weight:
        Weight of the image in [0, 1].
    concept_labels:
        One string per component for the legend (needs matplotlib).
    """
    img = np.asarray(img)
    explanations = np.asarray(explanations, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img must be an (H, W, 3) RGB image, got shape {img.shape}")
    if img.size and (np.max(img) > 1 or np.min(img) < 0):
        raise ValueError("img must be float in [0, 1]; divide a uint8 image by 255")
    if explanations.ndim != 3 or explanations.shape[1:] != img.shape[:2]:
        raise ValueError(
            f"explanations must be (n_components, H, W) with (H, W) = {img.shape[:2]}, got "
            f"{explanations.shape}; pass one image's heatmaps (e.g. explanations[0])"
        )
    if not 0 <= image_weight <= 1:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    components = explanations.shape[0]
    if colors is None:
        colors = factorization_colors(components)
    if len(colors) < components:
        raise ValueError(f"got {len(colors)} colors for {components} components")
    if concept_labels is not None and len(concept_labels) != components:
        raise ValueError(f"got {len(concept_labels)} concept_labels for {components} components")
    base = np.uint8(np.array([np.asarray(c, dtype=float)[:3] for c in colors]) * 255)
    winner = explanations.argmax(axis=0)
    strength = np.take_along_axis(explanations, winner[None], axis=0)[0]
    value = np.uint8(255 * strength).astype(np.float32)
    brightest = base.max(axis=1).astype(np.float32)
    # Same hue and saturation, brightness `value`: RGB scales with V.
    scale = np.divide(
        value, brightest[winner], out=np.zeros_like(value), where=brightest[winner] > 0
    )
    colored = np.round(base[winner] * scale[..., None]).clip(0, 255) / 255
    result = np.uint8((img * image_weight + colored * (1 - image_weight)) * 255)
    if concept_labels is not None:
        legend = _legend_image(colors[:components], concept_labels, *result.shape[:2])
        result = np.hstack((result, legend))
    return result
