"""ARCC (pytorch-grad-cam 1.5.7): Complexity, Coherency and their combination with ROAD.

Call forms follow pytorch-grad-cam's ``metrics.arcc``. The combination pytorch-grad-cam
computes is the *harmonic* mean ``3 / (1/coherency + 1/(1 - complexity) + 1/road)`` (each
term with a ``1e-8`` guard), although its docstring says geometric mean; :class:`ARCC`
computes the same harmonic mean, so scores agree with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.metric_classes import ROADCombined

__all__ = ["ARCC", "Coherency", "Complexity", "pearson_per_sample"]

_EPS = 1e-8  # pytorch-grad-cam's
ARCC_PERCENTILES = (20, 40, 60, 80)  # pytorch-grad-cam's default for ARCC


def _as_maps(grayscale_cams: np.ndarray) -> np.ndarray:
    cams = np.asarray(grayscale_cams)
    if cams.ndim < 2:
        raise ValueError(
            f"grayscale_cams must be a batch of maps (B, H, W), got shape {cams.shape}"
        )
    return cams


def pearson_per_sample(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair of maps in two batches: ``(B,)``.

    Sample standard deviations (``n - 1``) and ``1e-8`` added to their product, as
    pytorch-grad-cam does; a constant map gives 0.
    """
    a = np.asarray(first, dtype=np.float64).reshape(len(first), -1)
    b = np.asarray(second, dtype=np.float64).reshape(len(second), -1)
    if a.shape != b.shape:
        raise ValueError(f"map batches differ in shape: {np.shape(first)} vs {np.shape(second)}")
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    dof = max(a.shape[1] - 1, 1)
    covariance = (a * b).sum(axis=1) / dof
    spread = np.sqrt((a**2).sum(axis=1) / dof) * np.sqrt((b**2).sum(axis=1) / dof)
    return covariance / (spread + _EPS)


class Complexity:
    """Mean absolute value of each map (its L1 norm over the pixel count): ``(B,)``.

    0 for an all-zero map, 1 for an all-one map; lower means a sparser explanation.
    """

    def __call__(self, grayscale_cams: np.ndarray) -> np.ndarray:
        cams = _as_maps(grayscale_cams)
        return np.abs(cams.reshape(cams.shape[0], -1)).mean(axis=1)


class Coherency:
    """Agreement of a map with the map of the input masked by it: ``(pearson + 1) / 2``.

    The input is multiplied by its map, the same method explains the masked input for the
    same targets, and the two maps are correlated (Pearson, per sample); 1 means the map
    reproduces itself.
    """

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: np.ndarray,
        targets: Sequence[Callable[..., Any]] | None,
        model: nn.Module,
        base_method: Callable[..., np.ndarray],
    ) -> np.ndarray:
        cams = _as_maps(grayscale_cams)
        if cams.shape[0] != input_tensor.shape[0] or cams.shape[1:] != input_tensor.shape[2:]:
            raise ValueError(
                f"grayscale_cams {cams.shape} must hold one map per image of the input "
                f"{tuple(input_tensor.shape)}, at the input's resolution"
            )
        weights = torch.from_numpy(np.ascontiguousarray(cams)).unsqueeze(1)
        masked = input_tensor * weights.to(input_tensor.device, input_tensor.dtype)
        masked_cams = base_method(input_tensor=masked, targets=targets)
        return (pearson_per_sample(masked_cams, cams) + 1) / 2


class ARCC:
    """Harmonic mean of coherency, ``1 - complexity`` and rescaled ROAD: ``(B,)``, higher is better.

    ROAD (:class:`~shortcut_detect.cam.ROADCombined`, in [-0.5, 0.5]) is doubled and
    clipped to [0, 1]. See the module docstring for why the mean is harmonic.

    Parameters
    ----------
    base_method:
        The CAM object that made the maps (used again by :class:`Coherency`).
    road_percentiles:
        Percentiles for ROAD (pytorch-grad-cam's default 20, 40, 60, 80).
    """

    def __init__(
        self,
        base_method: Callable[..., np.ndarray],
        road_percentiles: Sequence[float] = ARCC_PERCENTILES,
    ) -> None:
        self.base_method = base_method
        self.complexity = Complexity()
        self.coherency = Coherency()
        self.road = ROADCombined(percentiles=road_percentiles)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: np.ndarray,
        targets: Sequence[Callable[..., Any]],
        model: nn.Module,
    ) -> np.ndarray:
        complexity = self.complexity(grayscale_cams)
        coherency = self.coherency(input_tensor, grayscale_cams, targets, model, self.base_method)
        road = np.clip(2 * self.road(input_tensor, grayscale_cams, targets, model), 0, 1)
        reciprocal = 1 / (coherency + _EPS) + 1 / ((1 - complexity) + _EPS) + 1 / (road + _EPS)
        return 3 / reciprocal
