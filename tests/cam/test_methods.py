"""Behaviour of the CAM classes beyond parity: speed-ups that must not change results,
inference mode, batching, the registry, and a model left exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc


class Recorder(nn.Module):
    """Wraps a model; records the batch size and inference-mode flag of every forward pass."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_inference_mode_enabled()))
        return self.inner(x)


class DeadChannels(nn.Module):
    """A small CNN whose target layer has channels that are zero everywhere, and twins."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.target = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
        with torch.no_grad():
            self.conv.weight[:4] = 0  # channels 0-3: constant (bias only) -> zero after ReLU
            self.conv.bias[:4] = -1.0
            self.conv.weight[5] = 2 * self.conv.weight[4]  # channel 5 = 2 x channel 4
            self.conv.bias[5] = 2 * self.conv.bias[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.target(self.conv(x)))


def _targets(classes):
    return [sc.ClassifierOutputTarget(c) for c in classes]


def test_registry_names_and_aliases():
    expected = {
        "gradcam": sc.GradCAM,
        "hirescam": sc.HiResCAM,
        "gradcamelementwise": sc.GradCAMElementWise,
        "gradcam++": sc.GradCAMPlusPlus,
        "xgradcam": sc.XGradCAM,
        "layercam": sc.LayerCAM,
        "eigencam": sc.EigenCAM,
        "eigengradcam": sc.EigenGradCAM,
        "scorecam": sc.ScoreCAM,
        "ablationcam": sc.AblationCAM,
    }
    assert expected == sc.METHODS
    for alias in ("GradCAMPlusPlus", "Grad-CAM++", "gradcam_pp", "GRADCAM++"):
        assert sc.get_method(alias) is sc.GradCAMPlusPlus
    assert sc.get_method("Score-CAM") is sc.ScoreCAM
    assert sc.get_method(sc.LayerCAM) is sc.LayerCAM
    assert sc.get_method("fullgrad") is sc.FullGrad  # issue #15 (MORE_METHODS)
    with pytest.raises(ValueError, match="choose one of: gradcam"):
        sc.get_method("notacam")


@pytest.mark.parametrize("method", ["ScoreCAM", "AblationCAM", "EigenCAM"])
def test_gradient_free_methods_run_in_inference_mode_and_batch(method):
    torch.manual_seed(0)
    model = Recorder(DeadChannels().eval())
    kwargs = {} if method == "EigenCAM" else {"batch_size": 5}
    if method == "ScoreCAM":
        kwargs["accelerate"] = False  # the accelerated copy would not go through Recorder
    with getattr(sc, method)(model, ["inner.target"], **kwargs) as cam:
        maps = cam(torch.rand(2, 3, 16, 16), targets=_targets([1, 2]))
    assert maps.shape == (2, 16, 16)
    assert model.calls and all(inference for _, inference in model.calls)
    if method != "EigenCAM":
        assert max(size for size, _ in model.calls[1:]) <= 6  # batch_size (+1 check row)


def test_scorecam_skips_constant_and_duplicate_channels(pgc, oracle_target):
    torch.manual_seed(0)
    inner = DeadChannels().eval()
    model = Recorder(inner)
    x = torch.rand(1, 3, 16, 16)
    with sc.ScoreCAM(model, ["inner.target"], batch_size=64, accelerate=False) as cam:
        ours = cam(x, targets=_targets([2]))
    images = sum(size for size, _ in model.calls[1:])
    # 12 channels: 4 dead ones share one zero image, channel 5 repeats channel 4's map.
    assert images == 1 + (12 - 4 - 1)
    with pgc.ScoreCAM(inner, [inner.target]) as cam:
        reference = cam(x, targets=[oracle_target(2)])
    assert np.abs(ours - reference).max() <= 1e-3


def test_scorecam_acceleration_does_not_change_the_maps(zoo):
    zm = zoo("resnet18")
    model = zm.model
    before = [p.clone() for p in model.parameters()]
    results = []
    for accelerate in (True, False):
        with sc.ScoreCAM(model, ["layer2"], accelerate=accelerate) as cam:
            results.append(cam(zm.inputs[:1], targets=_targets([3])))
        # the folded copy was built, passed its check and was used (on oneDNN tensors)
        expected = "onednn" if torch.backends.mkldnn.is_available() else "channels_last"
        assert cam._inference_copy.used == (expected if accelerate else None)
    assert np.abs(results[0] - results[1]).max() <= 1e-4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_scorecam_accelerated_copy_follows_weight_changes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()
    x = torch.rand(1, 3, 12, 12)
    cam = sc.ScoreCAM(model, ["2"])
    first = cam(x, targets=_targets([0]))
    with torch.no_grad():
        model[0].weight.mul_(-1.5)  # in place, as an optimiser step would
    second = cam(x, targets=_targets([0]))
    fresh = sc.ScoreCAM(model, ["2"], accelerate=False)(x, targets=_targets([0]))
    assert np.abs(second - fresh).max() <= 1e-5
    assert np.abs(first - second).max() > 1e-2


def test_scorecam_falls_back_quietly_when_onednn_lacks_an_operation(capsys):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.Hardswish(),  # no oneDNN-tensor kernel
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()
    x = torch.rand(2, 3, 12, 12)
    cam = sc.ScoreCAM(model, ["2"])
    maps = cam(x, targets=_targets([0, 2]))
    assert cam._inference_copy.used == "channels_last"
    assert capsys.readouterr().err == ""
    plain = sc.ScoreCAM(model, ["2"], accelerate=False)(x, targets=_targets([0, 2]))
    assert np.abs(maps - plain).max() <= 1e-5
    assert maps.max() == pytest.approx(1.0)


class RowMixingHead(nn.Module):
    """After the target layer, subtracts the batch mean: rows are not independent."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.target = nn.ReLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.target(self.conv(x)).mean(dim=(2, 3))
        return self.fc(pooled - 0.5 * pooled.mean(dim=0, keepdim=True))


