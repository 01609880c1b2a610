"""Group comparison: statistics against scipy, hand-made maps, errors, and the demo models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from shortcut_detect.analysis.groups import compare_groups, permutation_max_test
from shortcut_detect.analysis.regions import region_coverage
from shortcut_detect.gradcam import AttentionOverlapResult, GradCAMHeatmapGenerator

TARGET_LAYER = "features"  # SmallCNN: 12x12 map for 48x48 input
LAYER_STRIDE = 4  # pixels per cell of that map


def planted_maps(rng, n_plain=30, n_marked=20, size=16):
    """Noise maps; the 'marked' group also has a bright 3x3 blob at rows/cols 1..3."""
    maps = rng.random((n_plain + n_marked, size, size)) * 0.3
    maps[n_plain:, 1:4, 1:4] += 1.0
    labels = np.array(["plain"] * n_plain + ["marked"] * n_marked)
    return maps, labels


# -- the statistics --------------------------------------------------------------------------------
def test_welch_t_and_anova_f_match_scipy(rng):
    data = rng.normal(size=(40, 25))
    codes = np.repeat([0, 1], [15, 25])
    result = permutation_max_test(data, codes, n_permutations=5, statistic="t")
    expected = stats.ttest_ind(data[codes == 1], data[codes == 0], equal_var=False).statistic
    np.testing.assert_allclose(result["statistic_map"], expected, rtol=1e-8)
    assert result["statistic"] == "welch_t"
    codes3 = np.repeat([0, 1, 2], [10, 12, 18])
    result3 = permutation_max_test(data, codes3, n_permutations=5, statistic="t")
    expected3 = stats.f_oneway(*(data[codes3 == g] for g in range(3))).statistic
    np.testing.assert_allclose(result3["statistic_map"], expected3, rtol=1e-8)


def test_mass_difference_statistic_is_the_difference_of_means(rng):
    data = rng.random((30, 12))
    codes = np.repeat([0, 1], [12, 18])
    result = permutation_max_test(data, codes, n_permutations=5, statistic="mass_difference")
    expected = data[codes == 1].mean(axis=0) - data[codes == 0].mean(axis=0)
    np.testing.assert_allclose(result["statistic_map"], expected, atol=1e-12)
    codes3 = np.repeat([0, 1, 2], 10)
    spread = permutation_max_test(data, codes3, 5, statistic="mass_difference")["statistic_map"]
    means = np.stack([data[codes3 == g].mean(axis=0) for g in range(3)])
    expected3 = (10 * (means - data.mean(axis=0)) ** 2).sum(axis=0) / 30
    np.testing.assert_allclose(spread, expected3, atol=1e-12)


def test_global_p_value_agrees_with_scipy_permutation_test(rng):
    data = rng.normal(size=(36, 16))
    data[:14, 3] += 0.6  # a modest effect: p well inside (0, 1)
    codes = np.repeat([1, 0], [14, 22])
    ours = permutation_max_test(data, codes, n_permutations=3000, seed=1, statistic="t")

    def max_abs_t(first_index, second_index):
        first = data[first_index.astype(int)]
        second = data[second_index.astype(int)]
        return np.abs(stats.ttest_ind(second, first, equal_var=False).statistic).max()

    reference = stats.permutation_test(
        (np.flatnonzero(codes == 0).astype(float), np.flatnonzero(codes == 1).astype(float)),
        max_abs_t,
        permutation_type="independent",
        n_resamples=3000,
        alternative="greater",
        vectorized=False,
        random_state=2,
    )
    assert 0.02 < reference.pvalue < 0.9
    assert ours["p_value"] == pytest.approx(reference.pvalue, abs=0.04)
    assert ours["max_statistic"] == pytest.approx(reference.statistic, rel=1e-6)


def test_per_pixel_p_values_are_family_wise_adjusted(rng):
    data = rng.normal(size=(40, 50))
    data[20:, 7] += 3.0
    codes = np.repeat([0, 1], 20)
    result = permutation_max_test(data, codes, n_permutations=500, statistic="t")
    assert result["p_value_map"][7] == result["p_value"] == pytest.approx(1 / 501)
    null = result["null_maxima"]
    assert np.all(np.diff(null) >= 0)
    # each pixel's p counts permutations whose maximum beats that pixel's |t|
    for pixel in (0, 20, 49):
        value = abs(result["statistic_map"][pixel])
        expected = (1 + (null >= value - 1e-9 * result["max_statistic"]).sum()) / 501
        assert result["p_value_map"][pixel] == pytest.approx(expected)


# -- compare_groups on hand-made maps --------------------------------------------------------------
def test_identical_groups_overlap_fully_and_are_not_significant(rng):
    maps = rng.random((10, 8, 8))
    doubled = np.concatenate([maps, maps])
    result = compare_groups(doubled, [0] * 10 + [1] * 10, n_permutations=200)
    assert isinstance(result, AttentionOverlapResult)
    assert result.overlap_score == pytest.approx(1.0)
    np.testing.assert_allclose(result.divergence_regions, 0.0, atol=1e-12)
    assert result.metrics["dice"] == pytest.approx(1.0)
    assert result.metrics["cosine"] == pytest.approx(1.0)
    assert result.metrics["p_value"] == pytest.approx(1.0)
    assert result.metrics["significant"] is False
    assert "not significant" in result.summary


def test_planted_difference_is_found_where_it_was_planted(rng):
    maps, labels = planted_maps(rng)
    result = compare_groups(maps, labels, n_permutations=300, seed=3)
    # labels are strings, sorted: "marked" < "plain"; divergence = plain - marked
    assert list(result.group_heatmaps) == ["marked", "plain"]
    assert result.metrics["group_sizes"] == {"marked": 20, "plain": 30}
    row, col = result.metrics["divergence_peak"]
    assert 1 <= row <= 3 and 1 <= col <= 3
    assert result.metrics["divergence_peak_value"] < 0  # "marked" attends more there
    assert result.metrics["p_value"] == pytest.approx(1 / 301)
    significance = result.details["significance_map"]
    assert significance.shape == (16, 16)
    assert significance[1:4, 1:4].all()
    assert not significance[8:, 8:].any()
    assert 0 < result.overlap_score < 1
    assert "'marked' attends more" in result.summary
    assert "top-left" in result.summary and "significant at alpha" in result.summary


def test_three_unbalanced_groups(rng):
    maps, _ = planted_maps(rng, n_plain=25, n_marked=6)
    labels = np.array([0] * 10 + [1] * 15 + [2] * 6)
    result = compare_groups(maps, labels, n_permutations=200)
    assert set(result.group_heatmaps) == {0, 1, 2}
    assert all(type(key) is int for key in result.group_heatmaps)
    assert (result.divergence_regions >= 0).all()
    assert result.metrics["statistic"] == "between_group_ss"
    assert len(result.details["pairwise"]) == 3
    assert result.overlap_score == pytest.approx(
        min(pair["mass_overlap"] for pair in result.details["pairwise"])
    )
    assert result.metrics["significant"]


def test_low_and_high_resolution_maps(rng):
    native = rng.random((24, 7, 7))
    native[12:, 0, 0] += 2.0
    labels = [0] * 12 + [1] * 12
    result = compare_groups(native, labels, n_permutations=100)
    assert result.divergence_regions.shape == (7, 7)
    assert result.metrics["divergence_peak"] == (0, 0)
    large = np.kron(native, np.ones((1, 16, 16)))  # 112x112: tested on a <= 32x32 grid
    big = compare_groups(large, labels, n_permutations=100)
    assert big.metrics["test_grid"] == (32, 32)
    assert big.details["significance_map"].shape == (112, 112)
    assert big.details["significance_map"][:14, :14].all()  # test cells inside block (0, 0)
    assert not big.details["significance_map"][40:, 40:].any()


def test_no_permutations_skips_the_test(rng):
    maps, labels = planted_maps(rng)
    result = compare_groups(maps, labels, n_permutations=0)
    assert result.metrics["p_value"] is None and "significance_map" not in result.details
    assert "No significance test" in result.summary


def test_empty_maps_are_left_out_of_the_mass_test_and_counted(rng):
    maps, labels = planted_maps(rng)
    maps[0] = 0.0
    result = compare_groups(maps, labels, n_permutations=50)
    assert result.metrics["n_empty_heatmaps"] == 1


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0] * 9, "9 group labels for 10 heatmaps"),
        ([0] * 10, "at least 2 groups"),
        ([0] * 9 + [1], r"too small: 1 \(n=1\)"),
        ([0] * 9 + [None], "missing"),
        ([0.0] * 9 + [float("nan")], "missing"),
    ],
)
def test_bad_labels_get_clear_errors(rng, labels, message):
    with pytest.raises(ValueError, match=message):
        compare_groups(rng.random((10, 6, 6)), labels)


def test_bad_inputs_get_clear_errors(rng):
    with pytest.raises(ValueError, match="no generator"):
        compare_groups(rng.random((4, 3, 8, 8)), [0, 0, 1, 1])
    with pytest.raises(ValueError, match="statistic must be one of"):
        compare_groups(rng.random((4, 8, 8)), [0, 0, 1, 1], statistic="z")
    with pytest.raises(ValueError, match="n_permutations"):
        compare_groups(rng.random((4, 8, 8)), [0, 0, 1, 1], n_permutations=-1)
    with pytest.raises(ValueError, match="non-negative"):
        compare_groups(-rng.random((4, 8, 8)), [0, 0, 1, 1])


# -- images through a generator ------------------------------------------------------------------
def test_images_are_explained_in_batches(shortcut_model, test_data):
    images = torch.from_numpy(test_data.images[:48])
    groups = test_data.groups[:48]
    with GradCAMHeatmapGenerator(shortcut_model, TARGET_LAYER) as gen:
        heatmaps = gen.generate_heatmap(images)
        from_maps = compare_groups(heatmaps, groups, n_permutations=100)
        from_images = compare_groups(
            images, groups, generator=gen, batch_size=20, n_permutations=100
        )
        forwarded = gen.compare_groups(images, groups, batch_size=7, n_permutations=100)
    for result in (from_images, forwarded):
        np.testing.assert_allclose(
            result.divergence_regions, from_maps.divergence_regions, atol=1e-5
        )
        assert result.metrics["p_value"] == from_maps.metrics["p_value"]


# -- the planted-shortcut models ----------------------------------------------------------------
def test_shortcut_model_marker_groups_differ_at_the_marker(shortcut_explanation, test_data):
    result = compare_groups(shortcut_explanation.heatmaps, test_data.groups, n_permutations=1000)
    assert result.metrics["p_value"] < 0.01
    # the peak lies on the marker, up to one cell of the 12x12 Grad-CAM grid (4 px)
    row, col = result.metrics["divergence_peak"]
    x0, y0, x1, y1 = test_data.marker_box
    assert y0 - LAYER_STRIDE <= row < y1 + LAYER_STRIDE
    assert x0 - LAYER_STRIDE <= col < x1 + LAYER_STRIDE
    assert result.metrics["divergence_peak_value"] > 0  # marker group attends more
    assert result.details["significance_map"][y0:y1, x0:x1].all()
    # at the layer's own resolution the peak cell lies on the marker
    native = compare_groups(shortcut_explanation.raw_heatmaps, test_data.groups)
    assert native.metrics["p_value"] < 0.01
    coverage = region_coverage(test_data.marker_box, (12, 12), 1, image_size=(48, 48))[0]
    assert coverage[native.metrics["divergence_peak"]] > 0


def test_marker_groups_same_sample_size_shortcut_vs_clean(
    shortcut_explanation, clean_explanation, test_data
):
    """On equal subsamples, the shortcut model's marker groups always differ clearly, and far
    more than the clean model's. Relative: how faint the clean model's response to the marker
    is depends on the model trained on this machine."""
    for seed in range(5):
        index = np.random.default_rng(seed).choice(len(test_data), 150, replace=False)
        groups = test_data.groups[index]
        shortcut, clean = (
            compare_groups(maps[index], groups, n_permutations=300, seed=seed).metrics
            for maps in (shortcut_explanation.heatmaps, clean_explanation.heatmaps)
        )
        assert shortcut["p_value"] < 0.01, (seed, shortcut["p_value"])
        assert clean["max_statistic"] < 0.5 * shortcut["max_statistic"], seed
        assert clean["mass_overlap"] > shortcut["mass_overlap"], seed


FALSE_POSITIVE_DRAWS = 200
ALPHA = 0.05


def _false_positives(maps, n_permutations=99):
    """How many of 200 random balanced labelings of ``maps`` test significant at 5%."""
    count = 0
    for seed in range(FALSE_POSITIVE_DRAWS):
        labels = np.random.default_rng(seed).permutation(np.arange(len(maps)) % 2)
        result = compare_groups(maps, labels, n_permutations=n_permutations, seed=seed)
        count += result.metrics["p_value"] < ALPHA
    return count


def _size_bound_violated(count):
    """``True`` when ``count`` false positives in 200 draws would have probability < 1e-3
    for a test of size 5%."""
    return stats.binom.sf(count - 1, FALSE_POSITIVE_DRAWS, ALPHA) < 1e-3


def test_random_labels_false_positive_rate_on_fixed_synthetic_maps():
    maps = np.random.default_rng(123).random((120, 16, 16))
    count = _false_positives(maps)
    assert not _size_bound_violated(count), f"{count} of {FALSE_POSITIVE_DRAWS} draws"
    # With 99 permutations the exact size is 4%: far fewer would mean a broken test.
    assert stats.binom.cdf(count, FALSE_POSITIVE_DRAWS, 0.04) > 1e-3, count


def test_random_labels_false_positive_rate_on_the_demo_maps(clean_explanation):
    # The maps at the layer's 12x12 resolution keep the 200 draws fast.
    count = _false_positives(clean_explanation.raw_heatmaps[:120])
    assert not _size_bound_violated(count), f"{count} of {FALSE_POSITIVE_DRAWS} draws"


def test_size_bound_rejects_an_anticonservative_rate():
    assert not _size_bound_violated(10) and not _size_bound_violated(18)
    assert _size_bound_violated(25)  # 12.5% where 5% was promised
