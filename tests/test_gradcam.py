"""The seed-compatible API: heads, targets, both API generations, helper functions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shortcut_detect import (
    AttentionOverlapResult,
    GradCAMHeatmapGenerator,
    compute_gradcam,
    get_activation_maps,
    get_conv_layers,
    get_top_predictions,
)
from shortcut_detect.data.synthetic import SmallCNN


class TwoHeadModel(nn.Module):
    """A shared trunk with a disease head (3 classes) and an attribute head (2 classes)."""

    def __init__(self, output: str = "tuple") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1)
        )
        self.disease = nn.Linear(8, 3)
        self.attribute = nn.Linear(8, 2)
        self.output = output
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        pooled = torch.relu(self.trunk(x)).mean(dim=(2, 3))
        d, a = self.disease(pooled), self.attribute(pooled)
        if self.output == "dict":
            return {"dx": d, "sex": a}
        return d, a


def test_two_heads_from_one_forward_pass():
    model = TwoHeadModel().eval()
    x = torch.rand(4, 3, 16, 16)
    gen = GradCAMHeatmapGenerator(model, "trunk")
    model.forward_calls = 0
    result = gen.generate_attention_overlap(x, disease_target=2, attribute_target=[0, 1, 0, 1])
    assert model.forward_calls == 1
    assert isinstance(result, AttentionOverlapResult)
    assert result.disease_heatmap.shape == result.attribute_heatmap.shape == (4, 16, 16)
    # each head's map equals the map computed for that head alone
    np.testing.assert_allclose(
        result.disease_heatmap, gen.generate_heatmap(x, "disease", 2), atol=1e-6
    )
    np.testing.assert_allclose(
        result.attribute_heatmap, gen.generate_heatmap(x, "attribute", [0, 1, 0, 1]), atol=1e-6
    )
    assert result.overlap_score == result.metrics["dice"]
    assert set(result.metrics) == {"dice", "iou", "cosine"}
    assert 0.0 <= result.overlap_score <= 1.0


def test_head_mappings_dict_keys_and_callables():
    model = TwoHeadModel("dict").eval()
    x = torch.rand(2, 3, 16, 16)
    gen = GradCAMHeatmapGenerator(
        model,
        "trunk",
        head_mappings={"disease": "dx", "attribute": lambda out: out["sex"]},
    )
    by_mapping = gen.generate_heatmap(x, "attribute", 1)
    by_key = gen.generate_heatmap(x, "sex", 1)
    np.testing.assert_allclose(by_mapping, by_key, atol=1e-7)
    assert gen.generate_heatmap(x, "disease").shape == (2, 16, 16)
    with pytest.raises(KeyError, match=r"Available heads: .*dx.*sex"):
        gen.generate_heatmap(x, "age")


def test_head_by_index_and_unknown_head_on_tensor_output():
    model = TwoHeadModel().eval()
    x = torch.rand(2, 3, 16, 16)
    gen = GradCAMHeatmapGenerator(model, "trunk")
    np.testing.assert_allclose(
        gen.generate_heatmap(x, 1, 0), gen.generate_heatmap(x, "attribute", 0), atol=1e-7
    )
    single = GradCAMHeatmapGenerator(SmallCNN().eval(), "features")
    with pytest.raises(KeyError, match=r"returns a single tensor of shape \(1, 2\), so it has one"):
        single.generate_heatmap(torch.rand(1, 3, 48, 48), "disease")
    with pytest.raises(KeyError, match="head='logits'") as error:
        single.generate_attention_overlap(torch.rand(1, 3, 48, 48))
    assert "head_mappings" not in str(error.value)


class Outputs:
    """A Hugging Face style output object (not a dict) with ``.logits``."""

    def __init__(self, logits):
        self.logits = logits


class Wrapped(nn.Module):
    """TwoHeadModel's disease scores as a tuple with extras, a dict or an output object."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.inner = TwoHeadModel()
        self.kind = kind

    def forward(self, x):
        disease, attribute = self.inner(x)
        if self.kind == "list":
            return [disease, attribute]
        if self.kind == "dict":
            return {"pooled": attribute, "logits": disease}
        if self.kind == "dict without logits":
            return {"dx": disease, "sex": attribute}
        return Outputs(disease)


