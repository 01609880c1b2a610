"""GradCAMMaskOverlapDetector: hand-made maps, the generator path, and the demo models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shortcut_detect.detectors.base import BaseDetector
from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


def corner_masks(n=4, size=10):
    masks = np.zeros((n, size, size), dtype=bool)
    masks[:, :3, :3] = True
    return masks


def test_heatmap_equal_to_mask_scores_perfectly():
    masks = corner_masks()
    detector = GradCAMMaskOverlapDetector().fit(masks.astype(float), masks)
    assert isinstance(detector, BaseDetector)
    report = detector.get_report()
    assert report["method"] == "gradcam_mask_overlap" and report["success"]
    metrics = report["metrics"]
    for key in ("attention_in_mask_mean", "dice_mean", "iou_mean", "cosine_mean"):
        assert metrics[key] == pytest.approx(1.0)
    assert metrics["pointing_accuracy"] == 1.0
    assert metrics["enrichment"] == pytest.approx(100 / 9)
    assert report["risk"] == "HIGH"
    json.dumps(report)


def test_disjoint_and_uniform_attention():
    masks = corner_masks(2)
    heatmaps = np.zeros((2, 10, 10))
    heatmaps[0, 6:, 6:] = 1.0  # elsewhere
    heatmaps[1] = 0.5  # everywhere
    report = GradCAMMaskOverlapDetector().fit(heatmaps, masks).get_report()
    rows = report["details"]["per_sample"]
    assert rows[0]["attention_in_mask"] == 0.0 and rows[0]["dice"] == 0.0
    assert rows[1]["attention_in_mask"] == pytest.approx(0.09)
    assert rows[1]["iou"] == pytest.approx(0.09)  # the whole map is above threshold
    assert report["metrics"]["enrichment"] == pytest.approx(0.5)
    assert report["risk"] == "LOW"


def test_samples_without_mask_are_skipped_not_zero():
    masks = corner_masks(3)
    masks[1] = False
    heatmaps = masks.astype(float)
    heatmaps[1, 5:, 5:] = 1.0
    report = GradCAMMaskOverlapDetector().fit(heatmaps, masks).get_report()
    assert report["metrics"]["n_empty_masks"] == 1 and report["metrics"]["n_valid"] == 2
    assert report["metrics"]["dice_mean"] == pytest.approx(1.0)
    row = report["details"]["per_sample"][1]
    assert row["valid"] is False and row["dice"] is None and row["attention_in_mask"] is None
    assert "1 samples without a mask skipped" in report["finding"]
    with pytest.raises(ValueError, match="No sample has both"):
        GradCAMMaskOverlapDetector().fit(heatmaps, np.zeros((3, 10, 10)))


def test_raw_low_resolution_maps_and_boxes():
    native = np.zeros((2, 5, 5))
    native[:, 0, 0] = 0.2  # raw CAM units, well below 0.5
    report = (
        GradCAMMaskOverlapDetector()
        .fit(native, (0, 0, 4, 4), image_size=(20, 20))  # the box covers cell (0, 0)
        .get_report()
    )
    assert report["metrics"]["attention_in_mask_mean"] == pytest.approx(1.0)
    assert report["metrics"]["dice_mean"] == pytest.approx(1.0)  # threshold relative to peak


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\], got 2.0"):
        GradCAMMaskOverlapDetector(threshold=2.0).fit(np.ones((2, 4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="needs masks"):
        GradCAMMaskOverlapDetector().fit(np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="generator and images"):
        GradCAMMaskOverlapDetector().fit(masks=np.ones((4, 4)))
    with pytest.raises(RuntimeError, match="not fitted"):
        GradCAMMaskOverlapDetector().get_report()


def test_from_generator_and_images_matches_heatmaps(shortcut_model, test_data):
    images = torch.from_numpy(test_data.images[:40])
    masks = test_data.masks[:40]
    with GradCAMHeatmapGenerator(shortcut_model, "features") as gen:
        heatmaps = gen.generate_heatmap(images)
        from_images = GradCAMMaskOverlapDetector().fit(
            masks=masks, generator=gen, images=images, batch_size=16
        )
    from_maps = GradCAMMaskOverlapDetector().fit(heatmaps, masks)
    for key, value in from_maps.get_report()["metrics"].items():
        assert from_images.get_report()["metrics"][key] == pytest.approx(value, abs=1e-5)


def test_demo_models(shortcut_explanation, clean_explanation, test_data):
    shortcut = GradCAMMaskOverlapDetector().fit(shortcut_explanation.heatmaps, test_data.masks)
    clean = GradCAMMaskOverlapDetector().fit(clean_explanation.heatmaps, test_data.masks)
    assert shortcut.get_report()["risk"] == "HIGH"
    assert shortcut.get_report()["metrics"]["enrichment"] >= 3
    assert clean.get_report()["risk"] == "LOW"
    assert (
        shortcut.get_report()["metrics"]["dice_mean"]
        > 3 * clean.get_report()["metrics"]["dice_mean"]
    )
