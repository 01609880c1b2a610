"""The audit's embedding map: the sentence is computed from the data; report and JSON file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from markupsafe import escape

from shortcut_detect.audit.embedding_view import (
    EMBEDDING_MAP_FILE,
    audit_embedding_map,
    embedding_map_figures,
    map_points,
)


def _features(separate_groups: bool, count: int = 240, seed: int = 0):
    """Two well-separated classes; the two groups either sit apart within each class
    (10 standard deviations) or are drawn from the same cloud."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["cat", "dog"], count // 2)
    groups = np.tile(["a", "b"], count // 2)
    data = rng.normal(0.0, 1.0, size=(count, 16))
    data[labels == "dog", 0] += 30.0
    if separate_groups:
        data[groups == "b", 1] += 10.0
    return data.astype(np.float32), labels, groups


@pytest.mark.parametrize(
    ("separate", "group_sentence"),
    [
        (True, "Groups form separate islands within each class"),
        (False, "Groups are mixed within each class"),
    ],
)
def test_sentence_says_whether_groups_form_islands(separate, group_sentence):
    data, labels, groups = _features(separate)
    ids = [f"s{i}" for i in range(len(data))]
    summary, points = audit_embedding_map(
        data, ids, labels=list(labels), groups=list(groups), predictions=list(labels), seed=0
    )
    sentences = {name: item["sentence"] for name, item in summary["descriptions"].items()}
    assert sentences["group"].startswith(group_sentence)
    assert sentences["label"].startswith("Classes form separate islands")
    assert summary["n_points"] == len(points["sample_id"]) == len(data)
    assert summary["file"] == EMBEDDING_MAP_FILE
    # points keep the sample order of the map and their columns
    assert points["sample_id"] == ids
    assert points["group"] == list(groups)
    assert points["correct"] == [True] * len(data)


def test_unlabelled_points_are_left_out_of_the_class_comparison_and_marked_unknown():
    data, labels, groups = _features(True, count=120)
    known = [str(label) if i % 4 else None for i, label in enumerate(labels)]
    summary, points = audit_embedding_map(
        data,
        [str(i) for i in range(len(data))],
        labels=known,
        groups=list(groups),
        predictions=list(labels),
    )
    assert summary["descriptions"]["group"]["per_class"]["cat"]["n"] == 45
    assert points["correct"][0] is None and points["correct"][1] is True


def test_spray_clusters_join_by_sample_id_and_figures_carry_the_sentences():
    data, labels, groups = _features(True, count=60)
    ids = [f"s{i}" for i in range(len(data))]
    summary, points = audit_embedding_map(
        data, ids, labels=list(labels), groups=list(groups), predictions=list(labels)
    )
    joined = map_points(points, {"s0": 2, "s5": 0})
    assert joined["spray_cluster"][0] == 2 and joined["spray_cluster"][5] == 0
    assert joined["spray_cluster"][1] is None
    figures = embedding_map_figures(summary, joined)
    assert [item["colouring"] for item in figures] == ["group", "true class"]
    assert figures[0]["sentence"] == summary["descriptions"]["group"]["sentence"]
    assert all(item["image"].startswith("data:image/png;base64,") for item in figures)
    assert embedding_map_figures(None, joined) == []


def test_mismatched_ids_are_refused():
    data, labels, groups = _features(True, count=30)
    with pytest.raises(ValueError, match="30 embeddings for 29 sample ids"):
        audit_embedding_map(
            data, ["x"] * 29, labels=list(labels), groups=list(groups), predictions=list(labels)
        )


def test_shortcut_audit_writes_the_map_and_the_report_shows_it(shortcut_audit):
    section = shortcut_audit.summary["embedding_map"]
    root = shortcut_audit.store.root
    points = json.loads((root / EMBEDDING_MAP_FILE).read_text())
    assert shortcut_audit.summary["files"]["embedding_map"] == EMBEDDING_MAP_FILE
    assert len(points["sample_id"]) == section["n_points"] == 120
    stored = set(shortcut_audit.store.table().column("sample_id").to_pylist())
    assert set(points["sample_id"]) <= stored
    assert set(points) >= {"x", "y", "label", "group", "prediction", "correct", "spray_cluster"}
    assert any(cluster is not None for cluster in points["spray_cluster"])
    html = shortcut_audit.report_path.read_text()
    assert 'id="embedding-map"' in html
    for item in section["descriptions"].values():
        assert str(escape(item["sentence"])) in html
