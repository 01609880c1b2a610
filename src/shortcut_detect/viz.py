"""Overlays and figures. Overlays need only numpy; figures use matplotlib (headless).

Every ``plot_*`` function builds a :class:`matplotlib.figure.Figure` directly (no pyplot,
no display needed, safe in threads and servers), returns it, and saves it as PNG when
``save_path`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shortcut_detect.cam.engine import upsample
from shortcut_detect.cam.image import apply_colormap
from shortcut_detect.results import AttentionOverlapResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "overlay_heatmap",
    "plot_explanation",
    "plot_group_comparison",
    "plot_spray_clusters",
    "plot_top_attention_grid",
    "to_display_image",
]


def to_display_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Any image (``(C, H, W)``, ``(1, C, H, W)``, ``(H, W, C)``, ``(H, W)``; normalised or not)
    as float32 RGB ``(H, W, 3)`` in [0, 1] for display.

    Values already in [0, 1] are kept; anything else (e.g. ImageNet-normalised tensors) is
    min-max scaled. One channel is repeated to three.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"Expected one image, got a batch of {array.shape[0]}")
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    elif array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(1, 2, 0) if array.shape[0] < array.shape[-1] else array
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"Cannot display an image of shape {np.shape(image)}")
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8 or array.max() > 1.0 + 1e-6 or array.min() < -1e-6:
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def overlay_heatmap(
    image: torch.Tensor | np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> np.ndarray:
    """Blend a ``(H, W)`` heatmap on an image: uint8 ``(H, W, 3)``.

    ``alpha`` is the heatmap's opacity (0 shows only the image, 1 only the heatmap).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_display_image(image)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.shape != rgb.shape[:2]:
        raise ValueError(
            f"Heatmap shape {heat.shape} does not match the image's {rgb.shape[:2]}; "
            "generate the heatmap from this image"
        )
    blended = (1.0 - alpha) * rgb + alpha * apply_colormap(heat, colormap)
    return np.uint8(np.clip(blended, 0.0, 1.0) * 255 + 0.5)


# -- figures ---------------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches, not tied to pyplot's state."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - matplotlib is in the analysis extra
        raise ImportError(
            "Figures need matplotlib: pip install 'shortcut-detect[analysis]'"
        ) from error
    return Figure(figsize=(width, height), layout="constrained")


