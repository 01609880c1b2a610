"""pytorch-grad-cam metric classes: same numbers as the reference with the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.metrics import cam_mult_image, road
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget as OracleTarget,
)


def _tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).eval()


@pytest.fixture
def setup():
    model = _tiny_classifier()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(3, 3, 12, 12, generator=generator)
    cams = torch.rand(3, 12, 12, generator=generator).numpy()
    return model, inputs, cams, [1, 3, 0]


def test_confidence_change_family_by_hand_and_oracle(setup):
    model, inputs, cams, classes = setup
    ours_targets = [sc.ClassifierOutputTarget(c) for c in classes]
    oracle_targets = [OracleTarget(c) for c in classes]
    with torch.no_grad():
        before = model(inputs)[range(3), classes]
        after = model(inputs * torch.from_numpy(cams)[:, None])[range(3), classes]
    change = sc.CamMultImageConfidenceChange()(inputs, cams, ours_targets, model)
    np.testing.assert_allclose(change, (after - before).numpy(), atol=1e-5)
    reference = cam_mult_image.CamMultImageConfidenceChange()(inputs, cams, oracle_targets, model)
    np.testing.assert_allclose(change, reference, atol=1e-5)
    drop = sc.DropInConfidence()(inputs, cams, ours_targets, model)
    np.testing.assert_allclose(drop, np.maximum(-change, 0), atol=1e-6)
    increase = sc.IncreaseInConfidence()(inputs, cams, ours_targets, model)
    np.testing.assert_array_equal(increase, np.float32(change > 0))
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        sc.DropInConfidence()(inputs, cams, ours_targets[:2], model)
    with pytest.raises(ValueError, match="cams must be"):
        sc.DropInConfidence()(inputs, cams[:, :5], ours_targets, model)


@pytest.mark.parametrize(
    ("ours_cls", "oracle_cls", "argument"),
    [
        (sc.ROADMostRelevantFirst, road.ROADMostRelevantFirst, 80),
        (sc.ROADLeastRelevantFirst, road.ROADLeastRelevantFirst, 20),
        (sc.ROADMostRelevantFirstAverage, road.ROADMostRelevantFirstAverage, [20, 60]),
        (sc.ROADLeastRelevantFirstAverage, road.ROADLeastRelevantFirstAverage, [20, 60]),
        (sc.ROADCombined, road.ROADCombined, [30, 70]),
    ],
)
def test_road_family_matches_oracle_with_the_same_seed(setup, ours_cls, oracle_cls, argument):
    model, inputs, cams, classes = setup
    torch.manual_seed(7)
    ours = ours_cls(argument)(inputs, cams, [sc.ClassifierOutputTarget(c) for c in classes], model)
    torch.manual_seed(7)
    reference = oracle_cls(argument)(inputs, cams, [OracleTarget(c) for c in classes], model)
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_road_removes_the_pixels_above_the_percentile(setup):
    model, inputs, cams, classes = setup
    metric = sc.ROADMostRelevantFirst(75)
    _, perturbed = metric(
        inputs,
        cams,
        [sc.ClassifierOutputTarget(c) for c in classes],
        model,
        return_visualization=True,
    )
    for image, new, cam in zip(inputs, perturbed, cams):
        changed = (new != image).any(dim=0).numpy()
        np.testing.assert_array_equal(changed, cam >= np.percentile(cam, 75))
    with pytest.raises(ValueError, match="Otsu"):
        sc.ROADMostRelevantFirst("auto")


class _FixedMaps:
    """A CAM returning given maps, in our call form and torchcam's."""

    def __init__(self, model, maps):
        self.model = model
        self.maps = maps

    def __call__(self, *args, **kwargs):
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:  # ours
            return self.maps.numpy()
        return [self.maps.clone()]  # torchcam: (class_idx, scores)

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("class_idx", [None, [1, 3, 0]])
def test_torchcam_metrics_match_torchcam(setup, class_idx):
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    from functools import partial

    model, inputs, cams, _ = setup
    extractor = _FixedMaps(model, torch.from_numpy(cams))
    softmax = partial(torch.softmax, dim=-1)
    for ours_cls, theirs_cls, kwargs in [
        (sc.ClassificationMetric, torchcam_metrics.ClassificationMetric, {}),
        (sc.DeletionInsertionMetric, torchcam_metrics.DeletionInsertionMetric, {"steps": 7}),
    ]:
        ours, theirs = (
            ours_cls(extractor, softmax, **kwargs),
            theirs_cls(extractor, softmax, **kwargs),
        )
        for metric in (ours, theirs):
            metric.update(inputs, class_idx)
        expected = theirs.summary()
        assert ours.summary() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="before summary"):
        sc.ClassificationMetric(extractor).summary()


def test_classification_metric_by_hand(setup):
    model, inputs, cams, classes = setup
    metric = sc.ClassificationMetric(_FixedMaps(model, torch.from_numpy(cams)))
    metric.update(inputs, classes)
    with torch.no_grad():
        before = model(inputs)[range(3), classes]
        after = model(inputs * torch.from_numpy(cams)[:, None])[range(3), classes]
    drop = (torch.relu(before - after) / (before + 1e-7)).mean()
    assert metric.summary()["avg_drop"] == pytest.approx(float(drop), abs=1e-5)
    assert metric.summary()["conf_increase"] == pytest.approx(
        float((after > before).float().mean())
    )
