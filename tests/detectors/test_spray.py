"""SpRAy: hand-made strategies, options, errors, and the demo models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shortcut_detect.detectors import registry
from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector
from shortcut_detect.detectors.spray import SpRAyDetector


def gaussian(size, row, col, sigma):
    rows, cols = np.mgrid[0:size, 0:size]
    return np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))


def object_maps(rng, n, size):
    """One strategy: a broad blob on the object in the centre, with noise."""
    blob = gaussian(size, size / 2, size / 2, size / 5)
    return rng.random((n, size, size)) * 0.02 + rng.uniform(0.7, 1.3, (n, 1, 1)) * blob


def two_strategies(rng, n_corner=40, n_object=80, size=24):
    """'Corner' maps look at a fixed spot near the top-left corner; 'object' maps at the
    object in the middle."""
    corner = rng.random((n_corner, size, size)) * 0.02 + gaussian(size, 2.5, 2.5, 1.5)
    maps = np.concatenate([corner, object_maps(rng, n_object, size)])
    groups = np.array([1] * n_corner + [0] * n_object)
    return maps, groups


def test_two_strategies_are_separated_and_the_corner_is_flagged(rng):
    maps, groups = two_strategies(rng)
    detector = SpRAyDetector(random_state=0).fit(heatmaps=maps, labels=groups, group_labels=groups)
    report = detector.get_report()
    json.dumps(report)
    metrics = report["metrics"]
    assert metrics["n_clusters"] == 2 and metrics["n_clusters_chosen_by"] == "eigengap"
    assert metrics["ari_groups"] == pytest.approx(1.0)
    assert metrics["group_purity"] == pytest.approx(1.0)
    assert metrics["cluster_sizes"] == [80, 40]  # largest first
    clusters = report["details"]["clusters"]
    corner = next(c for c in clusters if c["majority_group"] == 1)
    other = next(c for c in clusters if c["majority_group"] == 0)
    assert corner["flagged"] and not other["flagged"]
    assert corner["peak_location"] == "top-left"
    assert set(corner["representatives"]) <= set(range(40))
    assert metrics["flagged_clusters"] == [corner["cluster"]]
    assert report["risk"] == "HIGH"
    assert "Clever Hans" in report["finding"]
    assert np.asarray(corner["mean_map"]).shape == (16, 16)
    assert detector.cluster_mean_maps_.shape == (2, 24, 24)
    np.testing.assert_array_equal(detector.labels_ == corner["cluster"], groups == 1)
    eigenvalues = np.asarray(metrics["eigenvalues"])
    assert np.all(np.diff(eigenvalues) >= -1e-9) and eigenvalues[0] == pytest.approx(0, abs=1e-8)


def test_one_strategy_gives_one_cluster(rng):
    report = SpRAyDetector().fit(heatmaps=object_maps(rng, 100, 20)).get_report()
    assert report["metrics"]["n_clusters"] == 1
    assert report["risk"] == "LOW"
    assert "one explanation strategy" in report["finding"]
    zeros = SpRAyDetector().fit(np.zeros((6, 8, 8))).get_report()
    assert "6 heatmaps are all zero" in zeros["finding"]


def test_fixed_number_of_clusters_and_low_resolution_maps(rng):
    maps, groups = two_strategies(rng, size=24)
    native = maps.reshape(len(maps), 6, 4, 6, 4).mean(axis=(2, 4))  # 6x6 maps
    report = SpRAyDetector(n_clusters=3).fit(heatmaps=native, group_labels=groups).get_report()
    assert report["metrics"]["n_clusters"] == 3
    assert report["metrics"]["n_clusters_chosen_by"] == "fixed"
    assert report["metrics"]["grid"] == (6, 6)
    assert sum(report["metrics"]["cluster_sizes"]) == len(maps)


def test_empty_maps_are_counted(rng):
    maps, _ = two_strategies(rng)
    maps[:3] = 0.0
    report = SpRAyDetector().fit(heatmaps=maps).get_report()
    assert report["metrics"]["n_empty_heatmaps"] == 3


def test_bad_arguments(rng):
    maps = rng.random((10, 8, 8))
    with pytest.raises(ValueError, match="min_clusters <= max_clusters, got 5 and 3"):
        SpRAyDetector(min_clusters=5, max_clusters=3).fit(maps)
    with pytest.raises(ValueError, match="downsample"):
        SpRAyDetector(downsample=(1, 8)).fit(maps)
    with pytest.raises(ValueError, match="at least 4"):
        SpRAyDetector().fit(heatmaps=rng.random((3, 8, 8)))
    with pytest.raises(ValueError, match="5 group labels for 10"):
        SpRAyDetector().fit(heatmaps=rng.random((10, 8, 8)), group_labels=[0] * 5)
    with pytest.raises(ValueError, match="needs heatmaps"):
        SpRAyDetector().fit(None)


def test_registry_names_resolve_to_these_detectors():

    assert registry.get_detector_class("spray") is SpRAyDetector
    assert registry.get_detector_class("gradcam_mask_overlap") is GradCAMMaskOverlapDetector


def test_demo_models(shortcut_explanation, clean_explanation, test_data):
    shortcut = SpRAyDetector().fit(
        heatmaps=shortcut_explanation.heatmaps,
        labels=shortcut_explanation.predictions,
        group_labels=test_data.groups,
    )
    metrics = shortcut.get_report()["metrics"]
    assert metrics["ari_groups"] >= 0.8, metrics
    assert metrics["n_flagged_clusters"] >= 1
    assert shortcut.get_report()["risk"] == "HIGH"
    clean = SpRAyDetector().fit(heatmaps=clean_explanation.heatmaps, group_labels=test_data.groups)
    assert clean.get_report()["metrics"]["ari_groups"] < 0.2
    assert clean.get_report()["metrics"]["n_flagged_clusters"] == 0
