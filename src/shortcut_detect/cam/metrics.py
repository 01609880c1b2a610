"""Faithfulness metrics for CAM maps: does the model's score follow what the map highlights?

* :func:`confidence_change`: Average Drop and Increase in Confidence (Chattopadhay et al.,
  Grad-CAM++, 2018). The image is multiplied by its map; a faithful map keeps most of the
  score (low drop) and often even raises it.
* :func:`road`: ROAD, RemOve And Debias (Rong et al. 2022). A fraction of pixels is removed
  (most relevant first, MoRF, or least relevant first, LeRF) and filled in by noisy linear
  imputation, which leaks no information about the removed shape. A faithful map makes
  the score fall fast under MoRF and slowly under LeRF.
* :func:`compare_methods`: both metrics for several CAM methods on one model and data set.

Scores are the softmax probability of the target class by default (``score="logit"`` for
raw logits). Targets are ``None`` (each image's predicted class), one class for all,
one class per image, or pytorch-grad-cam target callables (then scored on raw outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import prepare_inputs
from shortcut_detect.cam.targets import ClassifierOutputTarget
from shortcut_detect.common.device import resolve_device
from shortcut_detect.common.modes import eval_mode

__all__ = [
    "ConfidenceChange",
    "ROADResult",
    "compare_methods",
    "confidence_change",
    "noisy_linear_impute",
    "road",
]

TargetsSpec = int | Sequence[int] | Sequence[Callable[[torch.Tensor], torch.Tensor]] | None

# Weights of the 8 neighbours in the imputation (ROAD paper): edges 1/6, corners 1/12.
_NEIGHBOURS = (
    ((0, 1), 1 / 6),
    ((0, -1), 1 / 6),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
    ((1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((-1, 1), 1 / 12),
    ((-1, -1), 1 / 12),
)


class _Scorer:
    """Target scores of model outputs, one per image."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        targets: TargetsSpec,
        score: str,
        batch_size: int,
    ) -> None:
        if score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit', got {score!r}")
        self.model = model
        self.device = device
        self.targets = targets
        self.score = score
        self.batch_size = batch_size
        self.classes: torch.Tensor | None = None
        self.callables: list[Callable[[torch.Tensor], torch.Tensor]] | None = None

    def _outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model), torch.inference_mode():
            chunks = []
            for start in range(0, inputs.shape[0], self.batch_size):
                out = self.model(inputs[start : start + self.batch_size].to(self.device))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"The model returns {type(out).__name__}; the metrics need a model "
                        "that returns a tensor of class scores (wrap multi-head models)."
                    )
                chunks.append(out.float().cpu())
            return torch.cat(chunks)

    def resolve(self, outputs: torch.Tensor) -> None:
        count = outputs.shape[0]
        targets = self.targets
        if targets is not None and not isinstance(targets, (int, np.integer)):
            items = list(targets)  # type: ignore[arg-type]
            if items and callable(items[0]):
                if len(items) == 1:
                    items = items * count
                if len(items) != count:
                    raise ValueError(f"{len(items)} targets for {count} images")
                self.callables = items
                return
        logits = outputs.reshape(count, -1)
        if targets is None:
            self.classes = logits.argmax(dim=1)
            return
        classes = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)
        if classes.numel() == 1:
            classes = classes.expand(count).clone()
        if classes.numel() != count:
            raise ValueError(f"{classes.numel()} target classes for {count} images")
        if bool(((classes < 0) | (classes >= logits.shape[1])).any()):
            raise ValueError(f"target classes must be in 0..{logits.shape[1] - 1}")
        self.classes = classes

    def __call__(self, inputs: torch.Tensor, rows: torch.Tensor | None = None) -> np.ndarray:
        """Scores of ``inputs``; ``rows[i]`` is the image whose target applies to input ``i``."""
        outputs = self._outputs(inputs)
        if rows is None:
            rows = torch.arange(outputs.shape[0])
        if self.callables is not None:
            values = [self.callables[int(r)](o).sum() for r, o in zip(rows, outputs)]
            return torch.stack(values).numpy().astype(np.float64)
        assert self.classes is not None
        logits = outputs.reshape(outputs.shape[0], -1)
        if self.score == "probability":
            logits = torch.softmax(logits.double(), dim=1)
        return logits.gather(1, self.classes[rows][:, None])[:, 0].double().numpy()


