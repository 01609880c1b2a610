"""Issue #15: torchcam's SSCAM and ISCAM on the engine.

Parity: the same seed gives torchcam's maps (max abs difference <= 1e-3 after
normalisation) on three architectures. Early layers with few channels keep the many
masked forward passes cheap; the formulas do not depend on the layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc
from shortcut_detect.cam.engine import minmax_normalize, upsample

torchcam_methods = pytest.importorskip("torchcam.methods")

TOLERANCE = 1e-3
LAYERS = {
    "resnet18": lambda m: m.layer1,  # 64 channels
    "mobilenet_v3_small": lambda m: m.features[1],  # 16 channels
    "efficientnet_b0": lambda m: m.features[1],  # 16 channels
}


def _targets(zm):
    return [sc.ClassifierOutputTarget(t) for t in zm.targets]


def _torchcam(zm, oracle_cls, seed, **kwargs):
    oracle = zm.oracle()
    layer = LAYERS[zm.name](oracle)
    size = tuple(zm.inputs.shape[2:])
    with oracle_cls(oracle, layer, input_shape=(3, *size), **kwargs) as extractor:
        torch.manual_seed(seed)
        with torch.no_grad():
            scores = oracle(zm.inputs)
        reference = extractor(list(zm.targets), scores)[0]
    return minmax_normalize(upsample(reference.float(), size)).numpy()


def _ours(zm, cls, seed, **kwargs):
    torch.manual_seed(seed)
    with cls(zm.model, [LAYERS[zm.name](zm.model)], **kwargs) as cam:
        return cam(zm.inputs, _targets(zm))


def _assert_parity(mine, theirs, label):
    assert mine.shape == theirs.shape
    difference = np.abs(mine - theirs).max()
    assert difference <= TOLERANCE, f"{label}: max abs difference {difference}"
    assert mine.max() == pytest.approx(1.0), f"{label}: all-zero map"


@pytest.mark.parametrize("model_name", list(LAYERS))
def test_iscam_matches_torchcam(zoo, model_name):
    zm = zoo(model_name)
    kwargs = {"num_samples": 2, "batch_size": 32}
    mine = _ours(zm, sc.ISCAM, 0, **kwargs)
    _assert_parity(mine, _torchcam(zm, torchcam_methods.ISCAM, 0, **kwargs), "ISCAM")


@pytest.mark.parametrize("model_name", list(LAYERS))
def test_sscam_matches_torchcam_with_the_same_seed(zoo, model_name):
    zm = zoo(model_name)
    kwargs = {"num_samples": 2, "std": 0.5, "batch_size": 32}
    mine = _ours(zm, sc.SSCAM, 4, **kwargs)
    _assert_parity(mine, _torchcam(zm, torchcam_methods.SSCAM, 4, **kwargs), "SSCAM")
    reseeded = _ours(zm, sc.SSCAM, 5, **kwargs)
    assert np.abs(reseeded - mine).max() > 1e-2  # the noise really is used


class _Probe(nn.Module):
    """Feature channels 0, 1 copy input channel 0 and channels 2, 3 copy input channel 1."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(2, 4, 1, bias=False)
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            self.features.weight.copy_(
                torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])[..., None, None]
            )
            self.head.weight.copy_(torch.tensor([[1.0, -2, 0.5, 3], [0, 1, 1, 0], [1, 1, 1, 1]]))
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.head(self.features(x).mean(dim=(2, 3)))


def _iscam_by_hand(model, x, coefficients, category):
    """Softmax over channels of the mean (over steps) score of ``c_i * x * mask_k``."""
    with torch.no_grad():
        activations = model.features(x)[0]
        masks = activations - activations.amin(dim=(1, 2), keepdim=True)
        masks = masks / (masks.amax(dim=(1, 2), keepdim=True) + 1e-8)
        means = torch.stack(
            [
                torch.stack([model(c * x * masks[k])[0, category] for c in coefficients]).mean()
                for k in range(4)
            ]
        )
        weights = torch.softmax(means, dim=0)
        cam = torch.relu((weights[:, None, None] * activations).sum(0))
    return minmax_normalize(cam[None]).numpy()


def test_iscam_weights_by_hand_and_equal_masks_scored_once():
    model = _Probe()
    x = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    steps = 4
    coefficients = [0.25, 0.25 + 0.5, 0.25 + 0.5 + 0.75, 0.25 + 0.5 + 0.75 + 1.0]
    expected = _iscam_by_hand(model, x, coefficients, 2)
    cam = sc.ISCAM(model, "features", num_samples=steps, accelerate=False, batch_size=3)
    assert cam.coefficients() == pytest.approx(coefficients)
    model.rows = 0
    mine = cam(x, [sc.ClassifierOutputTarget(2)])
    np.testing.assert_allclose(mine, expected, atol=1e-5)
    # one pass for the activations, then 2 distinct masks x 4 steps (not 4 x 4)
    assert model.rows == 1 + 2 * steps


def test_sscam_weights_by_hand():
    model = _Probe()
    x = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    steps, std = 3, 0.7
    torch.manual_seed(11)
    noise = [torch.normal(0.0, std, (1, 4, 5, 5)) for _ in range(steps)]
    with torch.no_grad():
        activations = model.features(x)[0]
        masks = activations - activations.amin(dim=(1, 2), keepdim=True)
        masks = masks / (masks.amax(dim=(1, 2), keepdim=True) + 1e-8)
        means = torch.stack(
            [
                torch.stack(
                    [model(x * (masks[k] + noise[i][0, k]))[0, 1] for i in range(steps)]
                ).mean()
                for k in range(4)
            ]
        )
        cam = torch.relu((torch.softmax(means, 0)[:, None, None] * activations).sum(0))
    expected = minmax_normalize(cam[None]).numpy()
    torch.manual_seed(11)
    mine = sc.SSCAM(model, "features", num_samples=steps, std=std, accelerate=False)(
        x, [sc.ClassifierOutputTarget(1)]
    )
    np.testing.assert_allclose(mine, expected, atol=1e-5)


def test_invalid_settings_are_refused():
    model = _Probe()
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        sc.ISCAM(model, "features", num_samples=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sc.SSCAM(model, "features", batch_size=2.5)
    with pytest.raises(ValueError, match="std must be a positive number"):
        sc.SSCAM(model, "features", std=-1)
    with pytest.raises(ValueError, match="gradients"):
        sc.SSCAM(model, "features", uses_gradients=True)


@pytest.mark.parametrize("method", [sc.ScoreCAM, sc.AblationCAM, sc.SSCAM, sc.ISCAM])
def test_perturbation_methods_ask_for_the_input_batch(method):
    model = _Probe()
    x = torch.rand(1, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    cam = method(model, "features")
    _, capture = cam.capture_for(x, [sc.ClassifierOutputTarget(0)])
    with pytest.raises(ValueError, match=f"{method.__name__} needs the input batch"):
        cam.layer_maps(capture)
    assert cam.layer_maps(capture, inputs=x)[0].shape == (1, 5, 5)
