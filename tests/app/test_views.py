"""The explorer's extra views as plain functions: LIME, activation maps, the embedding map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shortcut_detect.analysis.activations import activation_grid
from shortcut_detect.app import callbacks, views
from shortcut_detect.app.explorer import LIME, PREDICTED
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.lime import explain_lime

SHORTCUT = "demo: shortcut model"


def is_error(status: str) -> bool:
    return status.startswith(callbacks.ERROR_PREFIX)


def test_lime_is_offered_after_the_cam_methods(explorer):
    choices = views.method_choices(explorer)
    assert choices[-1] == ("LIME (superpixels)", LIME)
    assert choices[:-1] == explorer.method_choices()


def test_lime_view_is_the_library_explanation_and_is_cached(explorer, test_data):
    selection = explorer.select_sample("12")
    view = views.generate(explorer, selection, SHORTCUT, "features", LIME, "1", 0.5, 60, 3)
    assert not is_error(view.status)
    assert "LIME weights of **cross**" in view.status and "60 samples, seed 3" in view.status
    model = explorer.get_model(SHORTCUT).model
    tensor = explorer.input_tensor(selection, explorer.get_model(SHORTCUT))
    reference = explain_lime(model, tensor, 1, num_samples=60, seed=3)
    np.testing.assert_allclose(view.result.heatmap, reference.heatmap, atol=1e-6)
    with torch.inference_mode():
        probabilities = torch.softmax(model(tensor[None]), dim=1)[0]
    assert view.top["cross"] == pytest.approx(float(probabilities[1]), abs=1e-5)
    assert view.original.shape == view.overlay.shape == (240, 240, 3)

    again = views.generate(explorer, selection, SHORTCUT, "features", LIME, "1", 0.9, 60, 3)
    assert "from cache" in again.status
    other = views.generate(explorer, selection, SHORTCUT, "features", LIME, "1", 0.5, 60, 4)
    assert "computed in" in other.status
    assert not np.allclose(other.result.heatmap, view.result.heatmap)


def test_cam_methods_still_go_through_the_cam_path(explorer):
    selection = explorer.select_sample("12")
    view = views.generate(explorer, selection, SHORTCUT, "features", "gradcam", PREDICTED, 0.5)
    reference = callbacks.generate(
        explorer, selection, SHORTCUT, "features", "gradcam", PREDICTED, 0.5
    )
    np.testing.assert_array_equal(view.heatmap, reference.heatmap)


@pytest.mark.parametrize(
    ("samples", "seed", "message"),
    [
        (1, 0, "LIME samples must be between 2 and 5000, got 1"),
        (None, 0, "LIME samples and seed must be whole numbers"),
    ],
)
def test_bad_lime_settings_are_an_error_line(explorer, samples, seed, message):
    selection = explorer.select_sample("12")
    view = views.generate(explorer, selection, SHORTCUT, "", LIME, PREDICTED, 0.5, samples, seed)
    assert is_error(view.status) and message in view.status
    assert view.overlay is None and explorer.computations == 0


def test_comparisons_with_lime_say_they_need_a_cam_method(explorer):
    with pytest.raises(ExplorerInputError, match="comparisons of classes and layers need a CAM"):
        explorer.explain(explorer.select_sample("1"), SHORTCUT, "features", LIME)


def test_activation_view_shows_the_strongest_channels_and_their_mean(explorer):
    selection = explorer.select_sample("5")
    view = views.activation_view(explorer, selection, SHORTCUT, "features", channels=6)
    model = explorer.get_model(SHORTCUT)
    grid = activation_grid(model.model, explorer.input_tensor(selection, model), "features", 6)
    assert [caption for _, caption in view.tiles] == [
        f"channel {int(c)} (mean {float(m):.3g})" for c, m in zip(grid.channels, grid.channel_means)
    ]
    assert all(tile.shape == (96, 96, 3) and tile.dtype == np.uint8 for tile, _ in view.tiles)
    assert view.mean.shape == (240, 240, 3)
    # the brightest tile is the channel with the highest peak (one shared scale)
    brightest = int(np.argmax([tile.astype(int).sum() for tile, _ in view.tiles]))
    assert grid.maps[brightest].mean() == pytest.approx(grid.maps.mean(axis=(1, 2)).max())
    assert "`features`" in view.status and "no gradient weighting" in view.status


def test_activation_view_refuses_unknown_layers_and_waits_for_a_selection(explorer):
    assert views.activation_view(explorer, None, SHORTCUT, "features") == ([], None, "")
    view = views.activation_view(explorer, explorer.select_sample("5"), SHORTCUT, "nope")
    assert is_error(view.status) and "'nope' is not a candidate layer" in view.status


@pytest.fixture
def map_dir(tmp_path):
    points = {
        "sample_id": ["a", "b", "c", "d"],
        "x": [0.0, 1.0, 2.0, 10.0],
        "y": [0.0, 5.0, 1.0, 3.0],
        "label": ["disk", "disk", None, "cross"],
        "group": ["marker", "none", "marker", "none"],
        "prediction": ["disk", "cross", "disk", "cross"],
        "correct": [True, False, None, True],
        "spray_cluster": [0, None, 1, 0],
    }
    (tmp_path / "embedding_map.json").write_text(json.dumps(points))
    summary = {
        "embedding_map": {
            "note": "t-SNE map of 4 points.",
            "descriptions": {"group": {"sentence": "Groups form separate islands."}},
        }
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_embedding_points_frame_caption_and_band_selection(map_dir, tmp_path_factory):
    points = views.EmbeddingPoints.load(map_dir)
    assert len(points) == 4
    assert [name for _, name in points.colour_choices()] == [
        "label",
        "group",
        "prediction",
        "correct",
        "spray_cluster",
    ]
    frame = points.frame("correct")
    assert frame["correct"].tolist() == ["correct", "wrong", "missing", "correct"]
    assert frame["spray_cluster"].tolist() == ["cluster 0", "missing", "cluster 1", "cluster 0"]
    assert points.caption("group") == "t-SNE map of 4 points. Groups form separate islands."
    assert points.caption("label") == "t-SNE map of 4 points."
    assert points.in_band([2.5, -0.1]) == [1, 2, 0]  # nearest to the centre 1.2 first
    choices, chosen, message = views.select_band(points, [0.5, 2.2])
    assert chosen == "b" and [value for _, value in choices] == ["b", "c"]
    assert choices[0][0].startswith("b · true class: disk · group: none")
    assert message.startswith("2 point(s) in the selected band")
    assert views.select_band(points, [4.0, 5.0])[1] is None
    assert views.EmbeddingPoints.load(tmp_path_factory.mktemp("empty")) is None
    frame, caption = views.embedding_plot(points, "shape")
    assert frame is None and is_error(caption) and "Cannot colour the map by 'shape'" in caption
    assert views.embedding_plot(None, "group")[0] is None
