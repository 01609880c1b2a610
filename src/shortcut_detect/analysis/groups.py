"""Compare where a model looks across groups of samples, with a permutation test.

The test is the max-statistic permutation test (Nichols & Holmes, 2002): a per-pixel
statistic is computed for the real labels and for ``n_permutations`` random relabelings;
the maximum over pixels under relabeling gives both a global p-value ("is attention
different anywhere?") and per-pixel p-values controlled for the family-wise error rate
over all pixels.

The default statistic compares attention *distributions* (each map divided by its sum, as
in the seed's attention-fraction definition): the difference of the groups' mean attention
mass at each pixel. It answers "does attention go to different places?" in units a person
can read. ``statistic="t"`` standardises each pixel instead (Welch's t / ANOVA F); it is
more sensitive, and with a few hundred samples also flags small but consistent
differences where attention barely varies (e.g. a faint response to a marker that a
model does not rely on).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.analysis.maps import (
    area_resize,
    as_heatmap_stack,
    entropy,
    location_words,
    mass_normalize,
    mass_overlap,
    overlap_per_sample,
)
from shortcut_detect.results import AttentionOverlapResult, HeatmapGenerator

__all__ = ["GroupTest", "compare_groups", "group_codes", "permutation_max_test"]

DEFAULT_MAX_TEST_CELLS = 1024  # 32x32: CAMs come from 7x7..28x28 layers; finer adds nothing


def _plain(label: Any) -> Hashable:
    """numpy scalars as Python scalars, so ``result.group_heatmaps[0]`` works."""
    return label.item() if isinstance(label, np.generic) else label


def group_codes(group_labels: Any, n_samples: int) -> tuple[list[Hashable], np.ndarray]:
    """Validate labels; return the groups (sorted when possible) and an int code per sample."""
    if hasattr(group_labels, "detach"):
        group_labels = group_labels.detach().cpu().numpy()
    if isinstance(group_labels, np.ndarray):
        if group_labels.ndim != 1:
            raise ValueError(f"group_labels must be 1-D, got shape {group_labels.shape}")
        labels = [_plain(value) for value in group_labels]
    elif isinstance(group_labels, (str, bytes)) or not isinstance(group_labels, Sequence):
        raise TypeError(
            f"group_labels must be a sequence or 1-D array, got {type(group_labels).__name__}"
        )
    else:
        labels = [_plain(value) for value in group_labels]
    if len(labels) != n_samples:
        raise ValueError(
            f"Got {len(labels)} group labels for {n_samples} heatmaps; give exactly one label "
            "per sample, in the same order"
        )
    for index, label in enumerate(labels):
        if label is None or (isinstance(label, float) and math.isnan(label)):
            raise ValueError(
                f"group_labels[{index}] is missing ({label!r}); drop unlabelled samples or "
                "give them their own label"
            )
        try:
            hash(label)
        except TypeError as error:
            raise TypeError(
                f"group_labels[{index}] = {label!r} is not hashable; use str/int labels"
            ) from error
    unique = list(dict.fromkeys(labels))
    with contextlib.suppress(TypeError):  # mixed types: keep order of first appearance
        unique = sorted(unique)
    index_of = {label: code for code, label in enumerate(unique)}
    return unique, np.array([index_of[label] for label in labels], dtype=np.int64)


STATISTICS = ("mass_difference", "t")


class GroupTest:
    """Per-pixel group statistic and its max-statistic permutation null.

    Parameters
    ----------
    data:
        ``(N, P)`` float64 values, one row per sample.
    codes:
        ``(N,)`` group code ``0..k-1`` per sample; every group has 2 or more samples.
    statistic:
        ``"mass_difference"``: difference of the group means (two groups: second minus
        first; more: the between-group sum of squares ``sum_g n_g (mean_g - mean)^2 / N``),
        in the units of ``data``. ``"t"``: Welch's t (two groups) or the one-way ANOVA F
        (more), which standardises every pixel and so also finds tiny but consistent
        differences where attention barely varies.
    """

    def __init__(self, data: np.ndarray, codes: np.ndarray, statistic: str = "t") -> None:
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
        self.codes = codes
        self.n_groups = int(codes.max()) + 1
        self.sizes = np.bincount(codes, minlength=self.n_groups).astype(np.float64)
        self.data = data - data.mean(axis=0)  # centred: stable variances from sums
        self.squares = self.data**2
        self.total_sq = self.squares.sum(axis=0)
        self.kind = statistic
        if statistic == "mass_difference":
            self.statistic = "mean_difference" if self.n_groups == 2 else "between_group_ss"
        else:
            self.statistic = "welch_t" if self.n_groups == 2 else "anova_f"
        pixel_variance = self.total_sq / max(len(codes) - 1, 1)
        # A tiny floor keeps pixels that are constant in every group at 0, not 0/0.
        self.floor = 1e-10 * float(pixel_variance.mean()) + 1e-300

    def statistics(self, code_rows: np.ndarray) -> np.ndarray:
        """Statistic maps ``(R, P)`` for ``R`` relabelings ``code_rows`` ``(R, N)``."""
        k = self.n_groups
        # Sums of groups 0..k-2 by matrix product; the data are centred, so the last
        # group's sum is minus the others' (one product fewer).
        indicator = (code_rows[:, None, :] == np.arange(k - 1)[None, :, None]).astype(np.float64)
        partial = indicator @ self.data  # (R, k-1, P)
        sums = np.concatenate([partial, -partial.sum(axis=1, keepdims=True)], axis=1)
        sizes = self.sizes[None, :, None]
        means = sums / sizes
        n_total = float(self.sizes.sum())
        if self.kind == "mass_difference":
            if k == 2:
                return means[:, 1] - means[:, 0]
            return (sums * means).sum(axis=1) / n_total  # grand mean is 0 after centring
        if k == 2:
            first = indicator[:, 0] @ self.squares  # group 0; group 1 from the total
            squares = np.stack([first, self.total_sq[None] - first], axis=1)
            variances = np.clip(squares - sums * means, 0.0, None) / (sizes - 1)
            standard_error = np.sqrt((variances / sizes).sum(axis=1) + self.floor)
            return (means[:, 1] - means[:, 0]) / standard_error
        between = (sums * means).sum(axis=1)
        within = np.clip(self.total_sq[None] - between, 0.0, None)
        return (between / (k - 1)) / (within / (n_total - k) + self.floor)

    def observed(self) -> np.ndarray:
        """The statistic map for the real labels, ``(P,)``."""
        return self.statistics(self.codes[None])[0]

    def null_maxima(self, n_permutations: int, seed: int) -> np.ndarray:
        """Maximum over pixels of ``|statistic|`` for ``n_permutations`` random relabelings."""
        rng = np.random.default_rng(seed)
        pixels = self.data.shape[1]
        chunk = max(1, min(n_permutations, 4_000_000 // max(1, pixels * self.n_groups)))
        maxima = []
        done = 0
        while done < n_permutations:
            rows = min(chunk, n_permutations - done)
            shuffled = rng.permuted(np.tile(self.codes, (rows, 1)), axis=1)
            maxima.append(np.abs(self.statistics(shuffled)).max(axis=1))
            done += rows
        return np.concatenate(maxima)


def permutation_max_test(
    data: np.ndarray,
    codes: np.ndarray,
    n_permutations: int,
    seed: int = 0,
    statistic: str = "t",
) -> dict[str, Any]:
    """Max-statistic permutation test of group differences at every pixel.

    Parameters
    ----------
    data:
        ``(N, P)`` values (flattened maps).
    codes:
        ``(N,)`` group codes ``0..k-1``, each group with at least 2 samples.
    n_permutations:
        Random relabelings (label shuffles); the smallest attainable p-value is
        ``1 / (n_permutations + 1)``.
    seed:
        Seed of the relabelings.
    statistic:
        ``"t"`` or ``"mass_difference"`` (see :class:`GroupTest`).

    Returns
    -------
    dict
        ``statistic`` (name), ``statistic_map`` ``(P,)`` (signed for two groups: group 1
        minus group 0), ``max_statistic``, ``p_value`` (global), ``p_value_map`` ``(P,)``
        (family-wise adjusted), ``null_maxima`` ``(n_permutations,)`` sorted.
    """
    test = GroupTest(np.asarray(data, dtype=np.float64), np.asarray(codes), statistic)
    observed = test.observed()
    magnitude = np.abs(observed)
    null = np.sort(test.null_maxima(n_permutations, seed))
    # Values equal up to rounding count as "at least as extreme".
    scale = max(float(magnitude.max()), float(null[-1]) if null.size else 0.0)
    tolerance = 1e-9 * scale + 1e-300
    exceed = n_permutations - np.searchsorted(null, magnitude - tolerance, side="left")
    p_map = (1.0 + exceed) / (1.0 + n_permutations)
    return {
        "statistic": test.statistic,
        "statistic_map": observed,
        "max_statistic": float(magnitude.max()),
        "p_value": float(p_map.min()),
        "p_value_map": p_map,
        "null_maxima": null,
    }


def _test_grid(shape: tuple[int, ...], max_cells: int) -> tuple[int, ...]:
    cells = math.prod(shape)
    if cells <= max_cells:
        return shape
    factor = (cells / max_cells) ** (1.0 / len(shape))
    return tuple(max(1, math.ceil(side / factor)) for side in shape)


def _nearest_upsample(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` on a coarse grid spread back to ``shape`` (each pixel takes its cell)."""
    index = np.ix_(
        *[
            np.minimum((np.arange(full) + 0.5) * coarse // full, coarse - 1).astype(int)
            for full, coarse in zip(shape, values.shape)
        ]
    )
    return values[index]


def _scaled_to_unit(map_: np.ndarray) -> np.ndarray:
    low, high = float(map_.min()), float(map_.max())
    return (map_ - low) / (high - low) if high > low else np.zeros_like(map_)


def _format_label(label: Hashable) -> str:
    return repr(label) if isinstance(label, str) else str(label)


def compare_groups(
    heatmaps_or_images: Any,
    group_labels: Sequence[Hashable] | np.ndarray,
    *,
    generator: HeatmapGenerator | None = None,
    batch_size: int = 32,
    n_permutations: int = 1000,
    alpha: float = 0.05,
    threshold: float = 0.5,
    seed: int = 0,
    head: str | int = "logits",
    target: Any = None,
    inputs: str = "auto",
    statistic: str = "mass_difference",
    max_test_cells: int = DEFAULT_MAX_TEST_CELLS,
) -> AttentionOverlapResult:
    """Compare attention between groups of samples (e.g. marker present / absent).

    Parameters
    ----------
    heatmaps_or_images:
        Non-negative heatmaps ``(N, H, W)`` at any resolution, or images ``(N, C, H, W)``
        (then ``generator`` computes the heatmaps in batches).
    group_labels:
        One hashable label per sample (ints, strings, bools...); two or more groups, each
        with at least 2 samples; sizes may differ.
    generator:
        Something that makes heatmaps (a
        :class:`~shortcut_detect.results.HeatmapGenerator`, e.g. a
        :class:`~shortcut_detect.gradcam.GradCAMHeatmapGenerator`), needed for images.
    batch_size:
        Images per forward pass when computing heatmaps.
    n_permutations:
        Label permutations of the significance test (0 skips the test).
    alpha:
        Significance level for the global test and the per-pixel map.
    threshold:
        Group means are min-max scaled and thresholded at this value for dice / IoU.
    seed:
        Seed of the permutations.
    head, target:
        Head and target class(es) to explain when computing heatmaps from images.
    inputs:
        ``"auto"`` (3-D input is heatmaps, 4-D or more is images), ``"heatmaps"`` (e.g.
        volume maps ``(N, D, H, W)``) or ``"images"``.
    statistic:
        ``"mass_difference"`` (default): the test compares the groups' mean attention
        distributions (maps divided by their sums; maps with zero mass are left out of the
        test and counted). ``"t"``: Welch's t / ANOVA F on the maps as given.
    max_test_cells:
        The permutation test runs on maps area-averaged down to at most this many cells
        (CAMs are smooth, so this loses nothing and keeps the test fast); the significance
        map is spread back to the full grid.

    Returns
    -------
    AttentionOverlapResult
        ``group_heatmaps``: mean map per group label. ``divergence_regions``: for two
        groups the signed difference ``mean(second) - mean(first)`` (groups in sorted
        order: positive where the second group attends more); for more groups the range of
        the group means at each pixel. ``overlap_score``: the share of attention mass the
        two most different group means have in common (``sum(min(p, q))``, 1 = same
        distribution). ``metrics``: dice / iou / cosine / mass_overlap between group means
        (averaged over pairs), ``p_value``, ``significant``, ``significant_fraction``,
        ``divergence_peak`` (row, col), ``group_sizes``, ... ``details``: the statistic
        map, per-pixel p-values and ``significance_map`` (bool, full grid), the null
        distribution, per-pair metrics.
    """
    _check_options(statistic, inputs, alpha, n_permutations, max_test_cells)
    maps = _heatmaps(heatmaps_or_images, inputs, generator, batch_size, head, target)
    n_samples, grid = len(maps), tuple(maps.shape[1:])
    groups, codes = group_codes(group_labels, n_samples)
    sizes = _check_group_sizes(groups, codes, n_samples)

    means = {g: maps[codes == i].mean(axis=0, dtype=np.float64) for i, g in enumerate(groups)}
    stack = np.stack([means[g] for g in groups])
    # Two groups: signed difference; more: the spread of the group means at each pixel.
    divergence = stack[1] - stack[0] if len(groups) == 2 else np.ptp(stack, axis=0)
    pairwise = _pairwise_overlaps(groups, stack, threshold)
    mass_overlaps = np.array([pair["mass_overlap"] for pair in pairwise])
    overlap_score = float(np.nanmin(mass_overlaps)) if np.isfinite(mass_overlaps).any() else 0.0

    metrics = _descriptive_metrics(groups, sizes, stack, divergence, pairwise, threshold)
    details: dict[str, Any] = {"group_order": list(groups), "pairwise": pairwise}
    if n_permutations > 0:
        test_metrics, test_details = _permutation_results(
            maps, codes, groups, statistic, int(n_permutations), alpha, seed, int(max_test_cells)
        )
        metrics.update(test_metrics)
        details.update(test_details)
    else:
        metrics.update(p_value=None, significant=None, alpha=float(alpha), n_permutations=0)

    summary = _summary(groups, sizes, grid, metrics, overlap_score, details, divergence)
    return AttentionOverlapResult(
        overlap_score=overlap_score,
        metrics=metrics,
        group_heatmaps=means,
        divergence_regions=divergence,
        summary=summary,
        details=details,
    )


def _check_options(
    statistic: str, inputs: str, alpha: float, n_permutations: int, max_test_cells: int
) -> None:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if inputs not in ("auto", "heatmaps", "images"):
        raise ValueError(f"inputs must be 'auto', 'heatmaps' or 'images', got {inputs!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(n_permutations, bool) or int(n_permutations) != n_permutations:
        raise ValueError(f"n_permutations must be a whole number, got {n_permutations!r}")
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    if int(max_test_cells) < 1:
        raise ValueError(f"max_test_cells must be at least 1, got {max_test_cells}")


def _heatmaps(
    heatmaps_or_images: Any,
    inputs: str,
    generator: HeatmapGenerator | None,
    batch_size: int,
    head: str | int,
    target: Any,
) -> np.ndarray:
    """The heatmap stack: given, or computed from images with the generator."""
    shape = tuple(getattr(heatmaps_or_images, "shape", None) or np.shape(heatmaps_or_images))
    ndim = len(shape)
    treat_as_images = inputs == "images" or (inputs == "auto" and ndim >= 4)
    maps = heatmaps_or_images
    if treat_as_images:
        if generator is None:
            raise ValueError(
                f"compare_groups got {ndim}-D input {shape}, "
                "read as images (N, C, H, W), but no generator to compute heatmaps. Pass "
                "heatmaps (N, H, W), call GradCAMHeatmapGenerator.compare_groups(images, "
                "labels), or inputs='heatmaps' for volume maps (N, D, H, W)."
            )
        maps = heatmaps_from_images(
            generator, heatmaps_or_images, batch_size=batch_size, head=head, target=target
        )
    return as_heatmap_stack(maps, single_ndim=-1, keep_float32=True)


def _check_group_sizes(groups: list[Hashable], codes: np.ndarray, n_samples: int) -> np.ndarray:
    """Samples per group; at least 2 groups of at least 2 samples each, or a clear error."""
    if len(groups) < 2:
        raise ValueError(
            f"compare_groups needs at least 2 groups; all {n_samples} samples are labelled "
            f"{_format_label(groups[0])}"
        )
    sizes = np.bincount(codes, minlength=len(groups))
    small = [groups[i] for i in np.flatnonzero(sizes < 2)]
    if small:
        raise ValueError(
            "Every group needs at least 2 samples to compare attention; too small: "
            + ", ".join(f"{_format_label(g)} (n={sizes[groups.index(g)]})" for g in small)
        )
    return sizes


def _pairwise_overlaps(
    groups: list[Hashable], stack: np.ndarray, threshold: float
) -> list[dict[str, Any]]:
    """Dice, IoU, cosine and shared mass of every pair of group means."""
    pairwise = []
    for (i, a), (j, b) in itertools.combinations(enumerate(groups), 2):
        overlap = overlap_per_sample(
            _scaled_to_unit(stack[i])[None], _scaled_to_unit(stack[j])[None], threshold
        )
        pairwise.append(
            {
                "groups": (a, b),
                "dice": float(overlap["dice"][0]),
                "iou": float(overlap["iou"][0]),
                "cosine": float(overlap["cosine"][0]),
                "mass_overlap": float(mass_overlap(stack[i][None], stack[j][None])[0]),
            }
        )
    return pairwise


def _descriptive_metrics(
    groups: list[Hashable],
    sizes: np.ndarray,
    stack: np.ndarray,
    divergence: np.ndarray,
    pairwise: list[dict[str, Any]],
    threshold: float,
) -> dict[str, Any]:
    """Sizes, mean pairwise overlaps, where the group means diverge most, entropies."""

    def pair_mean(key: str) -> float:
        values = np.array([pair[key] for pair in pairwise], dtype=np.float64)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    grid = divergence.shape
    peak_flat = int(np.abs(divergence).argmax())
    peak = tuple(int(v) for v in np.unravel_index(peak_flat, grid))
    peak_value = float(divergence.reshape(-1)[peak_flat])
    return {
        "n_samples": int(sizes.sum()),
        "n_groups": len(groups),
        "group_sizes": {g: int(n) for g, n in zip(groups, sizes)},
        "mass_overlap": pair_mean("mass_overlap"),
        "dice": pair_mean("dice"),
        "iou": pair_mean("iou"),
        "cosine": pair_mean("cosine"),
        "threshold": float(threshold),
        "divergence_peak": peak,
        "divergence_peak_relative": tuple((p + 0.5) / s for p, s in zip(peak, grid)),
        "divergence_peak_value": peak_value,
        "divergence_max_abs": float(abs(peak_value)),
        "grid": tuple(int(s) for s in grid),
        "group_entropy": {
            g: float(e) for g, e in zip(groups, entropy(stack) if stack.ndim >= 3 else [])
        },
    }


def _permutation_results(
    maps: np.ndarray,
    codes: np.ndarray,
    groups: list[Hashable],
    statistic: str,
    n_permutations: int,
    alpha: float,
    seed: int,
    max_test_cells: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The max-statistic permutation test on a coarse grid: its metrics and details."""
    n_samples, grid = len(maps), tuple(maps.shape[1:])
    metrics: dict[str, Any] = {}
    test_grid = _test_grid(grid, max_test_cells)
    test_maps = area_resize(maps, test_grid) if test_grid != grid else maps
    test_codes = codes
    if statistic == "mass_difference":
        test_maps = mass_normalize(test_maps)
        keep = ~np.isnan(test_maps.reshape(n_samples, -1)[:, 0])
        metrics["n_empty_heatmaps"] = int((~keep).sum())
        if not keep.all():
            test_maps, test_codes = test_maps[keep], codes[keep]
            kept = np.bincount(test_codes, minlength=len(groups))
            if (kept < 2).any():
                counts = ", ".join(f"{_format_label(g)} (n={int(n)})" for g, n in zip(groups, kept))
                raise ValueError(
                    "After leaving out heatmaps with zero mass, a group has fewer than 2 "
                    f"maps: {counts}. Compare more samples or use statistic='t'."
                )
    test = permutation_max_test(
        test_maps.reshape(len(test_codes), -1), test_codes, n_permutations, seed, statistic
    )
    p_map = test["p_value_map"].reshape(test_grid)
    significance = _nearest_upsample(p_map < alpha, grid)
    metrics.update(
        p_value=test["p_value"],
        significant=bool(test["p_value"] < alpha),
        alpha=float(alpha),
        n_permutations=int(n_permutations),
        min_attainable_p=1.0 / (n_permutations + 1),
        statistic=test["statistic"],
        max_statistic=test["max_statistic"],
        significant_fraction=float(significance.mean()),
        test_grid=test_grid,
    )
    details = {
        "statistic_map": test["statistic_map"].reshape(test_grid),
        "p_value_map": p_map,
        "significance_map": significance,
        "null_max_statistics": test["null_maxima"],
    }
    return metrics, details


def _summary(
    groups: list[Hashable],
    sizes: np.ndarray,
    grid: tuple[int, ...],
    metrics: dict[str, Any],
    overlap_score: float,
    details: dict[str, Any],
    divergence: np.ndarray,
) -> str:
    sized = ", ".join(f"{_format_label(g)} (n={int(n)})" for g, n in zip(groups, sizes))
    grid_text = "x".join(str(s) for s in grid)
    lines = [
        f"Compared the attention of {len(groups)} groups over {metrics['n_samples']} heatmaps "
        f"({grid_text}): {sized}.",
        f"Overlap: the group means share {overlap_score:.0%} of their attention mass"
        + (" (least similar pair)" if len(groups) > 2 else "")
        + f"; dice {metrics['dice']:.2f}, IoU {metrics['iou']:.2f} (means scaled to [0, 1], "
        f"threshold {metrics['threshold']:g}), cosine {metrics['cosine']:.2f}.",
    ]
    peak = metrics["divergence_peak"]
    where = location_words(peak, grid) if len(grid) == 2 else "at that voxel"
    position = ", ".join(str(p) for p in peak)
    if len(groups) == 2:
        more = groups[1] if metrics["divergence_peak_value"] > 0 else groups[0]
        lines.append(
            f"Largest divergence at ({position}) ({where}): group {_format_label(more)} "
            f"attends more there (mean heatmap difference "
            f"{metrics['divergence_peak_value']:+.3f})."
        )
    else:
        lines.append(
            f"Largest divergence at ({position}) ({where}): the group means differ by up to "
            f"{metrics['divergence_max_abs']:.3f} there."
        )
    if metrics.get("p_value") is None:
        lines.append("No significance test was run (n_permutations=0).")
        return "\n".join(lines)
    name = {
        "welch_t": "max |Welch t|",
        "anova_f": "max ANOVA F",
        "mean_difference": "max |difference of mean attention mass|",
        "between_group_ss": "max between-group spread of attention mass",
    }[metrics["statistic"]]
    verdict = "significant" if metrics["significant"] else "not significant"
    test_line = (
        f"Permutation test over group labels ({metrics['n_permutations']} permutations, "
        f"{name} over pixels): p = {metrics['p_value']:.3g}, {verdict} at alpha = "
        f"{metrics['alpha']:g}"
    )
    if metrics["significant"]:
        significance = details["significance_map"]
        test_line += (
            f"; {metrics['significant_fraction']:.1%} of pixels differ after family-wise "
            "correction (max-statistic)"
        )
        if len(grid) == 2 and len(groups) == 2:
            parts = []
            for sign, word in ((1, "more"), (-1, "less")):
                part = significance & (np.sign(divergence) == sign)
                if part.any():
                    rows, cols = np.nonzero(part)
                    centre = location_words((rows.mean(), cols.mean()), grid)
                    parts.append(
                        f"{word} on {part.mean():.1%} of the map (rows {rows.min()}-"
                        f"{rows.max()}, columns {cols.min()}-{cols.max()}, centred {centre})"
                    )
            test_line += f": group {_format_label(groups[1])} attends " + " and ".join(parts)
        test_line += "."
    else:
        test_line += "."
        if metrics["min_attainable_p"] >= metrics["alpha"]:
            test_line += " (Too few permutations to ever reach this alpha.)"
    lines.append(test_line)
    return "\n".join(lines)
