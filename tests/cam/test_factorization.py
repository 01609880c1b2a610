"""Issue #15: Deep Feature Factorization and show_factorization_on_image.

Parity with pytorch-grad-cam 1.5 (which uses scikit-learn's NMF with the same settings):
concepts, heatmaps and concept outputs to 1e-3 on three architectures; the overlay to
3/255 (pytorch-grad-cam goes through OpenCV's 8-bit HSV, which rounds hue and saturation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shortcut_detect.cam as sc
from shortcut_detect.cam.factorization import factorization_colors

pytest.importorskip("sklearn")
pgc = pytest.importorskip("pytorch_grad_cam")
pgc_image = pytest.importorskip("pytorch_grad_cam.utils.image")

TOLERANCE = 1e-3
HEADS = {
    "resnet18": lambda m: m.fc,
    "mobilenet_v3_small": lambda m: m.classifier,
    "vit_b_16": lambda m: m.heads,
}


@pytest.mark.parametrize("model_name", list(HEADS))
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_dff_matches_pytorch_grad_cam(zoo, model_name):
    zm = zoo(model_name)
    oracle = zm.oracle()
    head = HEADS[model_name]
    reference = pgc.DeepFeatureFactorization(
        oracle, zm.layer(oracle), zm.reshape_transform, computation_on_concepts=head(oracle)
    )
    concepts, explanations, outputs = reference(zm.inputs, 4)
    with sc.DeepFeatureFactorization(
        zm.model, zm.layer(zm.model), zm.reshape_transform, computation_on_concepts=head(zm.model)
    ) as dff:
        mine = dff(zm.inputs, n_components=4)
        without_head = sc.DeepFeatureFactorization(
            zm.model, zm.layer(zm.model), zm.reshape_transform
        )
    assert len(mine) == 3
    assert mine[0].shape == (concepts.shape[0], 4)
    assert mine[1].shape == (2, 4, 64, 64) and mine[1].dtype == np.float32
    assert mine[2].shape == (4, 1000)
    np.testing.assert_allclose(mine[0], concepts, atol=TOLERANCE * max(1, np.abs(concepts).max()))
    np.testing.assert_allclose(mine[1], np.stack(explanations), atol=TOLERANCE)
    np.testing.assert_allclose(mine[2], outputs, atol=TOLERANCE * max(1, np.abs(outputs).max()))
    # heatmaps are scaled to [0, 1] before resizing (bilinear resizing keeps the range)
    assert mine[1].min() >= 0 and mine[1].max() <= 1
    assert len(without_head(zm.inputs, n_components=4)) == 2


def test_factorization_reconstructs_the_activations():
    generator = np.random.default_rng(0)
    # activations that are exactly a sum of 2 non-negative concepts, shifted per channel
    concepts = generator.random((6, 2))
    presence = generator.random((2, 3 * 5 * 5))
    shift = generator.normal(size=(6, 1))
    matrix = concepts @ presence + shift
    activations = matrix.reshape(6, 3, 5, 5).transpose(1, 0, 2, 3).astype(np.float32)
    found, heatmaps = sc.deep_feature_factorization(activations, n_components=2)
    assert found.shape == (6, 2) and heatmaps.shape == (3, 2, 5, 5)
    offset = activations.transpose(1, 0, 2, 3).reshape(6, -1).min(axis=1)
    rebuilt = (found - offset[:, None]) @ heatmaps.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(rebuilt + offset[:, None], matrix, atol=1e-2)
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        sc.deep_feature_factorization(activations, n_components=0)
    with pytest.raises(ValueError, match="reshape_transform"):
        sc.deep_feature_factorization(activations[:, :, 0, 0], n_components=2)


def _overlay_inputs():
    generator = np.random.default_rng(1)
    img = generator.random((16, 20, 3)).astype(np.float32)
    explanations = generator.random((3, 16, 20)).astype(np.float32)
    return img, explanations


def test_show_factorization_matches_pytorch_grad_cam():
    img, explanations = _overlay_inputs()
    colors = factorization_colors(3)
    kept = explanations.copy()
    mine = sc.show_factorization_on_image(img, explanations, colors, image_weight=0.3)
    np.testing.assert_array_equal(explanations, kept)  # not modified in place
    theirs = pgc_image.show_factorization_on_image(img, kept.copy(), colors, image_weight=0.3)
    assert mine.shape == theirs.shape == (16, 20, 3) and mine.dtype == np.uint8
    assert np.abs(mine.astype(int) - theirs).max() <= 3
    # each pixel takes the winning concept's hue: pure colours give exact channel ratios
    pure = [np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])]
    solo = sc.show_factorization_on_image(np.zeros_like(img), explanations, pure, 0.0)
    winner = explanations.argmax(axis=0)
    expected = np.uint8(255 * explanations.max(axis=0))
    for channel in range(3):
        where = winner == channel
        np.testing.assert_array_equal(solo[..., channel][where], expected[where])
        assert (solo[..., channel][~where] == 0).all()


def test_show_factorization_legend_and_errors():
    pytest.importorskip("matplotlib")
    img, explanations = _overlay_inputs()
    with_legend = sc.show_factorization_on_image(img, explanations, concept_labels=["a", "b", "c"])
    plain = sc.show_factorization_on_image(img, explanations)
    assert with_legend.shape == (16, 40, 3)
    np.testing.assert_array_equal(with_legend[:, :20], plain)
    assert with_legend[:, 20:].std() > 0  # something was drawn
    with pytest.raises(ValueError, match="concept_labels for 3 components"):
        sc.show_factorization_on_image(img, explanations, concept_labels=["a"])
    with pytest.raises(ValueError, match="explanations\\[0\\]"):
        sc.show_factorization_on_image(img, explanations[None])
    with pytest.raises(ValueError, match="divide a uint8 image by 255"):
        sc.show_factorization_on_image(img * 255, explanations)
    with pytest.raises(ValueError, match="2 colors for 3 components"):
        sc.show_factorization_on_image(img, explanations, colors=factorization_colors(2))
    from shortcut_detect.cam.utils.image import show_factorization_on_image

    assert show_factorization_on_image is sc.show_factorization_on_image


def test_dff_needs_no_gradients_and_leaves_the_model_alone(zoo):
    zm = zoo("resnet18")
    torch.manual_seed(0)
    with sc.DeepFeatureFactorization(zm.model, zm.layer(zm.model)) as dff:
        _, heatmaps = dff(zm.inputs[:1], n_components=2)
    assert heatmaps.shape == (1, 2, 64, 64)
    assert all(p.grad is None for p in zm.model.parameters())
    assert not zm.model.training
