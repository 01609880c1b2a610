"""The engine's contract: correct maps, the model left untouched, hooks never left behind."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, vgg11, vgg11_bn

import shortcut_detect.cam as sc
from shortcut_detect import GradCAMHeatmapGenerator
from shortcut_detect.cam.engine import CAMEngine, minmax_normalize, prepare_inputs, upsample
from shortcut_detect.cam.layers import default_layer, resolve_layer
from shortcut_detect.common.device import DeviceUnavailableError
from shortcut_detect.data.synthetic import SmallCNN, make_shortcut_dataset, train_classifier
from shortcut_detect.embeddings import EmbeddingExtractor
from shortcut_detect.gradcam import compute_gradcam, get_activation_maps, get_top_predictions


class FixedFeatureModel(nn.Module):
    """``features`` passes the input through; the head is avg-pool + linear."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def reference_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes) -> np.ndarray:
    """A straightforward Grad-CAM: full graph, gradient of the layer output, then the formula."""
    store = {}

    def hook(_m, _i, out):
        store["act"] = out

    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        out = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    act = store["act"]
    score = out[torch.arange(len(classes)), torch.as_tensor(classes)].sum()
    (grad,) = torch.autograd.grad(score, act)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.reshape(cam.shape[0], -1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).reshape(cam.shape).detach().numpy()


