"""Every registered method behind the seed API, including multi-head models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 3, padding=1), nn.ReLU()
        )
        self.disease = nn.Linear(10, 4)
        self.attribute = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.features(x).mean(dim=(2, 3))
        return self.disease(pooled), self.attribute(pooled)


class Head(nn.Module):
    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.index]


@pytest.mark.parametrize("method", sorted(sc.METHODS))
def test_two_heads_from_the_facade_equal_the_single_head_classes(method):
    model = TwoHeads().eval()
    x = torch.rand(3, 3, 12, 12)
    with GradCAMHeatmapGenerator(model, "features", method=method) as gen:
        result = gen.generate_attention_overlap(x, disease_target=[0, 1, 3], attribute_target=1)
    for index, (heatmaps, classes) in enumerate(
        [(result.disease_heatmap, [0, 1, 3]), (result.attribute_heatmap, [1, 1, 1])]
    ):
        head = Head(model, index)
        with sc.get_method(method)(head, ["model.features"]) as cam:
            expected = cam(x, targets=[sc.ClassifierOutputTarget(c) for c in classes])
        assert heatmaps.shape == (3, 12, 12)
        np.testing.assert_allclose(heatmaps, expected, atol=1e-5, err_msg=method)
    # EigenCAM is class-agnostic; ScoreCAM's softmax weights are near-uniform on this tiny net
    if method not in ("eigencam", "scorecam"):
        assert np.abs(result.disease_heatmap - result.attribute_heatmap).max() > 1e-3
