"""Global artefacts: does the model rely on an image-wide statistic (brightness, contrast)?

A global artefact (one scanner brighter than another, one hospital's images sharper) has no
region to remove. :func:`intervene_global` instead *normalises* the statistic: every image
is set to the dataset's median level, which removes whatever the level told the model. The
control changes each image's level by the same amount in the opposite direction (its mirror
image about its own level), so the image moves exactly as far but stays on its side of the
median: the cue is kept. A model that ignores the statistic reacts to both equally sized
changes alike; a model that relies on it loses confidence when the cue is removed, not
when it is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.common import eval_mode, resolve_device, to_jsonable
from shortcut_detect.interventions.core import ForwardRunner, is_significant, paired_estimates
from shortcut_detect.interventions.regions import as_image_batch
from shortcut_detect.interventions.stats import Estimate

__all__ = ["GLOBAL_STATISTICS", "GlobalTestResult", "find_global_shortcuts", "intervene_global"]


def _brightness(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).mean(dim=1)


def _contrast(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).std(dim=1)


def _set_brightness(images: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    return images + _per_image(new - old, images)


def _set_contrast(images: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    mean = _per_image(_brightness(images), images)
    scale = _per_image(new / old.clamp_min(1e-12), images)
    return mean + (images - mean) * scale


def _per_image(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (images.ndim - 1)))


#: Statistic name -> (measure it per image, set it from the old to the new level).
GLOBAL_STATISTICS: dict[
    str,
    tuple[
        Callable[[torch.Tensor], torch.Tensor],
        Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ],
] = {
    "brightness": (_brightness, _set_brightness),
    "contrast": (_contrast, _set_contrast),
}
_MIRROR_IN_LOG = {"contrast"}  # a multiplicative level: mirror its ratio, not its difference


@dataclass
class GlobalTestResult:
    """Normalising an image-wide statistic, against the mirrored control.

    Attributes
    ----------
    statistic:
        ``"brightness"`` (mean of all pixels) or ``"contrast"`` (their standard deviation).
    relied_on:
        The effect is at least ``min_effect`` and significant.
    effect:
        Per image, the drop of the predicted class's probability under normalisation minus
        the drop under the mirrored control; interval and one-sided sign-flip p-value.
    probability_drop, control_probability_drop, flip_rate, control_flip_rate:
        The two sides of the comparison.
    median_level, level_spread:
        The dataset median of the statistic and the median absolute change applied.
    """

    statistic: str
    relied_on: bool
    effect: Estimate
    probability_drop: Estimate
    control_probability_drop: Estimate
    flip_rate: Estimate
    control_flip_rate: Estimate
    median_level: float
    level_spread: float
    summary: str
    n_samples: int
    n_forward_passes: int
    parameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "statistic": self.statistic,
                "relied_on": self.relied_on,
                "effect": self.effect.to_dict(),
                "probability_drop": self.probability_drop.to_dict(),
                "control_probability_drop": self.control_probability_drop.to_dict(),
                "flip_rate": self.flip_rate.to_dict(),
                "control_flip_rate": self.control_flip_rate.to_dict(),
                "median_level": self.median_level,
                "level_spread": self.level_spread,
                "summary": self.summary,
                "n_samples": self.n_samples,
                "n_forward_passes": self.n_forward_passes,
                "parameters": self.parameters,
            }
        )


def intervene_global(
    model: nn.Module,
    images: Any,
    statistic: str = "brightness",
    *,
    min_effect: float = 0.05,
    alpha: float = 0.05,
    n_bootstrap: int = 2000,
    n_permutations: int = 2000,
    batch_size: int = 256,
    head: str | int = "logits",
    device: str | torch.device | None = None,
    seed: int = 0,
) -> GlobalTestResult:
    """Test whether ``model`` relies on an image-wide statistic of ``images``.

    Every image's ``statistic`` is set to the dataset median (the cue removed); the control
    moves it by the same amount the other way (the cue kept; see the module docstring).

    Parameters
    ----------
    model:
        The classifier (eval mode, inference mode; its modes are restored).
    images:
        ``(N, C, H, W)`` or ``(N, C, D, H, W)`` model inputs, N >= 2; the statistic is
        measured on them as given (preprocessed).
    statistic:
        One of :data:`GLOBAL_STATISTICS`: ``"brightness"`` or ``"contrast"``.
    min_effect, alpha:
        Reliance needs an effect of at least ``min_effect`` with one-sided p < ``alpha``.
    n_bootstrap, n_permutations, batch_size, head, device, seed:
        As for :func:`~shortcut_detect.interventions.intervene`.

    Returns
    -------
    GlobalTestResult
    """
    if statistic not in GLOBAL_STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(GLOBAL_STATISTICS)}, got {statistic!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch = as_image_batch(images)
    n_samples = len(batch)
    if n_samples < 2:
        raise ValueError(f"intervene_global needs at least 2 images, got {n_samples}")
    measure, set_level = GLOBAL_STATISTICS[statistic]
    level = measure(batch)
    median = level.median()
    if statistic in _MIRROR_IN_LOG:
        if (level <= 0).any():
            raise ValueError(f"some images are constant: their {statistic} cannot be rescaled")
        mirrored = level * level / median
    else:
        mirrored = 2 * level - median
    normalised = set_level(batch, level, median.expand_as(level))
    control = set_level(batch, level, mirrored)

    runner = ForwardRunner(model, resolve_device(device, model), int(batch_size), head)
    with eval_mode(model), torch.inference_mode():
        original = runner.originals(batch).numpy()
        after = runner.originals(normalised).numpy()
        after_control = runner.originals(control).numpy()
    predicted = original.argmax(axis=1)
    rows = np.arange(n_samples)
    drop = original[rows, predicted] - after[rows, predicted]
    control_drop = original[rows, predicted] - after_control[rows, predicted]
    flip = (after.argmax(axis=1) != predicted).astype(np.float64)
    control_flip = (after_control.argmax(axis=1) != predicted).astype(np.float64)
    stats = {"n_bootstrap": int(n_bootstrap), "n_permutations": int(n_permutations)}
    flip_rate, control_flip_rate, _ = paired_estimates(flip, control_flip, stats, seed)
    dropped, control_dropped, effect = paired_estimates(drop, control_drop, stats, seed + 10)
    relied = is_significant(effect, min_effect, alpha)
    spread = float((level - median).abs().median())
    verdict = "relies on" if relied else "does not rely on"
    summary = (
        f"The model {verdict} image {statistic}: setting every image to the median level "
        f"({float(median):.3g}) drops the predicted class's probability by "
        f"{effect.text()} more than the same-size change away from it (p = "
        f"{effect.p_value:.3g}); flips {flip_rate.text(percent=True)} of predictions "
        f"(control {control_flip_rate.value:.0%})."
    )
    return GlobalTestResult(
        statistic=statistic,
        relied_on=relied,
        effect=effect,
        probability_drop=dropped,
        control_probability_drop=control_dropped,
        flip_rate=flip_rate,
        control_flip_rate=control_flip_rate,
        median_level=float(median),
        level_spread=spread,
        summary=summary,
        n_samples=n_samples,
        n_forward_passes=runner.n_forward_passes,
        parameters={
            "min_effect": float(min_effect),
            "alpha": float(alpha),
            "n_bootstrap": int(n_bootstrap),
            "n_permutations": int(n_permutations),
            "seed": int(seed),
        },
    )


def find_global_shortcuts(
    model: nn.Module,
    images: Any,
    *,
    statistics: Sequence[str] = tuple(GLOBAL_STATISTICS),
    alpha: float = 0.05,
    **options: Any,
) -> list[GlobalTestResult]:
    """Run :func:`intervene_global` for each of ``statistics``, Bonferroni-corrected
    (``alpha / len(statistics)``); the results whose ``relied_on`` is set are the global
    shortcuts found. Extra keyword arguments go to ``intervene_global``."""
    statistics = list(statistics)
    if not statistics:
        raise ValueError(f"statistics is empty; give some of {sorted(GLOBAL_STATISTICS)}")
    corrected = alpha / len(statistics)
    return [
        intervene_global(model, images, name, alpha=corrected, **options) for name in statistics
    ]
