"""torchcam's smoothed Score-CAM variants on the shared engine: SSCAM and ISCAM.

Both weight channel ``k`` by the softmax, over channels, of the mean target score of the
input masked by channel ``k``'s activation map (min-max scaled per channel at the layer's
resolution, then resized to the input, bilinear without aligned corners), perturbed in a
different way on each of ``num_samples`` steps:

* SSCAM (Wang et al. 2020, "SS-CAM"): Gaussian noise of std ``std`` added to the mask;
* ISCAM (Naidu et al. 2020, "IS-CAM"): the masked input scaled by ``sum_{j<=i} j / N`` on
  step ``i`` (torchcam's integration coefficients).

The formulas, the order in which noise is drawn and the epsilons are torchcam 0.5's, so
``torch.manual_seed`` before the call gives torchcam's maps. torchcam also subtracts the
score of the unmasked input from every channel's score; a softmax does not change when a
constant is subtracted from all its inputs, so that extra forward pass is skipped. The
masked passes run batched, under ``torch.inference_mode``, on the BatchNorm-folded copy
ScoreCAM uses; ISCAM scores channels with identical maps (e.g. dead channels) once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from shortcut_detect.cam.engine import Capture, ReshapeTransform, upsample
from shortcut_detect.cam.layers import LayerSpec
from shortcut_detect.cam.perturbation import PerturbationCAM
from shortcut_detect.common.validation import positive_int, positive_number

__all__ = ["ISCAM", "SSCAM"]

Scorer = Callable[[torch.Tensor, int], torch.Tensor]
"""Target score of sample ``index`` for each row of a batch of perturbed copies: ``(N,)``."""

_EPS = 1e-8  # torchcam's


def _scaled_masks(activations: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Per-channel min-max scaled maps, resized to the input: ``(B, C, *size)`` float32.

    torchcam's order: scale at the layer's resolution, then resize (bilinear / trilinear,
    corners not aligned).
    """
    maps = activations.detach().float()
    axes = tuple(range(2, maps.ndim))
    maps = maps - maps.amin(dim=axes, keepdim=True)
    maps = maps / (maps.amax(dim=axes, keepdim=True) + _EPS)
    batch, channels = maps.shape[:2]
    resized = upsample(maps.reshape(batch * channels, *maps.shape[2:]), size)
    return resized.reshape(batch, channels, *resized.shape[1:])