def _prepare(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    cams: np.ndarray | torch.Tensor,
    device: str | torch.device | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    device = resolve_device(device, model)
    batch = prepare_inputs(inputs, torch.device("cpu"))
    maps = torch.as_tensor(np.asarray(cams, dtype=np.float32))
    if maps.ndim == batch.ndim - 2:
        maps = maps.unsqueeze(0)
    if tuple(maps.shape) != (batch.shape[0], *batch.shape[2:]):
        raise ValueError(
            f"cams must be (B, *spatial) = {(batch.shape[0], *batch.shape[2:])} to match the "
            f"inputs, got {tuple(maps.shape)}"
        )
    if not torch.isfinite(maps).all():
        raise ValueError("cams contain NaN or Inf values")
    return batch, maps, device


@dataclass
class ConfidenceChange:
    """Average Drop and Increase in Confidence of image-times-map inputs.

    Attributes
    ----------
    average_drop:
        Mean over images of ``max(0, Y - O) / Y``, in percent (lower is better).
    increase_in_confidence:
        Percentage of images with ``O > Y`` (higher is better).
    original, explained:
        Per image, the target score ``Y`` of the image and ``O`` of the image times its map.
    """

    average_drop: float
    increase_in_confidence: float
    original: np.ndarray = field(repr=False)
    explained: np.ndarray = field(repr=False)


def confidence_change(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    cams: np.ndarray | torch.Tensor,
    targets: TargetsSpec = None,
    *,
    score: str = "probability",
    baseline: float | str = 0.0,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> ConfidenceChange:
    """Average Drop % and Increase in Confidence % (Grad-CAM++ paper, section 4.1).

    Parameters
    ----------
    model:
        Classifier returning ``(B, K)`` scores; run in eval mode, mode restored.
    inputs:
        ``(B, C, H, W)`` images as the model takes them (normalised).
    cams:
        ``(B, H, W)`` maps in [0, 1] at input resolution.
    targets:
        ``None`` (predicted class), a class, one class per image, or target callables.
    score:
        ``"probability"`` (softmax, as in the paper) or ``"logit"``.
    baseline:
        What a map value of 0 turns a pixel into: ``0.0`` (the paper's image times map;
        the dataset mean for normalised inputs) or ``"mean"`` (each image's channel means,
        for unnormalised images, where 0 is black).
    """
    batch, maps, device = _prepare(model, inputs, cams, device)
    if baseline == "mean":
        reference = batch.mean(dim=tuple(range(2, batch.ndim)), keepdim=True)
    elif isinstance(baseline, (int, float)):
        reference = torch.full_like(batch[:, :1], float(baseline))
    else:
        raise ValueError(f"baseline must be a number or 'mean', got {baseline!r}")
    scorer = _Scorer(model, device, targets, score, batch_size)
    scorer.resolve(scorer._outputs(batch))
    original = scorer(batch)
    explained = scorer(reference + maps.unsqueeze(1).to(batch.dtype) * (batch - reference))
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(original > 0, np.maximum(original - explained, 0) / original, 0.0)
    return ConfidenceChange(
        average_drop=float(100 * drop.mean()),
        increase_in_confidence=float(100 * (explained > original).mean()),
        original=original,
        explained=explained,
    )


def noisy_linear_impute(
    image: torch.Tensor,
    remove: np.ndarray | torch.Tensor,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill removed pixels with the ROAD paper's noisy linear imputation.

    Each removed pixel becomes the weighted mean of its 8 neighbours (edges 1/6, corners
    1/12), solved jointly as one sparse linear system, plus Gaussian noise of std ``noise``.

    Parameters
    ----------
    image:
        ``(C, H, W)`` tensor.
    remove:
        ``(H, W)`` boolean mask of the pixels to replace; at least one pixel must be kept.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    mask = np.asarray(remove, dtype=bool)
    channels, height, width = image.shape
    if mask.shape != (height, width):
        raise ValueError(f"remove mask {mask.shape} does not match the image {(height, width)}")
    removed = np.flatnonzero(mask.ravel())
    if removed.size == 0:
        return image.clone()
    if removed.size == mask.size:
        raise ValueError("noisy_linear_impute needs at least one kept pixel")
    values = image.detach().double().cpu().reshape(channels, -1).numpy()
    count = removed.size
    variable = np.full(mask.size, -1)
    variable[removed] = np.arange(count)
    ys, xs = np.divmod(removed, width)
    diagonal = np.zeros(count)
    rhs = np.zeros((count, channels))
    rows, cols, data = [], [], []
    for (dy, dx), weight in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        source = np.flatnonzero(inside)
        neighbour = ny[inside] * width + nx[inside]
        diagonal[source] += weight
        unknown = variable[neighbour] >= 0
        rows.append(source[unknown])
        cols.append(variable[neighbour[unknown]])
        data.append(np.full(int(unknown.sum()), -weight))
        rhs[source[~unknown]] += weight * values[:, neighbour[~unknown]].T
    rows.append(np.arange(count))
    cols.append(np.arange(count))
    data.append(diagonal)
    system = coo_matrix(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))), shape=(count, count)
    ).tocsc()
    solution = np.asarray(spsolve(system, rhs)).reshape(count, channels)
    filled = torch.from_numpy(values.copy())
    filled[:, removed] = torch.from_numpy(solution.T.copy())
    if noise:
        filled[:, removed] += noise * torch.randn(
            channels, count, generator=generator, dtype=torch.float64
        )
    return filled.reshape(channels, height, width).to(image.dtype)