def test_ablationcam_falls_back_when_rows_interact(pgc, oracle_target):
    model = RowMixingHead().eval()
    x = torch.rand(1, 3, 10, 10)
    with sc.AblationCAM(model, ["target"], batch_size=4) as cam:
        ours = cam(x, targets=_targets([1]))
        assert cam._rows_independent == {0: False}
    with pgc.AblationCAM(model, [model.target], batch_size=4) as cam:
        reference = cam(x, targets=[oracle_target(1)])
    assert np.abs(ours - reference).max() <= 1e-3


def test_ablationcam_ratio_only_ablates_some_channels():
    model = DeadChannels().eval()
    x = torch.rand(1, 3, 16, 16)
    cam = sc.AblationCAM(model, ["target"], ratio_channels_to_ablate=0.25)
    capture = cam.engine.capture(
        x, score_fns=[sc.TargetScores(_targets([1]))], need_gradients=False
    )
    chosen = cam.channels_to_ablate(capture.activations[0][0])
    assert 3 <= chosen.numel() <= 6
    weights = cam.channel_weights(
        capture.activations[0], None, capture=capture, score_index=0, inputs=x
    )
    skipped = torch.ones(12, dtype=torch.bool)
    skipped[chosen] = False
    assert torch.all(weights[0, skipped] == 0)
    with pytest.raises(ValueError, match="ratio_channels_to_ablate"):
        sc.AblationCAM(model, ["target"], ratio_channels_to_ablate=0)


def test_ablation_layer_argument_is_ignored_with_a_warning():
    model = DeadChannels().eval()
    with pytest.warns(UserWarning, match="ignores ablation_layer"):
        sc.AblationCAM(model, ["target"], ablation_layer=nn.Identity())


