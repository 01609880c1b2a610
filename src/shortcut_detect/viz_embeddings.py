"""Figures for embedding maps, activation grids and LIME explanations (matplotlib, headless).

Like :mod:`shortcut_detect.viz`, every ``plot_*`` function builds a
:class:`matplotlib.figure.Figure` without pyplot, returns it, and saves it as PNG when
``save_path`` is given.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shortcut_detect.analysis.embedding_map import (
    EmbeddingMap,
    MapDescription,
    category_names,
    is_missing,
)
from shortcut_detect.viz import (
    clean_axis,
    finish_figure,
    new_figure,
    overlay_heatmap,
    to_display_image,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from shortcut_detect.analysis.activations import ActivationGrid
    from shortcut_detect.lime import LimeExplanation

__all__ = ["plot_activation_grid", "plot_embedding_map", "plot_lime"]

#: More distinct values than this (for numbers) are drawn on a continuous colour scale.
MAX_CATEGORIES = 20
MISSING_LABEL = "missing"


def _is_continuous(values: np.ndarray) -> bool:
    if values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        return len(np.unique(finite)) > MAX_CATEGORIES
    return values.dtype.kind in "iu" and len(np.unique(values)) > MAX_CATEGORIES


def _category_text(value: Any, names: dict[Any, str] | None) -> str:
    if names is not None and value in names:
        return str(names[value])
    return str(value)


def plot_embedding_map(
    result: EmbeddingMap,
    colour_by: Any = None,
    *,
    name: str = "",
    names: dict[Any, str] | None = None,
    description: MapDescription | str | None = None,
    title: str | None = None,
    point_size: float | None = None,
    ax: Axes | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Scatter plot of an embedding map, one colour per value of ``colour_by``.

    Parameters
    ----------
    result:
        From :func:`shortcut_detect.analysis.embedding_map.embedding_map`.
    colour_by:
        One value per input point (or per map point): label, group, prediction, correct or
        not, SpRAy cluster... Categories get one scatter each (with a legend entry and its
        count); numbers with more than 20 distinct values (e.g. confidence) a colour scale.
        ``None`` / NaN values are drawn grey as "missing". ``None`` draws all points alike.
    name:
        What ``colour_by`` is (legend title), e.g. ``"group"``.
    names:
        Display names of values, e.g. ``{0: "disk", 1: "cross"}``.
    description:
        A :class:`~shortcut_detect.analysis.embedding_map.MapDescription` (or text) shown
        under the title.
    title:
        Figure title (default: the method and the number of points).
    point_size:
        Marker area; default shrinks with the number of points.
    ax:
        Draw into this axis (its figure is returned) instead of a new figure.
    save_path:
        Save the figure there as PNG.
    """
    if not isinstance(result, EmbeddingMap):
        raise TypeError(
            f"plot_embedding_map takes an EmbeddingMap (from embedding_map()), got "
            f"{type(result).__name__}"
        )
    points = result.coordinates
    size = point_size if point_size is not None else float(np.clip(4000 / len(points), 2, 30))
    if ax is None:
        figure = new_figure(6.4, 5.6)
        axis = figure.subplots()
    else:
        axis, figure = ax, ax.figure
    if colour_by is None:
        axis.scatter(points[:, 0], points[:, 1], s=size, c="tab:blue", linewidths=0)
    else:
        values = result.values_for_points(colour_by, "colour_by")
        if values.ndim != 1:
            raise ValueError(f"colour_by must have one value per point, got shape {values.shape}")
        if _is_continuous(values):
            numbers = values.astype(np.float64)
            known = np.isfinite(numbers)
            if (~known).any():
                axis.scatter(*points[~known].T, s=size, c="lightgrey", label=MISSING_LABEL)
            drawn = axis.scatter(
                *points[known].T, s=size, c=numbers[known], cmap="viridis", linewidths=0
            )
            figure.colorbar(drawn, ax=axis, label=name or None)
        else:
            _categorical_scatter(axis, points, values, size, name, names)
    axis.set_xticks([])
    axis.set_yticks([])
    method = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}.get(result.method, result.method)
    heading = title or f"{method} map of {len(points):,} points"
    if result.subsampled and title is None:
        heading += f" (random subset of {result.n_input:,})"
    if name and title is None:
        heading += f", coloured by {name}"
    text = str(description) if description is not None else ""
    axis.set_title(heading + ("\n" + _wrap(text, 80) if text else ""), fontsize=10)
    return finish_figure(figure, save_path)


