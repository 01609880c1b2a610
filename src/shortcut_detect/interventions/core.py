"""Proving reliance: change a region and see whether predictions change, against a control.

:func:`intervene` removes a region (replacing it with content built from its surroundings),
transplants it from images that carry it onto images that lack it, and does the same on
control regions of the same shape placed elsewhere. The *effect* is the region's change
minus the control's, per image, with a bootstrap interval and a paired sign-flip p-value.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.analysis.maps import area_resize, as_heatmap_stack
from shortcut_detect.common import eval_mode, resolve_device, to_jsonable
from shortcut_detect.gradcam import class_probabilities, select_head
from shortcut_detect.interventions.fills import FILLS, apply_fill, region_extent
from shortcut_detect.interventions.regions import (
    as_image_batch,
    content_map,
    control_masks,
    region_masks,
)
from shortcut_detect.interventions.stats import Estimate, estimate

__all__ = [
    "READINGS",
    "AttentionShare",
    "FillResult",
    "ForwardPool",
    "InterventionResult",
    "TransplantResult",
    "intervene",
    "predict_probabilities",
]

#: The three readings of an intervention test.
READINGS = ("relied on", "salient but not relied on", "not looked at, not relied on")
NOT_RELIED_UNKNOWN_ATTENTION = "not relied on"
#: No effect could be estimated: no control placement was found for any tested image (a
#: region too large for the room the image leaves), and no transplant was possible.
UNTESTED = "not testable (no control region fits)"


class _FieldsDict:
    """``to_dict`` of a result dataclass: its fields in order, nested results as their dicts."""

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({item.name: getattr(self, item.name) for item in fields(self)})


@dataclass
class AttentionShare(_FieldsDict):
    """How much attention the region gets: ``share`` of heatmap mass inside it, ``area`` the
    share of the image it covers, ``enrichment = share / area`` (1 = no more than its size)."""

    share: float
    area: float
    enrichment: float
    n: int


@dataclass
class FillResult(_FieldsDict):
    """Removing the region with one fill, and the same removal on the control regions.

    Attributes
    ----------
    flip_rate, control_flip_rate:
        Share of images whose predicted class changes (controls: averaged over placements).
    probability_drop, control_probability_drop:
        Mean drop of the originally predicted class's probability.
    effect:
        Per image, region drop minus control drop: mean, interval, sign-flip p-value.
    flip_effect:
        Per image, region flip minus control flip rate.
    control_disturbance:
        Mean absolute change of the predicted class's probability under the control
        removals: how much the fill alone moves predictions (smaller is more in-distribution).
    """

    fill: str
    flip_rate: Estimate
    control_flip_rate: Estimate
    probability_drop: Estimate
    control_probability_drop: Estimate
    effect: Estimate
    flip_effect: Estimate
    control_disturbance: float


@dataclass
class TransplantResult(_FieldsDict):
    """The region's pixels copied from images that carry it onto images that lack it.

    Attributes
    ----------
    target_class:
        The class most associated with the carriers (largest excess of carrier predictions).
    moved_share, control_moved_share:
        Share of recipients not predicted ``target_class`` before that are after.
    shift, control_shift:
        Mean increase of the probability of ``target_class``.
    effect:
        Per recipient, shift minus control shift, with interval and p-value.
    """

    target_class: int
    moved_share: Estimate
    control_moved_share: Estimate
    shift: Estimate
    control_shift: Estimate
    effect: Estimate
    n_recipients: int


@dataclass
class InterventionResult:
    """Everything :func:`intervene` measured, and what it means.

    Attributes
    ----------
    reading:
        ``"relied on"``, ``"salient but not relied on"``, ``"not looked at, not relied on"``
        (or ``"not relied on"`` when no attention was given, or
        ``"not testable (no control region fits)"`` when no control placement was found).
    relied_on:
        The removal (or transplant) effect is at least ``min_effect`` and significant.
    salient:
        Attention enrichment in the region is at least ``salient_enrichment`` (``None``
        without heatmaps).
    fill:
        The fill the reading uses (the least out-of-distribution one unless chosen).
    removal:
        One :class:`FillResult` per fill tried.
    effect:
        ``removal[fill].effect``, the headline number.
    transplant:
        The transplant test (``None`` without ``carriers``).
    attention:
        Attention share in the region (``None`` without heatmaps).
    summary:
        Sentences a person can read.
    per_sample:
        Arrays per image: ``tested``, ``predictions``, ``probabilities`` (of the predicted
        class), ``region_drop`` / ``control_drop`` / ``region_flip`` (of the chosen fill).
    n_forward_passes:
        Model calls made (one per batch of counterfactuals, plus the originals).
    """

    reading: str
    relied_on: bool
    salient: bool | None
    fill: str
    removal: dict[str, FillResult]
    effect: Estimate
    transplant: TransplantResult | None
    attention: AttentionShare | None
    summary: str
    n_samples: int
    n_tested: int
    n_forward_passes: int
    parameters: dict[str, Any] = field(default_factory=dict)
    per_sample: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """JSON-ready dict; ``per_sample=True`` adds the per-image arrays."""
        result: dict[str, Any] = {
            "reading": self.reading,
            "relied_on": self.relied_on,
            "salient": self.salient,
            "fill": self.fill,
            "effect": self.effect.to_dict(),
            "removal": {name: value.to_dict() for name, value in self.removal.items()},
            "transplant": None if self.transplant is None else self.transplant.to_dict(),
            "attention": None if self.attention is None else self.attention.to_dict(),
            "summary": self.summary,
            "n_samples": self.n_samples,
            "n_tested": self.n_tested,
            "n_forward_passes": self.n_forward_passes,
            "parameters": self.parameters,
        }
        if per_sample:
            result["per_sample"] = self.per_sample
        return to_jsonable(result, max_array_values=10**7)


# -- running counterfactuals ---------------------------------------------------------------------


class ForwardPool(Protocol):
    """Runs forward passes outside this process (e.g. the audit's Ray actors).

    ``submit`` starts the pass of one batch (the model's inputs) and returns at once with a
    handle; ``collect`` waits for handles and returns each batch's class probabilities
    ``(n, K)`` of the prediction head ``head``, in the order of the handles.
    """

    def submit(self, batch: torch.Tensor, head: str | int) -> Any: ...

    def collect(self, handles: list[Any]) -> list[torch.Tensor]: ...


class ForwardRunner:
    """Forward passes in batches, counted; returns class probabilities.

    With a ``pool`` the passes run there, several batches in flight (:meth:`submit`, then
    :meth:`collect`); without, in this process when submitted.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        batch_size: int,
        head: Any,
        pool: ForwardPool | None = None,
    ):
        self.model, self.device, self.batch_size, self.head = model, device, batch_size, head
        self.pool = pool
        self.n_forward_passes = 0

    def submit(self, batch: torch.Tensor) -> Any:
        """Start the pass of ``batch``; a handle for :meth:`collect`."""
        self.n_forward_passes += 1
        if self.pool is not None:
            return self.pool.submit(batch, self.head)
        outputs = self.model(batch.to(self.device))
        return class_probabilities(select_head(outputs, self.head)).cpu()

    def collect(self, handles: list[Any]) -> torch.Tensor:
        """The probabilities of the submitted batches, concatenated in order."""
        if self.pool is not None:
            handles = self.pool.collect(handles)
        return torch.cat(handles) if handles else torch.zeros(0)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        return self.collect([self.submit(batch)])

    def originals(self, images: torch.Tensor) -> torch.Tensor:
        return self.collect(
            [
                self.submit(images[start : start + self.batch_size])
                for start in range(0, len(images), self.batch_size)
            ]
        )


@dataclass
class _Jobs:
    """Counterfactual images to build: recipient, content source (fill name or donor), mask."""

    sample: list[np.ndarray] = field(default_factory=list)
    donor: list[np.ndarray] = field(default_factory=list)
    fill: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def add(self, sample: np.ndarray, donor: np.ndarray, fill: int, masks: np.ndarray) -> slice:
        start = sum(len(s) for s in self.sample)
        self.sample.append(sample)
        self.donor.append(donor)
        self.fill.append(np.full(len(sample), fill))
        self.masks.append(masks)
        return slice(start, start + len(sample))

    def run(
        self,
        runner: ForwardRunner,
        images: torch.Tensor,
        fill_names: Sequence[str],
        extent: int,
        seed: int,
    ) -> torch.Tensor:
        sample, donor = np.concatenate(self.sample), np.concatenate(self.donor)
        fills, masks = np.concatenate(self.fill), np.concatenate(self.masks)
        generator = torch.Generator().manual_seed(seed)
        outputs = []
        for start in range(0, len(sample), runner.batch_size):
            part = slice(start, start + runner.batch_size)
            batch = images[torch.from_numpy(sample[part])].clone()
            mask = torch.from_numpy(masks[part])
            for code in np.unique(fills[part]):
                rows = torch.from_numpy(np.flatnonzero(fills[part] == code))
                if code < 0:  # transplant: the donor's pixels inside the mask
                    region = mask[rows][:, None].to(batch.dtype)
                    source = images[torch.from_numpy(donor[part][rows.numpy()])]
                    batch[rows] = batch[rows] * (1 - region) + source * region
                else:
                    batch[rows] = apply_fill(
                        batch[rows], mask[rows], fill_names[code], generator, extent
                    )
            outputs.append(runner.submit(batch))
        return runner.collect(outputs)


def predict_probabilities(
    model: nn.Module,
    images: Any,
    *,
    batch_size: int = 256,
    head: str | int = "logits",
    device: str | torch.device | None = None,
    pool: ForwardPool | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, K)`` of ``images`` (eval mode, inference mode, batched; in
    ``pool`` when given, see :func:`intervene`)."""
    batch = as_image_batch(images)
    runner = ForwardRunner(model, resolve_device(device, model), int(batch_size), head, pool)
    with eval_mode(model), torch.inference_mode():
        return runner.originals(batch).numpy()


# -- the test --------------------------------------------------------------------------------------


def _attention(
    heatmaps: Any, generator: Any, images: torch.Tensor, masks: np.ndarray, tested: np.ndarray
) -> AttentionShare | None:
    if heatmaps is None and generator is None:
        return None
    if heatmaps is None:
        heatmaps = heatmaps_from_images(generator, images)
    maps = as_heatmap_stack(heatmaps, single_ndim=masks.ndim - 1)
    if len(maps) != len(masks) or maps.ndim != masks.ndim:
        raise ValueError(
            f"heatmaps {maps.shape} do not match {len(masks)} images with "
            f"{masks.ndim - 1}-D regions; give one map per image"
        )
    cover = area_resize(masks.astype(np.float64), maps.shape[1:])
    flat_maps = maps.reshape(len(maps), -1)[tested]
    flat_cover = cover.reshape(len(cover), -1)[tested]
    mass = flat_maps.sum(axis=1)
    keep = mass > 0
    if not keep.any():
        return AttentionShare(float("nan"), float("nan"), float("nan"), 0)
    share = float(((flat_maps * flat_cover).sum(axis=1)[keep] / mass[keep]).mean())
    area = float(flat_cover[keep].mean())
    return AttentionShare(share, area, share / area, int(keep.sum()))


def paired_estimates(
    region: np.ndarray, control: np.ndarray, stats: dict[str, Any], seed: int
) -> tuple[Estimate, Estimate, Estimate]:
    """Estimates of the region values, the control values and their paired difference."""
    usable = ~np.isnan(region) & ~np.isnan(control)
    return (
        estimate(region[usable], **stats, seed=seed),
        estimate(control[usable], **stats, seed=seed + 1),
        estimate(region[usable] - control[usable], paired_test=True, **stats, seed=seed + 2),
    )


def is_significant(value: Estimate, min_effect: float, alpha: float) -> bool:
    """An effect that counts as reliance: at least ``min_effect``, interval above 0, p < alpha."""
    return bool(
        value.n > 0
        and value.value >= min_effect
        and value.low > 0
        and value.p_value is not None
        and value.p_value < alpha
    )


def _check(
    n_controls: int, fills: Sequence[str], fill: str, alpha: float, batch_size: int
) -> list[str]:
    if int(n_controls) != n_controls or n_controls < 1:
        raise ValueError(f"n_controls must be a positive integer, got {n_controls!r}")
    fills = list(fills)
    unknown = [name for name in fills if name not in FILLS]
    if not fills or unknown:
        raise ValueError(f"fills must be some of {sorted(FILLS)}; got {fills}")
    if fill != "auto" and fill not in fills:
        raise ValueError(f"fill must be 'auto' or one of the fills tried {fills}; got {fill!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return fills


@dataclass
class _Setup:
    """The validated inputs of one test: images, regions, who is tested, control regions."""

    batch: torch.Tensor
    masks: np.ndarray
    has_region: np.ndarray
    carrier: np.ndarray | None
    tested: np.ndarray
    controls: np.ndarray
    found: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.batch.shape[0])

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.batch.shape[2:])

    @property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.tested)


@dataclass
class _TransplantPlan:
    """Counterfactual rows of the transplant: region and control copies onto recipients."""

    carrier: np.ndarray
    recipients: np.ndarray
    donors: np.ndarray
    region: slice
    control: slice


def _carrier_mask(carriers: Any, n_samples: int) -> np.ndarray | None:
    if carriers is None:
        return None
    carrier = np.asarray(carriers).astype(bool).ravel()
    if carrier.shape != (n_samples,):
        raise ValueError(f"carriers must be {n_samples} booleans (one per image)")
    if not carrier.any():
        raise ValueError("carriers marks no image; at least one image must carry the region")
    return carrier


def _avoid_mask(avoid: Any, spatial: tuple[int, ...]) -> np.ndarray | None:
    if avoid is None:
        return None
    avoid_mask = np.asarray(avoid, dtype=bool)
    if avoid_mask.shape != spatial:
        raise ValueError(f"avoid must be a bool mask {spatial}, got shape {avoid_mask.shape}")
    return avoid_mask


def _centres(object_centres: Any, n_samples: int, spatial: tuple[int, ...]) -> np.ndarray | None:
    if object_centres is None:
        return None
    centres = np.asarray(object_centres, dtype=np.float64)
    if centres.shape != (n_samples, len(spatial)):
        raise ValueError(
            f"object_centres must be ({n_samples}, {len(spatial)}) positions, got {centres.shape}"
        )
    return centres


def _setup(
    model: nn.Module,
    images: Any,
    regions: Any,
    carriers: Any,
    avoid: Any,
    object_centres: Any,
    n_controls: int,
    match_content: bool,
    seed: int,
) -> _Setup:
    """Validate the inputs and place the control regions."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batch = as_image_batch(images)
    n_samples, spatial = batch.shape[0], tuple(batch.shape[2:])
    if n_samples < 2:
        raise ValueError(f"intervene needs at least 2 images, got {n_samples}")
    masks = region_masks(regions, n_samples, spatial)
    has_region = masks.reshape(n_samples, -1).any(axis=1)
    carrier = _carrier_mask(carriers, n_samples)
    tested = has_region & (carrier if carrier is not None else True)
    if not tested.any():
        raise ValueError("No image both carries the feature and has a non-empty region")
    avoid_mask = _avoid_mask(avoid, spatial)
    centres = _centres(object_centres, n_samples, spatial)
    controls, found = control_masks(
        masks,
        n_controls,
        avoid=avoid_mask,
        object_centres=centres,
        content=content_map(batch) if match_content else None,
        seed=seed,
    )
    return _Setup(batch, masks, has_region, carrier, tested, controls, found)


def _plan_removals(
    jobs: _Jobs, setup: _Setup, n_fills: int, n_controls: int
) -> list[tuple[slice, slice]]:
    """Queue, per fill, the region removal of every tested image and its control removals."""
    rows, spatial = setup.rows, setup.spatial
    none = np.full(len(rows), -1)
    fill_slices = []
    for code in range(n_fills):
        region_slice = jobs.add(rows, none, code, setup.masks[rows])
        control_slice = jobs.add(
            np.repeat(rows, n_controls),
            np.repeat(none, n_controls),
            code,
            setup.controls[rows].reshape(-1, *spatial),
        )
        fill_slices.append((region_slice, control_slice))
    return fill_slices


def _plan_transplant(
    jobs: _Jobs, setup: _Setup, n_controls: int, seed: int
) -> _TransplantPlan | None:
    """Queue the region (and its controls) copied from a random carrier onto each non-carrier."""
    carrier = setup.carrier
    if carrier is None or not (~carrier).any():
        return None
    rng = np.random.default_rng(seed + 7)
    recipients = np.flatnonzero(~carrier)
    donors = rng.choice(np.flatnonzero(carrier & setup.has_region), len(recipients))
    return _TransplantPlan(
        carrier,
        recipients,
        donors,
        jobs.add(recipients, donors, -1, setup.masks[donors]),
        jobs.add(
            np.repeat(recipients, n_controls),
            np.repeat(donors, n_controls),
            -1,
            setup.controls[donors].reshape(-1, *setup.spatial),
        ),
    )


def _removal_result(
    name: str,
    slices: tuple[slice, slice],
    setup: _Setup,
    original: np.ndarray,
    counterfactual: np.ndarray,
    stats: dict[str, Any],
    seed: int,
) -> tuple[FillResult, dict[str, np.ndarray]]:
    """One fill's :class:`FillResult` and its per-image drop, control drop and flip."""
    region_slice, control_slice = slices
    rows = setup.rows
    predicted = original.argmax(axis=1)
    confidence = original[np.arange(len(original)), predicted]
    classes = predicted[rows]
    region_p = counterfactual[region_slice]
    control_p = counterfactual[control_slice].reshape(len(rows), -1, original.shape[1])
    drop = confidence[rows] - region_p[np.arange(len(rows)), classes]
    flip = (region_p.argmax(axis=1) != classes).astype(np.float64)
    control_drops = confidence[rows, None] - control_p[np.arange(len(rows)), :, classes]
    control_flips = (control_p.argmax(axis=2) != classes[:, None]).astype(np.float64)
    valid = setup.found[rows]
    control_drops[~valid] = np.nan
    control_flips[~valid] = np.nan
    with _quiet():
        control_drop = np.nanmean(control_drops, axis=1)
        control_flip = np.nanmean(control_flips, axis=1)
        disturbance = float(np.nanmean(np.abs(control_drops)))
    flip_rate, control_flip_rate, flip_effect = paired_estimates(flip, control_flip, stats, seed)
    dropped, control_dropped, effect = paired_estimates(drop, control_drop, stats, seed + 10)
    result = FillResult(
        name,
        flip_rate,
        control_flip_rate,
        dropped,
        control_dropped,
        effect,
        flip_effect,
        disturbance,
    )
    return result, {"drop": drop, "control_drop": control_drop, "flip": flip}


def _transplant_result(
    plan: _TransplantPlan,
    found: np.ndarray,
    original: np.ndarray,
    counterfactual: np.ndarray,
    stats: dict[str, Any],
    seed: int,
) -> TransplantResult:
    """The transplant's effect on the class most associated with the carriers."""
    carrier, recipients, donors = plan.carrier, plan.recipients, plan.donors
    n_classes = original.shape[1]
    predicted = original.argmax(axis=1)
    excess = np.bincount(predicted[carrier], minlength=n_classes) / carrier.sum()
    excess -= np.bincount(predicted[~carrier], minlength=n_classes) / (~carrier).sum()
    target = int(excess.argmax())
    before = original[recipients, target]
    after = counterfactual[plan.region][:, target]
    control_after = counterfactual[plan.control].reshape(len(recipients), -1, n_classes)
    valid = found[donors]
    control_shift = np.where(valid, control_after[:, :, target] - before[:, None], np.nan)
    eligible = predicted[recipients] != target
    moved = (counterfactual[plan.region].argmax(axis=1) == target).astype(np.float64)
    control_moved = np.where(valid, control_after.argmax(axis=2) == target, np.nan)
    with _quiet():
        control_shift_mean = np.nanmean(control_shift, axis=1)
        control_moved_mean = np.nanmean(control_moved, axis=1)
    moved_share, control_moved_share, _ = paired_estimates(
        moved[eligible], control_moved_mean[eligible], stats, seed + 20
    )
    shift, control_shift_estimate, effect = paired_estimates(
        after - before, control_shift_mean, stats, seed + 30
    )
    return TransplantResult(
        target,
        moved_share,
        control_moved_share,
        shift,
        control_shift_estimate,
        effect,
        len(recipients),
    )


def _reading(
    removal: FillResult,
    transplant: TransplantResult | None,
    attention: AttentionShare | None,
    min_effect: float,
    alpha: float,
    salient_enrichment: float,
) -> tuple[str, bool, bool | None]:
    """The reading, whether the region is relied on, and whether it is salient.

    Reliance needs the region's own change to point the shortcut's way (removing it lowers
    the prediction's probability; transplanting it raises the carriers' class) as well as a
    significant excess over the control: a control that lands on the object disturbs the
    prediction by itself, and "the region changes less than the control" is not reliance.
    The region's own change must also reach ``min_effect``: a control paste that moves
    predictions the other way can make a small change look like a large excess. Either test
    may show reliance, so with a transplant each is held to ``alpha / 2`` (Bonferroni): two
    looks at level ``alpha`` would double the false-alarm rate.
    """
    effect = removal.effect
    level = alpha / 2 if transplant is not None else alpha
    drop = removal.probability_drop
    relied = (
        is_significant(effect, min_effect, level) and drop.low > 0 and drop.value >= min_effect
    ) or (
        transplant is not None
        and is_significant(transplant.effect, min_effect, level)
        and transplant.shift.low > 0
        and transplant.shift.value >= min_effect
    )
    salient = None
    if attention is not None and not np.isnan(attention.enrichment):
        salient = bool(attention.enrichment >= salient_enrichment)
    testable = effect.n > 0 or (transplant is not None and transplant.effect.n > 0)
    if relied:
        reading = READINGS[0]
    elif not testable:
        reading = UNTESTED
    elif salient is None:
        reading = NOT_RELIED_UNKNOWN_ATTENTION
    else:
        reading = READINGS[1] if salient else READINGS[2]
    return reading, relied, salient


def intervene(
    model: nn.Module,
    images: Any,
    regions: Any,
    *,
    carriers: Any = None,
    heatmaps: Any = None,
    generator: Any = None,
    fills: Sequence[str] = ("blur", "mean", "noise"),
    fill: str = "auto",
    n_controls: int = 4,
    avoid: Any = None,
    object_centres: Any = None,
    match_content: bool = True,
    min_effect: float = 0.05,
    salient_enrichment: float = 2.0,
    alpha: float = 0.05,
    n_bootstrap: int = 2000,
    n_permutations: int = 2000,
    batch_size: int = 256,
    head: str | int = "logits",
    device: str | torch.device | None = None,
    seed: int = 0,
    pool: ForwardPool | None = None,
) -> InterventionResult:
    """Test whether ``model`` relies on a region of ``images``: remove it, transplant it, and
    compare with the same operations on control regions.

    Parameters
    ----------
    model:
        The classifier (run in eval mode under ``torch.inference_mode``; its modes are
        restored).
    images:
        ``(N, C, H, W)`` or ``(N, C, D, H, W)`` model inputs (preprocessed), N >= 2.
    regions:
        The suspected region: a box ``(x0, y0, x1, y1)`` (volumes: ``(x0, y0, z0, x1, y1,
        z1)``; upper bounds exclusive) or a bool mask ``(H, W)`` / ``(N, H, W)`` (volumes
        ``(D, H, W)`` / ``(N, D, H, W)``). Images whose mask is empty are not tested.
    carriers:
        Optional bool ``(N,)``: the images that carry the suspected feature (e.g. the
        marker is drawn). Removal is then tested on the carriers only, and the region is
        transplanted from a random carrier onto every non-carrier.
    heatmaps, generator:
        Attention for the reading: heatmaps ``(N, *grid)`` at any resolution, or a
        :class:`~shortcut_detect.gradcam.GradCAMHeatmapGenerator` to compute them.
    fills:
        Removal fills to try: ``"blur"`` (mask-aware local blur of the surroundings),
        ``"mean"`` (the surroundings' mean colour), ``"noise"`` (noise with the
        surroundings' mean and spread).
    fill:
        The fill the reading uses; ``"auto"`` takes the least out-of-distribution one: the
        fill whose *control* removals change the predicted class's probability least (the
        control shows how much a fill alone moves predictions).
    n_controls:
        Control placements per image: the region moved (with wrap-around) to where it
        overlaps neither itself, ``avoid`` (bool mask, e.g. other suspected regions) nor
        the image's ``object_centres`` (``(N, ndim)`` pixel positions, row-major).
    match_content:
        Choose the control placements whose content (mean distance of the pixels from the
        image's median colour) is closest to the region's, so that removing part of the
        object is compared with removing another part of the object, and removing blank
        background with removing blank background. Without it, a region on the object
        is compared with controls that mostly land on the background, and the object's
        own importance reads as reliance on the region.
    min_effect:
        Smallest effect (drop of the predicted class's probability beyond the control's)
        that counts as reliance; the region's own drop (or transplant shift) must reach it
        too.
    salient_enrichment:
        "Salient" means the region's attention share is at least this many times its
        area share.
    alpha:
        Significance level of the one-sided sign-flip test of effect > 0 (split between
        the removal and the transplant test when both run).
    n_bootstrap, n_permutations:
        Resamples for the 95% intervals and the p-values.
    batch_size:
        Counterfactual images per forward pass.
    head:
        Prediction head of a multi-output model (see ``GradCAMHeatmapGenerator``).
    device:
        ``None``: the model's device.
    seed:
        Seeds control placements, donors, noise fills and resampling.
    pool:
        Where the forward passes run: ``None`` in this process, or a :class:`ForwardPool`
        (the audit's Ray actors); the counterfactual images are built here either way.

    Returns
    -------
    InterventionResult

    Examples
    --------
    >>> result = intervene(model, images, (3, 3, 9, 9), carriers=has_marker)  # doctest: +SKIP
    >>> result.reading, result.effect.text()                                  # doctest: +SKIP
    ('relied on', '+0.612 [+0.571, +0.650]')
    """
    fills = _check(n_controls, fills, fill, alpha, batch_size)
    n_controls = int(n_controls)
    setup = _setup(
        model, images, regions, carriers, avoid, object_centres, n_controls, match_content, seed
    )
    stats = {"n_bootstrap": int(n_bootstrap), "n_permutations": int(n_permutations)}
    runner = ForwardRunner(model, resolve_device(device, model), int(batch_size), head, pool)
    jobs = _Jobs()
    fill_slices = _plan_removals(jobs, setup, len(fills), n_controls)
    transplant_plan = _plan_transplant(jobs, setup, n_controls, seed)
    extent = region_extent(torch.from_numpy(setup.masks))
    with eval_mode(model), torch.inference_mode():
        original = runner.originals(setup.batch).numpy()
        counterfactual = jobs.run(runner, setup.batch, fills, extent, seed).numpy()

    removal: dict[str, FillResult] = {}
    per_fill: dict[str, dict[str, np.ndarray]] = {}
    for name, slices in zip(fills, fill_slices):
        removal[name], per_fill[name] = _removal_result(
            name, slices, setup, original, counterfactual, stats, seed
        )
    chosen = (
        min(fills, key=lambda name: np.nan_to_num(removal[name].control_disturbance, nan=1.0))
        if fill == "auto"
        else fill
    )
    transplant = None
    if transplant_plan is not None:
        transplant = _transplant_result(
            transplant_plan, setup.found, original, counterfactual, stats, seed
        )
    attention = _attention(heatmaps, generator, setup.batch, setup.masks, setup.tested)
    effect = removal[chosen].effect
    reading, relied, salient = _reading(
        removal[chosen], transplant, attention, min_effect, alpha, salient_enrichment
    )

    rows, n_samples = setup.rows, setup.n_samples
    predicted = original.argmax(axis=1)
    per_sample = {
        "tested": setup.tested,
        "predictions": predicted,
        "probabilities": original[np.arange(n_samples), predicted],
        "region_drop": _scatter(per_fill[chosen]["drop"], rows, n_samples),
        "control_drop": _scatter(per_fill[chosen]["control_drop"], rows, n_samples),
        "region_flip": _scatter(per_fill[chosen]["flip"], rows, n_samples),
    }
    return InterventionResult(
        reading=reading,
        relied_on=relied,
        salient=salient,
        fill=chosen,
        removal=removal,
        effect=effect,
        transplant=transplant,
        attention=attention,
        summary=_summary(reading, removal[chosen], transplant, attention, len(rows)),
        n_samples=n_samples,
        n_tested=len(rows),
        n_forward_passes=runner.n_forward_passes,
        parameters={
            "fills": fills,
            "fill": fill,
            "n_controls": n_controls,
            "match_content": bool(match_content),
            "min_effect": float(min_effect),
            "salient_enrichment": float(salient_enrichment),
            "alpha": float(alpha),
            "n_bootstrap": int(n_bootstrap),
            "n_permutations": int(n_permutations),
            "seed": int(seed),
            "n_missing_controls": int((~setup.found[rows]).sum()),
        },
        per_sample=per_sample,
    )


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence "mean of empty slice" for images without any valid control."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _scatter(values: np.ndarray, rows: np.ndarray, n_samples: int) -> np.ndarray:
    full = np.full(n_samples, np.nan)
    full[rows] = values
    return full


def _summary(
    reading: str,
    removal: FillResult,
    transplant: TransplantResult | None,
    attention: AttentionShare | None,
    n_tested: int,
) -> str:
    effect = removal.effect
    lines = [
        f"Reading: {reading}.",
        f"Removing the region ({removal.fill} fill, {n_tested} images) flips "
        f"{removal.flip_rate.text(percent=True)} of predictions (control "
        f"{removal.control_flip_rate.value:.0%}); the predicted class's probability drops by "
        f"{effect.text()} more than for a control region of the same shape "
        f"(p = {effect.p_value:.3g}).",
    ]
    if transplant is not None:
        lines.append(
            f"Transplanting it onto {transplant.n_recipients} images that lack it moves "
            f"{transplant.moved_share.text(percent=True)} of them to class "
            f"{transplant.target_class} (control {transplant.control_moved_share.value:.0%}); "
            f"effect on its probability {transplant.effect.text()}."
        )
    if attention is not None and attention.n:
        lines.append(
            f"Attention: {attention.share:.0%} of heatmap mass falls in the region, which covers "
            f"{attention.area:.1%} of the image ({attention.enrichment:.1f}x its area share)."
        )
    return "\n".join(lines)
