"""LIME superpixel explanations (Ribeiro et al. 2016) for one image.

The image is cut into SLIC superpixels (scikit-image). Random subsets of superpixels are
hidden (replaced by a baseline colour), the model scores each perturbed image, and a
weighted ridge regression of the target class's probability on "which superpixels were
shown" gives each superpixel a weight. Samples are weighted by LIME's exponential kernel
on the cosine distance to the unperturbed image, as the ``lime`` package does:
``sqrt(exp(-d**2 / kernel_width**2))``.

Unlike Grad-CAM, LIME needs no access to the model's layers and answers a causal question
(what happens when this region is removed); a model that relies on a corner marker gives
the marker's superpixel the largest weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import prepare_inputs
from shortcut_detect.common.device import resolve_device
from shortcut_detect.common.modes import eval_mode
from shortcut_detect.common.serialization import to_jsonable
from shortcut_detect.common.validation import positive_int
from shortcut_detect.gradcam import DEFAULT_HEAD_MAPPINGS, class_probabilities, select_head

__all__ = ["LimeExplanation", "explain_lime", "slic_superpixels"]

BASELINES = ("mean", "segment_mean")


@dataclass
class LimeExplanation:
    """A LIME explanation of one image.

    Attributes
    ----------
    segments:
        ``(H, W)`` int32 superpixel id per pixel (ids ``0..S-1``).
    weights:
        ``(S,)`` weight of each superpixel: how much showing it raises the target class's
        probability (ridge coefficient).
    heatmap:
        ``(H, W)`` float32 in [0, 1]: positive weights divided by the largest, painted on
        their superpixels (superpixels that speak against the target are 0).
    top_superpixels:
        Ids of the superpixels with positive weight, strongest first (at most ``num_top``).
    target:
        Class explained.
    target_probability:
        The model's probability of ``target`` on the unperturbed image.
    predicted_class:
        The model's top class on the unperturbed image.
    intercept, score:
        The ridge model's intercept and its weighted R² on the samples (how well the
        linear surrogate fits).
    local_prediction:
        The surrogate's prediction for the unperturbed image.
    num_samples, seed:
        Perturbed images scored and the seed that drew them.
    """

    segments: np.ndarray
    weights: np.ndarray
    heatmap: np.ndarray
    top_superpixels: np.ndarray
    target: int
    target_probability: float
    predicted_class: int
    intercept: float
    score: float
    local_prediction: float
    num_samples: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_superpixels(self) -> int:
        """Number of superpixels ``S``."""
        return len(self.weights)

    def signed_map(self) -> np.ndarray:
        """``(H, W)`` float32: each pixel's superpixel weight, negative values kept."""
        return self.weights[self.segments].astype(np.float32)

    def top_mask(self, k: int | None = None) -> np.ndarray:
        """``(H, W)`` bool: the pixels of the ``k`` strongest positive superpixels (all of
        :attr:`top_superpixels` when ``k`` is ``None``)."""
        chosen = self.top_superpixels if k is None else self.top_superpixels[: max(0, int(k))]
        return np.isin(self.segments, chosen)

    def to_dict(self, include_maps: bool = False) -> dict[str, Any]:
        """Plain-JSON form; the per-pixel arrays only with ``include_maps``."""
        data = {
            "method": "lime",
            "target": self.target,
            "target_probability": self.target_probability,
            "predicted_class": self.predicted_class,
            "n_superpixels": self.n_superpixels,
            "weights": self.weights,
            "top_superpixels": self.top_superpixels,
            "intercept": self.intercept,
            "score": self.score,
            "local_prediction": self.local_prediction,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "params": self.params,
        }
        if include_maps:
            data["segments"] = self.segments
            data["heatmap"] = self.heatmap
        return to_jsonable(data, max_array_values=max(4096, self.segments.size))