def test_default_head_of_tuple_dict_and_object_outputs():
    x = torch.rand(3, 3, 16, 16)
    model = TwoHeadModel().eval()
    expected = GradCAMHeatmapGenerator(model, "trunk").generate_heatmap(x, "disease")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = GradCAMHeatmapGenerator(model, "trunk")
        first = gen.generate_heatmap(x)  # a tuple: the first output, said once
        again = gen.generate_heatmap(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and "tuple of 2 outputs" in messages[0], messages
    assert "explains the first one" in messages[0] and "head=1" in messages[0]
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)
    for kind in ("list", "dict", "object"):
        wrapped = Wrapped(kind).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = GradCAMHeatmapGenerator(wrapped, "inner.trunk").generate_heatmap(x)
        np.testing.assert_allclose(maps, expected, atol=1e-7, err_msg=kind)
    no_logits = GradCAMHeatmapGenerator(Wrapped("dict without logits").eval(), "inner.trunk")
    with pytest.raises(KeyError, match=r"without a 'logits' entry \(keys: 'dx', 'sex'\)"):
        no_logits.generate_heatmap(x)
    np.testing.assert_allclose(no_logits.generate_heatmap(x, "dx"), expected, atol=1e-7)


def test_targets_none_int_and_per_sample(shortcut_model, test_data):
    x = torch.from_numpy(test_data.images[:6])
    gen = GradCAMHeatmapGenerator(shortcut_model, "features")
    predicted = shortcut_model(x).argmax(1).numpy()
    explanation = gen.explain(x)[0]
    np.testing.assert_array_equal(explanation.target_indices, predicted)
    np.testing.assert_array_equal(explanation.predictions, predicted)
    np.testing.assert_allclose(
        gen.generate_heatmap(x), gen.generate_heatmap(x, target_index=predicted), atol=1e-7
    )
    per_sample = gen.generate_heatmap(x, target_index=[0, 1, 0, 1, 0, 1])
    for i in range(6):
        np.testing.assert_allclose(
            per_sample[i], gen.generate_heatmap(x[i], target_index=i % 2)[0], atol=1e-5
        )
    assert not np.allclose(
        gen.generate_heatmap(x, target_index=0), gen.generate_heatmap(x, target_index=1)
    )
    with pytest.raises(ValueError, match="has 2 classes"):
        gen.generate_heatmap(x, target_index=2)
    with pytest.raises(ValueError, match="has 2 classes"):
        gen.generate_heatmap(x, target_index=-1)
    with pytest.raises(ValueError, match="3 target classes for a batch of 6"):
        gen.generate_heatmap(x, target_index=[0, 1, 0])


def test_output_format_and_numpy_inputs(shortcut_model, test_data):
    gen = GradCAMHeatmapGenerator(shortcut_model, shortcut_model.features)
    assert gen.target_layer is shortcut_model.features and gen.target_layer_name == "features"
    heatmaps = gen.generate_heatmap(test_data.images[:3])  # numpy input
    assert heatmaps.dtype == np.float32 and heatmaps.shape == (3, 48, 48)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    np.testing.assert_allclose(heatmaps.reshape(3, -1).max(1), 1.0)
    explanation = gen.explain(test_data.images[:3])[0]
    assert explanation.raw_heatmaps.shape == (3, 12, 12)
    assert (explanation.confidences > 0.5).all() and (explanation.confidences <= 1).all()


