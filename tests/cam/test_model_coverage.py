"""Issue #15: models people explain, without wrappers (random weights, no downloads).

Detection (torchvision Faster R-CNN), Hugging Face-style outputs, torchvision ViT and
Swin, timm models, and ``aug_smooth`` with user test-time transforms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import shortcut_detect.cam as sc

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils import model_targets as oracle_targets  # noqa: E402
from pytorch_grad_cam.utils import reshape_transforms as oracle_reshape  # noqa: E402

TOLERANCE = 1e-3


# -- Faster R-CNN ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128, box_score_thresh=0.0
    )
    return model.eval()


def test_fasterrcnn_reshape_transform_matches_pytorch_grad_cam(detector):
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = detector.backbone(images)
    ours = sc.fasterrcnn_reshape_transform(features)
    torch.testing.assert_close(ours, oracle_reshape.fasterrcnn_reshape_transform(features))
    channels = sum(level.shape[1] for level in features.values())
    assert ours.shape == (2, channels, *features["pool"].shape[2:])
    assert bool((ours >= 0).all())
    with pytest.raises(ValueError, match="dict of feature maps"):
        sc.fasterrcnn_reshape_transform(features["pool"])


def test_eigencam_on_faster_rcnn_matches_pytorch_grad_cam(detector, monkeypatch):
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        detections = detector(image)[0]
    boxes, labels = detections["boxes"][:3].numpy(), detections["labels"][:3].tolist()
    ours_target = sc.FasterRCNNBoxScoreTarget(labels, boxes)
    oracle_target = oracle_targets.FasterRCNNBoxScoreTarget(labels, boxes)
    # the target on the model's own detections: each box matches itself (IoU 1) + its score
    expected = 3 + float(detections["scores"][:3].sum())
    assert float(ours_target(detections)) == pytest.approx(expected, abs=1e-4)
    assert float(ours_target(detections)) == pytest.approx(float(oracle_target(detections)))

    with sc.EigenCAM(detector, [detector.backbone], sc.fasterrcnn_reshape_transform) as cam:
        mine = cam(image, [ours_target])
    assert mine.shape == (1, 128, 128)
    reference = pgc.EigenCAM(
        detector, [detector.backbone], reshape_transform=oracle_reshape.fasterrcnn_reshape_transform
    )
    theirs = reference(image, [oracle_target])
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    # pytorch-grad-cam keeps LAPACK's sign of the principal component; ours is fixed
    monkeypatch.setattr(
        "pytorch_grad_cam.eigen_cam.get_2d_projection", lambda a: -get_2d_projection(a)
    )
    flipped = reference(image, [oracle_target])
    assert min(np.abs(mine - r).max() for r in (theirs, flipped)) <= TOLERANCE
    assert mine.max() == pytest.approx(1.0)


def test_detection_models_need_targets_and_a_gradient_free_method(detector):
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    cam = sc.EigenCAM(detector, [detector.backbone], sc.fasterrcnn_reshape_transform)
    with pytest.raises(TypeError, match="one output per image"):
        cam(image)
    target = sc.FasterRCNNBoxScoreTarget([1], [[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(TypeError, match="gradient-free method"):
        sc.GradCAM(detector, [detector.backbone], sc.fasterrcnn_reshape_transform)(image, [target])


# -- Hugging Face-style outputs ----------------------------------------------------------
class _Output:
    """Like a transformers ``ImageClassifierOutput``: an object with ``.logits``."""

    def __init__(self, logits: torch.Tensor, hidden: torch.Tensor) -> None:
        self.logits = logits
        self.hidden_states = hidden


class _Classifier(nn.Module):
    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        hidden = self.features(x)
        logits = self.head(hidden)
        if self.style == "object":
            return _Output(logits, hidden)
        if self.style == "dict":
            return {"hidden_states": hidden, "logits": logits}
        if self.style == "tuple":
            return (logits, hidden)
        return logits


@pytest.mark.parametrize("style", ["object", "dict", "tuple"])
@pytest.mark.parametrize("method", [sc.GradCAM, sc.ScoreCAM, sc.GradCAMPlusPlus])
def test_hugging_face_style_outputs_need_no_wrapper(style, method):
    plain, wrapped = _Classifier("tensor").eval(), _Classifier(style).eval()
    inputs = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    targets = [sc.ClassifierOutputTarget(1), sc.ClassifierOutputTarget(4)]
    expected = method(plain, ["features"])(inputs, targets)
    with method(wrapped, ["features"]) as cam:
        np.testing.assert_allclose(cam(inputs, targets), expected, atol=1e-6)
        predicted = method(plain, ["features"])(inputs)  # targets=None: the arg-max class
        np.testing.assert_allclose(cam(inputs), predicted, atol=1e-6)
    assert np.abs(expected).max() > 0


NEWER_METHODS = {
    "SmoothGradCAMpp": (sc.SmoothGradCAMpp, {}),
    "SSCAM": (sc.SSCAM, {"num_samples": 3}),
    "ISCAM": (sc.ISCAM, {"num_samples": 3}),
    "ShapleyCAM": (sc.ShapleyCAM, {}),
    "SegEigenCAM": (sc.SegEigenCAM, {}),
}


@pytest.mark.parametrize("style", ["object", "dict", "tuple"])
@pytest.mark.parametrize("name", list(NEWER_METHODS))
def test_newer_methods_read_hugging_face_style_outputs(style, name):
    method, kwargs = NEWER_METHODS[name]
    plain, wrapped = _Classifier("tensor").eval(), _Classifier(style).eval()
    inputs = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    targets = [sc.ClassifierOutputTarget(1), sc.ClassifierOutputTarget(4)]
    torch.manual_seed(3)  # the noise of the stochastic methods
    expected = method(plain, ["features"], **kwargs)(inputs, targets)
    torch.manual_seed(3)
    with method(wrapped, ["features"], **kwargs) as cam:
        np.testing.assert_allclose(cam(inputs, targets), expected, atol=1e-5)
    assert np.abs(expected).max() > 0


def test_outputs_without_class_scores_are_refused():
    class Detections(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return [{"boxes": self.features(x).mean()}]

    with pytest.raises(TypeError, match="without class scores"):
        sc.GradCAM(Detections(), ["features"])(torch.randn(1, 3, 8, 8))


# -- timm -------------------------------------------------------------------------------
TIMM_MODELS = {
    "vit_tiny_patch16_224": ("blocks.-1.norm1", sc.vit_reshape_transform, {"img_size": 64}),
    "deit_tiny_patch16_224": ("blocks.-1.norm1", sc.vit_reshape_transform, {"img_size": 64}),
    "convnext_atto": ("stages.-1", None, {}),
    "efficientnet_b0": ("conv_head", None, {}),
}


@pytest.mark.parametrize("name", list(TIMM_MODELS))
def test_timm_models_match_pytorch_grad_cam(name, calibrate_model):
    timm = pytest.importorskip("timm")
    path, transform, kwargs = TIMM_MODELS[name]
    torch.manual_seed(0)
    model = calibrate_model(timm.create_model(name, pretrained=False, num_classes=10, **kwargs))
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layer = model
    for part in path.split("."):
        layer = layer[int(part)] if part.lstrip("-").isdigit() else getattr(layer, part)
    targets = [3, 7]
    with sc.GradCAM(model, [layer], reshape_transform=transform) as cam:
        mine = cam(inputs, [sc.ClassifierOutputTarget(t) for t in targets])
    theirs = pgc.GradCAM(model, [layer], reshape_transform=transform)(
        inputs, [oracle_targets.ClassifierOutputTarget(t) for t in targets]
    )
    assert mine.shape == (2, 64, 64)
    assert np.abs(mine - theirs).max() <= TOLERANCE
    assert mine.max() == pytest.approx(1.0)


# -- aug_smooth with user transforms -----------------------------------------------------------
def test_aug_smooth_with_user_tta_transforms(zoo):
    tta = pytest.importorskip("ttach")
    zm = zoo("resnet18")
    transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.8, 1.2])])
    targets = [sc.ClassifierOutputTarget(t) for t in zm.targets]
    cam = sc.GradCAM(zm.model, [zm.layer(zm.model)], tta_transforms=transforms)
    smoothed = cam(zm.inputs, targets, aug_smooth=True)
    # the formula: mean over the transforms of the de-augmented map of the augmented input
    maps = []
    for transform in transforms:
        augmented = cam(transform.augment_image(zm.inputs), targets)
        maps.append(transform.deaugment_mask(torch.from_numpy(augmented)[:, None])[:, 0].numpy())
    assert len(maps) == 6  # flip (off, on) x factors (1, 0.8, 1.2): ttach adds the identity
    np.testing.assert_allclose(smoothed, np.mean(maps, axis=0), atol=1e-6)
    assert np.abs(smoothed - cam(zm.inputs, targets)).max() > 1e-3  # augmentation mattered
    oracle = zm.oracle()
    reference = pgc.GradCAM(oracle, [zm.layer(oracle)])
    reference.tta_transforms = transforms  # its GradCAM does not pass the argument on
    theirs = reference(
        zm.inputs, [oracle_targets.ClassifierOutputTarget(t) for t in zm.targets], aug_smooth=True
    )
    assert np.abs(smoothed - theirs).max() <= TOLERANCE