class _SmoothedScoreCAM(PerturbationCAM):
    """Shared front of SSCAM and ISCAM: validation, the fast model copy, batched scoring."""

    default_samples = 1

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        batch_size: int = 32,
        num_samples: int | None = None,
        accelerate: bool = True,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            batch_size=batch_size,
            accelerate=accelerate,
            device=device,
            **kwargs,
        )
        samples = type(self).default_samples if num_samples is None else num_samples
        self.num_samples = positive_int("num_samples", samples)

    def perturbed_weights(
        self,
        activations: torch.Tensor,
        inputs: torch.Tensor,
        capture: Capture,
        score_fn: Any,
        layer_index: int,
    ) -> torch.Tensor:
        run = self.perturbed_runner(capture, inputs, score_fn)
        masks = _scaled_masks(activations, inputs.shape[2:]).to(inputs.dtype)

        def score(masked: torch.Tensor, index: int) -> torch.Tensor:
            return score_fn.for_sample(run(masked), index).detach().float().cpu()

        totals = self.score_totals(masks, inputs, activations, score)
        weights = torch.softmax(totals / self.num_samples, dim=1)
        return weights.to(activations.device, activations.dtype)

    def score_totals(
        self,
        masks: torch.Tensor,
        inputs: torch.Tensor,
        activations: torch.Tensor,
        score: Scorer,
    ) -> torch.Tensor:
        """``(B, C)`` sums over the steps of each channel's masked score."""
        raise NotImplementedError

    def masked_scores(
        self,
        sample: torch.Tensor,
        index: int,
        masks: torch.Tensor,
        score: Scorer,
        rows: torch.Tensor | None = None,
        scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores of ``sample`` (``(1, C, *size)``) times ``masks[rows[i]]`` (times ``scales[i]``).

        ``masks`` is ``(M, *size)``; ``rows`` defaults to every mask. The masked copies are
        built and scored ``batch_size`` at a time, so only one batch is ever in memory.
        Returns ``(N,)`` float32 scores, one per row.
        """
        rows = torch.arange(masks.shape[0]) if rows is None else rows
        scores = []
        for start in range(0, rows.shape[0], self.batch_size):
            chunk = rows[start : start + self.batch_size]
            masked = sample * masks[chunk.to(masks.device)].unsqueeze(1)
            if scales is not None:
                scale = scales[start : start + self.batch_size]
                masked = scale.reshape(-1, *([1] * (masked.ndim - 1))) * masked
            scores.append(score(masked, index))
        return torch.cat(scores)


class SSCAM(_SmoothedScoreCAM):
    """SS-CAM (Wang et al. 2020): Score-CAM with Gaussian noise added to the masks.

    On each of ``num_samples`` steps, noise of std ``std`` (in mask units, masks are in
    [0, 1]) is added to every channel's mask before it multiplies the input; the weight of a
    channel is the softmax of its mean score. Noise is drawn from torch's global generator,
    one ``(B, C, *input_size)`` tensor per step, as torchcam does (so the same seed gives the
    same maps, and that tensor is the memory peak).

    Parameters
    ----------
    model, target_layers, reshape_transform, device:
        As for :class:`~shortcut_detect.cam.base.BaseCAM`.
    batch_size:
        Masked images per forward pass (torchcam's default, 32).
    num_samples:
        Noisy steps (torchcam's default, 35).
    std:
        Standard deviation of the noise (torchcam's default, 2.0).
    accelerate:
        Run the masked passes on a BatchNorm-folded copy of the model (oneDNN or
        channels-last; checked against the original on every call), as ScoreCAM does.
    """

    default_samples = 35

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        batch_size: int = 32,
        num_samples: int = 35,
        std: float = 2.0,
        accelerate: bool = True,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            batch_size=batch_size,
            num_samples=num_samples,
            accelerate=accelerate,
            device=device,
            **kwargs,
        )
        self.std = positive_number("std", std)

    def score_totals(
        self,
        masks: torch.Tensor,
        inputs: torch.Tensor,
        activations: torch.Tensor,
        score: Scorer,
    ) -> torch.Tensor:
        totals = torch.zeros(masks.shape[:2])
        noise_source = torch.distributions.Normal(0.0, self.std)
        for _ in range(self.num_samples):
            noise = noise_source.sample(masks.shape).to(masks)
            for b in range(masks.shape[0]):
                totals[b] += self.masked_scores(inputs[b : b + 1], b, masks[b] + noise[b], score)
        return totals


class ISCAM(_SmoothedScoreCAM):
    """IS-CAM (Naidu et al. 2020): Score-CAM integrated over scaled copies of the masked input.

    On step ``i`` (1 to ``num_samples``) the masked input is multiplied by
    ``c_i = sum_{j=1..i} j / num_samples``, torchcam's coefficients (they grow past 1:
    ``c_N = (N + 1) / 2``); the weight of a channel is the softmax of its mean score.
    Deterministic; channels with identical masks are scored once.

    Parameters
    ----------
    model, target_layers, reshape_transform, device:
        As for :class:`~shortcut_detect.cam.base.BaseCAM`.
    batch_size:
        Masked images per forward pass (torchcam's default, 32).
    num_samples:
        Integration steps (``None`` or omitted: torchcam's default, 10).
    accelerate:
        As for :class:`SSCAM`.
    """

    default_samples = 10

    def coefficients(self) -> list[float]:
        """The scale of the masked input on each step, accumulated as torchcam does."""
        steps, total = [], 0.0
        for step in range(self.num_samples):
            total += (step + 1) / self.num_samples
            steps.append(total)
        return steps

    def score_totals(
        self,
        masks: torch.Tensor,
        inputs: torch.Tensor,
        activations: torch.Tensor,
        score: Scorer,
    ) -> torch.Tensor:
        batch, channels = masks.shape[:2]
        totals = torch.zeros(batch, channels)
        coefficients = torch.tensor(self.coefficients(), dtype=inputs.dtype, device=inputs.device)
        # (channel, step) pairs, steps fastest, for the distinct masks of each sample only.
        for b in range(batch):
            maps = activations[b].detach().float().reshape(channels, -1)
            _, inverse = torch.unique(maps, dim=0, return_inverse=True)
            inverse = inverse.cpu()
            distinct = torch.full((int(inverse.max()) + 1,), channels, dtype=torch.long)
            distinct = distinct.scatter_reduce(0, inverse, torch.arange(channels), reduce="amin")
            pairs = torch.cartesian_prod(distinct, torch.arange(self.num_samples))
            scales = coefficients[pairs[:, 1].to(coefficients.device)]
            pair_scores = self.masked_scores(
                inputs[b : b + 1], b, masks[b], score, pairs[:, 0], scales
            )
            totals[b] = pair_scores.reshape(len(distinct), self.num_samples).sum(dim=1)[inverse]
        return totals
