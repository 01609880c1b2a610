"""Shared fixtures for the CAM family tests: small torchvision models with calibrated BatchNorm.

Random deep networks with BatchNorm at its initial statistics have vanishing or exploding
activations, where any epsilon decides the result; so every model's BatchNorm statistics
are first estimated on a few random batches (train-mode forward passes without grad).
Each model is built once per session and shared.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn

from shortcut_detect.cam.reshape import swin_reshape_transform, vit_reshape_transform

SIZE = 64


def calibrate(model: nn.Module, size: int = SIZE, batches: int = 3, seed: int = 0) -> nn.Module:
    """Estimate BatchNorm running statistics on random batches; return the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, size, size, generator=generator))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


@dataclass
class ZooModel:
    """A calibrated model, how to find its target layer, and its reshape transform."""

    name: str
    model: nn.Module
    layer: Callable[[nn.Module], nn.Module]
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    inputs: torch.Tensor
    targets: tuple[int, int]

    _oracle: nn.Module | None = None

    def copy(self) -> nn.Module:
        return copy.deepcopy(self.model)

    def oracle(self) -> nn.Module:
        """A separate copy for the reference libraries (they leave ``.grad`` behind)."""
        if self._oracle is None:
            self._oracle = self.copy()
        return self._oracle


def _build(name: str) -> ZooModel:
    torch.manual_seed(0)
    models = torchvision.models
    transform = None
    if name == "resnet18":
        model, layer = models.resnet18(), (lambda m: m.layer4)
    elif name == "vgg11_bn":
        model, layer = models.vgg11_bn(), (lambda m: m.features[-1])
    elif name == "mobilenet_v3_small":
        model, layer = models.mobilenet_v3_small(), (lambda m: m.features[-1])
    elif name == "efficientnet_b0":
        model, layer = models.efficientnet_b0(), (lambda m: m.features[-1])
    elif name == "convnext_tiny":
        model, layer = models.convnext_tiny(), (lambda m: m.features[-1])
    elif name == "vit_b_16":
        model = models.vit_b_16(image_size=SIZE)
        nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises it
        layer, transform = (lambda m: m.encoder.layers[-1].ln_1), vit_reshape_transform
    elif name == "swin_t":
        model = models.swin_t()
        layer, transform = (lambda m: m.features[-1][-1].norm1), swin_reshape_transform
    elif name == "densenet121":
        model, layer = models.densenet121(), (lambda m: m.features)
    else:  # pragma: no cover
        raise KeyError(name)
    size = 128 if name == "densenet121" else SIZE  # densenet: a 4x4 map, not 2x2
    calibrate(model, size)
    inputs = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return ZooModel(name, model, layer, transform, inputs, (3, 7))


@pytest.fixture(scope="session")
def zoo() -> Callable[[str], ZooModel]:
    """``zoo(name)``: a session-cached calibrated torchvision model."""
    cache: dict[str, ZooModel] = {}

    def get(name: str) -> ZooModel:
        if name not in cache:
            cache[name] = _build(name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def calibrate_model() -> Callable[..., nn.Module]:
    return calibrate


# Reference implementations ("oracles"). Only the tests that compare with one ask for it, so
# a missing oracle skips those tests, never a whole file.
@pytest.fixture(scope="session")
def pgc():
    """pytorch-grad-cam, the reference implementation of the CAM family."""
    return pytest.importorskip("pytorch_grad_cam", reason="the pytorch-grad-cam oracle")


@pytest.fixture(scope="session")
def oracle_target(pgc):
    """pytorch-grad-cam's ``ClassifierOutputTarget`` class."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return ClassifierOutputTarget


@pytest.fixture(scope="session")
def pgc_image(pgc):
    """pytorch-grad-cam's image helpers (``show_cam_on_image``, ``preprocess_image``, ...)."""
    return pytest.importorskip("pytorch_grad_cam.utils.image")


@pytest.fixture(scope="session")
def cv2():
    """OpenCV, the oracle of the colour map and resizing."""
    return pytest.importorskip("cv2", reason="the OpenCV oracle")


@pytest.fixture(scope="session")
def captum():
    """captum, the oracle of Grad-CAM on a layer and of guided backpropagation."""
    return pytest.importorskip("captum", reason="the captum oracle")


@pytest.fixture(scope="session")
def scipy():
    """scipy (the ``analysis`` extra), which ROAD's imputation needs."""
    return pytest.importorskip("scipy", reason="ROAD needs scipy (the analysis extra)")


def _relu_out_of_place(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return clone


@pytest.fixture(scope="session")
def relu_out_of_place() -> Callable[[nn.Module], nn.Module]:
    """``relu_out_of_place(model)``: a copy of the model whose ReLUs are not in place."""
    return _relu_out_of_place