def finish_figure(figure: Figure, save_path: str | Path | None, dpi: int = 110) -> Figure:
    """Save ``figure`` as PNG when ``save_path`` is given; return it."""
    if save_path is not None:
        path = Path(save_path)
        if path.suffix.lower() not in ("", ".png"):
            raise ValueError(f"Figures are saved as PNG; got {path.name!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path.with_suffix(".png"), dpi=dpi, format="png")
    return figure


def _as_map(heatmap: Any, name: str = "heatmap") -> np.ndarray:
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    array = np.asarray(heatmap, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name} must be one (H, W) map, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return array


def _display_heatmap(heatmap: Any, size: Sequence[int] | None = None) -> np.ndarray:
    """A map for display: resized (bilinear) to ``size`` and divided by its maximum.

    Min-max scaled CAMs (maximum 1) are unchanged; raw layer-resolution maps in arbitrary
    units are shown relative to their peak, as CAM tools do. Negative values, if any, are
    shifted up first; an all-zero map stays zero.
    """
    array = _as_map(heatmap)
    if size is not None and tuple(array.shape) != tuple(size):
        array = upsample(torch.from_numpy(array)[None], tuple(size))[0].numpy()
    low = float(array.min())
    if low < 0:
        array = array - low
    high = float(array.max())
    if high > 0:
        array = array / high
    return np.clip(array, 0.0, 1.0)


def _image_list(images: Any, name: str = "images") -> Any:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    if not hasattr(images, "__len__") or len(images) == 0:
        raise ValueError(f"{name} must be a non-empty batch of images")
    return images


def clean_axis(axis: Axes) -> None:
    """Hide an image axis' ticks."""
    axis.set_xticks([])
    axis.set_yticks([])


def plot_explanation(
    image: Any,
    heatmap: Any,
    *,
    alpha: float = 0.4,
    title: str | None = None,
    colormap: str = "jet",
    save_path: str | Path | None = None,
) -> Figure:
    """Original image, heatmap and overlay side by side.

    Parameters
    ----------
    image:
        One image ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)`` (normalised or not).
    heatmap:
        ``(H, W)`` map; a map at another resolution (e.g. the layer's 7x7) is resized
        bilinearly for the overlay.
    alpha:
        Opacity of the heatmap in the overlay.
    title:
        Figure title.
    colormap:
        Matplotlib colormap of the heatmap.
    save_path:
        Save the figure there as PNG.
    """
    rgb = to_display_image(image)
    heat = _display_heatmap(heatmap)
    overlay = overlay_heatmap(
        rgb, _display_heatmap(heatmap, rgb.shape[:2]), alpha=alpha, colormap=colormap
    )
    figure = new_figure(10.5, 3.8)
    axes = figure.subplots(1, 3)
    axes[0].imshow(rgb)
    axes[0].set_title("Original")
    shown = axes[1].imshow(heat, cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest")
    size = "x".join(str(s) for s in heat.shape)
    axes[1].set_title(f"Heatmap ({size})")
    figure.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    axes[2].imshow(overlay)
    axes[2].set_title("Overlay")
    for axis in axes:
        clean_axis(axis)
    if title:
        figure.suptitle(title)
    return finish_figure(figure, save_path)


def _label_text(label: Any) -> str:
    return repr(label) if isinstance(label, str) else str(label)


def plot_group_comparison(
    result: AttentionOverlapResult,
    *,
    colormap: str = "jet",
    save_path: str | Path | None = None,
) -> Figure:
    """Mean attention per group and where it diverges (a diverging colormap).

    For two groups the divergence panel shows ``mean(second) - mean(first)`` in
    ``RdBu_r`` (red: the second group attends more), centred on 0; for more groups, the
    spread of the group means. Pixels that differ significantly (family-wise corrected)
    are outlined, and the divergence peak is marked.

    Parameters
    ----------
    result:
        From :func:`shortcut_detect.analysis.groups.compare_groups` (or
        ``GradCAMHeatmapGenerator.compare_groups``).
    colormap:
        Colormap of the group means.
    save_path:
        Save the figure there as PNG.
    """
    means = result.group_heatmaps
    divergence = result.divergence_regions
    if not means or divergence is None:
        raise ValueError(
            "This result has no group comparison (group_heatmaps / divergence_regions are "
            "empty); make it with compare_groups(heatmaps, group_labels)"
        )
    divergence = np.asarray(divergence, dtype=np.float64)
    if divergence.ndim != 2:
        raise ValueError(f"Only 2-D maps can be drawn; the divergence has shape {divergence.shape}")
    groups = list(result.details.get("group_order", list(means)))
    metrics = result.metrics
    sizes = metrics.get("group_sizes", {})
    panels = len(groups) + 1
    figure = new_figure(3.6 * panels, 3.9)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    top = max(float(np.max(means[g])) for g in groups) or 1.0
    shown = None
    for axis, group in zip(axes, groups):
        shown = axis.imshow(means[group], cmap=colormap, vmin=0.0, vmax=top)
        size = f" (n={sizes[group]})" if group in sizes else ""
        axis.set_title(f"Group {_label_text(group)}{size}\nmean attention")
        clean_axis(axis)
    if shown is not None:
        figure.colorbar(shown, ax=list(axes[:-1]), fraction=0.046, pad=0.02, shrink=0.85)

    axis = axes[-1]
    if len(groups) == 2:
        limit = float(np.abs(divergence).max()) or 1.0
        drawn = axis.imshow(divergence, cmap="RdBu_r", vmin=-limit, vmax=limit)
        label = f"{_label_text(groups[1])} − {_label_text(groups[0])}"
        axis.set_title(f"Divergence ({label})\nred: {_label_text(groups[1])} attends more")
    else:
        drawn = axis.imshow(divergence, cmap="magma", vmin=0.0)
        axis.set_title("Divergence\n(spread of the group means)")
    figure.colorbar(drawn, ax=axis, fraction=0.046, pad=0.04)
    significance = result.details.get("significance_map")
    if significance is not None and np.any(significance) and not np.all(significance):
        axis.contour(
            np.asarray(significance, dtype=float),
            levels=[0.5],
            colors="black" if len(groups) == 2 else "cyan",
            linewidths=1.0,
        )
    peak = metrics.get("divergence_peak")
    if peak is not None and len(peak) == 2:
        axis.plot(peak[1], peak[0], marker="x", color="black", markersize=9, markeredgewidth=2)
    clean_axis(axis)

    headline = f"Attention overlap {result.overlap_score:.0%}"
    if metrics.get("p_value") is not None:
        verdict = "significant" if metrics.get("significant") else "not significant"
        headline += f"; permutation test p = {metrics['p_value']:.3g} ({verdict}"
        if significance is not None and np.any(significance):
            headline += ", outlined: significant pixels"
        headline += ")"
    figure.suptitle(headline)
    return finish_figure(figure, save_path)


def _spray_parts(report_or_detector: Any) -> tuple[dict[str, Any], list[np.ndarray]]:
    if hasattr(report_or_detector, "get_report"):
        report = report_or_detector.get_report()
        full = getattr(report_or_detector, "cluster_mean_maps_", None)
        maps = list(full) if full is not None else None
    elif isinstance(report_or_detector, dict):
        report, maps = report_or_detector, None
    else:
        raise TypeError(
            "plot_spray_clusters takes a fitted SpRAyDetector or its report dict, got "
            f"{type(report_or_detector).__name__}"
        )
    clusters = report.get("details", {}).get("clusters")
    if report.get("method") != "spray" or not clusters:
        raise ValueError("Not a SpRAy report with clusters (report['details']['clusters'])")
    if maps is None:
        maps = [np.asarray(cluster["mean_map"], dtype=np.float64) for cluster in clusters]
    return report, maps


def plot_spray_clusters(
    report_or_detector: Any,
    *,
    images: Any = None,
    heatmaps: Any = None,
    n_examples: int = 6,
    max_clusters: int = 8,
    alpha: float = 0.4,
    save_path: str | Path | None = None,
) -> Figure:
    """SpRAy cluster mosaic: one row per cluster, its mean map, then typical samples.

    Parameters
    ----------
    report_or_detector:
        A fitted :class:`~shortcut_detect.detectors.spray.SpRAyDetector` or its report.
    images:
        The clustered images ``(N, C, H, W)`` (same order as the heatmaps); each row then
        shows the cluster's most typical samples (its ``representatives``).
    heatmaps:
        The clustered heatmaps; with ``images`` they are overlaid on the samples.
    n_examples:
        Samples per row.
    max_clusters:
        Rows drawn (the largest clusters first).
    alpha:
        Heatmap opacity on the samples.
    save_path:
        Save the figure there as PNG.
    """
    report, mean_maps = _spray_parts(report_or_detector)
    clusters = report["details"]["clusters"][:max_clusters]
    if images is not None:
        images = _image_list(images)
    if heatmaps is not None and images is None:
        raise ValueError("heatmaps are drawn on the images; pass images too")
    columns = 1 + (n_examples if images is not None else 0)
    rows = len(clusters)
    if images is None:
        columns, rows = min(4, len(clusters)), math.ceil(len(clusters) / 4)
    figure = new_figure(2.3 * columns + 0.6, 2.5 * rows + 0.6)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for axis in axes.ravel():
        axis.set_axis_off()

    def caption(cluster: dict[str, Any]) -> str:
        text = f"cluster {cluster['cluster']}: n={cluster['size']} ({cluster['share']:.0%})"
        if "majority_group" in cluster:
            text += (
                f"\ngroup {_label_text(cluster['majority_group'])} {cluster['group_purity']:.0%}"
            )
        elif "majority_label" in cluster:
            text += (
                f"\nlabel {_label_text(cluster['majority_label'])} {cluster['label_purity']:.0%}"
            )
        if cluster.get("flagged"):
            text += "\nFLAGGED: small region"
        return text

    for position, cluster in enumerate(clusters):
        if images is None:
            axis = axes[position // columns, position % columns]
        else:
            axis = axes[position, 0]
        axis.set_axis_on()
        axis.imshow(mean_maps[cluster["cluster"]], cmap="jet", vmin=0.0)
        colour = "firebrick" if cluster.get("flagged") else "black"
        axis.set_title(caption(cluster), fontsize=9, color=colour)
        clean_axis(axis)
        if cluster.get("flagged"):
            for spine in axis.spines.values():
                spine.set_edgecolor("firebrick")
                spine.set_linewidth(2.5)
        if images is None:
            continue
        for column, index in enumerate(cluster.get("representatives", [])[:n_examples], start=1):
            if index >= len(images):
                raise ValueError(
                    f"Cluster {cluster['cluster']} refers to sample {index}, but only "
                    f"{len(images)} images were given; pass the images that were clustered"
                )
            rgb = to_display_image(images[index])
            if heatmaps is not None:
                rgb = overlay_heatmap(
                    rgb, _display_heatmap(heatmaps[index], rgb.shape[:2]), alpha=alpha
                )
            sample_axis = axes[position, column]
            sample_axis.imshow(rgb)
            sample_axis.set_title(f"#{index}", fontsize=8)
            sample_axis.set_axis_off()
    metrics = report.get("metrics", {})
    headline = f"SpRAy: {metrics.get('n_clusters', len(clusters))} clusters"
    if metrics.get("ari_groups") is not None:
        headline += f", adjusted Rand index vs groups {metrics['ari_groups']:.2f}"
    figure.suptitle(headline)
    return finish_figure(figure, save_path)


def plot_top_attention_grid(
    images: Any,
    heatmaps: Any,
    scores: Any,
    *,
    k: int = 12,
    columns: int = 6,
    alpha: float = 0.4,
    score_name: str = "attention on region",
    title: str | None = None,
    save_path: str | Path | None = None,
) -> Figure:
    """Grid of the ``k`` samples with the highest score (e.g. attention on a shortcut).

    Parameters
    ----------
    images:
        ``(N, C, H, W)`` (or ``(N, H, W, C)``) images.
    heatmaps:
        ``(N, h, w)`` heatmaps, overlaid on the images (resized if needed).
    scores:
        ``(N,)`` score per sample (e.g. ``attention_in_region(...).fractions``); NaN
        scores (undefined, e.g. no marker) are skipped.
    k, columns:
        How many samples and how many per row.
    alpha:
        Heatmap opacity.
    score_name:
        What the score is, for the title.
    title:
        Figure title (default says what is shown).
    save_path:
        Save the figure there as PNG.
    """
    images = _image_list(images)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(values) != len(images) or len(heatmaps) != len(images):
        raise ValueError(
            f"images ({len(images)}), heatmaps ({len(heatmaps)}) and scores ({len(values)}) "
            "must have one entry per sample"
        )
    if k < 1 or columns < 1:
        raise ValueError(f"k and columns must be positive, got k={k}, columns={columns}")
    defined = np.flatnonzero(~np.isnan(values))
    if defined.size == 0:
        raise ValueError("All scores are NaN; there is nothing to rank")
    top = defined[np.argsort(-values[defined], kind="stable")[:k]]
    columns = min(columns, len(top))
    rows = math.ceil(len(top) / columns)
    figure = new_figure(2.2 * columns, 2.35 * rows + 0.5)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for axis in axes.ravel():
        axis.set_axis_off()
    percent = bool(np.all((values[defined] >= 0) & (values[defined] <= 1)))
    for position, index in enumerate(top):
        rgb = to_display_image(images[index])
        blended = overlay_heatmap(
            rgb, _display_heatmap(heatmaps[index], rgb.shape[:2]), alpha=alpha
        )
        axis = axes[position // columns, position % columns]
        axis.imshow(blended)
        value = f"{values[index]:.1%}" if percent else f"{values[index]:.3g}"
        axis.set_title(f"#{index}: {value}", fontsize=9)
    figure.suptitle(title or f"Top {len(top)} samples by {score_name}")
    return finish_figure(figure, save_path)
