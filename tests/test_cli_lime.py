"""``shortcut-detect explain --method lime``: files, JSON, seed, and the marker on the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shortcut_detect.cli import main
from shortcut_detect.data.demo_files import write_image_dataset

N_IMAGES = 8
N_SAMPLES = 150
TOP_K = 3


@pytest.fixture(scope="module")
def marker_images(tmp_path_factory, test_data):
    """PNG files of the first marker-present test images, and the marker's pixels."""
    present = np.flatnonzero(test_data.groups == 1)[:N_IMAGES]
    root = tmp_path_factory.mktemp("lime_images")
    write_image_dataset(test_data.subset(present), root)
    paths = sorted(str(path) for path in (root / "images").glob("*.png"))
    return paths, test_data.marker_mask


def _run(paths, out, *options):
    status = main(["explain", *paths, "--method", "lime", "--out", str(out), *options])
    assert status == 0
    return json.loads((out / "explanations.json").read_text())


def _top_mask(signed: np.ndarray, k: int) -> np.ndarray:
    """Pixels of the ``k`` superpixels with the largest positive weight (the raw LIME map
    holds each pixel's superpixel weight)."""
    weights = np.unique(signed[signed > 0])[::-1][:k]
    return np.isin(signed, weights)


def _marker_hits(report, marker) -> np.ndarray:
    hits = []
    for item in report["images"]:
        signed = np.load(item["heatmap"].replace(".png", ".npy"))
        covered = (_top_mask(signed, TOP_K) & marker).sum() / marker.sum()
        hits.append(covered >= 0.5)
    return np.array(hits)


def test_top_lime_superpixels_cover_the_marker_for_the_shortcut_model(marker_images, tmp_path):
    # Measured with the library (tests/test_lime.py): shortcut 8/8, clean 1/8 on these
    # images; the margins leave room for demo models trained slightly differently.
    paths, marker = marker_images
    options = ("--lime-samples", str(N_SAMPLES), "--seed", "0")
    shortcut = _run(paths, tmp_path / "shortcut", "--model", "demo:shortcut", *options)
    clean = _run(paths, tmp_path / "clean", "--model", "demo:clean", *options)
    shortcut_hits = _marker_hits(shortcut, marker)
    clean_hits = _marker_hits(clean, marker)
    assert shortcut_hits.mean() >= 0.75
    assert shortcut_hits.mean() - clean_hits.mean() >= 0.5
    item = shortcut["images"][0]
    assert shortcut["method"] == "lime" and shortcut["layer"] is None
    assert item["lime"]["num_samples"] == N_SAMPLES and item["lime"]["seed"] == 0
    assert 1 <= len(item["lime"]["top_superpixels"]) <= 5
    heatmap = np.load(item["heatmap"].replace(".png", ".npy"))
    assert heatmap.shape == marker.shape


def test_same_seed_same_maps_other_seed_other_maps(marker_images, tmp_path):
    paths, _ = marker_images
    first, again, other = (
        _run(paths[:1], tmp_path / name, "--model", "demo", "--lime-samples", "40", "--seed", seed)
        for name, seed in (("a", "3"), ("b", "3"), ("c", "4"))
    )
    maps = [
        np.load(report["images"][0]["heatmap"].replace(".png", ".npy"))
        for report in (first, again, other)
    ]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-7)
    assert not np.allclose(maps[0], maps[2])


def test_too_few_samples_and_unknown_methods_are_refused(marker_images, tmp_path, capsys):
    paths, _ = marker_images
    options = ["--model", "demo", "--out", str(tmp_path)]
    assert main(["explain", paths[0], "--method", "lime", "--lime-samples", "1", *options]) == 1
    assert "--lime-samples must be at least 2, got 1" in capsys.readouterr().err
    assert main(["explain", paths[0], "--method", "limes", *options]) == 1
    assert "(or lime)" in capsys.readouterr().err
