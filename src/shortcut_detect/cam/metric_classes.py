"""pytorch-grad-cam's metric classes (``pytorch_grad_cam.metrics``), same call form.

``metric(input_tensor, cams, targets, model)`` returns one number per image. All perturbed
images of a call go through the model in one batch (per percentile), in eval mode with
every module's mode restored afterwards. The imputation is
:func:`shortcut_detect.cam.metrics.noisy_linear_impute` (the ROAD paper's), with the noise
drawn from torch's global generator in pytorch-grad-cam's order, so ``torch.manual_seed``
before both libraries gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.metrics import noisy_linear_impute
from shortcut_detect.common.modes import eval_mode

__all__ = [
    "CamMultImageConfidenceChange",
    "DropInConfidence",
    "IncreaseInConfidence",
    "PerturbationConfidenceMetric",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
]

Perturbation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Target = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def _target_scores(model: nn.Module, inputs: torch.Tensor, targets: Sequence[Target]) -> np.ndarray:
    with eval_mode(model), torch.inference_mode():
        outputs = model(inputs)
    return np.float32([target(output).cpu().numpy() for target, output in zip(targets, outputs)])


class PerturbationConfidenceMetric:
    """Target score of perturbed images (minus the original score with ``return_diff``).

    Parameters
    ----------
    perturbation:
        ``perturbation(image (C, H, W), cam (H, W)) -> image``.
    """

    def __init__(self, perturbation: Perturbation) -> None:
        self.perturbation = perturbation

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        cams = np.asarray(cams, dtype=np.float32)
        if cams.shape != (input_tensor.shape[0], *input_tensor.shape[2:]):
            raise ValueError(
                f"cams must be (B, H, W) = {(input_tensor.shape[0], *input_tensor.shape[2:])} "
                f"to match input_tensor, got {cams.shape}"
            )
        targets = list(targets)
        if len(targets) != input_tensor.shape[0]:
            raise ValueError(
                f"{len(targets)} targets for {input_tensor.shape[0]} images; give one per image"
            )
        perturbed = torch.stack(
            [
                self.perturbation(image.cpu(), torch.from_numpy(cam))
                for image, cam in zip(input_tensor, cams)
            ]
        ).to(input_tensor.device)
        result = _target_scores(model, perturbed, targets)
        if return_diff:
            result = result - _target_scores(model, input_tensor, targets)
        if return_visualization:
            return result, perturbed
        return result


def _multiply(image: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    return image * cam


class CamMultImageConfidenceChange(PerturbationConfidenceMetric):
    """Score of image times map minus score of the image (higher: the map kept the evidence)."""

    def __init__(self) -> None:
        super().__init__(_multiply)


class DropInConfidence(CamMultImageConfidenceChange):
    """``max(0, score(image) - score(image * map))`` per image (lower is better).

    Unlike Average Drop % (:func:`~shortcut_detect.cam.confidence_change`), not divided by
    the original score, as in pytorch-grad-cam.
    """

    def __call__(self, *args: object, **kwargs: object) -> np.ndarray:
        return np.maximum(-super().__call__(*args, **kwargs), 0)  # type: ignore[operator]


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """1.0 per image whose score rose when multiplied by its map, else 0.0."""

    def __call__(self, *args: object, **kwargs: object) -> np.ndarray:
        return np.float32(super().__call__(*args, **kwargs) > 0)  # type: ignore[operator]


class _NoisyLinearImputer:
    """ROAD imputation of the pixels where ``keep`` is 0, noise from the global generator."""

    def __init__(self, noise: float = 0.01) -> None:
        self.noise = float(noise)

    def __call__(self, image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        remove = keep.cpu().numpy() == 0
        filled = noisy_linear_impute(image, remove, noise=0.0)
        count = int(remove.sum())
        if self.noise and count:
            noise = torch.randn(image.shape[0], count)  # pytorch-grad-cam's draw and order
            flat = filled.reshape(image.shape[0], -1)
            flat[:, torch.from_numpy(np.flatnonzero(remove.ravel()))] += self.noise * noise
        return filled


def _check_percentile(percentile: float) -> float:
    if isinstance(percentile, str):
        raise ValueError(
            "percentile='auto' (Otsu thresholding) is not supported; give a percentile in [0, 100]"
        )
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    return float(percentile)


class _RemoveMostRelevantFirst:
    def __init__(self, percentile: float, imputer: _NoisyLinearImputer) -> None:
        self.percentile = _check_percentile(percentile)
        self.imputer = imputer

    def __call__(self, image: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        threshold = np.percentile(cam.cpu().numpy(), self.percentile)
        keep = torch.from_numpy(np.float32(cam.cpu().numpy() < threshold))
        return self.imputer(image, keep)


class _RemoveLeastRelevantFirst(_RemoveMostRelevantFirst):
    def __call__(self, image: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        return super().__call__(image, 1 - cam)


class ROADMostRelevantFirst(PerturbationConfidenceMetric):
    """ROAD MoRF: score change after imputing pixels at or above the map's ``percentile``.

    ``percentile=80`` removes the most relevant 20 % (pytorch-grad-cam's convention).
    Lower (a larger drop) is better.
    """

    def __init__(self, percentile: float = 80) -> None:
        super().__init__(_RemoveMostRelevantFirst(percentile, _NoisyLinearImputer()))


class ROADLeastRelevantFirst(PerturbationConfidenceMetric):
    """ROAD LeRF: score change after imputing the least relevant ``100 - percentile`` %.

    Higher (a smaller drop) is better.
    """

    def __init__(self, percentile: float = 20) -> None:
        super().__init__(_RemoveLeastRelevantFirst(percentile, _NoisyLinearImputer()))


class _AveragerAcrossThresholds:
    """A weighted sum of perturbation metrics, each averaged over ``percentiles``.

    ``terms`` are ``(weight, metric class)`` pairs, evaluated in order (the order of the
    noise draws).
    """

    terms: tuple[tuple[float, type[PerturbationConfidenceMetric]], ...]

    def __init__(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        self.percentiles = [_check_percentile(p) for p in percentiles]
        if not self.percentiles:
            raise ValueError("percentiles must not be empty")

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
    ) -> np.ndarray:
        total: np.ndarray | float = 0.0
        for weight, metric in self.terms:
            scores = [
                metric(p)(input_tensor, cams, targets, model)  # type: ignore[call-arg]
                for p in self.percentiles
            ]
            total = total + weight * np.mean(np.float32(scores), axis=0)
        return np.asarray(total)


class ROADMostRelevantFirstAverage(_AveragerAcrossThresholds):
    """:class:`ROADMostRelevantFirst` averaged over ``percentiles``."""

    terms = ((1.0, ROADMostRelevantFirst),)


class ROADLeastRelevantFirstAverage(_AveragerAcrossThresholds):
    """:class:`ROADLeastRelevantFirst` averaged over ``percentiles``."""

    terms = ((1.0, ROADLeastRelevantFirst),)


class ROADCombined(_AveragerAcrossThresholds):
    """``(LeRF average - MoRF average) / 2`` per image (higher is better)."""

    # LeRF first: pytorch-grad-cam's order of noise draws.
    terms = ((0.5, ROADLeastRelevantFirst), (-0.5, ROADMostRelevantFirst))
