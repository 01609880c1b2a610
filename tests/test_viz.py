"""Overlays and figures: headless, saved as PNG, showing what they claim to show."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from shortcut_detect.analysis.groups import compare_groups
from shortcut_detect.detectors.spray import SpRAyDetector
from shortcut_detect.viz import (
    overlay_heatmap,
    plot_explanation,
    plot_group_comparison,
    plot_spray_clusters,
    plot_top_attention_grid,
    to_display_image,
)


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture
def images(rng):
    return rng.random((30, 3, 24, 24)).astype(np.float32)


@pytest.fixture
def corner_and_centre(rng):
    """30 maps: the first 12 look at the top-left corner, the others at the centre."""
    maps = rng.random((30, 24, 24)) * 0.02
    maps[:12, 1:5, 1:5] += 1.0
    maps[12:, 9:15, 9:15] += 1.0
    return maps, np.array([1] * 12 + [0] * 18)


# -- the numpy overlays (kept working) ------------------------------------------------------------
def test_overlay_and_display_image():
    image = torch.full((3, 4, 4), 0.5)
    heat = np.zeros((4, 4), dtype=np.float32)
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), 128)
    assert to_display_image(np.zeros((4, 4))).shape == (4, 4, 3)
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(image, np.zeros((3, 3)))


def test_figures_need_no_pyplot_and_no_display(tmp_path):
    script = (
        "import sys, numpy as np\n"
        "from shortcut_detect.viz import plot_explanation\n"
        "plot_explanation(np.zeros((3, 8, 8)), np.eye(8), save_path=sys.argv[1])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    path = tmp_path / "headless.png"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, timeout=120)
    assert png_size(path)[0] > 0


# -- plot_explanation ------------------------------------------------------------------------------
def test_explanation_has_original_heatmap_and_overlay(tmp_path, rng, images):
    heat = np.zeros((24, 24))
    heat[2:6, 2:6] = 1.0
    path = tmp_path / "explanation.png"
    figure = plot_explanation(images[0], heat, alpha=0.5, title="sample 0", save_path=path)
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes[:3]]
    assert titles == ["Original", "Heatmap (24x24)", "Overlay"]
    assert figure.get_suptitle() == "sample 0"
    width, height = png_size(path)
    assert width > 2 * height  # three panels side by side
    overlay = figure.axes[2].get_images()[0].get_array()
    np.testing.assert_array_equal(overlay, overlay_heatmap(images[0], heat, alpha=0.5))


def test_explanation_of_a_low_resolution_raw_map(rng, images):
    native = np.zeros((6, 6))
    native[1, 1] = 0.2  # raw CAM units
    figure = plot_explanation(images[0], native)
    shown = figure.axes[1].get_images()[0].get_array()
    assert shown.shape == (6, 6) and shown.max() == pytest.approx(1.0)  # relative to peak
    overlay = figure.axes[2].get_images()[0].get_array()
    assert overlay.shape == (24, 24, 3)
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        plot_explanation(images[0], rng.random((2, 6, 6)))


# -- plot_group_comparison -------------------------------------------------------------------------
def test_group_comparison_panels_and_diverging_colormap(tmp_path, corner_and_centre):
    maps, groups = corner_and_centre
    result = compare_groups(maps, groups, n_permutations=100)
    path = tmp_path / "groups.png"
    figure = plot_group_comparison(result, save_path=path)
    png_size(path)
    image_axes = [axis for axis in figure.axes if axis.get_images()]
    assert len(image_axes) == 3
    assert image_axes[0].get_title().startswith("Group 0 (n=18)")
    assert image_axes[1].get_title().startswith("Group 1 (n=12)")
    divergence = image_axes[2].get_images()[0]
    assert divergence.get_cmap().name == "RdBu_r"
    low, high = divergence.get_clim()
    assert low == pytest.approx(-high)  # centred on zero
    np.testing.assert_allclose(divergence.get_array(), result.divergence_regions)
    assert "p = " in figure.get_suptitle()


def test_group_comparison_of_three_groups_and_bad_input(corner_and_centre):
    maps, _ = corner_and_centre
    result = compare_groups(maps, np.arange(30) % 3, n_permutations=0)
    figure = plot_group_comparison(result)
    assert [axis for axis in figure.axes if axis.get_images()][-1].get_images()[
        0
    ].get_cmap().name == "magma"
    from shortcut_detect.gradcam import AttentionOverlapResult

    with pytest.raises(ValueError, match="no group comparison"):
        plot_group_comparison(AttentionOverlapResult(overlap_score=0.5))


# -- plot_spray_clusters ---------------------------------------------------------------------------
def test_spray_mosaic_from_detector_and_from_report(tmp_path, corner_and_centre, images):
    maps, groups = corner_and_centre
    detector = SpRAyDetector(n_clusters=2).fit(heatmaps=maps, group_labels=groups)
    clusters = detector.get_report()["details"]["clusters"]
    path = tmp_path / "spray.png"
    figure = plot_spray_clusters(
        detector, images=images, heatmaps=maps, n_examples=3, save_path=path
    )
    png_size(path)
    shown = [axis for axis in figure.axes if axis.get_images()]
    examples = sum(min(3, len(c["representatives"])) for c in clusters)
    assert len(shown) == len(clusters) + examples
    flagged = [c for c in clusters if c["flagged"]]
    assert flagged and any("FLAGGED" in axis.get_title() for axis in shown)
    np.testing.assert_allclose(shown[0].get_images()[0].get_array(), detector.cluster_mean_maps_[0])
    # from the JSON report alone: the 16x16 mean maps, no samples
    report_figure = plot_spray_clusters(detector.get_report())
    assert len([axis for axis in report_figure.axes if axis.get_images()]) == len(clusters)
    with pytest.raises(ValueError, match="pass the images that were clustered"):
        plot_spray_clusters(detector, images=images[:2])
    with pytest.raises(ValueError, match="Not a SpRAy report"):
        plot_spray_clusters({"method": "probe", "details": {}})


# -- plot_top_attention_grid -----------------------------------------------------------------------
def test_top_attention_grid_ranks_and_skips_undefined(tmp_path, rng, images):
    heatmaps = rng.random((30, 6, 6))
    scores = rng.random(30)
    scores[[3, 7]] = np.nan  # no marker on these samples
    scores[5] = 2.0  # not a fraction: printed as a number
    path = tmp_path / "top.png"
    figure = plot_top_attention_grid(images, heatmaps, scores, k=5, save_path=path)
    png_size(path)
    titles = [axis.get_title() for axis in figure.axes if axis.get_images()]
    defined = np.flatnonzero(~np.isnan(scores))
    expected = defined[np.argsort(-scores[defined])][:5]
    assert [int(t.split(":")[0][1:]) for t in titles] == expected.tolist()
    assert titles[0] == "#5: 2"
    assert "Top 5 samples" in figure.get_suptitle()
    with pytest.raises(ValueError, match="one entry per sample"):
        plot_top_attention_grid(images, heatmaps, scores[:10])
    with pytest.raises(ValueError, match="All scores are NaN"):
        plot_top_attention_grid(images, heatmaps, np.full(30, np.nan))


def test_save_path_must_be_png(tmp_path, rng, images):
    with pytest.raises(ValueError, match="PNG"):
        plot_explanation(images[0], rng.random((24, 24)), save_path=tmp_path / "figure.jpg")
