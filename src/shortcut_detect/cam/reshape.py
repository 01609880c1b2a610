"""Reshape transforms: transformer layer outputs to ``(B, C, H, W)`` feature maps.

Pass one as ``reshape_transform=`` to any CAM class or to ``GradCAMHeatmapGenerator``:

* :func:`vit_reshape_transform` for ViT-style tokens ``(B, N, C)`` (torchvision
  ``vit_b_16``: ``encoder.layers[-1].ln_1``; timm ViTs: ``blocks[-1].norm1``). Class and
  register tokens in front of the patch tokens are dropped; the grid is inferred.
* :func:`swin_reshape_transform` for Swin-style ``(B, H, W, C)`` outputs (torchvision
  ``swin_t``: ``features[-1][-1].norm1``) and for square token sequences ``(B, H*W, C)``.

Both accept ``height``/``width`` (and ``num_prefix_tokens`` for ViT) for grids that cannot
be inferred, e.g. via ``functools.partial(vit_reshape_transform, height=14, width=20)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from shortcut_detect.cam.engine import current_input_size

__all__ = ["fasterrcnn_reshape_transform", "swin_reshape_transform", "vit_reshape_transform"]


# Leading non-patch tokens seen in practice: none, class, class + distillation, and class
# tokens with 4, 8 or 16 register tokens.
_PREFIX_CANDIDATES = (0, 1, 2, 4, 5, 8, 9, 16, 17)


def _grid(tokens: int, height: int | None, width: int | None) -> tuple[int, int] | None:
    """A ``(rows, columns)`` grid of ``tokens``: the given sides, else a square."""
    if height is not None and width is not None:
        return (height, width) if height * width == tokens else None
    if height is not None:
        return (height, tokens // height) if tokens % height == 0 else None
    if width is not None:
        return (tokens // width, width) if tokens % width == 0 else None
    side = math.isqrt(tokens)
    return (side, side) if side > 0 and side * side == tokens else None


def _patch_grid(tokens: int, image: tuple[int, ...]) -> tuple[int, int] | None:
    """The grid of square patches of one integer size that tile an ``image`` of ``(H, W)``."""
    if len(image) != 2 or tokens < 1:
        return None
    height, width = image
    for rows in range(1, tokens + 1):
        if tokens % rows:
            continue
        columns = tokens // rows
        if height % rows == 0 and width % columns == 0 and height // rows == width // columns:
            return rows, columns
    return None


def vit_reshape_transform(
    tensor: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
    num_prefix_tokens: int | None = None,
) -> torch.Tensor:
    """ViT tokens ``(B, N, C)`` -> ``(B, C, H, W)``, dropping the leading non-patch tokens.

    Parameters
    ----------
    tensor:
        ``(B, N, C)`` tokens, the patch tokens last (torchvision and timm order).
    height, width:
        Patch grid. ``None`` infers it. Inside a CAM call the image size is known, and the
        grid is preferably the one whose patches tile the image at one integer patch size
        (so rectangular images work); otherwise the grid is assumed square. With
        ``num_prefix_tokens`` unknown, the fewest leading tokens (0, 1, 2, or a class
        token with 4, 8 or 16 registers) that leave such a grid are dropped.
    num_prefix_tokens:
        Number of leading non-patch tokens (timm models expose ``model.num_prefix_tokens``).
        Give it for models with register tokens, where a guess can be ambiguous.

    Raises
    ------
    ValueError
        If no grid fits; the message says which arguments to pass.
    """
    if tensor.ndim != 3:
        raise ValueError(
            f"vit_reshape_transform expects tokens (B, N, C), got shape {tuple(tensor.shape)}; "
            "for (B, H, W, C) outputs use swin_reshape_transform."
        )
    tokens = tensor.shape[1]
    if num_prefix_tokens is not None:
        candidates: tuple[int, ...] = (int(num_prefix_tokens),)
    elif height is not None and width is not None:
        candidates = (tokens - height * width,)
    else:
        candidates = _PREFIX_CANDIDATES
    image = current_input_size()
    searches = []
    if height is None and width is None and image is not None:
        searches.append(lambda count: _patch_grid(count, image))  # patches tiling the image
    searches.append(lambda count: _grid(count, height, width))  # given sides, else square
    for search in searches:
        for prefix in candidates:
            grid = search(tokens - prefix) if 0 <= prefix < tokens else None
            if grid is not None:
                patches = tensor[:, prefix:, :]
                shape = (tensor.shape[0], *grid, tensor.shape[2])
                return patches.reshape(shape).permute(0, 3, 1, 2)
    raise ValueError(
        f"Cannot arrange {tokens} tokens into a patch grid"
        + (f" of {height}x{width}" if height or width else "")
        + (f" for a {image[0]}x{image[1]} image" if image is not None and len(image) == 2 else "")
        + (f" after {num_prefix_tokens} prefix tokens" if num_prefix_tokens is not None else "")
        + ". Pass height=, width= (the patch grid) and num_prefix_tokens= (class + register "
        "tokens), e.g. functools.partial(vit_reshape_transform, height=14, width=14)."
    )


def swin_reshape_transform(
    tensor: torch.Tensor, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """Swin outputs ``(B, H, W, C)`` (or tokens ``(B, H*W, C)``) -> ``(B, C, H, W)``.

    For tokens, the grid is ``height`` x ``width`` when given, else inferred as for
    :func:`vit_reshape_transform` (no prefix tokens).
    """
    if tensor.ndim == 4:
        return tensor.permute(0, 3, 1, 2)
    if tensor.ndim == 3:
        image = current_input_size()
        grid = None
        if height is None and width is None and image is not None:
            grid = _patch_grid(tensor.shape[1], image)
        grid = grid or _grid(tensor.shape[1], height, width)
        if grid is None:
            raise ValueError(
                f"Cannot arrange {tensor.shape[1]} tokens into a square grid; pass height= "
                "and width=."
            )
        return tensor.reshape(tensor.shape[0], *grid, tensor.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(
        f"swin_reshape_transform expects (B, H, W, C) or (B, N, C), got {tuple(tensor.shape)}"
    )


def fasterrcnn_reshape_transform(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A detection backbone's feature pyramid (a dict of maps) -> one ``(B, C, h, w)`` map.

    Each level's absolute value is resized (bilinear) to the ``"pool"`` level's size (the
    smallest, or the last level when there is none) and the levels are stacked along the
    channels, as pytorch-grad-cam's ``fasterrcnn_reshape_transform`` does. For
    ``model.backbone`` of torchvision's Faster R-CNN models with a gradient-free method
    (EigenCAM, ScoreCAM, ...).
    """
    if not isinstance(features, Mapping) or not features:
        raise ValueError(
            "fasterrcnn_reshape_transform expects the backbone's dict of feature maps "
            f"(e.g. model.backbone of a torchvision Faster R-CNN), got {type(features).__name__}"
        )
    levels = list(features.values())
    reference = features.get("pool", levels[-1])
    size = tuple(reference.shape[2:])
    resized = [
        F.interpolate(level.abs(), size=size, mode="bilinear", align_corners=False)
        for level in levels
    ]
    return torch.cat(resized, dim=1)
