"""An in-place operation after the target layer (torchvision densenet121) does not change our maps.

densenet121 applies ``F.relu(features, inplace=True)`` to the output of ``features``.
pytorch-grad-cam then pairs the post-ReLU activation (its stored tensor was overwritten)
with the gradient of the pre-ReLU output. We use the layer's own output and its gradient,
which is what both libraries give for a copy of the model whose forward is out-of-place.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import shortcut_detect.cam as sc


class OutOfPlaceDenseNet(torchvision.models.DenseNet):
    """torchvision's DenseNet forward with the final ReLU made out-of-place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=False)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def _out_of_place(model):
    clone = copy.deepcopy(model)
    clone.__class__ = OutOfPlaceDenseNet
    return clone


def _maps(library, model, zm, method):
    if library is sc:
        targets = sc.ClassifierOutputTarget
    else:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as targets
    with getattr(library, method)(model, [model.features]) as cam:
        return cam(zm.inputs, targets=[targets(t) for t in zm.targets])


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus"])
def test_densenet121_gives_the_out_of_place_answer(zoo, method, pgc):
    zm = zoo("densenet121")
    reference_model = _out_of_place(zm.model)
    with torch.no_grad():
        torch.testing.assert_close(reference_model(zm.inputs), zm.model(zm.inputs))
    ours = _maps(sc, zm.model, zm, method)
    correct = _maps(pgc, reference_model, zm, method)
    assert np.abs(ours - correct).max() <= 1e-3
    mixed = _maps(pgc, zm.oracle(), zm, method)  # pytorch-grad-cam on the real densenet
    assert np.abs(mixed - correct).max() > 0.05


def test_densenet121_activation_only_methods_see_the_pre_relu_output(zoo, monkeypatch, pgc):
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    zm = zoo("densenet121")
    reference_model = _out_of_place(zm.model)
    ours = _maps(sc, zm.model, zm, "EigenCAM")
    correct = _maps(pgc, reference_model, zm, "EigenCAM")
    monkeypatch.setattr(
        "pytorch_grad_cam.eigen_cam.get_2d_projection", lambda batch: -get_2d_projection(batch)
    )
    flipped = _maps(pgc, reference_model, zm, "EigenCAM")
    for sample in range(2):
        best = min(
            np.abs(ours[sample] - correct[sample]).max(),
            np.abs(ours[sample] - flipped[sample]).max(),
        )
        assert best <= 1e-3