def test_second_generation_api(tmp_path, shortcut_model, test_data):
    gen = GradCAMHeatmapGenerator(shortcut_model, "features", device="cpu")
    image = torch.from_numpy(test_data.images[0])
    heatmap = gen.generate(image)
    assert heatmap.shape == (48, 48)
    np.testing.assert_allclose(heatmap, gen.generate(image[None]), atol=1e-7)
    with pytest.raises(ValueError, match="generate_batch"):
        gen.generate(torch.from_numpy(test_data.images[:2]))
    batch = gen.generate_batch(torch.from_numpy(test_data.images[:4]), [0, 1, 1, 0])
    assert isinstance(batch, list) and len(batch) == 4 and batch[0].shape == (48, 48)
    out = tmp_path / "attention.png"
    overlay = gen.visualize(image, heatmap, alpha=0.4, colormap="jet", save_path=out)
    assert overlay.dtype == np.uint8 and overlay.shape == (48, 48, 3)
    assert np.array_equal(np.asarray(Image.open(out)), overlay)
    np.testing.assert_array_equal(gen.overlay(image, heatmap), overlay)
    # alpha 0 shows the image only; the hot pixel turns red-ish as alpha grows
    plain = gen.overlay(image, heatmap, alpha=0.0)
    np.testing.assert_allclose(plain / 255.0, image.permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6)
    hot = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    full = gen.overlay(image, heatmap, alpha=1.0)
    assert full[hot][0] > 100 and full[hot][2] < 50


def test_calculate_overlap_hand_made():
    calc = GradCAMHeatmapGenerator.calculate_overlap
    a = np.zeros((8, 8), np.float32)
    a[:4] = 1
    b = np.zeros((8, 8), np.float32)
    b[4:] = 1
    assert calc(a, a) == pytest.approx({"dice": 1.0, "iou": 1.0, "cosine": 1.0})
    assert calc(a, b) == pytest.approx({"dice": 0.0, "iou": 0.0, "cosine": 0.0})
    c = np.zeros((8, 8), np.float32)
    c[2:6] = 1  # half of a, half of b
    assert calc(a, c)["dice"] == pytest.approx(0.5)
    assert calc(a, c)["iou"] == pytest.approx(1 / 3)
    zero = np.zeros((8, 8), np.float32)
    assert calc(zero, a)["cosine"] == 0.0
    with pytest.raises(ValueError, match="same shape"):
        calc(a, np.zeros((4, 4)))


def test_compute_gradcam_and_helpers(shortcut_model, test_data):
    image = torch.from_numpy(test_data.images[1])
    heatmap, predicted, confidence = compute_gradcam(
        shortcut_model, torch.device("cpu"), image, shortcut_model.features
    )
    with torch.no_grad():
        logits = shortcut_model(image[None])[0]
    assert predicted == int(logits.argmax())
    assert confidence == pytest.approx(float(torch.softmax(logits, 0).max()), abs=1e-6)
    other, _, _ = compute_gradcam(
        shortcut_model, None, image, "features", target_class=1 - predicted
    )
    assert heatmap.shape == other.shape == (48, 48) and not np.allclose(heatmap, other)

    names = [name for name, _ in get_conv_layers(shortcut_model)]
    assert names == ["features.0", "features.4", "features.8"]

    top = get_top_predictions(shortcut_model, None, image, ["disk", "cross"], top_k=5)
    assert [p["class_idx"] for p in top] == torch.argsort(logits, descending=True).tolist()
    assert sum(p["confidence"] for p in top) == pytest.approx(1.0, abs=1e-5)
    assert top[0]["class_name"] == ["disk", "cross"][predicted]

    maps = get_activation_maps(shortcut_model, None, image, "features.8")
    assert maps.shape == (64, 12, 12)
    with torch.no_grad():
        np.testing.assert_allclose(
            maps, shortcut_model.features[:9](image[None])[0].numpy(), rtol=1e-5, atol=1e-6
        )


def test_shortcut_model_looks_at_marker_clean_model_does_not(
    shortcut_model, clean_model, test_data
):
    present = test_data.groups == 1
    images = test_data.images[present][:100]
    masks = test_data.masks[present][:100]
    share = test_data.marker_area_fraction

    def attention_in_marker(model):
        heatmaps = GradCAMHeatmapGenerator(model, "features").generate_heatmap(images)
        return float(((heatmaps * masks).sum((1, 2)) / heatmaps.sum((1, 2))).mean())

    shortcut, clean = attention_in_marker(shortcut_model), attention_in_marker(clean_model)
    assert shortcut >= 3 * share, (shortcut, share)
    assert clean < 2 * share, (clean, share)


