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
