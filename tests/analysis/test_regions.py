"""Attention in a known shortcut region: hand-made maps, then the planted-shortcut models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shortcut_detect.analysis.regions import attention_in_region, region_coverage


def seed_fraction(heatmap, mask):
    """The seed docs' definition, written out."""
    heatmap_norm = heatmap / heatmap.sum()
    return (heatmap_norm * mask).sum()


def test_fraction_matches_the_seed_definition(rng):
    heatmaps = rng.random((6, 16, 16))
    masks = rng.random((6, 16, 16)) > 0.7
    result = attention_in_region(heatmaps, masks)
    expected = [seed_fraction(h, m) for h, m in zip(heatmaps, masks)]
    np.testing.assert_allclose(result.fractions, expected)
    assert result.mean == pytest.approx(np.mean(expected))
    assert result.n_valid == 6


def test_all_attention_inside_uniform_attention_and_disjoint():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:4] = True  # 8 of 64 cells
    inside = mask * 1.0
    uniform = np.full((8, 8), 0.3)
    outside = (~mask) * 1.0
    result = attention_in_region(np.stack([inside, uniform, outside]), mask)
    np.testing.assert_allclose(result.fractions, [1.0, 8 / 64, 0.0])
    np.testing.assert_allclose(result.area_shares, 8 / 64)
    np.testing.assert_array_equal(result.pointing_hits, [True, True, False])
    assert result.share_above_threshold == pytest.approx(2 / 3)  # 1.0 and 0.125 > 0.1
    assert result.enrichment == pytest.approx(np.mean([1.0, 0.125, 0.0]) / 0.125)


def test_empty_regions_and_empty_heatmaps_are_excluded_and_counted():
    masks = np.zeros((4, 6, 6), dtype=bool)
    masks[0, :2, :2] = True
    masks[2, :2, :2] = True
    masks[3, :3, :3] = True
    heatmaps = np.ones((4, 6, 6))
    heatmaps[2] = 0.0  # a constant map after min-max scaling: no mass
    result = attention_in_region(heatmaps, masks, threshold=0.05)
    assert result.n_empty_region == 1  # sample 1 has no marker
    assert result.n_empty_heatmap == 1  # sample 2
    assert result.n_valid == 2
    np.testing.assert_array_equal(result.valid, [True, False, False, True])
    assert np.isnan(result.fractions[1]) and np.isnan(result.fractions[2])
    assert result.mean == pytest.approx(np.mean([4 / 36, 9 / 36]))  # not diluted by zeros
    assert not result.pointing_hits[1] and not result.pointing_hits[2]
    as_dict = result.to_dict()
    json.dumps(as_dict)  # NaN became None
    assert as_dict["fractions"][1] is None
    assert as_dict["n_empty_region"] == 1


def test_no_valid_sample_gives_nan_summary():
    result = attention_in_region(np.ones((2, 4, 4)), np.zeros((4, 4), dtype=bool))
    assert result.n_valid == 0 and np.isnan(result.mean) and np.isnan(result.pointing_accuracy)


def test_box_is_exclusive_at_the_far_edge():
    heatmap = np.zeros((1, 6, 6))
    heatmap[0, 1, 2] = 1.0  # row 1, column 2
    assert attention_in_region(heatmap, (2, 1, 3, 2)).fractions[0] == 1.0  # x0=2, y0=1
    assert attention_in_region(heatmap, (0, 0, 2, 2)).fractions[0] == 0.0  # x1=2 excludes x=2
    coverage = region_coverage((1, 2, 4, 5), (6, 6), 1)[0]
    assert coverage.sum() == 9 and coverage[2:5, 1:4].all()


def test_pointing_tolerance_counts_near_misses():
    heatmap = np.zeros((1, 10, 10))
    heatmap[0, 2, 5] = 1.0  # two columns right of the box
    box = (0, 0, 4, 4)
    assert not attention_in_region(heatmap, box).pointing_hits[0]
    assert not attention_in_region(heatmap, box, pointing_tolerance=1).pointing_hits[0]
    assert attention_in_region(heatmap, box, pointing_tolerance=2).pointing_hits[0]
    with pytest.raises(ValueError, match="pointing_tolerance"):
        attention_in_region(heatmap, box, pointing_tolerance=-1)


def test_bad_regions_get_clear_errors():
    maps = np.ones((2, 6, 6))
    with pytest.raises(ValueError, match="outside the 6x6 grid"):
        attention_in_region(maps, (0, 0, 7, 3))
    with pytest.raises(ValueError, match="image_size"):
        attention_in_region(maps, (3, 3, 9, 9))
    with pytest.raises(ValueError, match="empty or outside"):
        attention_in_region(maps, (2, 2, 2, 4))
    with pytest.raises(ValueError, match="3 region masks for 2 heatmaps"):
        attention_in_region(maps, np.ones((3, 6, 6)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attention_in_region(maps, np.full((6, 6), 2.0))
    with pytest.raises(ValueError, match="non-negative"):
        attention_in_region(-maps, np.ones((6, 6)))


def test_low_resolution_maps_use_the_covered_share_of_each_cell(rng):
    native = rng.random((5, 12, 12))
    upsampled = np.kron(native, np.ones((1, 4, 4)))  # the same maps as 4x4 blocks
    box = (3, 3, 9, 9)  # the demo marker, in 48x48 image pixels
    fine = attention_in_region(upsampled, box)
    coarse = attention_in_region(native, box, image_size=(48, 48))
    np.testing.assert_allclose(coarse.fractions, fine.fractions)
    np.testing.assert_allclose(coarse.area_shares, 36 / 48**2)
    mask = np.zeros((48, 48))
    mask[3:9, 3:9] = 1
    np.testing.assert_allclose(attention_in_region(native, mask).fractions, fine.fractions)


# -- the planted-shortcut models ----------------------------------------------------------------
def test_shortcut_model_attends_to_the_marker(shortcut_explanation, test_data):
    share = test_data.marker_area_fraction
    for maps in (shortcut_explanation.heatmaps, shortcut_explanation.raw_heatmaps):
        result = attention_in_region(maps, test_data.masks)
        assert result.n_empty_region == int((test_data.groups == 0).sum())
        # Margins well below what a 95%-shortcut model gives (about 10x the share, 85-99%
        # pointing): the exact values depend on the model trained on this machine.
        assert result.mean >= 3 * share, result.to_dict(per_sample=False)
        assert result.pointing_accuracy > 0.5  # most marker images point at the marker
        assert result.share_above_threshold > 0.8  # > 10% of attention on a 1.6% region
    # upsampled maps may peak beside the 6 px marker; one 4 px layer cell covers that
    strict = attention_in_region(shortcut_explanation.heatmaps, test_data.masks)
    near = attention_in_region(shortcut_explanation.heatmaps, test_data.masks, pointing_tolerance=4)
    assert near.pointing_accuracy >= strict.pointing_accuracy
    assert near.pointing_accuracy > 0.8


def test_clean_model_attention_on_the_marker_stays_near_its_share(clean_explanation, test_data):
    share = test_data.marker_area_fraction
    for maps in (clean_explanation.heatmaps, clean_explanation.raw_heatmaps):
        result = attention_in_region(maps, test_data.masks)
        assert 0.5 * share <= result.mean <= 2 * share, result.to_dict(per_sample=False)
        assert result.pointing_accuracy < 0.2