def _categorical_scatter(
    axis: Axes,
    points: np.ndarray,
    values: np.ndarray,
    size: float,
    name: str,
    names: dict[Any, str] | None,
) -> None:
    plain = [item.item() if isinstance(item, np.generic) else item for item in values]
    categories = category_names(plain)
    missing = np.array([is_missing(item) for item in plain], dtype=bool)
    palette = _palette(len(categories))
    for colour, category in zip(palette, categories):
        chosen = np.array([item == category for item in plain], dtype=bool) & ~missing
        label = f"{_category_text(category, names)} (n={int(chosen.sum()):,})"
        axis.scatter(*points[chosen].T, s=size, color=colour, label=label, linewidths=0)
    if missing.any():
        label = f"{MISSING_LABEL} (n={int(missing.sum()):,})"
        axis.scatter(*points[missing].T, s=size, color="lightgrey", label=label, linewidths=0)
    axis.legend(
        title=name or None,
        fontsize=8,
        markerscale=max(1.0, 6 / math.sqrt(size)),
        loc="best",
        frameon=True,
    )


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](i / max(1, count - 1)) for i in range(count)]


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_activation_grid(
    grid: ActivationGrid,
    image: Any = None,
    *,
    columns: int = 4,
    heatmap: Any = None,
    save_path: str | Path | None = None,
) -> Figure:
    """The strongest channels of a layer, their mean, and optionally the image and a
    Grad-CAM map for comparison.

    Channels share one colour scale (weak channels look weak). Each tile is titled with
    the channel index and its mean activation.

    Parameters
    ----------
    grid:
        From :func:`shortcut_detect.analysis.activations.activation_grid`.
    image:
        The input image, shown first.
    columns:
        Tiles per row.
    heatmap:
        A ``(H, W)`` map in [0, 1] (e.g. Grad-CAM of the same layer), overlaid on the image.
    save_path:
        Save the figure there as PNG.
    """
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    if heatmap is not None and image is None:
        raise ValueError("the heatmap is drawn on the image; pass image too")
    extra = [("Image", "image")] if image is not None else []
    if heatmap is not None:
        extra.append(("Grad-CAM", "heatmap"))
    extra.append((f"Mean of top {len(grid.channels)}", "mean"))
    tiles = len(extra) + len(grid.channels)
    columns = min(columns, tiles)
    rows = math.ceil(tiles / columns)
    figure = new_figure(2.2 * columns, 2.3 * rows + 0.5)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis in axes:
        axis.set_axis_off()
    scaled = grid.normalized()
    position = 0
    for caption, kind in extra:
        axis = axes[position]
        if kind == "image":
            axis.imshow(to_display_image(image))
        elif kind == "heatmap":
            axis.imshow(overlay_heatmap(image, np.asarray(heatmap, dtype=np.float32)))
        else:
            mean = grid.mean_map
            peak = float(mean.max())
            axis.imshow(mean / peak if peak > 0 else mean, cmap="viridis", vmin=0.0, vmax=1.0)
        axis.set_title(caption, fontsize=9)
        axis.set_axis_on()
        clean_axis(axis)
        position += 1
    for channel, mean, tile in zip(grid.channels, grid.channel_means, scaled):
        axis = axes[position]
        axis.imshow(tile, cmap="viridis", vmin=0.0, vmax=1.0)
        axis.set_title(f"ch {int(channel)}: {float(mean):.3g}", fontsize=8)
        axis.set_axis_on()
        clean_axis(axis)
        position += 1
    figure.suptitle(f"Strongest channels of {grid.layer} (raw activations, shared scale)")
    return finish_figure(figure, save_path)


def plot_lime(
    explanation: LimeExplanation,
    image: Any,
    *,
    top_k: int | None = None,
    alpha: float = 0.5,
    class_names: Any = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Image with superpixel borders, the signed weights, and the top superpixels.

    Parameters
    ----------
    explanation:
        From :func:`shortcut_detect.lime.explain_lime`.
    image:
        The explained image.
    top_k:
        Superpixels highlighted in the last panel (default all of ``top_superpixels``).
    alpha:
        Opacity of the heatmap in the overlay.
    class_names:
        Names of the classes, for the title.
    save_path:
        Save the figure there as PNG.
    """
    rgb = to_display_image(image)
    if rgb.shape[:2] != explanation.segments.shape:
        raise ValueError(
            f"image size {rgb.shape[:2]} does not match the explanation's "
            f"{explanation.segments.shape}; pass the explained image"
        )
    segments = explanation.segments
    borders = np.zeros(segments.shape, dtype=bool)
    borders[:-1] |= segments[:-1] != segments[1:]
    borders[:, :-1] |= segments[:, :-1] != segments[:, 1:]
    outlined = rgb.copy()
    outlined[borders] = (1.0, 1.0, 0.0)
    signed = explanation.signed_map()
    limit = float(np.abs(signed).max()) or 1.0
    selected = explanation.top_mask(top_k)
    highlighted = rgb * np.where(selected[..., None], 1.0, 0.25)

    figure = new_figure(13.5, 3.8)
    axes = figure.subplots(1, 4)
    axes[0].imshow(outlined)
    axes[0].set_title(f"{explanation.n_superpixels} superpixels")
    drawn = axes[1].imshow(signed, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axes[1].set_title("Weights (red: supports the class)")
    figure.colorbar(drawn, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(overlay_heatmap(rgb, explanation.heatmap, alpha=alpha))
    axes[2].set_title("Positive weights")
    axes[3].imshow(highlighted)
    shown = (
        len(explanation.top_superpixels)
        if top_k is None
        else min(top_k, len(explanation.top_superpixels))
    )
    axes[3].set_title(f"Top {shown} superpixels")
    for axis in axes:
        clean_axis(axis)
    target = explanation.target
    label = str(class_names[target]) if class_names is not None else f"class {target}"
    figure.suptitle(
        f"LIME for {label} (p = {explanation.target_probability:.2f}); "
        f"{explanation.num_samples} samples, surrogate R² = {explanation.score:.2f}"
    )
    return finish_figure(figure, save_path)
