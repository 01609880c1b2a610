"""Content that replaces a region and carries no shortcut: built from the region's surroundings.

Every fill works on a batch ``(B, C, *spatial)`` with masks ``(B, *spatial)`` (2-D or 3-D)
and only uses pixels outside the mask, so whatever the region held cannot leak through.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["FILLS", "apply_fill", "region_extent", "ring", "ring_width"]


def _pool(values: torch.Tensor, kernel: int, kind: str = "avg") -> torch.Tensor:
    """Box mean (or max) over a ``kernel``-wide cube, one axis at a time (separable, so the
    cost grows with the kernel's side, not its volume); zero padding, same size out."""
    spatial = values.ndim - 2
    pool = {
        ("avg", 2): F.avg_pool2d,
        ("avg", 3): F.avg_pool3d,
        ("max", 2): F.max_pool2d,
        ("max", 3): F.max_pool3d,
    }[(kind, spatial)]
    for axis in range(spatial):
        size = [1] * spatial
        size[axis] = kernel
        padding = [0] * spatial
        padding[axis] = kernel // 2
        values = pool(values, tuple(size), stride=1, padding=tuple(padding))
    return values


def ring(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Float ``(B, 1, *spatial)``: the pixels within ``width`` of the region, outside it."""
    region = masks[:, None].float()
    grown = _pool(region, 2 * width + 1, "max")
    return grown * (1 - region)


def region_extent(masks: torch.Tensor) -> int:
    """Largest side of the regions' bounding boxes (over the batch)."""
    longest = 1
    for axis in range(1, masks.ndim):
        other = tuple(a for a in range(1, masks.ndim) if a != axis)
        present = masks.any(dim=other) if other else masks
        rows = present[present.any(dim=1)]
        if len(rows):
            size = rows.shape[1]
            first = rows.int().argmax(dim=1)
            last = size - 1 - rows.flip(1).int().argmax(dim=1)
            longest = max(longest, int((last - first + 1).max()))
    return longest


def _ring_stats(
    images: torch.Tensor, masks: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = ring(masks, width)
    dims = tuple(range(2, images.ndim))
    count = weights.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (images * weights).sum(dim=dims, keepdim=True) / count
    var = (((images - mean) ** 2) * weights).sum(dim=dims, keepdim=True) / count
    return mean, var.sqrt()


def ring_width(extent: int) -> int:
    """Width of the ring the fills take their colours from, for a region of ``extent``."""
    return max(2, extent // 2)


def fill_blur(
    images: torch.Tensor, masks: torch.Tensor, extent: int, generator: torch.Generator | None
) -> torch.Tensor:
    """A local blur of the surroundings: each region pixel gets the mean of the non-region
    pixels in a window twice the region's size (a mask-aware box blur)."""
    limit = min(images.shape[2:])
    kernel = min(2 * extent + 1, limit if limit % 2 else limit - 1)
    outside = 1 - masks[:, None].float()
    numerator = _pool(images * outside, kernel)
    denominator = _pool(outside, kernel)
    mean, _ = _ring_stats(images, masks, ring_width(extent))
    return torch.where(denominator > 1e-6, numerator / denominator.clamp_min(1e-6), mean)


def fill_mean(
    images: torch.Tensor, masks: torch.Tensor, extent: int, generator: torch.Generator | None
) -> torch.Tensor:
    """The mean colour of the region's surroundings (a ring around it), per channel."""
    mean, _ = _ring_stats(images, masks, ring_width(extent))
    return mean.expand_as(images)


def fill_noise(
    images: torch.Tensor, masks: torch.Tensor, extent: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Gaussian noise with the mean and standard deviation of the region's surroundings."""
    mean, std = _ring_stats(images, masks, ring_width(extent))
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return mean + std * noise.to(images.device)


FillFunction = Callable[[torch.Tensor, torch.Tensor, int, "torch.Generator | None"], torch.Tensor]

#: Fill name -> function ``(images, masks, extent, generator) -> fill content`` (full-size);
#: ``extent`` is the region's size in pixels (it sets the blur window and the ring width).
FILLS: dict[str, FillFunction] = {"blur": fill_blur, "mean": fill_mean, "noise": fill_noise}


def apply_fill(
    images: torch.Tensor,
    masks: torch.Tensor,
    fill: str,
    generator: torch.Generator | None = None,
    extent: int | None = None,
) -> torch.Tensor:
    """``images`` with the masked pixels replaced by the ``fill`` content.

    ``extent`` is the region's largest side in pixels (default: measured on ``masks``; pass
    the original region's when ``masks`` are moved copies that wrap around the border).
    """
    extent = region_extent(masks) if extent is None else int(extent)
    content = FILLS[fill](images, masks, extent, generator)
    region = masks[:, None].to(images.dtype)
    return images * (1 - region) + content * region
