"""The explorer's core: the right heatmap for the choices made, computed once, cached."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from shortcut_detect.app.explorer import (
    PREDICTED,
    Explorer,
    blend,
    method_choices,
    render_views,
    resolve_target,
)
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.cam.image import apply_colormap

SHORTCUT = "demo: shortcut model"
CLEAN = "demo: clean model"


def grad_cam_reference(model, layer, image, target):
    """pytorch-grad-cam's Grad-CAM (test-only oracle)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(model.named_modules())[layer]
    with GradCAM(model, [module]) as cam:
        batch = torch.from_numpy(np.asarray(image, dtype=np.float32))[None]
        return cam(batch, targets=[ClassifierOutputTarget(target)])[0]


@pytest.mark.parametrize("layer", ["features", "features.4"])
@pytest.mark.parametrize("target", [0, 1])
def test_heatmap_matches_pytorch_grad_cam(explorer, test_data, layer, target):
    selection = explorer.select_sample("5")
    result = explorer.explain(selection, SHORTCUT, layer, "gradcam", [target])[0]
    model = explorer.get_model(SHORTCUT).model
    expected = grad_cam_reference(model, layer, test_data.images[5], target)
    assert result.heatmap.shape == (48, 48)
    np.testing.assert_allclose(result.heatmap, expected, atol=1e-5)
    assert (result.target_index, result.layer, result.method) == (target, layer, "gradcam")


def test_predictions_are_the_softmax_of_the_model(explorer, test_data):
    selection = explorer.select_sample("11")
    result = explorer.explain(selection, CLEAN)[0]
    model = explorer.get_model(CLEAN).model
    with torch.inference_mode():
        probabilities = torch.softmax(model(torch.from_numpy(test_data.images[11:12])), 1)[0]
    predicted = int(probabilities.argmax())
    names = ("disk", "cross")
    assert result.target_index == predicted  # "predicted class" explains the arg-max
    assert [name for name, _ in result.top] == [names[predicted], names[1 - predicted]]
    np.testing.assert_allclose(
        [p for _, p in result.top], sorted(probabilities.tolist(), reverse=True), rtol=1e-5
    )
    assert result.target_probability == pytest.approx(float(probabilities[predicted]), rel=1e-5)
    # The image shown is exactly what the model was given.
    np.testing.assert_allclose(result.image, test_data.images[11].transpose(1, 2, 0), atol=1e-6)


def test_the_two_demo_models_disagree_about_the_marker(explorer, test_data):
    """Shortcut model: attention on the marker; clean model: not (the point of the demo)."""
    marked = np.flatnonzero(test_data.groups == 1)[:8]
    marker = test_data.marker_mask
    share = {}
    for name in (SHORTCUT, CLEAN):
        maps = [explorer.explain(explorer.select_sample(str(i)), name)[0].heatmap for i in marked]
        share[name] = float(np.mean([m[marker].sum() / m.sum() for m in maps]))
    assert share[SHORTCUT] > 3 * share[CLEAN]


def test_heatmaps_are_cached_per_image_layer_method_and_class(explorer):
    selection = explorer.select_sample("7")
    first = explorer.explain(selection, SHORTCUT, "features", "gradcam", [PREDICTED])[0]
    assert not first.cached and explorer.computations == 1
    again = explorer.explain(selection, SHORTCUT, "features", "gradcam", [PREDICTED])[0]
    assert again.cached and explorer.computations == 1
    np.testing.assert_array_equal(again.heatmap, first.heatmap)
    # Any change of image, layer, class or model is a new computation.
    explorer.explain(explorer.select_sample("8"), SHORTCUT, "features", "gradcam", [PREDICTED])
    explorer.explain(selection, SHORTCUT, "features.4", "gradcam", [PREDICTED])
    explorer.explain(selection, SHORTCUT, "features", "gradcam", [0])
    explorer.explain(selection, CLEAN, "features", "gradcam", [PREDICTED])
    assert explorer.computations == 5
    # Method names are normalised before they key the cache.
    assert explorer.explain(selection, SHORTCUT, "features", "Grad-CAM", [0])[0].cached


def test_the_cache_is_bounded(demo_explorer_models, demo_source):
    small = Explorer(demo_explorer_models, demo_source, cache_size=2)
    for index in range(4):
        small.explain(small.select_sample(str(index)))
    assert small.cache_info["size"] == 2
    assert not small.explain(small.select_sample("0"))[0].cached  # evicted
    assert small.explain(small.select_sample("3"))[0].cached  # recent


def test_two_classes_come_from_one_forward_pass(explorer, test_data):
    selection = explorer.select_sample("2")
    disk, cross = explorer.explain(selection, SHORTCUT, None, "gradcam", ["disk", "1"])
    assert explorer.computations == 1
    assert (disk.target_name, cross.target_name) == ("disk", "cross")
    assert disk.target_probability + cross.target_probability == pytest.approx(1.0, abs=1e-5)
    model = explorer.get_model(SHORTCUT).model
    for result, target in ((disk, 0), (cross, 1)):
        expected = grad_cam_reference(model, "features", test_data.images[2], target)
        np.testing.assert_allclose(result.heatmap, expected, atol=1e-5)


def test_concurrent_requests_compute_once(explorer):
    selection = explorer.select_sample("9")
    results = []

    def ask() -> None:
        results.append(explorer.explain(selection, SHORTCUT, "features.8", "gradcam")[0])

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and explorer.computations == 1
    for result in results[1:]:
        np.testing.assert_array_equal(result.heatmap, results[0].heatmap)


