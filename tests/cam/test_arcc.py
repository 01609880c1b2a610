"""Issue #15: the ARCC metric (Complexity, Coherency, their harmonic mean with ROAD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM as OracleGradCAM
from pytorch_grad_cam.metrics import arcc as oracle_arcc
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as OracleTarget


def _tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 4),
    ).eval()


@pytest.fixture
def setup():
    model = _tiny_classifier()
    inputs = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return model, inputs, [1, 3, 0]


def test_complexity_and_pearson_by_hand():
    cams = np.stack([np.zeros((4, 4)), np.ones((4, 4)), np.full((4, 4), -0.5)])
    np.testing.assert_allclose(sc.Complexity()(cams), [0.0, 1.0, 0.5])
    first = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    second = np.array([[2.0, 4.0, 6.0, 8.0], [4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_allclose(sc.pearson_per_sample(first, second), [1.0, -1.0], atol=1e-7)
    generator = np.random.default_rng(0)
    a, b = generator.random((2, 30)), generator.random((2, 30))
    expected = [np.corrcoef(a[i], b[i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(sc.pearson_per_sample(a, b), expected, atol=1e-6)
    with pytest.raises(ValueError, match="batch of maps"):
        sc.Complexity()(np.zeros(4))


def test_arcc_family_matches_pytorch_grad_cam(setup, scipy):
    model, inputs, classes = setup
    layer = model[2]
    ours_targets = [sc.ClassifierOutputTarget(c) for c in classes]
    oracle_targets = [OracleTarget(c) for c in classes]
    ours_cam = sc.GradCAM(model, [layer])
    oracle_cam = OracleGradCAM(model, [layer])
    # any maps in [0, 1] will do (the method's own maps can be zero almost everywhere,
    # which leaves ROAD nothing to impute from)
    cams = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(2)).numpy()

    complexity = sc.Complexity()(cams)
    np.testing.assert_allclose(complexity, oracle_arcc.Complexity()(cams), atol=1e-6)
    coherency = sc.Coherency()(inputs, cams, ours_targets, model, ours_cam)
    reference = oracle_arcc.Coherency()(inputs, cams, oracle_targets, model, oracle_cam)
    np.testing.assert_allclose(coherency, reference, atol=1e-4)
    assert ((coherency >= 0) & (coherency <= 1)).all()

    torch.manual_seed(3)
    score = sc.ARCC(ours_cam)(inputs, cams, ours_targets, model)
    torch.manual_seed(3)
    reference = oracle_arcc.ARCC(oracle_cam)(inputs, cams, oracle_targets, model)
    assert score.shape == (3,)
    np.testing.assert_allclose(score, reference, atol=1e-4)

    # the combination is the harmonic mean of the three terms (not the geometric mean)
    torch.manual_seed(3)
    road = np.clip(2 * sc.ROADCombined([20, 40, 60, 80])(inputs, cams, ours_targets, model), 0, 1)
    terms = np.stack([coherency, 1 - complexity, road])
    np.testing.assert_allclose(score, 3 / (1 / (terms + 1e-8)).sum(axis=0), rtol=1e-5)


def test_coherency_refuses_maps_that_do_not_fit_the_input(setup):
    model, inputs, _ = setup
    cam = sc.GradCAM(model, [model[2]])
    with pytest.raises(ValueError, match="one map per image"):
        sc.Coherency()(inputs, np.zeros((3, 6, 6)), None, model, cam)
