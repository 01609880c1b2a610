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


NEWER = sorted(set(sc.EXPLAIN_METHODS) - set(sc.METHODS))


@pytest.mark.parametrize("method", NEWER)
def test_newer_methods_from_the_facade_equal_their_classes(method):
    assert NEWER == ["fem", "iscam", "segeigencam", "shapleycam", "sscam"]
    head = Head(TwoHeads().eval(), 0)
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    with GradCAMHeatmapGenerator(head, "model.features", method=method) as gen:
        heatmaps = np.stack(gen.generate_batch(x, target_classes=[0, 1, 3]))
    torch.manual_seed(1)
    with sc.get_method(method)(head, ["model.features"]) as cam:
        expected = cam(x, targets=[sc.ClassifierOutputTarget(c) for c in [0, 1, 3]])
    np.testing.assert_allclose(heatmaps, expected, atol=1e-5, err_msg=method)
    assert heatmaps.max() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["fullgrad", "cam", "smoothgradcam++", sc.FullGrad])
def test_methods_needing_their_own_call_are_refused_by_the_facade(method):
    with pytest.raises(ValueError, match="needs its own call"):
        sc.explain_method(method)
    with pytest.raises(ValueError, match="needs its own call"):
        GradCAMHeatmapGenerator(Head(TwoHeads().eval(), 0), "model.features", method=method)


def test_own_cam_subclasses_are_still_accepted():
    class Doubled(sc.GradCAM):
        pass

    assert sc.explain_method(Doubled) is Doubled
    assert sc.explain_method("ISCAM") is sc.ISCAM
