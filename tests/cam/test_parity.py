"""Numerical parity with pytorch-grad-cam and captum (test-only oracles) on torchvision models.

Every method pytorch-grad-cam also has must give the same normalised maps (max abs
difference <= 1e-3) on calibrated random-weight models, batch of 2, a different target
class per sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import shortcut_detect.cam as sc

TOLERANCE = 1e-3
MODELS = [
    "resnet18",
    "vgg11_bn",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
]
GRADIENT_METHODS = [
    "GradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
]
EIGEN_METHODS = ["EigenCAM", "EigenGradCAM"]
_PROJECTION_USERS = ("eigen_cam", "eigen_grad_cam", "base_cam")


def oracle_maps(zm, method: str, monkeypatch=None, flip_projection: bool = False, **kwargs):
    """pytorch-grad-cam's maps for the zoo model (optionally with the opposite SVD sign).

    Only called from tests that asked for the ``pgc`` fixture (so the oracle is installed).
    """
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = zm.oracle()
    if flip_projection:
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

        for module in _PROJECTION_USERS:
            monkeypatch.setattr(
                f"pytorch_grad_cam.{module}.get_2d_projection",
                lambda batch: -get_2d_projection(batch),
            )
    setup = kwargs.pop("setup", None)
    call = kwargs.pop("call", {})
    with getattr(pgc, method)(
        model, [zm.layer(model)], reshape_transform=zm.reshape_transform, **kwargs
    ) as cam:
        if setup is not None:
            setup(cam)
        return cam(zm.inputs, targets=[ClassifierOutputTarget(t) for t in zm.targets], **call)


def our_maps(zm, method: str, call=None, **kwargs):
    model = zm.model
    with getattr(sc, method)(
        model, [zm.layer(model)], reshape_transform=zm.reshape_transform, **kwargs
    ) as cam:
        return cam(
            zm.inputs, targets=[sc.ClassifierOutputTarget(t) for t in zm.targets], **(call or {})
        )


def assert_close_either_sign(ours, reference, flipped):
    """Per sample, ``ours`` equals one of the two sign choices of the principal direction."""
    for index in range(ours.shape[0]):
        best = min(
            np.abs(ours[index] - reference[index]).max(),
            np.abs(ours[index] - flipped[index]).max(),
        )
        assert best <= TOLERANCE, f"sample {index}: max abs difference {best}"


@pytest.mark.parametrize("model_name", MODELS)
def test_gradient_methods_match_pytorch_grad_cam(zoo, model_name, pgc):
    zm = zoo(model_name)
    for method in GRADIENT_METHODS:
        ours = our_maps(zm, method)
        reference = oracle_maps(zm, method)
        assert ours.shape == reference.shape == (2, 64, 64)
        assert ours.dtype == np.float32
        difference = np.abs(ours - reference).max()
        assert difference <= TOLERANCE, f"{method}: max abs difference {difference}"
        assert ours.max() == pytest.approx(1.0)  # a real map, not all zeros


@pytest.mark.parametrize("model_name", MODELS)
def test_eigen_methods_match_pytorch_grad_cam_up_to_sign(zoo, model_name, monkeypatch, pgc):
    zm = zoo(model_name)
    for method in EIGEN_METHODS:
        ours = our_maps(zm, method)
        reference = oracle_maps(zm, method)
        with monkeypatch.context() as patch:
            flipped = oracle_maps(zm, method, patch, flip_projection=True)
        assert_close_either_sign(ours, reference, flipped)
        assert ours.max() == pytest.approx(1.0)


def test_eigen_sign_convention_follows_channel_sum():
    """Documented convention: the projection correlates positively with the channel sum."""
    torch.manual_seed(0)
    activations = torch.relu(torch.randn(3, 16, 5, 5)) * torch.rand(1, 1, 5, 5) * 4
    projection = sc.base.eigen_projection(activations)
    for sample, proj in zip(activations, projection):
        total = sample.sum(dim=0).flatten()
        values = proj.flatten()
        correlation = torch.corrcoef(torch.stack([values, total]))[0, 1]
        assert correlation > 0


def test_eigen_smooth_and_aug_smooth_match(zoo, monkeypatch, pgc):
    zm = zoo("resnet18")
    ours = our_maps(zm, "GradCAM", call={"eigen_smooth": True})
    reference = oracle_maps(zm, "GradCAM", call={"eigen_smooth": True})
    with monkeypatch.context() as patch:
        flipped = oracle_maps(
            zm, "GradCAM", patch, flip_projection=True, call={"eigen_smooth": True}
        )
    assert_close_either_sign(ours, reference, flipped)

    ours = our_maps(zm, "GradCAMPlusPlus", call={"aug_smooth": True})
    reference = oracle_maps(zm, "GradCAMPlusPlus", call={"aug_smooth": True})
    assert np.abs(ours - reference).max() <= TOLERANCE
    plain = our_maps(zm, "GradCAMPlusPlus")
    assert np.abs(ours - plain).max() > 1e-2  # smoothing really changed the map


def test_several_target_layers_are_combined_like_pytorch_grad_cam(zoo, pgc, oracle_target):
    zm = zoo("resnet18")
    model, oracle = zm.model, zm.oracle()
    targets = [sc.ClassifierOutputTarget(t) for t in zm.targets]
    with sc.GradCAM(model, [model.layer3, model.layer4]) as cam:
        ours = cam(zm.inputs, targets=targets)
    with pgc.GradCAM(oracle, [oracle.layer3, oracle.layer4]) as cam:
        reference = cam(zm.inputs, targets=[oracle_target(t) for t in zm.targets])
    assert np.abs(ours - reference).max() <= TOLERANCE
    with sc.GradCAM(model, [model.layer4]) as cam:
        single = cam(zm.inputs, targets=targets)
    assert np.abs(ours - single).max() > 1e-2


def test_other_targets_match(zoo, pgc):
    zm = zoo("resnet18")
    from pytorch_grad_cam.utils import model_targets as oracle_targets

    model, oracle = zm.model, zm.oracle()
    with sc.GradCAM(model, [model.layer4]) as cam:
        ours = cam(zm.inputs, targets=[sc.ClassifierOutputSoftmaxTarget(5)] * 2)
        assert cam.outputs.shape == (2, 1000)
    with pgc.GradCAM(oracle, [oracle.layer4]) as cam:
        reference = cam(zm.inputs, targets=[oracle_targets.ClassifierOutputSoftmaxTarget(5)] * 2)
    assert np.abs(ours - reference).max() <= TOLERANCE
    # targets=None explains the predicted class of each sample
    predicted = model(zm.inputs).argmax(1).tolist()
    with sc.XGradCAM(model, [model.layer4]) as cam:
        implicit = cam(zm.inputs, targets=None)
        explicit = cam(zm.inputs, targets=[sc.ClassifierOutputTarget(c) for c in predicted])
    np.testing.assert_array_equal(implicit, explicit)


def _no_ablation_bug(cls, transposed):
    """pytorch-grad-cam's ablation layer, always setting the ablated channel to zero
    (``transposed``: the ViT layer, channels last)."""

    class ZeroAblation(cls):
        def __call__(self, x):
            output = self.activations
            if transposed:
                output = output.transpose(1, len(output.shape) - 1)
            for i in range(output.size(0)):
                output[i, self.indices[i], :] = 0
            if transposed:
                output = output.transpose(len(output.shape) - 1, 1)
            return output

    return ZeroAblation()


def _set_batch_size(size):
    def setup(cam):
        cam.batch_size = size

    return setup


# pytorch-grad-cam needs one forward pass per channel and sample here (1,000+ per model):
# two models by default, the rest marked slow.
PERTURBATION_MODELS = [
    "resnet18",
    "mobilenet_v3_small",
    pytest.param("vgg11_bn", marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", marks=pytest.mark.slow),
    pytest.param("convnext_tiny", marks=pytest.mark.slow),
    pytest.param("vit_b_16", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("model_name", PERTURBATION_MODELS)
def test_scorecam_matches_pytorch_grad_cam(zoo, model_name, pgc):
    zm = zoo(model_name)
    ours = our_maps(zm, "ScoreCAM", batch_size=64)
    reference = oracle_maps(zm, "ScoreCAM", setup=_set_batch_size(64))
    assert np.abs(ours - reference).max() <= TOLERANCE
    assert ours.max() == pytest.approx(1.0)


def _confident_targets(zm):
    """A well-scored class per sample (top-1, or top-2 for the second sample if equal).

    AblationCAM divides by the target score; for a logit near 0 the map is float noise.
    """
    with torch.no_grad():
        ranked = zm.oracle()(zm.inputs).argsort(dim=1, descending=True)
    first, second = int(ranked[0, 0]), int(ranked[1, 0])
    return first, second if second != first else int(ranked[1, 1])


@pytest.mark.parametrize("model_name", PERTURBATION_MODELS)
def test_ablationcam_matches_pytorch_grad_cam(zoo, model_name, pgc):
    base = zoo(model_name)
    zm = dataclasses.replace(base, targets=_confident_targets(base), _oracle=base.oracle())
    ours = our_maps(zm, "AblationCAM", batch_size=64)
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit

    vit = model_name == "vit_b_16"
    layer = _no_ablation_bug(AblationLayerVit if vit else AblationLayer, transposed=vit)
    reference = oracle_maps(zm, "AblationCAM", batch_size=64, ablation_layer=layer)
    assert np.abs(ours - reference).max() <= TOLERANCE
    assert ours.max() == pytest.approx(1.0)
    if model_name == "resnet18":
        # After a ReLU, pytorch-grad-cam's own ablation value is zero too.
        untouched = oracle_maps(zm, "AblationCAM", batch_size=64)
        assert np.abs(ours - untouched).max() <= TOLERANCE


@pytest.mark.parametrize("model_name", MODELS[:-1])
def test_gradcam_matches_captum_layer_gradcam(zoo, model_name, captum):
    from captum.attr import LayerAttribution, LayerGradCam

    zm = zoo(model_name)
    oracle = zm.oracle()
    attribution = LayerGradCam(oracle, zm.layer(oracle)).attribute(
        zm.inputs, target=list(zm.targets), relu_attributions=True
    )
    upsampled = LayerAttribution.interpolate(attribution, (64, 64), interpolate_mode="bilinear")
    flat = upsampled[:, 0].detach().reshape(2, -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    reference = ((flat - low) / (high - low)).reshape(2, 64, 64).numpy()
    ours = our_maps(zm, "GradCAM")
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_vit_maps_depend_on_the_reshape_transform(zoo):
    """The ViT parity above is meaningful: a wrong grid gives a different map."""
    zm = zoo("vit_b_16")
    model = zm.model

    def transposed(tokens):
        return sc.vit_reshape_transform(tokens).transpose(2, 3)

    with sc.GradCAM(model, [zm.layer(model)], reshape_transform=transposed) as cam:
        wrong = cam(zm.inputs, targets=[sc.ClassifierOutputTarget(t) for t in zm.targets])
    assert np.abs(wrong - our_maps(zm, "GradCAM")).max() > 0.05


def test_upsampling_matches_opencv_resize(cv2):
    """pytorch-grad-cam resizes with cv2.resize; our bilinear upsampling gives the same."""
    grid = np.random.default_rng(0).random((7, 5)).astype(np.float32)
    ours = sc.engine.upsample(torch.from_numpy(grid)[None], (56, 40))[0].numpy()
    reference = cv2.resize(grid, (40, 56))
    assert np.abs(ours - reference).max() < 1e-5