def _display_rgb(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` model input as RGB ``(H, W, 3)`` in [0, 1] for segmentation: each
    channel min-max scaled together (normalised inputs are fine), one channel repeated."""
    array = image.detach().float().cpu().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    elif array.shape[0] != 3:
        array = array[:3] if array.shape[0] > 3 else np.concatenate([array, array[:1]], axis=0)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return scaled.transpose(1, 2, 0)


def slic_superpixels(
    image: torch.Tensor | np.ndarray,
    n_segments: int = 50,
    compactness: float = 20.0,
    sigma: float = 1.0,
) -> np.ndarray:
    """SLIC superpixels of one ``(C, H, W)`` image: ``(H, W)`` int32 ids ``0..S-1``.

    Needs scikit-image (``pip install scikit-image``).
    """
    try:
        from skimage.segmentation import slic
    except ImportError as error:
        raise ImportError(
            "LIME superpixels need scikit-image: pip install 'shortcut-detect[analysis]' "
            "(or pip install scikit-image), or pass your own segments=(H, W) array"
        ) from error
    tensor = torch.as_tensor(image)
    if tensor.ndim != 3:
        raise ValueError(
            f"slic_superpixels takes one (C, H, W) image, got shape {tuple(tensor.shape)}"
        )
    segments = slic(
        _display_rgb(tensor),
        n_segments=int(n_segments),
        compactness=float(compactness),
        sigma=float(sigma),
        start_label=0,
        channel_axis=-1,
    )
    return _relabel(segments)


def _relabel(segments: np.ndarray) -> np.ndarray:
    _, dense = np.unique(segments, return_inverse=True)
    return dense.reshape(segments.shape).astype(np.int32)


def _check_segments(segments: Any, size: tuple[int, int]) -> np.ndarray:
    array = np.asarray(segments)
    if array.shape != size:
        raise ValueError(f"segments must have the image's shape {size}, got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"segments must be integer superpixel ids, got dtype {array.dtype}")
    return _relabel(array)


def _baseline_image(image: torch.Tensor, segments: torch.Tensor, baseline: Any) -> torch.Tensor:
    """What hidden superpixels are replaced with, ``(C, H, W)``."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
        if baseline == "segment_mean":  # the lime package's default (hide_color=None)
            count = int(segments.max()) + 1
            flat = segments.reshape(-1)
            sums = torch.zeros(image.shape[0], count, dtype=image.dtype, device=image.device)
            sums.index_add_(1, flat, image.reshape(image.shape[0], -1))
            sizes = torch.bincount(flat, minlength=count).clamp_min(1).to(image.dtype)
            return (sums / sizes)[:, flat].reshape(image.shape)
        raise ValueError(
            f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)}, a number, or "
            "a (C, H, W) image"
        )
    tensor = torch.as_tensor(baseline, dtype=image.dtype, device=image.device)
    if tensor.ndim == 0:
        return torch.full_like(image, float(tensor))
    if tensor.shape != image.shape:
        raise ValueError(
            f"a baseline image must have the input's shape {tuple(image.shape)}, got "
            f"{tuple(tensor.shape)}"
        )
    return tensor


def _sample_masks(count: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """LIME's sampling: row 0 shows everything; each other row hides a uniformly drawn
    number (1..S) of uniformly chosen superpixels."""
    masks = np.ones((count, n_features), dtype=bool)
    hidden_counts = rng.integers(1, n_features + 1, size=count - 1)
    for row, hidden in enumerate(hidden_counts, start=1):
        masks[row, rng.choice(n_features, size=int(hidden), replace=False)] = False
    return masks


def _kernel_weights(masks: np.ndarray, kernel_width: float) -> np.ndarray:
    """LIME's kernel on the cosine distance between each mask and the all-ones mask."""
    shown = masks.sum(axis=1).astype(np.float64)
    distance = 1.0 - np.sqrt(shown / masks.shape[1])  # cosine; an all-hidden mask is 1
    return np.sqrt(np.exp(-(distance**2) / kernel_width**2))


def _checked_target(target: int | None, probabilities: torch.Tensor) -> int:
    """The class to explain: ``target``, or the predicted class of the unperturbed image."""
    classes = int(probabilities.numel())
    if target is None:
        return int(probabilities.argmax())
    if not 0 <= int(target) < classes:
        raise ValueError(
            f"target {int(target)} is out of range: the model has {classes} classes "
            f"(valid 0..{classes - 1})"
        )
    return int(target)


def explain_lime(
    model: nn.Module,
    image: torch.Tensor | np.ndarray,
    target: int | None = None,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    n_segments: int = 50,
    compactness: float = 20.0,
    segments: np.ndarray | None = None,
    baseline: str | float | torch.Tensor | np.ndarray = "mean",
    kernel_width: float = 0.25,
    ridge_alpha: float = 1.0,
    num_top: int = 5,
    batch_size: int = 64,
    head: str | int = "logits",
    head_mappings: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LimeExplanation:
    """Explain one image with LIME on SLIC superpixels.

    Parameters
    ----------
    model:
        The classifier; run in eval mode under ``torch.inference_mode`` (every module's
        mode is restored after).
    image:
        One ``(C, H, W)`` (or ``(1, C, H, W)``) input, preprocessed as the model expects.
    target:
        Class to explain; ``None`` explains the predicted class.
    num_samples:
        Perturbed images scored (the first is the unperturbed image). More gives steadier
        weights; LIME's default is 1000.
    seed:
        Seed of the perturbations: the same seed gives the same explanation.
    n_segments, compactness:
        SLIC parameters (about ``n_segments`` superpixels; higher compactness gives more
        square ones). Ignored when ``segments`` is given.
    segments:
        Your own ``(H, W)`` integer superpixel map instead of SLIC (then scikit-image is
        not needed).
    baseline:
        What hidden superpixels become: ``"mean"`` (the image's mean colour, default),
        ``"segment_mean"`` (each superpixel's own mean colour, the ``lime`` package's
        default; it cannot hide a uniformly coloured marker), a number, or a ``(C, H, W)``
        image (e.g. a blurred copy).
    kernel_width:
        Width of the exponential kernel on the cosine distance (LIME's 0.25).
    ridge_alpha:
        Ridge penalty (LIME's 1.0).
    num_top:
        At most this many superpixels in :attr:`LimeExplanation.top_superpixels`.
    batch_size:
        Perturbed images per forward pass.
    head, head_mappings:
        For multi-head models, which output to explain (as in
        :class:`~shortcut_detect.GradCAMHeatmapGenerator`).
    device:
        ``None`` uses the model's device.
    progress:
        Called as ``progress(done, total)`` after each batch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    num_samples = positive_int("num_samples", num_samples)
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    batch_size = positive_int("batch_size", batch_size)
    num_top = positive_int("num_top", num_top)
    n_segments = positive_int("n_segments", n_segments)
    if not kernel_width > 0 or not ridge_alpha >= 0:
        raise ValueError(
            f"kernel_width must be positive and ridge_alpha non-negative, got {kernel_width} "
            f"and {ridge_alpha}"
        )
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, (int, np.integer))
    ):
        raise ValueError(f"target must be a class index or None, got {target!r}")
    device = resolve_device(device, model)
    batch = prepare_inputs(image, device, spatial_dims=2)
    if batch.shape[0] != 1:
        raise ValueError(f"explain_lime takes one image, got a batch of {batch.shape[0]}")
    pixels = batch[0]
    size = (int(pixels.shape[1]), int(pixels.shape[2]))
    if segments is None:
        segment_map = slic_superpixels(pixels, n_segments=n_segments, compactness=compactness)
    else:
        segment_map = _check_segments(segments, size)
    n_features = int(segment_map.max()) + 1
    if n_features < 2:
        raise ValueError(
            "the image has a single superpixel, so LIME cannot compare regions; raise "
            "n_segments or pass finer segments"
        )
    segment_tensor = torch.from_numpy(segment_map.astype(np.int64)).to(device)
    hidden = _baseline_image(pixels, segment_tensor, baseline)
    mappings = dict(DEFAULT_HEAD_MAPPINGS)
    if head_mappings:
        mappings.update(head_mappings)

    rng = np.random.default_rng(seed)
    masks = _sample_masks(num_samples, n_features, rng)
    probabilities = []
    with eval_mode(model), torch.inference_mode():
        for start in range(0, num_samples, batch_size):
            chunk = torch.from_numpy(masks[start : start + batch_size]).to(device)
            shown = chunk[:, segment_tensor].unsqueeze(1)  # (B, 1, H, W)
            perturbed = torch.where(shown, pixels, hidden)
            outputs = model(perturbed)
            probabilities.append(class_probabilities(select_head(outputs, head, mappings)).cpu())
            if start == 0:  # fail before the remaining passes
                target = _checked_target(target, probabilities[0][0])
            if progress is not None:
                progress(min(start + batch_size, num_samples), num_samples)
    scores = torch.cat(probabilities).double().numpy()
    original = scores[0]
    predicted = int(np.argmax(original))
    try:
        from sklearn.linear_model import Ridge
    except ImportError as error:  # pragma: no cover - scikit-learn is in the analysis extra
        raise ImportError(
            "LIME needs scikit-learn: pip install 'shortcut-detect[analysis]'"
        ) from error

    features = masks.astype(np.float64)
    response = scores[:, target]
    sample_weight = _kernel_weights(masks, kernel_width)
    ridge = Ridge(alpha=ridge_alpha, fit_intercept=True)
    ridge.fit(features, response, sample_weight=sample_weight)
    weights = ridge.coef_.astype(np.float64)
    positive = np.flatnonzero(weights > 0)
    top = positive[np.argsort(-weights[positive], kind="stable")][:num_top]
    peak = float(weights.max())
    heat = np.clip(weights, 0.0, None) / peak if peak > 0 else np.zeros_like(weights)
    return LimeExplanation(
        segments=segment_map,
        weights=weights,
        heatmap=heat[segment_map].astype(np.float32),
        top_superpixels=top.astype(np.int64),
        target=target,
        target_probability=float(original[target]),
        predicted_class=predicted,
        intercept=float(ridge.intercept_),
        score=float(ridge.score(features, response, sample_weight=sample_weight)),
        local_prediction=float(ridge.intercept_ + weights.sum()),
        num_samples=num_samples,
        seed=int(seed),
        params={
            "n_segments": n_segments if segments is None else None,
            "compactness": compactness if segments is None else None,
            "segmentation": "slic" if segments is None else "given",
            "baseline": baseline if isinstance(baseline, (str, int, float)) else "image",
            "kernel_width": kernel_width,
            "ridge_alpha": ridge_alpha,
            "batch_size": batch_size,
        },
    )
