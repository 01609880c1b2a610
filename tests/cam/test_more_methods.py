"""Issue #15: the newer pytorch-grad-cam and torchcam methods and targets.

Parity: maps equal the defining library's (max abs difference <= 1e-3 after
normalisation) on three architectures; formulas are also checked by hand on tiny models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc
from shortcut_detect.cam.engine import CAMEngine, minmax_normalize, upsample

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils import model_targets as oracle_targets  # noqa: E402

TOLERANCE = 1e-3
CNN_MODELS = ["resnet18", "vgg11_bn", "mobilenet_v3_small"]


def _targets(zm, cls):
    return [cls(t) for t in zm.targets]


def _pair(zm, ours_cls, oracle_cls, ours_call=None, oracle_call=None, **kwargs):
    model, oracle = zm.model, zm.oracle()
    ours = ours_cls(model, [zm.layer(model)], zm.reshape_transform, **kwargs)
    reference = oracle_cls(oracle, [zm.layer(oracle)], zm.reshape_transform, **kwargs)
    with ours:
        mine = (ours_call or (lambda c: c(zm.inputs, _targets(zm, sc.ClassifierOutputTarget))))(
            ours
        )
    theirs = (
        oracle_call or (lambda c: c(zm.inputs, _targets(zm, oracle_targets.ClassifierOutputTarget)))
    )(reference)
    return mine, theirs


def _assert_parity(mine, theirs, label):
    assert mine.shape == theirs.shape
    difference = np.abs(mine - theirs).max()
    assert difference <= TOLERANCE, f"{label}: max abs difference {difference}"
    assert mine.max() == pytest.approx(1.0), f"{label}: all-zero map"


# -- targets -------------------------------------------------------------------------------
def test_rest_target_is_logit_plus_log_probability():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    expected = logits[:, 2] + torch.log(torch.softmax(logits, dim=1)[:, 2])
    torch.testing.assert_close(sc.ClassifierOutputReST(2)(logits), expected)
    torch.testing.assert_close(sc.ClassifierOutputReST(2)(logits[1]), expected[1])
    oracle = oracle_targets.ClassifierOutputReST(2)
    torch.testing.assert_close(sc.ClassifierOutputReST(2)(logits), oracle(logits))
    torch.testing.assert_close(sc.ClassifierOutputReST(2)(logits[0]), oracle(logits[0]))


def test_finer_weighted_target_formula_and_oracle():
    logits = torch.tensor([4.0, 3.5, -1.0, 3.9])
    probabilities = torch.softmax(logits, dim=0)
    target = sc.FinerWeightedTarget(0, [3, 1], alpha=0.6)
    p3, p1 = probabilities[3], probabilities[1]
    expected = (p3 * (4.0 - 0.6 * 3.9) + p1 * (4.0 - 0.6 * 3.5)) / (p3 + p1 + 1e-9)
    torch.testing.assert_close(target(logits), expected)
    oracle = oracle_targets.FinerWeightedTarget(0, [3, 1], 0.6)
    batch = torch.stack([logits, logits.flip(0)])
    torch.testing.assert_close(target(batch), oracle(batch))
    with pytest.raises(ValueError, match="at least one comparison"):
        sc.FinerWeightedTarget(0, [], 1.0)


def test_softmax_output_target():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    torch.testing.assert_close(sc.SoftmaxOutputTarget()(logits), torch.softmax(logits, -1))


def test_faster_rcnn_box_score_target_matches_oracle():
    outputs = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 32.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.6]),
    }
    reference_boxes = np.array([[0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 30.0], [50, 50, 60, 60]])
    labels = [1, 2, 2]
    ours = sc.FasterRCNNBoxScoreTarget(labels, reference_boxes)(outputs)
    oracle = oracle_targets.FasterRCNNBoxScoreTarget(labels, reference_boxes)(outputs)
    torch.testing.assert_close(ours, oracle.float())
    assert float(ours) == pytest.approx(0.9 + 0.9 + 10 / 12 + 0.6, abs=1e-5)
    # a wrong label does not count
    wrong = sc.FasterRCNNBoxScoreTarget([2], reference_boxes[:1])(outputs)
    assert float(wrong) == 0.0
    with pytest.raises(ValueError, match="labels for"):
        sc.FasterRCNNBoxScoreTarget([1], reference_boxes)


# -- hand-checked formulas on tiny models ----------------------------------------------------
class _Squared(nn.Module):
    """conv -> score (v . mean(a))^2: gradient 2 z v / P, Hessian-vector product 2 z v / P."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.register_buffer("v", torch.tensor([1.0, -2.0, 0.5]))

    def forward(self, x):
        pooled = self.conv(x).mean(dim=(2, 3))
        return ((pooled * self.v).sum(dim=1, keepdim=True)) ** 2