def calibrate_bn(model: nn.Module, shape, batches: int = 3) -> nn.Module:
    """Random deep nets need BatchNorm statistics from data, else activations vanish."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape))
    return model.eval()


def test_formula_on_fixed_feature_map():
    torch.manual_seed(0)
    weight = torch.randn(3, 4)
    model = FixedFeatureModel(weight)
    x = torch.rand(2, 4, 5, 6)
    gen = GradCAMHeatmapGenerator(model, "features")
    explanation = gen.explain(x, [("logits", [2, 0])])[0]
    # dy_c/dA_k = W[c, k] / (H W) everywhere, so alpha_k = W[c, k] / (H W).
    expected = []
    for sample, cls in zip(x.numpy(), [2, 0]):
        alpha = weight[cls].numpy() / (5 * 6)
        expected.append(np.maximum((alpha[:, None, None] * sample).sum(0), 0))
    expected = np.stack(expected)
    np.testing.assert_allclose(explanation.raw_heatmaps, expected, rtol=1e-5, atol=1e-7)
    scaled = np.stack(
        [(m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m * 0 for m in expected]
    )
    np.testing.assert_allclose(explanation.heatmaps, scaled, atol=1e-6)


def test_all_zero_map_stays_zero_not_nan():
    weight = -torch.ones(2, 3)  # every channel pushes class scores down: ReLU kills the map
    model = FixedFeatureModel(weight)
    heatmaps = GradCAMHeatmapGenerator(model, "features").generate_heatmap(torch.rand(2, 3, 4, 4))
    assert heatmaps.dtype == np.float32
    assert not np.isnan(heatmaps).any()
    assert np.all(heatmaps == 0)


@pytest.mark.parametrize(
    ("builder", "layer"),
    [
        (lambda: resnet18(num_classes=10), "layer4"),
        (lambda: vgg11_bn(num_classes=10), "features.27"),
    ],
)
def test_matches_reference_on_torchvision(builder, layer):
    torch.manual_seed(0)
    model = calibrate_bn(builder(), (4, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    classes = [3, 7]
    _, module = resolve_layer(model, layer)
    expected = reference_gradcam(model, module, x, classes)
    got = GradCAMHeatmapGenerator(model, layer).generate_heatmap(x, target_index=classes)
    assert got.shape == (2, 64, 64)
    assert np.isfinite(expected).all(), "reference maps should not be constant here"
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("layer", ["layer4.1.bn1", "layer4.0.bn2", "layer3"])
def test_inplace_ops_after_target_match_out_of_place_model(layer, relu_out_of_place):
    torch.manual_seed(1)
    model = calibrate_bn(resnet18(num_classes=5), (4, 3, 64, 64))
    reference = relu_out_of_place(model)
    x = torch.randn(2, 3, 64, 64)
    got = GradCAMHeatmapGenerator(model, layer).explain(x, [("logits", 1)])[0]
    want = GradCAMHeatmapGenerator(reference, layer).explain(x, [("logits", 1)])[0]
    # bn2's output is summed into the residual in place (out += identity): its raw map must
    # still be bn2's own output, not the sum.
    np.testing.assert_allclose(got.raw_heatmaps, want.raw_heatmaps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.heatmaps, want.heatmaps, atol=1e-5)
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())


def test_inplace_relu_directly_after_target_small_cnn(shortcut_model, test_data, relu_out_of_place):
    x = torch.from_numpy(test_data.images[:4])
    for layer in ("features.1", "features.9"):  # BatchNorms followed by ReLU(inplace=True)
        got = GradCAMHeatmapGenerator(shortcut_model, layer).explain(x)[0]
        want = GradCAMHeatmapGenerator(relu_out_of_place(shortcut_model), layer).explain(x)[0]
        np.testing.assert_allclose(got.raw_heatmaps, want.raw_heatmaps, rtol=1e-5, atol=1e-6)
        # raw maps of a pre-ReLU layer are not all non-negative activations: a post-ReLU
        # capture (the in-place bug) would make the two differ above.


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_model_left_exactly_as_it_was():
    torch.manual_seed(0)
    model = calibrate_bn(resnet18(num_classes=4), (4, 3, 32, 32))
    model.train()
    model.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = _state(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        out_before = model(x)
        model.train()
    gen = GradCAMHeatmapGenerator(model, "layer3")
    gen.generate_heatmap(x)
    gen.generate_attention_overlap(x, disease_head="logits", attribute_head="logits")
    assert model.training, "train mode must be restored"
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients"
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "weights and BN stats unchanged"
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), out_before)
    assert torch.is_grad_enabled()


def test_input_need_not_require_grad_and_is_not_modified():
    model = SmallCNN().eval()
    x = torch.rand(2, 3, 48, 48)
    copy_x = x.clone()
    GradCAMHeatmapGenerator(model, "features").generate_heatmap(x)
    assert not x.requires_grad and x.grad is None
    assert torch.equal(x, copy_x)


def test_grad_mode_restored_under_no_grad():
    model = SmallCNN().eval()
    with torch.no_grad():
        heatmaps = GradCAMHeatmapGenerator(model, "features").generate_heatmap(
            torch.rand(2, 3, 48, 48)
        )
        assert not torch.is_grad_enabled()
    assert heatmaps.shape == (2, 48, 48)


def test_hooks_removed_when_call_raises():
    model = SmallCNN().eval()
    gen = GradCAMHeatmapGenerator(model, "features")
    with pytest.raises(ValueError, match="2 classes"):
        gen.generate_heatmap(torch.rand(2, 3, 48, 48), target_index=5)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="expects 3 channels but the inputs have 5"):
        gen.generate_heatmap(torch.rand(2, 5, 48, 48))  # wrong channel count
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.is_grad_enabled()
    gen.close()
    gen.close()  # idempotent


def test_three_d_volumes():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv3d(4, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()
    x = torch.randn(2, 1, 8, 12, 12)
    explanation = GradCAMHeatmapGenerator(model, "2").explain(x, [("logits", [0, 2])])[0]
    assert explanation.heatmaps.shape == (2, 8, 12, 12)
    assert explanation.raw_heatmaps.shape == (2, 4, 6, 6)
    # reference: pooling over all three spatial axes, trilinear upsampling
    store = {}
    handle = model[2].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    out = model(x)
    handle.remove()
    act = store["a"]
    (grad,) = torch.autograd.grad(out[[0, 1], [0, 2]].sum(), act)
    cam = torch.relu((grad.mean(dim=(2, 3, 4), keepdim=True) * act).sum(1))
    np.testing.assert_allclose(explanation.raw_heatmaps, cam.detach().numpy(), rtol=1e-5, atol=1e-7)
    up = F.interpolate(cam[:, None], size=(8, 12, 12), mode="trilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(
        explanation.heatmaps, minmax_normalize(up).detach().numpy(), atol=1e-6
    )
    info = default_layer(model, x)
    assert info.name == "3"  # the ReLU after the last convolution


def test_single_channel_inputs():
    """X-ray-like one-channel images: a grayscale model trained on the shortcut data."""
    data = make_shortcut_dataset(400, shortcut_strength=1.0, seed=5)
    gray = torch.from_numpy(data.images.mean(axis=1, keepdims=True))
    torch.manual_seed(0)
    model = train_classifier(SmallCNN(in_channels=1), gray, torch.from_numpy(data.labels), epochs=3)
    heatmaps = GradCAMHeatmapGenerator(model, "features").generate_heatmap(gray[:8].numpy())
    assert heatmaps.shape == (8, 48, 48)
    assert np.allclose(heatmaps.reshape(8, -1).max(axis=1), 1.0)
    assert heatmaps.min() == 0.0


def test_input_validation_errors():
    device = torch.device("cpu")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        prepare_inputs(torch.rand(48, 48), device)
    with pytest.raises(ValueError, match="NaN or Inf"):
        prepare_inputs(torch.tensor([[[[float("nan")]]]]), device)
    with pytest.raises(TypeError, match=r"torch\.Tensor or numpy"):
        prepare_inputs([1, 2, 3], device)
    assert prepare_inputs(np.zeros((3, 8, 8), np.float32), device).shape == (1, 3, 8, 8)
    gen = GradCAMHeatmapGenerator(SmallCNN().eval(), "features")
    with pytest.raises(ValueError, match="expects 3 channels but the inputs have 1"):
        gen.generate_heatmap(torch.rand(2, 1, 48, 48))


def test_device_rule_is_the_packages_one(monkeypatch):
    """An explicit CUDA device where there is none is an error everywhere; no device means
    the model's own device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 48, 48)
    constructors = {
        "GradCAMHeatmapGenerator": lambda: GradCAMHeatmapGenerator(
            model, "features", device="cuda"
        ),
        "CAMEngine": lambda: sc.CAMEngine(model, ["features"], device="cuda"),
        "GradCAM": lambda: sc.GradCAM(model, ["features"], device="cuda"),
        "GuidedBackpropReLUModel": lambda: sc.GuidedBackpropReLUModel(model, device="cuda"),
        "EmbeddingExtractor": lambda: EmbeddingExtractor(model, device="cuda"),
        "compute_gradcam": lambda: compute_gradcam(model, "cuda", x[0], "features"),
        "get_top_predictions": lambda: get_top_predictions(model, "cuda:0", x[0], None),
        "get_activation_maps": lambda: get_activation_maps(model, "cuda", x[0], "features"),
        "confidence_change": lambda: sc.confidence_change(
            model, x, np.ones((1, 48, 48)), device="cuda"
        ),
    }
    for name, construct in constructors.items():
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            construct()
        assert all(p.device.type == "cpu" for p in model.parameters()), name
    with pytest.raises(DeviceUnavailableError, match="unknown device 'gpu'"):
        GradCAMHeatmapGenerator(model, "features", device="gpu")
    assert GradCAMHeatmapGenerator(model, "features").device == torch.device("cpu")
    assert GradCAMHeatmapGenerator(model, "features", device="cpu").device.type == "cpu"