@dataclass
class ROADResult:
    """ROAD curves: mean target score after imputing a fraction of the pixels.

    Attributes
    ----------
    fractions:
        Fractions of pixels removed.
    morf, lerf:
        ``(len(fractions), B)`` scores, most / least relevant pixels removed first.
    original:
        ``(B,)`` scores of the untouched images.
    """

    fractions: tuple[float, ...]
    morf: np.ndarray = field(repr=False)
    lerf: np.ndarray = field(repr=False)
    original: np.ndarray = field(repr=False)

    @property
    def morf_curve(self) -> np.ndarray:
        """Mean score per fraction, most relevant removed first (lower is better)."""
        return self.morf.mean(axis=1)

    @property
    def lerf_curve(self) -> np.ndarray:
        """Mean score per fraction, least relevant removed first (higher is better)."""
        return self.lerf.mean(axis=1)

    @property
    def combined(self) -> float:
        """``mean(LeRF - MoRF) / 2`` over fractions and images (higher is better)."""
        return float((self.lerf - self.morf).mean() / 2)


def road(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    cams: np.ndarray | torch.Tensor,
    targets: TargetsSpec = None,
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    noise: float = 0.01,
    seed: int = 0,
    score: str = "probability",
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> ROADResult:
    """ROAD: scores after removing the most / least relevant pixels (noisy linear imputation).

    Needs scipy (the ``analysis`` extra). Pixels are ranked by their map value (ties by
    position); for a fraction ``f``, ``round(f * H * W)`` pixels are imputed.
    """
    batch, maps, device = _prepare(model, inputs, cams, device)
    if batch.ndim != 4:
        raise ValueError("road() works on 2-D images (B, C, H, W)")
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0 < f < 1 for f in fractions):
        raise ValueError(f"fractions must lie strictly between 0 and 1, got {fractions}")
    scorer = _Scorer(model, device, targets, score, batch_size)
    scorer.resolve(scorer._outputs(batch))
    original = scorer(batch)
    generator = torch.Generator().manual_seed(seed)
    pixels = maps.shape[1] * maps.shape[2]
    imputed: dict[str, list[torch.Tensor]] = {"morf": [], "lerf": []}
    for fraction in fractions:
        count = round(fraction * pixels)
        for image, cam in zip(batch, maps):
            order = np.argsort(-cam.numpy().ravel(), kind="stable")
            for name, chosen in (("morf", order[:count]), ("lerf", order[::-1][:count])):
                remove = np.zeros(pixels, dtype=bool)
                remove[chosen] = True
                imputed[name].append(
                    noisy_linear_impute(image, remove.reshape(cam.shape), noise, generator)
                )
    rows = torch.arange(batch.shape[0]).repeat(len(fractions))
    shape = (len(fractions), batch.shape[0])
    return ROADResult(
        fractions=fractions,
        morf=scorer(torch.stack(imputed["morf"]), rows).reshape(shape),
        lerf=scorer(torch.stack(imputed["lerf"]), rows).reshape(shape),
        original=original,
    )


def compare_methods(
    model: nn.Module,
    target_layers: Any,
    inputs: torch.Tensor | np.ndarray,
    methods: Sequence[Any] = (
        "gradcam",
        "hirescam",
        "gradcamelementwise",
        "gradcam++",
        "xgradcam",
        "layercam",
        "eigencam",
        "eigengradcam",
        "scorecam",
        "ablationcam",
    ),
    targets: Sequence[int] | int | None = None,
    *,
    road_fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Average Drop, Increase in Confidence and ROAD for several CAM methods.

    Returns one dict per method: ``method``, ``average_drop``, ``increase_in_confidence``,
    ``road_morf`` and ``road_lerf`` (mean score over the fractions), ``road_combined``.
    """
    # shortcut_detect.cam imports this module, so its method registry is imported here.
    from shortcut_detect.cam import get_method

    batch = prepare_inputs(inputs, resolve_device(None, model))
    scorer = _Scorer(model, batch.device, targets, "probability", 32)
    scorer.resolve(scorer._outputs(batch))
    assert scorer.classes is not None
    classes = scorer.classes.tolist()
    rows = []
    for method in methods:
        cls = get_method(method)
        with cls(model, target_layers, reshape_transform=reshape_transform) as cam:
            maps = cam(batch, targets=[ClassifierOutputTarget(c) for c in classes])
        change = confidence_change(model, batch, maps, classes)
        result = road(model, batch, maps, classes, fractions=road_fractions, seed=seed)
        rows.append(
            {
                "method": cls.__name__,
                "average_drop": change.average_drop,
                "increase_in_confidence": change.increase_in_confidence,
                "road_morf": float(result.morf.mean()),
                "road_lerf": float(result.lerf.mean()),
                "road_combined": result.combined,
            }
        )
    return rows