def test_layer_choices_mark_the_default_and_pick_early_middle_late(explorer):
    choices = explorer.layer_choices(SHORTCUT)
    assert choices.default == "features"
    assert choices.names[0] == "features.0" and "features.8" in choices.names
    assert choices.comparison == ("features.0", "features.4", "features")
    labels = dict((value, label) for label, value in choices.options())
    assert labels["features"] == "features · Sequential 64x12x12 (default)"
    assert labels["features.0"] == "features.0 · Conv2d 16x48x48"


def test_every_registered_cam_method_is_offered_and_works(explorer):
    from shortcut_detect.cam import EXPLAIN_METHODS

    keys = [key for _, key in method_choices()]
    first_key_per_class: dict[type, str] = {}
    for key, cls in EXPLAIN_METHODS.items():
        first_key_per_class.setdefault(cls, key)
    assert keys == list(first_key_per_class.values())  # aliases are not listed twice
    selection = explorer.select_sample("4")
    for key in keys:
        result = explorer.explain(selection, SHORTCUT, "features", key)[0]
        assert result.method == key
        assert result.heatmap.shape == (48, 48)
        assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
    with pytest.raises(ExplorerInputError, match="Unknown CAM method"):
        explorer.explain(selection, SHORTCUT, "features", "no-such-cam")


def test_unknown_choices_are_refused_with_a_message(explorer):
    selection = explorer.select_sample("1")
    with pytest.raises(ExplorerInputError, match="not a candidate layer"):
        explorer.explain(selection, SHORTCUT, "classifier")
    with pytest.raises(ExplorerInputError, match="Unknown model"):
        explorer.explain(selection, "resnet")
    with pytest.raises(ExplorerInputError, match="Unknown class 'dog'"):
        explorer.explain(selection, SHORTCUT, targets=["dog"])
    with pytest.raises(ExplorerInputError, match="does not exist; there are 400"):
        explorer.select_sample("400")


def test_resolve_target():
    names = ("disk", "cross")
    assert resolve_target(PREDICTED, names) is None
    assert resolve_target(None, names) is None
    assert resolve_target("cross", names) == 1
    assert resolve_target("0", names) == 0
    assert resolve_target(np.int64(1), names) == 1
    with pytest.raises(ExplorerInputError, match="out of range"):
        resolve_target(2, names)


def test_render_views_enlarges_and_blends_without_recomputing(explorer):
    result = explorer.explain(explorer.select_sample("3"))[0]
    computed = explorer.computations
    original, coloured, overlay = render_views(result, 0.5, side=256)
    assert original.shape == coloured.shape == overlay.shape == (240, 240, 3)
    assert original.dtype == np.uint8
    # Pixels are enlarged 5x as blocks; the heatmap colours are the jet colour map.
    np.testing.assert_array_equal(original[::5, ::5], np.uint8(result.image * 255 + 0.5))
    assert np.abs(coloured[2::5, 2::5] / 255.0 - apply_colormap(result.heatmap)).max() < 0.08
    # Opacity 0 is the image, 1 is the heatmap, 0.5 lies in between.
    np.testing.assert_array_equal(blend(result, 0.0), original)
    np.testing.assert_array_equal(blend(result, 1.0), coloured)
    mid = overlay.astype(int)
    assert np.abs(mid - (original.astype(int) + coloured.astype(int)) / 2).max() <= 1
    assert explorer.computations == computed
    with pytest.raises(ExplorerInputError, match="between 0 and 1"):
        blend(result, 1.5)


def test_a_one_logit_model_is_a_binary_classifier(demo_source, test_data):
    """Class 1 explains the logit, class 0 its negation; probabilities are the sigmoid."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from shortcut_detect.app.models import ExplorerModel, ResizeToTensor
    from shortcut_detect.data.synthetic import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(num_classes=1).eval()
    one_logit = ExplorerModel(
        name="one logit",
        model=net,
        class_names=("disk", "cross"),
        transform=ResizeToTensor((48, 48)),
        input_size=(48, 48),
        default_layer="features",
    )
    explorer = Explorer([one_logit], demo_source)
    selection = explorer.select_sample("4")
    predicted, disk, cross = explorer.explain(selection, targets=[PREDICTED, 0, "cross"])
    assert explorer.computations == 1
    image = torch.from_numpy(test_data.images[4:5])
    with torch.inference_mode():
        logit = float(net(image)[0, 0])
    positive = 1 / (1 + np.exp(-logit))
    winner = int(logit > 0)
    assert predicted.target_index == winner
    assert [name for name, _ in predicted.top] == [
        ("disk", "cross")[i] for i in (winner, 1 - winner)
    ]
    np.testing.assert_allclose(
        [p for _, p in predicted.top], sorted([positive, 1 - positive], reverse=True), rtol=1e-5
    )
    assert (disk.target_index, cross.target_index) == (0, 1)
    assert disk.target_probability == pytest.approx(1 - positive, rel=1e-5)
    assert cross.target_probability == pytest.approx(positive, rel=1e-5)
    with GradCAM(net, [net.features]) as cam:
        for result, target in ((disk, 0), (cross, 1)):
            expected = cam(image, targets=[BinaryClassifierOutputTarget(target)])[0]
            np.testing.assert_allclose(result.heatmap, expected, atol=1e-5)
    # two real (not all-zero) and different maps
    assert disk.heatmap.max() == pytest.approx(1.0) and cross.heatmap.max() == pytest.approx(1.0)
    assert not np.allclose(disk.heatmap, cross.heatmap, atol=0.1)
    np.testing.assert_array_equal(predicted.heatmap, (disk, cross)[winner].heatmap)
