"""Image helpers equal pytorch-grad-cam's (OpenCV as oracle), and its tutorial runs unchanged."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torchvision

from shortcut_detect.cam import image as ours


def test_jet_table_equals_opencv(cv2):
    levels = np.arange(256, dtype=np.uint8).reshape(-1, 1)
    reference = cv2.applyColorMap(levels, cv2.COLORMAP_JET)[:, 0, ::-1]
    np.testing.assert_array_equal(ours.jet_lut(), reference)
    mask = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    coloured = cv2.applyColorMap(np.uint8(255 * mask), cv2.COLORMAP_JET)[..., ::-1]
    np.testing.assert_array_equal(np.uint8(ours.apply_colormap(mask) * 255 + 0.5), coloured)


@pytest.mark.parametrize("use_rgb", [True, False])
@pytest.mark.parametrize("image_weight", [0.5, 0.3, 1.0])
def test_show_cam_on_image_equals_pytorch_grad_cam(use_rgb, image_weight, pgc_image):
    rng = np.random.default_rng(1)
    img = rng.random((40, 50, 3)).astype(np.float32)
    mask = rng.random((40, 50)).astype(np.float32)
    mask[:5] = 0.0
    mask[-5:] = 1.0
    expected = pgc_image.show_cam_on_image(img, mask, use_rgb=use_rgb, image_weight=image_weight)
    result = ours.show_cam_on_image(img, mask, use_rgb=use_rgb, image_weight=image_weight)
    assert result.dtype == np.uint8 and result.shape == (40, 50, 3)
    np.testing.assert_array_equal(result, expected)
    with pytest.raises(ValueError, match="range"):
        ours.show_cam_on_image(img * 255, mask)
    with pytest.raises(ValueError, match="image_weight"):
        ours.show_cam_on_image(img, mask, image_weight=1.5)


def test_package_does_not_import_opencv():
    code = (
        "import sys; import shortcut_detect.cam, shortcut_detect.cam.image; "
        "import numpy as np; shortcut_detect.cam.show_cam_on_image("
        "np.zeros((4, 4, 3), np.float32), np.ones((4, 4)), use_rgb=True); "
        "assert 'cv2' not in sys.modules, 'cv2 imported'"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_preprocess_and_deprocess_equal_pytorch_grad_cam(pgc_image):
    rng = np.random.default_rng(2)
    for img in (rng.random((9, 7, 3)).astype(np.float32), rng.random((9, 7, 3))):
        for kwargs in ({}, {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}):
            expected = pgc_image.preprocess_image(img, **kwargs)
            result = ours.preprocess_image(img, **kwargs)
            assert result.dtype == expected.dtype and result.shape == (1, 3, 9, 7)
            torch.testing.assert_close(result, expected)
    gradients = rng.normal(size=(9, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        ours.deprocess_image(gradients), pgc_image.deprocess_image(gradients)
    )


def test_compat_module_layout():
    from shortcut_detect.cam.utils.image import show_cam_on_image
    from shortcut_detect.cam.utils.model_targets import ClassifierOutputTarget
    from shortcut_detect.cam.utils.reshape_transforms import vit_reshape_transform

    assert show_cam_on_image is ours.show_cam_on_image
    assert ClassifierOutputTarget(3)(torch.arange(5.0)) == 3
    assert vit_reshape_transform(torch.zeros(1, 17, 8)).shape == (1, 8, 4, 4)


def test_resnet50_tutorial_runs_unchanged_and_matches_pytorch_grad_cam(
    calibrate_model, cv2, pgc_image
):
    """The pytorch-grad-cam README flow, with only the import lines changed."""
    skimage_data = pytest.importorskip("skimage.data")
    import pytorch_grad_cam
    from pytorch_grad_cam.utils import model_targets as pgc_targets

    torch.manual_seed(0)
    model = calibrate_model(torchvision.models.resnet50())
    rgb_img = np.float32(cv2.resize(skimage_data.astronaut(), (224, 224))) / 255

    def tutorial(GradCAM, ClassifierOutputTarget, show_cam_on_image, preprocess_image):
        # --- the tutorial, verbatim apart from the imports above ---
        input_tensor = preprocess_image(
            rgb_img, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
        )
        target_layers = [model.layer4]
        results = []
        for targets in (None, [ClassifierOutputTarget(245)]):
            with GradCAM(model=model, target_layers=target_layers) as cam:
                grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
                grayscale_cam = grayscale_cam[0, :]
                visualization = show_cam_on_image(rgb_img, grayscale_cam, use_rgb=True)
                model_outputs = cam.outputs
            results.append((grayscale_cam, visualization, model_outputs))
        return results

    import shortcut_detect.cam as sc

    mine = tutorial(
        sc.GradCAM, sc.ClassifierOutputTarget, sc.show_cam_on_image, sc.preprocess_image
    )
    theirs = tutorial(
        pytorch_grad_cam.GradCAM,
        pgc_targets.ClassifierOutputTarget,
        pgc_image.show_cam_on_image,
        pgc_image.preprocess_image,
    )
    for (gray, vis, outputs), (gray_ref, vis_ref, outputs_ref) in zip(mine, theirs):
        assert gray.shape == (224, 224) and gray.dtype == np.float32
        assert np.abs(gray - gray_ref).max() <= 1e-3
        assert vis.shape == (224, 224, 3) and vis.dtype == np.uint8
        np.testing.assert_array_equal(vis, pgc_image.show_cam_on_image(rgb_img, gray, use_rgb=True))
        # maps 1e-4 apart can fall on either side of one of 256 colour levels
        difference = np.abs(vis.astype(int) - vis_ref.astype(int))
        assert difference.max() <= 3 and (difference > 0).mean() < 0.01
        torch.testing.assert_close(outputs, outputs_ref.detach())
    assert np.abs(mine[0][0] - mine[1][0]).max() > 0.05  # two different classes explained
