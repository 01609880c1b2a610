"""Browsing an audit: sorting, filtering, opening a sample reproduces its stored numbers."""

from __future__ import annotations

import numpy as np
import pytest

from shortcut_detect.app import callbacks, make_explorer
from shortcut_detect.app.audit_browser import ALL, AuditBrowser
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.audit.store import AuditStore


@pytest.fixture(scope="module")
def audit_explorer(audit_dir, demo_explorer_models):
    del demo_explorer_models  # loaded once for the session
    return make_explorer(audit=audit_dir)


@pytest.fixture(scope="module")
def table(audit_dir):
    return AuditStore(audit_dir).table().to_pylist()


def test_the_audit_sets_model_layer_and_method(audit_explorer):
    assert audit_explorer.model_names[0] == "demo: shortcut model"
    assert audit_explorer.layer_choices().default == "features"
    assert audit_explorer.default_method == "gradcam"
    assert len(audit_explorer.sample_ids()) == 41


def test_sorted_by_attention_in_the_region_or_by_confidence(audit_explorer, table):
    rows, ids, message = callbacks.audit_table(audit_explorer, "attention", ALL, ALL)
    assert message.startswith("41 of 41 samples")
    attention = [row[6] for row in rows]
    known = [value for value in attention if value is not None]
    assert known == sorted(known, reverse=True) and len(known) == 40
    assert attention[-1] is None and ids[-1] == "broken.png"  # no heatmap: last
    by_id = {row["sample_id"]: row for row in table}
    assert rows[0][6] == pytest.approx(by_id[ids[0]]["mask_attention"], abs=1e-3)
    rows, ids, _ = callbacks.audit_table(audit_explorer, "confidence", ALL, ALL)
    confidences = [row[3] for row in rows if row[3] is not None]
    assert confidences == sorted(confidences, reverse=True)
    rows, _, _ = callbacks.audit_table(audit_explorer, "confidence-low", ALL, ALL)
    assert [row[3] for row in rows if row[3] is not None] == sorted(confidences)


def test_filters_by_group_and_outcome(audit_explorer, table):
    expected = {
        row["sample_id"]
        for row in table
        if row["group"] == "marker" and row["status"] == "ok" and not row["correct"]
    }
    _, ids, message = callbacks.audit_table(audit_explorer, "confidence", "marker", "misclassified")
    assert set(ids) == expected and expected
    assert message.startswith(f"{len(expected)} of 41")
    _, ids, _ = callbacks.audit_table(audit_explorer, "confidence", ALL, "correct")
    assert set(ids) == {row["sample_id"] for row in table if row["correct"]}
    _, ids, _ = callbacks.audit_table(audit_explorer, "order", ALL, "failed")
    assert ids == ["broken.png"]
    _, ids, _ = callbacks.audit_table(audit_explorer, "order", "none", ALL)
    assert ids == [row["sample_id"] for row in table if row["group"] == "none"]
    browser = audit_explorer.audit
    assert browser.group_choices() == [("all groups", ALL), ("marker", "marker"), ("none", "none")]
    assert len(browser.select("order", limit=5).rows) == 5
    assert "showing the first 5" in browser.select("order", limit=5).message
    _, _, message = callbacks.audit_table(audit_explorer, "size", ALL, ALL)
    assert callbacks.ERROR_PREFIX in message


def test_opening_a_sample_reproduces_the_audit(audit_dir, audit_explorer, table):
    _, ids, _ = callbacks.audit_table(audit_explorer, "attention", ALL, ALL)
    clicked = callbacks.audit_row_sample(ids, [2, 4])
    assert clicked == ids[2]
    picked = callbacks.open_sample(audit_explorer, clicked)
    assert picked.selection is not None
    view = callbacks.generate(audit_explorer, picked.selection, None, None, None, "predicted", 0.5)
    row = next(row for row in table if row["sample_id"] == clicked)
    assert view.result.predicted_name == row["prediction_name"]
    assert view.result.predicted_probability == pytest.approx(row["confidence"], abs=1e-4)
    stored = AuditStore(audit_dir).upsampled([clicked])[0]
    np.testing.assert_allclose(view.result.heatmap, stored, atol=2e-3)


def test_audit_sample_ids_cannot_reach_other_files(audit_explorer):
    for crafted in ("../secret.png", "../../etc/passwd", "/etc/passwd", "images/../../secret.png"):
        picked = callbacks.open_sample(audit_explorer, crafted)
        assert picked.selection is None
        assert "outside the allowed directory" in picked.status
    assert callbacks.audit_row_sample(["a"], [5, 0]) == ""
    broken = callbacks.open_sample(audit_explorer, "broken.png")
    assert broken.selection is None and "not an image" in broken.status


def test_not_an_audit_directory(tmp_path):
    with pytest.raises(ExplorerInputError, match="not an audit directory"):
        AuditBrowser.open(tmp_path)