def test_hessian_vector_product_and_shapley_weights_by_hand():
    torch.manual_seed(0)
    model = _Squared()
    inputs = torch.randn(2, 2, 5, 5)
    with CAMEngine(model, model.conv) as engine:
        capture = engine.capture(inputs, [lambda out: out[:, 0]], hessian_vector=True)
    activation = model.conv(inputs).detach()
    positions = 25
    z = (activation.mean(dim=(2, 3)) * model.v).sum(dim=1)
    expected = (2 * z[:, None] * model.v / positions)[:, :, None, None].expand(-1, -1, 5, 5)
    torch.testing.assert_close(capture.gradients[0][0], expected)
    torch.testing.assert_close(capture.hessian_vector_products[0][0], expected)
    cam = sc.ShapleyCAM(model, [model.conv])
    weights = cam.channel_weights(capture.activations[0], capture.gradients[0][0], capture=capture)
    torch.testing.assert_close(weights, z[:, None] * model.v / positions)
    assert not any(p.grad is not None for p in model.parameters())


def test_shapley_equals_gradcam_for_a_linear_score(zoo):
    """With ReLU/pool/linear after layer4 and a logit target, H a = 0."""
    zm = zoo("resnet18")
    shapley, _ = _pair(zm, sc.ShapleyCAM, pgc.ShapleyCAM)
    gradcam, _ = _pair(zm, sc.GradCAM, pgc.GradCAM)
    np.testing.assert_allclose(shapley, gradcam, atol=1e-6)


def test_fem_weights_by_hand():
    activations = torch.zeros(1, 2, 2, 2)
    activations[0, 0] = torch.tensor([[10.0, 0.0], [0.0, 0.0]])  # mean 2.5, std 4.33
    activations[0, 1] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5, std 1.118
    model = nn.Conv2d(1, 1, 1)
    weights = sc.FEM(model, [model], k=0.5).channel_weights(activations, None)
    # channel 0: 10 > 2.5 + 2.17 only; channel 1: 4 > 2.5 + 0.56 and 3 > 3.06? no -> 1/4
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.25]]))
    weights = sc.FEM(model, [model], k=0.0).channel_weights(activations, None)
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.5]]))


@pytest.mark.parametrize("positions, channels", [(49, 512), (300, 16), (8, 8)])
def test_principal_direction_is_the_first_right_singular_vector(positions, channels):
    from shortcut_detect.cam.base import principal_direction

    generator = torch.Generator().manual_seed(positions)
    scales = torch.linspace(3, 0.1, channels, dtype=torch.float64)  # a clear top component
    matrix = torch.randn(2, positions, channels, generator=generator, dtype=torch.float64) * scales
    direction = principal_direction(matrix)
    reference = torch.linalg.svd(matrix, full_matrices=False).Vh[:, 0, :]
    alignment = (direction * reference).sum(dim=1).abs()
    torch.testing.assert_close(alignment, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(direction.norm(dim=1), torch.ones(2, dtype=torch.float64))
    zeros = torch.zeros(1, positions, channels, dtype=torch.float64)
    assert torch.equal(
        zeros @ principal_direction(zeros).unsqueeze(-1), torch.zeros(1, positions, 1)
    )


def test_random_cam_seeded_and_needs_no_backward(zoo):
    zm = zoo("resnet18")
    layer = [zm.layer(zm.model)]
    first = sc.RandomCAM(zm.model, layer, random_state=1)(zm.inputs)
    again = sc.RandomCAM(zm.model, layer, random_state=1)(zm.inputs)
    other = sc.RandomCAM(zm.model, layer, random_state=2)(zm.inputs)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-2
    assert sc.RandomCAM.uses_gradients is False


def test_cam_uses_fc_weights_without_relu():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    inputs = torch.randn(1, 3, 6, 6)
    activation = model[0](inputs).detach()
    raw = torch.einsum("c,bchw->bhw", model[3].weight[2].detach(), activation)
    expected = minmax_normalize(raw)  # no ReLU: negative evidence is kept, scaled to 0
    with sc.CAM(model, [model[0]]) as cam:
        maps = cam(inputs, [sc.ClassifierOutputTarget(2)])
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="ClassifierOutputTarget"):
        sc.CAM(model, [model[0]])(inputs, [sc.ClassifierOutputSoftmaxTarget(2)])
    two_heads = nn.Sequential(model, nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"found 2 nn\.Linear"):
        sc.CAM(two_heads, [model[0]])
    with pytest.raises(ValueError, match="takes 3 features but the target layer has 4"):
        sc.CAM(two_heads, [model[0]], fc_layer="1")(inputs)


