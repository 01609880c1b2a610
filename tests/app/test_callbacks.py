"""The page's callbacks, called as plain functions (no browser, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from shortcut_detect.app import callbacks
from shortcut_detect.app.explorer import PREDICTED, Explorer, render_views
from shortcut_detect.app.sources import DataSource

SHORTCUT = "demo: shortcut model"
CLEAN = "demo: clean model"


def is_error(status: str) -> bool:
    return status.startswith(callbacks.ERROR_PREFIX)


def test_generate_without_a_selection_asks_for_one(explorer):
    view = callbacks.generate(explorer, None, SHORTCUT, "features", "gradcam", PREDICTED, 0.5)
    assert is_error(view.status) and "gallery" in view.status
    assert view.original is None and view.overlay is None and view.top is None
    assert explorer.computations == 0


def test_generate_shows_images_predictions_and_what_was_explained(explorer):
    picked = callbacks.open_sample(explorer, "12")
    assert picked.selection is not None and picked.preview.shape == (256, 256, 3)
    view = callbacks.generate(explorer, picked.selection, SHORTCUT, "features", "gradcam", "1", 0.4)
    assert not is_error(view.status)
    assert view.original.shape == view.heatmap.shape == view.overlay.shape == (240, 240, 3)
    assert set(view.top) == {"disk", "cross"}
    assert sum(view.top.values()) == pytest.approx(1.0, abs=1e-5)
    assert view.result.target_name == "cross"
    for text in ("**cross**", "`features`", "gradcam", "computed in", picked.selection.caption):
        assert text in view.status
    again = callbacks.generate(
        explorer, picked.selection, SHORTCUT, "features", "gradcam", "1", 0.9
    )
    assert "from cache" in again.status
    np.testing.assert_array_equal(again.heatmap, view.heatmap)
    assert not np.array_equal(again.overlay, view.overlay)  # another opacity, same heatmap


def test_changing_layer_method_or_model_changes_the_overlay(explorer):
    selection = callbacks.open_sample(explorer, "30").selection
    base = callbacks.generate(explorer, selection, SHORTCUT, "features", "gradcam", PREDICTED, 0.5)
    other_layer = callbacks.generate(
        explorer, selection, SHORTCUT, "features.4", "gradcam", PREDICTED, 0.5
    )
    other_model = callbacks.generate(
        explorer, selection, CLEAN, "features", "gradcam", PREDICTED, 0.5
    )
    assert not np.array_equal(base.overlay, other_layer.overlay)
    assert not np.array_equal(base.overlay, other_model.overlay)
    assert base.top != other_model.top


def test_reblend_uses_the_stored_heatmap(explorer):
    view = callbacks.generate(
        explorer, callbacks.open_sample(explorer, "5").selection, SHORTCUT, "", "", PREDICTED, 0.5
    )
    computed = explorer.computations
    np.testing.assert_array_equal(callbacks.reblend(explorer, view.result, 0.0), view.original)
    np.testing.assert_array_equal(callbacks.reblend(explorer, view.result, 1.0), view.heatmap)
    assert callbacks.reblend(explorer, None, 0.3) is None
    assert explorer.computations == computed
    padded = callbacks.reblend_many(explorer, [view.result], 0.0, 3)
    assert len(padded) == 3 and padded[1] is None
    np.testing.assert_array_equal(padded[0], view.original)


def test_uploads_of_every_kind_are_explained(explorer, image_files, test_data):
    sample = explorer.explain(explorer.select_sample("3"), SHORTCUT)[0]
    for kind in ("rgb", "rgba", "gray", "gray16", "big"):
        picked = callbacks.choose_upload(explorer, str(image_files[kind]))
        assert not is_error(picked.status), picked.status
        assert image_files[kind].name in picked.status
        view = callbacks.generate(
            explorer, picked.selection, SHORTCUT, "features", "gradcam", PREDICTED, 0.5
        )
        assert not is_error(view.status) and view.overlay.shape == (240, 240, 3)
        if kind in ("rgb", "rgba"):
            # The PNG of test image 3 (8-bit) is explained like test image 3 itself.
            assert view.result.top[0][0] == sample.top[0][0]
            assert np.abs(view.result.heatmap - sample.heatmap).max() < 0.05
    assert "grayscale" in callbacks.choose_upload(explorer, str(image_files["gray"])).status


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("text", "not an image"),
        ("fake_png", "not an image"),
        ("truncated", "corrupt or truncated"),
        ("bomb", "above the limit"),
    ],
)
def test_bad_uploads_become_messages(explorer, image_files, kind, expected):
    picked = callbacks.choose_upload(explorer, str(image_files[kind]))
    assert is_error(picked.status)
    assert expected in picked.status and image_files[kind].name in picked.status
    assert picked.selection is None and picked.preview is None


def test_uploads_over_the_size_limit_are_refused(demo_explorer_models, image_files):
    strict = Explorer(demo_explorer_models, None, max_upload_bytes=200)
    picked = callbacks.choose_upload(strict, str(image_files["big"]))
    assert is_error(picked.status) and "the limit is" in picked.status
    assert not is_error(callbacks.choose_upload(strict, None).status)  # clearing is fine


def test_compare_classes(explorer):
    selection = callbacks.open_sample(explorer, "40").selection
    left, right, status, results = callbacks.compare_classes(
        explorer, selection, SHORTCUT, "features", "gradcam", "0", "1", 0.5
    )
    assert left.shape == right.shape == (240, 240, 3)
    assert [r.target_name for r in results] == ["disk", "cross"]
    assert not np.array_equal(results[0].heatmap, results[1].heatmap)
    assert "left **disk**" in status and "right **cross**" in status
    assert "correlation" in status
    assert explorer.computations == 1
    *_, message, none = callbacks.compare_classes(
        explorer, selection, SHORTCUT, "features", "gradcam", "0", "horse", 0.5
    )
    assert is_error(message) and "horse" in message and none == []


def test_compare_layers(explorer):
    selection = callbacks.open_sample(explorer, "41").selection
    layers = explorer.layer_choices(SHORTCUT).comparison
    overlays, status, results = callbacks.compare_layers(
        explorer, selection, SHORTCUT, layers, "gradcam", PREDICTED, 0.5
    )
    assert [r.layer for r in results] == list(layers)
    assert all(o.shape == (240, 240, 3) for o in overlays)
    assert len({r.heatmap.tobytes() for r in results}) == 3
    assert all(f"`{name}`" in status for name in layers)
    overlays, status, results = callbacks.compare_layers(
        explorer, selection, SHORTCUT, ["features", "nope"], "gradcam", PREDICTED, 0.5
    )
    assert overlays == (None, None) and is_error(status) and results == []


def test_gallery_samples_are_random_distinct_and_reproducible(explorer, demo_source):
    items, ids = callbacks.gallery_items(explorer, 20, seed=1)
    assert len(items) == len(set(ids)) == 20
    for (picture, caption), sample_id in zip(items, ids):
        assert caption == demo_source.get(sample_id).caption
        assert picture.size == (96, 96)
    assert callbacks.gallery_items(explorer, 20, seed=1)[1] == ids
    assert callbacks.gallery_items(explorer, 20, seed=2)[1] != ids
    picked = callbacks.choose_gallery_sample(explorer, ids, 3)
    assert picked.selection.key == f"sample:{ids[3]}"
    assert is_error(callbacks.choose_gallery_sample(explorer, ids, 20).status)
    assert is_error(callbacks.choose_gallery_sample(explorer, [], None).status)


def test_open_sample_refuses_paths_outside_the_data(demo_explorer_models, tmp_path, image_files):
    root = tmp_path / "data" / "disk"
    root.mkdir(parents=True)
    (root / "one.png").write_bytes(image_files["rgb"].read_bytes())
    (tmp_path / "outside.png").write_bytes(image_files["rgb"].read_bytes())
    explorer = Explorer(demo_explorer_models, DataSource(tmp_path / "data"))
    assert callbacks.open_sample(explorer, "disk/one.png").selection is not None
    for crafted in ("../../etc/passwd", "../outside.png", "/etc/passwd", "disk/../../outside.png"):
        picked = callbacks.open_sample(explorer, crafted)
        assert picked.selection is None
        assert is_error(picked.status) and "outside the allowed directory" in picked.status


def test_model_settings_follow_the_model(explorer):
    settings = callbacks.model_settings(explorer, CLEAN)
    assert settings.default_layer == "features"
    assert settings.class_options[0] == ("predicted class", PREDICTED)
    assert [label for label, _ in settings.class_options[1:]] == ["disk", "cross"]
    assert settings.comparison_layers[-1] == "features"
    assert "no label information" in settings.description


def test_render_views_of_a_view_match_the_callback(explorer):
    view = callbacks.generate(
        explorer, callbacks.open_sample(explorer, "6").selection, CLEAN, "", "", PREDICTED, 0.3
    )
    _original, coloured, overlay = render_views(view.result, 0.3)
    np.testing.assert_array_equal(overlay, view.overlay)
    np.testing.assert_array_equal(coloured, view.heatmap)
