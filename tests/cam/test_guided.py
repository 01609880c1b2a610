"""Guided backpropagation against captum and pytorch-grad-cam; patches never outlive a call."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc
from shortcut_detect.cam.guided import guided_backprop, guided_backprop_for_scores
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


def _scores(classes):
    return sc.TargetScores([sc.ClassifierOutputTarget(c) for c in classes])


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11_bn"])
def test_guided_backprop_equals_captum(zoo, model_name, captum, relu_out_of_place):
    from captum.attr import GuidedBackprop

    zm = zoo(model_name)
    assert any(getattr(m, "inplace", False) for m in zm.model.modules())  # in-place ReLUs
    (ours,) = guided_backprop(zm.model, zm.inputs, [_scores(zm.targets)])
    reference = GuidedBackprop(relu_out_of_place(zm.model)).attribute(
        zm.inputs.clone(), target=list(zm.targets)
    )
    scale = reference.abs().max()
    assert scale > 0
    assert (ours - reference).abs().max() <= 1e-4 * scale
    # not plain gradients: guiding really changed them
    x = zm.inputs.clone().requires_grad_(True)
    plain = torch.autograd.grad(zm.model(x).gather(1, torch.tensor([[3], [7]])).sum(), x)[0]
    assert (plain - reference).abs().max() > 1e-2 * scale


def test_guided_backprop_relu_model_equals_pytorch_grad_cam(zoo, pgc):
    zm = zoo("resnet18")
    image = zm.inputs[:1]
    ours = sc.GuidedBackpropReLUModel(zm.model, device="cpu")(image, target_category=7)
    reference = pgc.GuidedBackpropReLUModel(copy.deepcopy(zm.model), device="cpu")(image, 7)
    assert ours.shape == reference.shape == (64, 64, 3) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()
    predicted = int(zm.model(image).argmax())
    np.testing.assert_allclose(
        sc.GuidedBackpropReLUModel(zm.model)(image),
        sc.GuidedBackpropReLUModel(zm.model)(image, predicted),
    )


class Flaky(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_guided_patches_never_survive_a_call_even_when_it_raises():
    torch.manual_seed(0)
    model = Flaky().train()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    before = [p.requires_grad for p in model.parameters()]

    def failing(_outputs):
        raise RuntimeError("score failed")

    with pytest.raises(RuntimeError, match="score failed"):
        guided_backprop(model, x, [failing])
    with pytest.raises(ValueError, match="out of range"):
        sc.GuidedBackpropReLUModel(model)(x, target_category=5)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    assert model.training and [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())
    assert isinstance(model.relu, nn.ReLU) and model.relu.inplace
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    # and plain gradients are plain again afterwards
    leaf = x.clone().requires_grad_(True)
    model.eval()
    grad = torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)[0]
    assert (grad < 0).any()


def test_guided_gradcam_from_the_facade(zoo):
    zm = zoo("resnet18")
    model = zm.model
    with GradCAMHeatmapGenerator(model, "layer4", use_guided=True) as gen:
        guided = gen.generate_heatmap(zm.inputs, target_index=list(zm.targets))
    with sc.GradCAM(model, ["layer4"]) as cam:
        plain = cam(zm.inputs, targets=[sc.ClassifierOutputTarget(t) for t in zm.targets])
    (magnitude,) = guided_backprop_for_scores(model, zm.inputs, [_scores(zm.targets)])
    assert magnitude.shape == (2, 64, 64) and (magnitude >= 0).all()
    expected = sc.engine.minmax_normalize(torch.from_numpy(plain) * magnitude).numpy()
    np.testing.assert_allclose(guided, expected, atol=1e-5)
    assert np.abs(guided - plain).max() > 0.1  # sharper, not the same map