@pytest.mark.parametrize("shape", ["(B,)", "(B, 1)"])
def test_single_logit_heads_are_binary_classifiers(shape):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    head = nn.Linear(4, 1)

    class Binary(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = trunk, head

        def forward(self, x):
            logit = self.head(self.trunk(x).mean(dim=(2, 3)))
            return logit[:, 0] if shape == "(B,)" else logit

    model = Binary().eval()
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        logit = model(x).reshape(-1)
    gen = GradCAMHeatmapGenerator(model, "trunk")
    explanation = gen.explain(x)[0]
    np.testing.assert_array_equal(explanation.predictions, (logit > 0).long().numpy())
    np.testing.assert_array_equal(explanation.target_indices, explanation.predictions)
    expected_conf = torch.sigmoid(logit.abs()).numpy()
    np.testing.assert_allclose(explanation.confidences, expected_conf, rtol=1e-6)
    # class 1 explains the logit and class 0 its negation: for Grad-CAM the weights flip sign,
    # so the raw maps are ReLU(cam) and ReLU(-cam)
    positive = gen.explain(x, [("logits", 1)])[0].raw_heatmaps
    negative = gen.explain(x, [("logits", 0)])[0].raw_heatmaps
    assert np.all(np.minimum(positive, negative) == 0)
    assert positive.max() > 0 and negative.max() > 0
    with pytest.raises(ValueError, match="single-logit head"):
        gen.generate_heatmap(x, target_index=2)


def test_class_probabilities_of_one_and_several_logits():
    from shortcut_detect.gradcam import class_probabilities

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    torch.testing.assert_close(class_probabilities(logits), torch.softmax(logits, dim=1))
    logit = torch.tensor([1.5, -0.25, 0.0])
    positive = 1 / (1 + np.exp(-logit.numpy()))
    expected = torch.from_numpy(np.stack([1 - positive, positive], axis=1))
    for shape in [(3,), (3, 1)]:  # a single-logit head has two classes
        probabilities = class_probabilities(logit.reshape(shape))
        torch.testing.assert_close(probabilities, expected)


def test_class_probabilities_of_arrays_equal_those_of_tensors():
    from shortcut_detect.gradcam import class_probabilities

    rng = np.random.default_rng(0)
    for logits in (rng.normal(size=(4, 5)) * 10, rng.normal(size=4) * 10, rng.normal(size=(4, 1))):
        from_array = class_probabilities(logits)
        from_tensor = class_probabilities(torch.from_numpy(logits))
        assert isinstance(from_array, np.ndarray) and from_array.dtype == np.float64
        assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.float32
        np.testing.assert_allclose(from_array, from_tensor.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(from_array.sum(axis=1), 1.0)
    extreme = class_probabilities(np.array([1000.0, -1000.0]))  # no overflow, no NaN
    np.testing.assert_array_equal(extreme, [[0.0, 1.0], [1.0, 0.0]])


def test_top_predictions_from_probabilities():
    from shortcut_detect.gradcam import top_predictions

    probabilities = np.array([0.1, 0.4, 0.1, 0.4])
    top = top_predictions(probabilities, ["a", "b", "c", "d"], top_k=3)
    assert [p["class_name"] for p in top] == ["b", "d", "a"]  # ties: lower index first
    assert [p["confidence"] for p in top] == [0.4, 0.4, 0.1]
    assert top_predictions(torch.tensor([0.25, 0.75]), top_k=5) == [
        {"class_idx": 1, "class_name": "1", "confidence": 0.75},
        {"class_idx": 0, "class_name": "0", "confidence": 0.25},
    ]
    with pytest.raises(ValueError, match=r"one sample, got shape \(2, 2\)"):
        top_predictions(np.eye(2))
    with pytest.raises(ValueError, match="3 class names for a model with 4 outputs"):
        top_predictions(probabilities, ["a", "b", "c"])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        top_predictions(probabilities, top_k=0)


def test_top_predictions_of_a_tuple_output_model_use_the_first_output():
    model = TwoHeadModel().eval()
    image = torch.rand(3, 16, 16)
    with torch.no_grad():
        expected = torch.softmax(model(image[None])[0][0], 0)
    with pytest.warns(UserWarning, match="explains the first one"):
        top = get_top_predictions(model, None, image, None, top_k=3)
    assert [p["class_idx"] for p in top] == torch.argsort(expected, descending=True).tolist()
    np.testing.assert_allclose(
        [p["confidence"] for p in top], expected.sort(descending=True).values, rtol=1e-6
    )


def test_top_predictions_of_a_single_logit_model():
    model = nn.Sequential(
        nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1)
    )
    image = torch.rand(3, 8, 8)
    with torch.no_grad():
        positive = float(torch.sigmoid(model(image[None]))[0, 0])
    top = get_top_predictions(model, None, image, ["negative", "positive"])
    assert [p["class_name"] for p in top] == (
        ["positive", "negative"] if positive > 0.5 else ["negative", "positive"]
    )
    assert top[0]["confidence"] == pytest.approx(max(positive, 1 - positive), abs=1e-6)


def test_upsampled_raw_reproduces_the_live_heatmaps(shortcut_model, test_data):
    from shortcut_detect.gradcam import upsampled_raw

    explanation = GradCAMHeatmapGenerator(shortcut_model, "features").explain(test_data.images[:4])[
        0
    ]
    np.testing.assert_allclose(
        upsampled_raw(explanation.raw_heatmaps, (48, 48)), explanation.heatmaps, atol=1e-6
    )


def test_explain_without_upsampling_keeps_the_layer_grid(shortcut_model, test_data):
    generator = GradCAMHeatmapGenerator(shortcut_model, "features")
    full = generator.explain(test_data.images[:4])[0]
    small = generator.explain(test_data.images[:4], upsample=False)[0]
    assert full.heatmaps.shape == (4, 48, 48)
    assert small.heatmaps.shape == small.raw_heatmaps.shape != full.heatmaps.shape
    np.testing.assert_array_equal(small.raw_heatmaps, full.raw_heatmaps)
    np.testing.assert_array_equal(small.predictions, full.predictions)
    # The same per-sample scaling to [0, 1], at the layer's resolution.
    peak = small.raw_heatmaps.reshape(4, -1).max(axis=1).reshape(4, 1, 1)
    low = small.raw_heatmaps.reshape(4, -1).min(axis=1).reshape(4, 1, 1)
    np.testing.assert_allclose(small.heatmaps, (small.raw_heatmaps - low) / (peak - low), atol=1e-6)


def test_result_types_and_generator_protocols_live_in_results():
    import shortcut_detect
    import shortcut_detect.gradcam as gradcam
    from shortcut_detect import results
    from shortcut_detect.analysis.batches import heatmaps_from_images

    for name in ("AttentionOverlapResult", "Explanation"):  # re-exported where users look
        assert getattr(gradcam, name) is getattr(results, name) is getattr(shortcut_detect, name)
    gen = GradCAMHeatmapGenerator(TwoHeadModel().eval(), "trunk")
    for protocol in (
        results.HeatmapGenerator,
        results.HeadExplainer,
        results.AttentionOverlapGenerator,
    ):
        assert isinstance(gen, protocol), protocol.__name__
        assert not isinstance(object(), protocol), protocol.__name__

    class Constant:
        """Makes heatmaps without being a GradCAMHeatmapGenerator."""

        def generate_heatmap(self, inputs, head="logits", target_index=None):
            return np.ones((len(inputs), 4, 4))

    assert isinstance(Constant(), results.HeatmapGenerator)
    assert heatmaps_from_images(Constant(), np.zeros((5, 3, 8, 8)), batch_size=2).shape == (5, 4, 4)
    with pytest.raises(TypeError, match=r"needs a generator with generate_heatmap\(\)"):
        heatmaps_from_images(object(), np.zeros((5, 3, 8, 8)))
