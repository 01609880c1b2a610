"""Disease-vs-attribute head overlap over a dataset, batch by batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_detect.analysis.heads import head_overlap_over_dataset
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


class TwoHeads(nn.Module):
    """The shortcut model's trunk with its own head ("disease") and a second head."""

    def __init__(self, base: nn.Module, attribute: nn.Module | None = None) -> None:
        super().__init__()
        self.features = base.features
        self.pool = base.pool
        self.disease = base.classifier
        self.attribute = attribute if attribute is not None else base.classifier

    def forward(self, x):
        pooled = torch.flatten(self.pool(self.features(x)), 1)
        return self.disease(pooled), self.attribute(pooled)


@pytest.fixture(scope="module")
def two_heads(shortcut_model):
    torch.manual_seed(5)
    return TwoHeads(copy.deepcopy(shortcut_model), nn.Linear(64, 3)).eval()


@pytest.fixture(scope="module")
def images(test_data):
    return torch.from_numpy(test_data.images[:60])


class OverlapOnly:
    """A generator that only has the seed's generate_attention_overlap (no explain)."""

    def __init__(self, generator):
        self.generator = generator

    def generate_attention_overlap(self, inputs, **kwargs):
        return self.generator.generate_attention_overlap(inputs, **kwargs)


def test_identical_heads_overlap_fully(shortcut_model, images):
    model = TwoHeads(copy.deepcopy(shortcut_model)).eval()
    with GradCAMHeatmapGenerator(model, "features") as gen:
        result = head_overlap_over_dataset(gen, images, batch_size=16, threshold=0.5)
    for name in ("dice", "iou", "cosine", "mass_overlap"):
        np.testing.assert_allclose(result["per_sample"][name], 1.0, rtol=1e-6)
        assert result["summary"][name]["n"] == len(images)
    np.testing.assert_array_equal(result["disease_predictions"], result["attribute_predictions"])


def test_per_sample_values_batching_and_seed_means(two_heads, images, test_data):
    groups = test_data.groups[: len(images)]
    with GradCAMHeatmapGenerator(two_heads, "features") as gen:
        small = head_overlap_over_dataset(
            gen,
            images,
            group_labels=groups,
            batch_size=7,
            attribute_target=2,
            return_heatmaps=True,
        )
        whole = head_overlap_over_dataset(
            gen, images, group_labels=groups, batch_size=100, attribute_target=2
        )
        reference = gen.generate_attention_overlap(images, attribute_target=2)
    for name in ("dice", "iou", "cosine", "mass_overlap"):
        np.testing.assert_allclose(small["per_sample"][name], whole["per_sample"][name], atol=1e-5)
    for name in ("dice", "iou", "cosine"):  # the seed's batch means, where all are defined
        assert small["summary"][name]["n_undefined"] == 0
        assert small["summary"][name]["mean"] == pytest.approx(reference.metrics[name], abs=1e-5)
    np.testing.assert_allclose(small["disease_heatmaps"], reference.disease_heatmap, atol=1e-5)
    assert 0.0 < small["summary"]["dice"]["mean"] < 1.0
    by_group = small["by_group"]
    assert set(by_group) == {0, 1}
    assert by_group[0]["n"] + by_group[1]["n"] == len(images)
    marked = groups == 1
    assert by_group[1]["dice"]["mean"] == pytest.approx(small["per_sample"]["dice"][marked].mean())


def test_generator_without_explain_gives_the_same_numbers(two_heads, images):
    with GradCAMHeatmapGenerator(two_heads, "features") as gen:
        direct = head_overlap_over_dataset(gen, images, batch_size=25)
        fallback = head_overlap_over_dataset(OverlapOnly(gen), images, batch_size=25)
    np.testing.assert_allclose(direct["per_sample"]["dice"], fallback["per_sample"]["dice"])
    assert "disease_predictions" not in fallback


def test_per_sample_targets_and_errors(two_heads, images):
    targets = np.arange(len(images)) % 2
    with GradCAMHeatmapGenerator(two_heads, "features") as gen:
        result = head_overlap_over_dataset(gen, images, disease_target=targets, batch_size=8)
        assert result["n_samples"] == len(images)
        with pytest.raises(ValueError, match="disease_target has 3 entries for 60 samples"):
            head_overlap_over_dataset(gen, images, disease_target=[0, 1, 0])
        with pytest.raises(ValueError, match="batch_size"):
            head_overlap_over_dataset(gen, images, batch_size=0)
        with pytest.raises(ValueError, match="59 group labels for 60"):
            head_overlap_over_dataset(gen, images, group_labels=[0] * 59)
    with pytest.raises(TypeError, match="explain"):
        head_overlap_over_dataset(object(), images)