def test_layer_paths_and_errors():
    model = resnet18()
    assert resolve_layer(model, "layer4.1.conv2")[1] is model.layer4[1].conv2
    assert resolve_layer(model, "layer4[-1]")[1] is model.layer4[1]
    assert resolve_layer(model, model.layer3)[0] == "layer3"
    with pytest.raises(ValueError, match="layer4"):
        resolve_layer(model, "layer5")
    with pytest.raises(ValueError, match="not a sub-module"):
        resolve_layer(model, nn.Conv2d(1, 1, 1))
    vgg = vgg11()
    assert resolve_layer(vgg, "features.19")[1] is vgg.features[19]


def test_default_layer_is_chosen_and_announced():
    model = resnet18(num_classes=3).eval()
    assert default_layer(model, torch.rand(1, 3, 64, 64)).name == "layer4"
    assert default_layer(vgg11(num_classes=3).eval(), torch.rand(1, 3, 64, 64)).name == "features"
    gen = GradCAMHeatmapGenerator(model)
    with pytest.warns(UserWarning, match="'layer4'"):
        heatmap = gen.generate(torch.rand(3, 64, 64))
    assert gen.target_layer is model.layer4 and heatmap.shape == (64, 64)


def test_layer_that_does_not_run_is_reported():
    model = SmallCNN().eval()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(RuntimeError, match="did not run"):
        GradCAMHeatmapGenerator(model, "unused").generate_heatmap(torch.rand(1, 3, 48, 48))


def test_non_spatial_layer_needs_reshape_transform():
    model = SmallCNN().eval()
    with pytest.raises(ValueError, match="reshape_transform"):
        GradCAMHeatmapGenerator(model, "classifier").generate_heatmap(torch.rand(1, 3, 48, 48))


def test_engine_gradients_only_for_activation():
    model = SmallCNN().eval()
    engine = CAMEngine(model, ["features.4", "features"])
    x = torch.rand(2, 3, 48, 48)
    capture = engine.capture(x, [lambda out: out[:, 0], lambda out: out[:, 1]])
    assert len(capture.gradients) == 2 and len(capture.gradients[0]) == 2
    # gradient of (score0 + score1) is the sum of the two, taken from one forward pass
    both = engine.capture(x, [lambda out: out[:, 0] + out[:, 1]])
    np.testing.assert_allclose(
        (capture.gradients[0][1] + capture.gradients[1][1]).numpy(),
        both.gradients[0][1].numpy(),
        rtol=1e-5,
        atol=1e-7,
    )
    assert all(p.grad is None for p in model.parameters())


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import resource

    return pages * resource.getpagesize() / 2**20


def _live_tensors() -> int:
    gc.collect()
    count = 0
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj):
                count += 1
        except Exception:
            pass
    return count


def test_memory_flat_over_many_calls_and_generators():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 48, 48)  # one sample: tiny ops, no intra-op threading noise
    gen = GradCAMHeatmapGenerator(model, "features")
    for _ in range(50):
        gen.generate_heatmap(x)
    tensors, rss = _live_tensors(), _rss_mb()
    for _ in range(1000):
        gen.generate_heatmap(x)
    assert _live_tensors() - tensors <= 2
    assert _rss_mb() - rss < 30
    gen.close()
    tensors, rss = _live_tensors(), _rss_mb()
    for _ in range(200):
        with GradCAMHeatmapGenerator(model, "features") as other:
            other.generate_heatmap(x)
    assert _live_tensors() - tensors <= 2
    assert _rss_mb() - rss < 30
    assert all(not m._forward_hooks for m in model.modules())


def test_upsample_and_normalise_helpers():
    cams = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    normalised = minmax_normalize(cams)
    assert normalised[0].max() == 1 and normalised[0].min() == 0
    assert torch.all(normalised[1] == 0)
    assert upsample(cams, (4, 4)).shape == (2, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert upsample(cams, (2, 2)) is cams