def test_fuse_cams_is_max_after_resizing():
    small = torch.zeros(1, 2, 2)
    small[0, 0, 0] = 1.0
    large = torch.full((1, 4, 4), 0.25)
    fused = sc.fuse_cams([small, large])
    assert fused.shape == (1, 4, 4)
    torch.testing.assert_close(fused, torch.maximum(upsample(small, (4, 4)), large))
    assert sc.fuse_cams([large]) is large
    with pytest.raises(ValueError, match="at least one"):
        sc.fuse_cams([])
    with pytest.raises(ValueError, match="share batch size"):
        sc.fuse_cams([small, torch.zeros(2, 4, 4)])


def test_get_method_knows_the_new_names():
    assert sc.get_method("FullGrad") is sc.FullGrad
    assert sc.get_method("Smooth-Grad-CAM++") is sc.SmoothGradCAMpp
    assert sc.get_method("smoothgradcampp") is sc.SmoothGradCAMpp
    assert sc.get_method("KPCA_CAM") is sc.KPCA_CAM


def test_fullgrad_warns_that_target_layers_are_ignored(zoo):
    zm = zoo("resnet18")
    with pytest.warns(UserWarning, match="ignores target_layers"):
        cam = sc.FullGrad(zm.model, [zm.model.layer4])
    convolutions = [m for m in zm.model.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in zm.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(cam.target_layers) == len(norms)  # resnet convolutions have no bias
    assert len(convolutions) == len(norms) == 20
    with pytest.raises(ValueError, match="with a bias"):
        sc.FullGrad(nn.Sequential(nn.Conv2d(3, 2, 3, bias=False)), [])


# -- parity with pytorch-grad-cam -----------------------------------------------------------
@pytest.mark.parametrize("model_name", CNN_MODELS)
def test_new_pytorch_grad_cam_methods_match(zoo, model_name):
    zm = zoo(model_name)
    for ours_cls, oracle_cls, kwargs in [
        (sc.FEM, pgc.FEM, {"k": 0.5}),  # a 2x2 layer never exceeds mean + 2 std
        (sc.KPCA_CAM, pgc.KPCA_CAM, {}),
        (sc.SegEigenCAM, pgc.SegEigenCAM, {}),
    ]:
        mine, theirs = _pair(zm, ours_cls, oracle_cls, **kwargs)
        _assert_parity(mine, theirs, ours_cls.__name__)

    rest = (
        lambda c: c(zm.inputs, _targets(zm, sc.ClassifierOutputReST)),
        lambda c: c(zm.inputs, _targets(zm, oracle_targets.ClassifierOutputReST)),
    )
    mine, theirs = _pair(zm, sc.ShapleyCAM, pgc.ShapleyCAM, *rest)
    _assert_parity(mine, theirs, "ShapleyCAM")
    gradcam, _ = _pair(zm, sc.GradCAM, pgc.GradCAM, *rest)
    assert np.abs(mine - gradcam).max() > 1e-2  # the Hessian term mattered

    mine, theirs = _pair(
        zm, sc.FinerCAM, pgc.FinerCAM, lambda c: c(zm.inputs), lambda c: c(zm.inputs)
    )
    _assert_parity(mine, theirs, "FinerCAM")
    plain = sc.GradCAM(zm.model, [zm.layer(zm.model)])(zm.inputs)
    assert np.abs(mine - plain).max() > 1e-2

    np.random.seed(3)
    mine = sc.RandomCAM(zm.model, [zm.layer(zm.model)])(zm.inputs, None)
    np.random.seed(3)
    theirs = pgc.RandomCAM(zm.oracle(), [zm.layer(zm.oracle())])(zm.inputs, None)
    _assert_parity(mine, theirs, "RandomCAM")


@pytest.mark.parametrize("model_name", CNN_MODELS)
def test_fullgrad_matches(zoo, model_name, monkeypatch):
    zm = zoo(model_name)
    targets = _targets(zm, sc.ClassifierOutputTarget)
    oracle_t = _targets(zm, oracle_targets.ClassifierOutputTarget)
    with pytest.warns(UserWarning):
        ours = sc.FullGrad(zm.model, [zm.layer(zm.model)])
    reference = pgc.FullGrad(zm.oracle(), [])
    _assert_parity(ours(zm.inputs, targets), reference(zm.inputs, oracle_t), "FullGrad")
    assert all(p.grad is None for p in zm.model.parameters())

    mine = ours(zm.inputs, targets, eigen_smooth=True)
    theirs = reference(zm.inputs, oracle_t, eigen_smooth=True)
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    monkeypatch.setattr(
        "pytorch_grad_cam.fullgrad_cam.get_2d_projection", lambda b: -get_2d_projection(b)
    )
    flipped = reference(zm.inputs, oracle_t, eigen_smooth=True)
    for index in range(mine.shape[0]):
        best = min(np.abs(mine[index] - r[index]).max() for r in (theirs, flipped))
        assert best <= TOLERANCE


REFINE_LAYERS = {
    "resnet18": lambda m: [m.layer2, m.layer3, m.layer4],
    "vgg11_bn": lambda m: [m.features[14], m.features[-1]],
    "mobilenet_v3_small": lambda m: [m.features[6], m.features[-1]],
}


@pytest.mark.parametrize("model_name", CNN_MODELS)
def test_refine_cam_matches(zoo, model_name):
    zm = zoo(model_name)
    layers = REFINE_LAYERS[model_name]
    targets = _targets(zm, sc.ClassifierOutputTarget)
    with sc.RefineCAM(zm.model, layers(zm.model)) as cam:
        mine = cam(zm.inputs, targets)
    oracle = zm.oracle()
    theirs = pgc.RefineCAM(oracle, layers(oracle))(
        zm.inputs, _targets(zm, oracle_targets.ClassifierOutputTarget)
    )
    _assert_parity(mine, theirs, "RefineCAM")


# -- parity with torchcam ------------------------------------------------------------------
def _torchcam_maps(cams: torch.Tensor, size) -> np.ndarray:
    return minmax_normalize(upsample(cams.detach().float(), size)).numpy()


FC_LAYERS = {"resnet18": "fc", "efficientnet_b0": "classifier.1", "convnext_tiny": "classifier.2"}


@pytest.mark.parametrize("model_name", list(FC_LAYERS))
def test_cam_matches_torchcam(zoo, model_name):
    zm = zoo(model_name)
    oracle = zm.oracle()
    fc_layer = FC_LAYERS[model_name]
    with torchcam_methods.CAM(oracle, zm.layer(oracle), fc_layer, (3, 64, 64)) as extractor:
        with torch.no_grad():
            oracle(zm.inputs)
        reference = extractor(list(zm.targets))[0]
    with sc.CAM(zm.model, [zm.layer(zm.model)], fc_layer=fc_layer) as cam:
        mine = cam(zm.inputs, _targets(zm, sc.ClassifierOutputTarget))
    _assert_parity(mine, _torchcam_maps(reference, (64, 64)), "CAM")


@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet_b0", "vit_b_16"])
def test_smooth_gradcampp_matches_torchcam_with_the_same_seed(zoo, model_name):
    zm = zoo(model_name)
    oracle = zm.oracle()
    with torchcam_methods.SmoothGradCAMpp(
        oracle, zm.layer(oracle), input_shape=(3, 64, 64), reshape_transform=zm.reshape_transform
    ) as extractor:
        torch.manual_seed(5)
        scores = oracle(zm.inputs)
        reference = extractor(list(zm.targets), scores)[0]
    torch.manual_seed(5)
    with sc.SmoothGradCAMpp(zm.model, [zm.layer(zm.model)], zm.reshape_transform) as cam:
        mine = cam(zm.inputs, _targets(zm, sc.ClassifierOutputTarget))
    _assert_parity(mine, _torchcam_maps(reference, (64, 64)), "SmoothGradCAMpp")
    torch.manual_seed(6)
    with sc.SmoothGradCAMpp(zm.model, [zm.layer(zm.model)], zm.reshape_transform) as cam:
        reseeded = cam(zm.inputs, _targets(zm, sc.ClassifierOutputTarget))
    assert np.abs(reseeded - mine).max() > 1e-3  # the noise really is used


def test_fuse_cams_matches_torchcam():
    from torchcam.methods.core import _CAM

    generator = torch.Generator().manual_seed(0)
    cams = [torch.rand(2, 4, 4, generator=generator), torch.rand(2, 7, 7, generator=generator)]
    torch.testing.assert_close(sc.fuse_cams(cams), _CAM.fuse_cams(cams))
    torch.testing.assert_close(sc.fuse_cams(cams, (9, 9)), _CAM.fuse_cams(cams, (9, 9)))
