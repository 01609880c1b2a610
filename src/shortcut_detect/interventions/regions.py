"""Regions to intervene on: validated masks from boxes or masks, and control placements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shortcut_detect.analysis.regions import box_mask, is_box, mask_stack
from shortcut_detect.interventions.fills import region_extent, ring, ring_width

__all__ = ["as_image_batch", "content_map", "control_masks", "region_masks"]


def as_image_batch(images: Any) -> torch.Tensor:
    """``images`` as a float tensor ``(N, C, H, W)`` or ``(N, C, D, H, W)``, validated."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a tensor or numpy array (N, C, H, W); got {type(images).__name__}"
        )
    if images.ndim not in (4, 5):
        raise ValueError(
            "images must be a batch (N, C, H, W) or (N, C, D, H, W) of volumes; got shape "
            f"{tuple(images.shape)}. Add the batch axis with images[None] for one image."
        )
    if images.shape[0] == 0:
        raise ValueError("images is empty (0 images); pass at least 2 images to intervene on")
    if not torch.is_floating_point(images):
        images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf values; clean them before intervening")
    return images


def region_masks(region: Any, n_samples: int, spatial: Sequence[int]) -> np.ndarray:
    """Bool masks ``(N, *spatial)`` of a region given as a box or masks.

    Parameters
    ----------
    region:
        A box ``(x0, y0, x1, y1)`` (``(x0, y0, z0, x1, y1, z1)`` for volumes; pixels,
        upper bounds exclusive, i.e. ``mask[y0:y1, x0:x1]``), or a mask of the images'
        spatial size shared by all images or one per image (bool, or numbers in [0, 1],
        read as "in the region" above 0.5).
    n_samples:
        ``N``, the number of images.
    spatial:
        Spatial size of the images, ``(H, W)`` or ``(D, H, W)``.
    """
    spatial = tuple(int(s) for s in spatial)
    if is_box(region):
        masks = box_mask(list(region), spatial)[None]
    else:
        masks = mask_stack(region, n_samples, len(spatial))
        if masks.shape[1:] != spatial:
            raise ValueError(
                f"Region mask of shape {masks.shape} does not fit images of spatial size "
                f"{spatial}: give one mask {spatial}, one per image {(n_samples, *spatial)}, "
                "or a box"
            )
        if masks.dtype != bool:
            masks = masks > 0.5
    if not masks.any():
        raise ValueError("The region is empty (no pixel of the mask is set); nothing to change")
    if masks.reshape(len(masks), -1).all(axis=1).any():
        raise ValueError(
            "The region covers a whole image; an intervention needs some of the image left "
            "outside the region (for the fill and the control)"
        )
    return np.broadcast_to(masks, (n_samples, *spatial)).copy()


def _covers(masks: np.ndarray, centres: np.ndarray) -> np.ndarray:
    index = (np.arange(len(masks)), *np.clip(np.round(centres).astype(int), 0, None).T)
    clipped = tuple(
        np.minimum(axis, size - 1) if k else axis
        for k, (axis, size) in enumerate(zip(index, (len(masks), *masks.shape[1:])))
    )
    return masks[clipped]


def content_map(images: torch.Tensor) -> np.ndarray:
    """Per-pixel content ``(N, *spatial)``: each pixel's distance from its image's median
    colour, summed over channels. Background is near 0; objects, strokes and markers are not."""
    flat = images.reshape(*images.shape[:2], -1)
    median = flat.median(dim=2).values.reshape(*images.shape[:2], *([1] * (images.ndim - 2)))
    return (images - median).abs().sum(dim=1).numpy().astype(np.float64)


def _content_under(masks: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Mean content under each mask ``(N,)`` (0 for empty masks)."""
    flat_masks = masks.reshape(len(masks), -1)
    total = (flat_masks * content.reshape(len(content), -1)).sum(axis=1)
    return total / np.maximum(flat_masks.sum(axis=1), 1)


def control_masks(
    masks: np.ndarray,
    n_controls: int,
    *,
    avoid: np.ndarray | None = None,
    object_centres: np.ndarray | None = None,
    content: np.ndarray | None = None,
    seed: int = 0,
    n_tries: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Control regions: each sample's region moved (circularly) to where it overlaps neither
    the region, ``avoid`` nor the object's centre.

    Parameters
    ----------
    content:
        Optional per-pixel content ``(N, *spatial)`` (see :func:`content_map`). When given,
        the controls are the placements whose mean content, inside and in the ring around
        them (where the fills take their colours from), is closest to the region's, among
        all valid placements of the ``n_tries`` random shifts.
        Removing a region changes a prediction partly because of *how much* of the image it
        removes (object versus blank background); a control that removes as much content
        elsewhere leaves only *where* the region is as the difference, so a region that
        happens to cover the object (e.g. off-centre strokes of a centred digit) is not
        mistaken for a shortcut.

    Returns ``(controls, found)``: ``controls`` bool ``(N, n_controls, *spatial)``;
    ``found`` bool ``(N, n_controls)``, False where no valid placement was found among
    ``n_tries`` random shifts (that control is then left out).
    """
    n_samples, spatial = masks.shape[0], masks.shape[1:]
    rng = np.random.default_rng(seed)
    shifts = np.stack([rng.integers(0, size, n_tries) for size in spatial], axis=1)
    forbidden = masks if avoid is None else masks | np.broadcast_to(avoid, masks.shape)
    wanted = n_controls if content is None else n_tries
    axes = tuple(range(1, masks.ndim))
    used: list[np.ndarray] = []  # the shifts tried
    valid_rows: list[np.ndarray] = []  # per shift tried: (N,) valid for that sample
    scores: list[np.ndarray] = []  # per shift tried: (N, 2) content inside and around it
    if content is not None:
        rings = ring(torch.from_numpy(masks), ring_width(region_extent(torch.from_numpy(masks))))
        rings = rings[:, 0].numpy() > 0
        target = np.stack([_content_under(masks, content), _content_under(rings, content)], 1)
    filled = np.zeros(n_samples, dtype=np.int64)
    for shift in shifts:
        if (filled >= wanted).all():
            break
        if not shift.any():
            continue
        moved = np.roll(masks, tuple(int(s) for s in shift), axis=axes)
        valid = ~(moved & forbidden).reshape(n_samples, -1).any(axis=1)
        if object_centres is not None:
            valid &= ~_covers(moved, object_centres)
        valid &= filled < wanted
        filled += valid
        used.append(shift)
        valid_rows.append(valid)
        if content is not None:
            moved_ring = np.roll(rings, tuple(int(s) for s in shift), axis=axes)
            scores.append(
                np.stack([_content_under(moved, content), _content_under(moved_ring, content)], 1)
            )
    controls = np.zeros((n_samples, n_controls, *spatial), dtype=bool)
    found = np.zeros((n_samples, n_controls), dtype=bool)
    if not used:
        return controls, found
    valid_table = np.stack(valid_rows, axis=1)  # (N, shifts tried)
    if content is None:
        order = np.broadcast_to(np.arange(len(used)), valid_table.shape)
    else:
        distance = np.abs(np.stack(scores, axis=1) - target[:, None]).sum(axis=2)
        order = np.argsort(np.where(valid_table, distance, np.inf), axis=1, kind="stable")
    for sample in range(n_samples):
        chosen = [k for k in order[sample] if valid_table[sample, k]][:n_controls]
        for slot, k in enumerate(chosen):
            controls[sample, slot] = np.roll(
                masks[sample], tuple(int(s) for s in used[k]), axis=tuple(range(len(spatial)))
            )
            found[sample, slot] = True
    return controls, found