def test_channel_layout_through_reshape_transforms():
    from shortcut_detect.cam.perturbation import channel_layout

    axis, coords = channel_layout((2, 17, 32), sc.vit_reshape_transform)
    assert axis == 2 and torch.equal(coords, torch.arange(32))
    axis, coords = channel_layout((2, 4, 4, 8), sc.swin_reshape_transform)
    assert axis == 3 and torch.equal(coords, torch.arange(8))
    with pytest.raises(ValueError, match="does more than rearrange"):
        channel_layout((1, 8, 4, 4), lambda t: t.abs() * 0.5)


class Fuse(nn.Module):
    """Identity that raises from its ``at``-th forward pass on (0: never)."""

    def __init__(self) -> None:
        super().__init__()
        self.at = 0
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        if self.at and self.count >= self.at:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", sorted(sc.METHODS))
def test_model_left_unchanged_and_hooks_removed_even_on_error(method):
    torch.manual_seed(0)
    model = DeadChannels()
    model.fuse = Fuse()
    model.head.insert(0, model.fuse)  # runs after the target layer
    model.train()
    model.head.eval()  # a mixed state (e.g. a frozen part) must come back exactly
    for param in model.head.parameters():
        param.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.rand(2, 3, 12, 12)
    modes = [m.training for m in model.modules()]
    with torch.no_grad():
        expected = model.eval()(x)
    for module, training in zip(model.modules(), modes):
        module.training = training
    model.fuse.count, model.fuse.at = 0, 2
    cam = sc.get_method(method)(model, ["target"])
    with pytest.raises(RuntimeError, match="boom"):
        for _ in range(2):  # one-pass methods fail on the second call, the others inside one
            cam(x, targets=_targets([1, 2]))
    model.fuse.at = 0
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    assert model.training and model.conv.training and not model.head.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    maps = cam(x, targets=_targets([1, 2]))
    assert maps.shape == (2, 12, 12) and maps.max() == pytest.approx(1.0)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)


def test_gradient_free_and_gradient_methods_on_3d_volumes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(6, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(6, 2),
    ).eval()
    x = torch.rand(2, 1, 8, 10, 12)
    for method in ("GradCAM", "LayerCAM", "ScoreCAM", "AblationCAM", "EigenCAM"):
        with getattr(sc, method)(model, ["3"]) as cam:
            maps = cam(x, targets=_targets([0, 1]))
        assert maps.shape == (2, 8, 10, 12), method
    # Grad-CAM on a volume is the same formula: ReLU(sum_k mean(dy/dA_k) A_k), trilinear.
    with sc.GradCAM(model, ["3"]) as cam:
        capture = cam.engine.capture(x, score_fns=[sc.TargetScores(_targets([0, 1]))])
    acts, grads = capture.activations[0], capture.gradients[0][0]
    manual = torch.relu((grads.mean(dim=(2, 3, 4), keepdim=True) * acts).sum(1))
    manual = sc.engine.minmax_normalize(sc.engine.upsample(manual, (8, 10, 12)))
    with sc.GradCAM(model, ["3"]) as cam:
        np.testing.assert_allclose(cam(x, targets=_targets([0, 1])), manual.numpy(), atol=1e-6)


def test_hirescam_warns_with_eigen_smooth(zoo):
    zm = zoo("resnet18")
    with pytest.warns(UserWarning, match="faithfulness"):
        sc.HiResCAM(zm.model, ["layer4"])(zm.inputs[:1], eigen_smooth=True)


def test_unsupported_options_fail_clearly():
    model = DeadChannels().eval()
    with pytest.raises(ValueError, match="detach=False"):
        sc.GradCAM(model, ["target"], detach=False)
    with pytest.raises(ValueError, match="needs gradients"):
        sc.GradCAM(model, ["target"], uses_gradients=False)
    with pytest.raises(ValueError, match="batch_size"):
        sc.ScoreCAM(model, ["target"], batch_size=0)
    with pytest.raises(ValueError, match="targets"):
        sc.GradCAM(model, ["target"])(torch.rand(3, 3, 8, 8), targets=_targets([0, 1]))
