"""Map statistics on hand-made heatmaps: identical, disjoint, empty and constant maps."""

from __future__ import annotations

import numpy as np
import pytest

from shortcut_detect.analysis.maps import (
    area_resize,
    as_heatmap_stack,
    concentration_area,
    entropy,
    location_words,
    mass_normalize,
    mass_overlap,
    overlap_per_sample,
    peak_locations,
    summarize_values,
)
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


def blob(shape=(8, 8), rows=slice(0, 2), cols=slice(0, 2), value=1.0):
    heatmap = np.zeros(shape)
    heatmap[rows, cols] = value
    return heatmap


# -- validation -------------------------------------------------------------------------------
def test_stack_accepts_one_map_and_rejects_bad_values():
    assert as_heatmap_stack(np.ones((4, 5))).shape == (1, 4, 5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        as_heatmap_stack(np.array([[[0.0, np.nan]]]))
    with pytest.raises(ValueError, match="non-negative"):
        as_heatmap_stack(-np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="empty"):
        as_heatmap_stack(np.zeros((0, 4, 4)))


def test_stack_keeps_float32_only_when_asked():
    maps = np.ones((2, 3, 3), dtype=np.float32)
    assert as_heatmap_stack(maps).dtype == np.float64
    assert as_heatmap_stack(maps, keep_float32=True) is maps


# -- peaks and entropy --------------------------------------------------------------------------
def test_peak_locations_rows_and_columns_at_any_resolution():
    maps = np.zeros((3, 7, 9))
    maps[0, 2, 5] = 1.0
    maps[1, 6, 0] = 0.3
    maps[2, 0, 8] = 2.0
    np.testing.assert_array_equal(peak_locations(maps), [[2, 5], [6, 0], [0, 8]])
    assert peak_locations(blob((12, 12), slice(3, 4), slice(10, 11))).tolist() == [[3, 10]]
    volume = np.zeros((1, 3, 4, 5))
    volume[0, 2, 1, 4] = 1.0
    assert peak_locations(volume).tolist() == [[2, 1, 4]]


def test_entropy_extremes_constant_peak_empty_and_two_cells():
    maps = np.stack(
        [np.full((4, 4), 0.7), blob((4, 4), slice(1, 2), slice(1, 2)), np.zeros((4, 4))]
    )
    values = entropy(maps)
    assert values[0] == pytest.approx(1.0)  # constant map: spread evenly
    assert values[1] == pytest.approx(0.0)  # one cell
    assert np.isnan(values[2])  # no mass, no distribution
    two = blob((4, 4), slice(0, 1), slice(0, 2))
    assert entropy(two)[0] == pytest.approx(np.log(2) / np.log(16))
    assert entropy(np.full((3, 1, 1), 0.5)).tolist() == [0.0, 0.0, 0.0]


# -- overlap metrics ------------------------------------------------------------------------------
def test_overlap_identical_disjoint_empty_and_constant():
    a = blob(rows=slice(0, 2), cols=slice(0, 2))
    b = blob(rows=slice(5, 7), cols=slice(5, 7))
    half = blob(rows=slice(0, 2), cols=slice(0, 1))
    empty = np.zeros((8, 8))
    constant = np.full((8, 8), 0.8)
    first = np.stack([a, a, empty, constant, a, a])
    second = np.stack([a, b, empty, constant, half, constant])
    result = overlap_per_sample(first, second, threshold=0.5)
    np.testing.assert_allclose(result["dice"][:2], [1.0, 0.0])
    np.testing.assert_allclose(result["iou"][:2], [1.0, 0.0])
    np.testing.assert_allclose(result["cosine"][:2], [1.0, 0.0])
    # both empty: undefined, never a silent 0 or 1
    assert np.isnan(result["dice"][2]) and np.isnan(result["iou"][2])
    assert np.isnan(result["cosine"][2])
    np.testing.assert_allclose([result[k][3] for k in ("dice", "iou", "cosine")], 1.0)
    # 4 cells vs 2 of them: dice 2*2/6, IoU 2/4, cosine 2/sqrt(4*2)
    assert result["dice"][4] == pytest.approx(4 / 6)
    assert result["iou"][4] == pytest.approx(0.5)
    assert result["cosine"][4] == pytest.approx(2 / np.sqrt(8))
    # a blob inside a constant map: 4 of 64 cells
    assert result["dice"][5] == pytest.approx(2 * 4 / 68)
    assert result["cosine"][5] == pytest.approx(4 * 0.8 / (2 * 0.8 * 8))


def test_overlap_means_match_calculate_overlap_where_defined(rng):
    first = rng.random((20, 10, 10))
    second = rng.random((20, 10, 10))
    per_sample = overlap_per_sample(first, second, threshold=0.6)
    reference = GradCAMHeatmapGenerator.calculate_overlap(first, second, threshold=0.6)
    for key in ("dice", "iou", "cosine"):
        assert per_sample[key].mean() == pytest.approx(reference[key], rel=1e-6)


def test_overlap_rejects_different_shapes():
    with pytest.raises(ValueError, match="same shape"):
        overlap_per_sample(np.zeros((2, 4, 4)), np.zeros((2, 5, 5)))


def test_mass_overlap_identical_disjoint_empty_constant():
    a = blob()
    b = blob(rows=slice(5, 7), cols=slice(5, 7))
    values = mass_overlap(
        np.stack([a, a, a, np.full((8, 8), 2.0)]),
        np.stack([3 * a, b, np.zeros((8, 8)), np.full((8, 8), 0.1)]),
    )
    assert values[0] == pytest.approx(1.0)  # same distribution at another scale
    assert values[1] == pytest.approx(0.0)
    assert np.isnan(values[2])
    assert values[3] == pytest.approx(1.0)


def test_mass_normalize_and_concentration():
    maps = np.stack(
        [np.full((4, 4), 3.0), blob((4, 4), slice(0, 1), slice(0, 1)), np.zeros((4, 4))]
    )
    normalized = mass_normalize(maps)
    np.testing.assert_allclose(normalized[0].sum(), 1.0)
    assert np.isnan(normalized[2]).all()
    area = concentration_area(maps, mass=0.5)
    assert area[0] == pytest.approx(0.5)  # half the mass needs half the area
    assert area[1] == pytest.approx(1 / 16)
    assert np.isnan(area[2])


# -- resampling ------------------------------------------------------------------------------------
def test_area_resize_is_exact_for_blocks_and_fractions():
    fine = np.kron(np.arange(9.0).reshape(1, 3, 3), np.ones((4, 4)))  # 12x12 of 4x4 blocks
    np.testing.assert_allclose(area_resize(fine, (3, 3))[0], np.arange(9.0).reshape(3, 3))
    np.testing.assert_allclose(area_resize(np.arange(9.0).reshape(1, 3, 3), (12, 12)), fine)
    mask = np.zeros((1, 48, 48))
    mask[0, 3:9, 3:9] = 1.0  # the demo marker box
    coverage = area_resize(mask, (12, 12))[0]
    assert coverage.sum() * 16 == pytest.approx(36)  # area preserved
    assert coverage[1, 1] == pytest.approx(1.0)
    assert coverage[0, 0] == pytest.approx(1 / 16)
    assert coverage[0, 1] == pytest.approx(0.25)
    uneven = area_resize(np.ones((2, 7, 5)), (3, 4))
    np.testing.assert_allclose(uneven, 1.0)


def test_location_words_and_summary():
    assert location_words((1, 1), (48, 48)) == "top-left"
    assert location_words((24, 24), (48, 48)) == "centre"
    assert location_words((47, 24), (48, 48)) == "bottom-centre"
    assert location_words((20, 45), (48, 48)) == "middle-right"
    summary = summarize_values([1.0, np.nan, 3.0])
    assert summary["n"] == 2 and summary["n_undefined"] == 1
    assert summary["mean"] == pytest.approx(2.0) and summary["median"] == pytest.approx(2.0)
    assert summarize_values([np.nan])["mean"] is None
