"""Analysis of a hand-made store: where masks are in words, and the wording of findings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from shortcut_detect.audit.analysis import (
    SIGNALS,
    _group_signal,
    analyse_store,
    mask_location,
    prediction_group_signal,
)
from shortcut_detect.audit.pipeline import AuditOptions, _shards_left_note
from shortcut_detect.audit.store import STORE_VERSION, AuditStore, ShardWriter
from shortcut_detect.data.transforms import Preprocessing

SIZE = 48
CAM = 12
# 8x8-pixel boxes (x0, y0, x1, y1) in the four corners of a 48x48 image
CORNER_BOXES = [(0, 0, 8, 8), (40, 0, 48, 8), (0, 40, 8, 48), (40, 40, 48, 48)]


def _corner_store(tmp_path, boxes, per_box=12):
    """A finished one-shard store whose heatmaps sit inside per-sample boxes."""
    preprocessing = Preprocessing(size=(SIZE, SIZE))
    config = {
        "store_version": STORE_VERSION,
        "model": "hand-made",
        "layer": "features",
        "method": "gradcam",
        "target": "predicted",
        "n_samples": len(boxes) * per_box,
        "num_shards": 1,
        "input_size": [SIZE, SIZE],
        "cam_size": [CAM, CAM],
        "class_names": ["disk", "cross"],
        "preprocessing": preprocessing.to_dict(),
        "has_groups": False,
        "has_masks": True,
    }
    (tmp_path / "audit.json").write_text(json.dumps(config))
    rows, maps = [], []
    rng = np.random.default_rng(0)
    for index in range(len(boxes) * per_box):
        x0, y0, x1, y1 = boxes[index % len(boxes)]
        heat = np.full((CAM, CAM), 0.01, dtype=np.float32)
        scale = SIZE // CAM
        heat[y0 // scale : y1 // scale, x0 // scale : x1 // scale] = 1.0
        maps.append(heat)
        label = index % 2
        rows.append(
            {
                "sample_id": f"s{index:03d}",
                "index": index,
                "path": f"images/s{index:03d}.png",
                "status": "ok",
                "label": label,
                "label_name": ["disk", "cross"][label],
                "prediction": label,
                "confidence": float(rng.uniform(0.6, 1.0)),
                "correct": True,
                "width": SIZE,
                "height": SIZE,
                "has_mask": True,
                "mask": f"box:{x0},{y0},{x1},{y1}",
                "mask_attention": 0.9,
                "mask_center_y": (y0 + y1) / 2 / SIZE,
                "mask_center_x": (x0 + x1) / 2 / SIZE,
                "peak_y": (y0 + 2) / SIZE,
                "peak_x": (x0 + 2) / SIZE,
                "entropy": 0.3,
                "cam_max": 1.0,
                "heatmap_row": index,
            }
        )
    with ShardWriter(tmp_path, 0, 1) as writer:
        writer.add(rows, np.stack(maps))
        writer.finish()
    return AuditStore(tmp_path)


def test_masks_in_the_four_corners_are_the_corners_not_the_centre(tmp_path):
    store = _corner_store(tmp_path, CORNER_BOXES)
    summary = analyse_store(store, embedding_samples=0, n_permutations=50).summary
    verdict = summary["verdict"]
    mask = next(s for s in summary["signals"] if s["name"] == "mask_attention")
    assert mask["risk"] == "HIGH" and verdict["risk"] == "HIGH"
    assert verdict["location"] == "corners"
    assert "in the corners of the image" in verdict["headline"]
    assert "centre" not in verdict["headline"]
    assert mask["finding"].startswith("Attention on the mask region (corners):")


def test_masks_in_two_places_are_listed_with_their_shares(tmp_path):
    boxes = [(0, 0, 8, 8)] * 3 + [(40, 40, 48, 48)]
    store = _corner_store(tmp_path, boxes, per_box=8)
    verdict = analyse_store(store, embedding_samples=0, n_permutations=50).summary["verdict"]
    assert verdict["location"] == "top-left (75%) and bottom-right (25%)"
    assert "centre" not in verdict["headline"]


@pytest.mark.parametrize(
    ("centres", "expected"),
    [
        ([(0.1, 0.1)] * 9 + [(0.5, 0.5)], "top-left"),  # 90% in one place: that place
        ([(0.1, 0.1), (0.1, 0.9), (0.9, 0.1), (0.9, 0.9)], "corners"),
        ([(0.1, 0.1)] * 3 + [(0.5, 0.5)] * 2, "top-left (60%) and centre (40%)"),
        (
            [(0.1, 0.1)] * 2 + [(0.1, 0.9)] * 2 + [(0.9, 0.1)],
            "top-left (40%), top-right (40%) and bottom-left (20%)",
        ),
    ],
)
def test_mask_location_names_only_places_where_masks_are(centres, expected):
    y, x = np.array(centres).T
    assert mask_location(y, x) == expected


def test_mask_location_without_masks_is_none():
    assert mask_location(np.array([np.nan]), np.array([np.nan])) is None


def test_equal_accuracy_does_not_compare_a_group_with_itself():
    labels = np.zeros(40, dtype=np.int64)
    groups = np.array(["site_a"] * 20 + ["site_b"] * 20, dtype=object)
    signal = prediction_group_signal(labels, labels.copy(), groups, ["disk"])
    assert signal.risk == "LOW"
    assert signal.finding == (
        "Among 'disk' images, accuracy is 100% in each of the groups 'site_a' and 'site_b'."
    )


def test_different_accuracy_names_both_groups_once():
    labels = np.zeros(40, dtype=np.int64)
    predictions = np.array([0] * 20 + [1] * 16 + [0] * 4)
    groups = np.array(["site_a"] * 20 + ["site_b"] * 20, dtype=object)
    finding = prediction_group_signal(labels, predictions, groups, ["disk", "cross"]).finding
    assert finding.startswith(
        "Among 'disk' images, accuracy is 100% in group 'site_a' but 20% in group 'site_b'"
    )


def _comparison(overlap, p_value, significant):
    metrics = {
        "grid": [3, 3],
        "divergence_peak": (0, 0),
        "divergence_peak_value": 0.2,
        "p_value": p_value,
        "significant": significant,
    }
    return SimpleNamespace(metrics=metrics, overlap_score=overlap, summary="")


def test_small_but_significant_attention_difference_is_not_called_similar():
    signal = _group_signal(_comparison(0.92, 0.001, True), ["clean", "tagged"])
    assert signal.risk == "LOW"
    assert "similar" not in signal.finding
    assert signal.finding == (
        "Attention differs only slightly between groups: the group mean heatmaps share 92% of "
        "their attention mass (permutation test p = 0.001; a real but small difference)."
    )


def test_attention_difference_wording_by_size_and_significance():
    similar = _group_signal(_comparison(0.95, 0.4, False), ["clean", "tagged"])
    assert similar.finding == (
        "Attention is similar across groups: the group mean heatmaps share 95% of their "
        "attention mass (permutation test p = 0.4)."
    )
    moved = _group_signal(_comparison(0.5, 0.001, True), ["clean", "tagged"])
    assert moved.risk == "HIGH"
    assert "group 'tagged' attends more to the top-left of the image" in moved.finding


@pytest.mark.parametrize(
    ("unfinished", "expected"),
    [
        ([1], "shard 1 is not finished."),
        ([1, 2], "shards 1 and 2 are not finished."),
        ([1, 2, 3], "shards 1, 2 and 3 are not finished."),
    ],
)
def test_unfinished_shards_note_is_a_sentence(tmp_path, unfinished, expected):
    options = AuditOptions(model="m", data="d", out=str(tmp_path), num_shards=4, shard_index=0)
    note = _shards_left_note(options, unfinished, tmp_path)
    assert note.startswith(f"Shard 0 of 4 is done; {expected} When all are finished")


def test_every_registered_signal_is_a_function_of_the_audit_data():
    assert list(SIGNALS) == [
        "peak_concentration",
        "prediction_by_group",
        "group_attention",
        "mask_attention",
        "spray",
        "embeddings",
        "interventions",
    ]
    assert all(callable(function) for function in SIGNALS.values())


def test_missing_groups_are_explained_in_parameter_names(tmp_path):
    store = _corner_store(tmp_path, CORNER_BOXES)
    signals = analyse_store(store, embedding_samples=0, n_permutations=50).summary["signals"]
    group = next(s for s in signals if s["name"] == "group_attention")
    assert group["risk"] == "UNKNOWN"
    assert "group_column" in group["finding"] and "--" not in group["finding"]
