"""A salient marker the model does not use: attention alone says shortcut, intervention says no.

Models trained from scratch on our scenarios learn to ignore a marker that carries no label
information, so their Grad-CAM does not point at it either. Pretrained networks are different:
their features respond to watermarks and tags whatever the task, and a class-agnostic feature
(one that pushes every class's logit up alike) shows in Grad-CAM although it cannot change a
prediction. ``MarkerAwareModel`` adds exactly such a feature to a trained scenario model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_detect.data.scenarios import load_scenario
from shortcut_detect.gradcam import GradCAMHeatmapGenerator
from shortcut_detect.interventions import intervene


class Concatenate(nn.Module):
    """The target layer: the base features and the marker channel, side by side."""

    def forward(self, features: torch.Tensor, marker: torch.Tensor) -> torch.Tensor:
        return torch.cat([features, marker], dim=1)


class MarkerAwareModel(nn.Module):
    """A trained SmallCNN plus a yellow-marker detector feeding every logit equally."""

    def __init__(self, base: nn.Module, weight: float = 50.0, gain: float = 50.0) -> None:
        super().__init__()
        self.base = base
        self.detector = nn.Conv2d(3, 1, 1)
        with torch.no_grad():  # red + green - blue: high on the yellow marker only
            self.detector.weight.copy_(torch.tensor([gain, gain, -gain]).view(1, 3, 1, 1))
            self.detector.bias.fill_(-1.6 * gain)
        self.merge = Concatenate()
        old = base.classifier
        self.classifier = nn.Linear(old.in_features + 1, old.out_features)
        with torch.no_grad():
            self.classifier.weight[:, :-1] = old.weight
            self.classifier.weight[:, -1] = weight  # the same for every class
            self.classifier.bias.copy_(old.bias)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.base.features(x)
        marker = nn.functional.adaptive_avg_pool2d(
            torch.relu(self.detector(x)), features.shape[-2:]
        )
        merged = self.merge(features, marker)
        return self.classifier(torch.flatten(self.base.pool(merged), 1))


@pytest.fixture(scope="module")
def salient_scenario():
    # Trained in seconds (cached): a bright marker on half the training images, independent
    # of the label, so the model has no reason to use it.
    return load_scenario("shapes", "salient_unused", seed=0, n_test=150)


def gradcam_maps(model: nn.Module, layer: str, images: np.ndarray) -> np.ndarray:
    with GradCAMHeatmapGenerator(model, target_layer=layer) as generator:
        return np.stack(generator.generate_heatmap(torch.from_numpy(images)))


def test_salient_but_unused_marker_is_not_a_shortcut(salient_scenario):
    scenario = salient_scenario
    model = MarkerAwareModel(scenario.model).eval()
    images = torch.from_numpy(scenario.images)
    with torch.inference_mode():
        # The added feature cannot change a prediction (softmax ignores a shared shift)...
        assert torch.equal(model(images).argmax(1), scenario.model(images).argmax(1))
    maps = gradcam_maps(model, "merge", scenario.images)
    result = intervene(
        model,
        scenario.images,
        scenario.masks,
        carriers=scenario.carriers,
        heatmaps=maps,
        n_bootstrap=500,
        n_permutations=500,
    )
    # ...but Grad-CAM puts far more attention on the marker than its area: attention alone
    # would call it a shortcut.
    assert result.attention is not None and result.attention.enrichment >= 3.0
    assert result.salient
    # The intervention shows the model does not use it.
    assert not result.relied_on
    assert abs(result.effect.value) < 0.1
    assert result.reading == "salient but not relied on"


def test_the_base_model_does_not_look_at_the_marker(salient_scenario):
    # Why the wrapper is needed: the model trained from scratch ignores the marker in its
    # Grad-CAM too (enrichment below 1), so it would not test "salient but unused".
    scenario = salient_scenario
    maps = gradcam_maps(scenario.model, "features", scenario.images)
    carriers = scenario.carriers
    share = (maps[carriers] * scenario.masks[carriers]).sum(axis=(1, 2)) / maps[carriers].sum(
        axis=(1, 2)
    )
    assert share.mean() / scenario.masks[carriers].mean() < 1.0


def test_the_same_marker_is_relied_on_when_it_predicts_the_label():
    scenario = load_scenario("shapes", "fixed_marker", seed=0, n_test=150)
    result = intervene(
        scenario.model,
        scenario.images,
        scenario.masks,
        carriers=scenario.carriers,
        heatmaps=gradcam_maps(scenario.model, "features", scenario.images),
        n_bootstrap=500,
        n_permutations=500,
    )
    assert result.reading == "relied on" and result.relied_on
    # The scenario's ground truth: removing the marker exactly changes many predictions.
    assert scenario.oracle_flip_rate() > 0.3
    assert scenario.oracle_probability_drop() > 0.3  # 0.61 here, on min_effect's scale
    assert result.effect.low > 0
