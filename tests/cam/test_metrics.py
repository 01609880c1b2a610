"""Faithfulness metrics: the imputation against pytorch-grad-cam's, and the metrics telling a
map of the planted shortcut (which the shortcut model uses) from its complement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_detect.cam.metrics import (
    compare_methods,
    confidence_change,
    noisy_linear_impute,
    road,
)


def test_imputation_equals_pytorch_grad_cam_without_noise(scipy, pgc):
    from pytorch_grad_cam.metrics import road as road_module

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((3, 12, 14)).astype(np.float32))
    remove = rng.random((12, 14)) < 0.4
    remove[0, :] = True  # touching the border too
    ours = noisy_linear_impute(image, remove, noise=0.0)
    reference = road_module.NoisyLinearImputer(noise=0.0)(image, torch.from_numpy(~remove).float())
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    assert torch.equal(ours[:, ~torch.from_numpy(remove)], image[:, ~torch.from_numpy(remove)])


def test_imputation_fills_a_linear_ramp_exactly_and_noise_is_seeded(scipy):
    axis = torch.arange(16, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    ramp = torch.stack([0.1 * ys + 0.05 * xs, 1 - 0.02 * xs])
    remove = np.zeros((16, 16), dtype=bool)
    remove[5:11, 4:12] = True
    filled = noisy_linear_impute(ramp, remove, noise=0.0)
    torch.testing.assert_close(filled, ramp, atol=1e-9, rtol=0)
    noisy = [
        noisy_linear_impute(ramp, remove, 0.05, torch.Generator().manual_seed(3)) for _ in range(2)
    ]
    assert torch.equal(noisy[0], noisy[1])
    residual = (noisy[0] - ramp)[:, torch.from_numpy(remove)]
    assert 0.03 < float(residual.std()) < 0.07
    with pytest.raises(ValueError, match="kept pixel"):
        noisy_linear_impute(ramp, np.ones((16, 16), dtype=bool))


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_confidence_change_formula():
    torch.manual_seed(0)
    model = Linear().eval()
    x = torch.rand(5, 3, 4, 4)
    cams = np.random.default_rng(0).random((5, 4, 4)).astype(np.float32)
    result = confidence_change(model, x, cams, targets=[0, 1, 2, 0, 1])
    with torch.no_grad():
        full = torch.softmax(model(x), 1)[torch.arange(5), torch.tensor([0, 1, 2, 0, 1])]
        masked = torch.softmax(model(x * torch.from_numpy(cams)[:, None]), 1)
        masked = masked[torch.arange(5), torch.tensor([0, 1, 2, 0, 1])]
    drop = torch.clamp(full - masked, min=0) / full
    assert result.average_drop == pytest.approx(100 * float(drop.mean()), rel=1e-6)
    assert result.increase_in_confidence == pytest.approx(
        100 * float((masked > full).double().mean())
    )
    with pytest.raises(ValueError, match="cams must be"):
        confidence_change(model, x, cams[:, :2])
    # baseline="mean": a zero map turns each image into its channel means
    flat = confidence_change(model, x, np.zeros_like(cams), targets=0, baseline="mean")
    with torch.no_grad():
        means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        expected = torch.softmax(model(means), 1)[:, 0].double().numpy()
    np.testing.assert_allclose(flat.explained, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def marker_images(test_data):
    """Images where the marker is drawn and agrees with the label, with marker-shaped maps."""
    chosen = np.flatnonzero(test_data.groups == 1)[:6]
    images = torch.from_numpy(test_data.images[chosen])
    marker = test_data.masks[chosen].astype(np.float32)
    return images, marker


def test_road_prefers_the_map_of_what_the_model_uses(shortcut_model, marker_images, scipy):
    images, marker = marker_images
    with torch.no_grad():  # the marker drives most of these predictions
        assert int((shortcut_model(images).argmax(1) == 1).sum()) >= 4
    ties = 1e-3 * np.random.default_rng(0).random(marker.shape)  # rank inside the marker
    fractions = (0.02, 0.05, 0.2)  # the marker covers ~1.6% of the image
    on_marker = road(shortcut_model, images, marker + ties, fractions=fractions)
    off_marker = road(shortcut_model, images, 1 - marker + ties, fractions=fractions)
    # Removing the marker first hurts the score more than removing everything else first.
    # Relative comparisons: the exact scores depend on the model trained on this machine.
    assert on_marker.morf_curve[0] < on_marker.lerf_curve[-1]
    assert off_marker.lerf_curve[0] < off_marker.morf_curve[-1]
    assert on_marker.combined > 0 > off_marker.combined
    assert on_marker.combined - off_marker.combined > 0.2
    assert on_marker.morf.shape == (3, 6) and on_marker.original.shape == (6,)
    # the identity map changes nothing: no drop in confidence
    unchanged = confidence_change(shortcut_model, images, np.ones_like(marker))
    assert unchanged.average_drop == pytest.approx(0.0, abs=1e-6)


def test_compare_methods_table(shortcut_model, marker_images, scipy):
    images, _ = marker_images
    rows = compare_methods(
        shortcut_model,
        "features",
        images[:3],
        methods=("gradcam", "eigencam"),
        road_fractions=(0.1, 0.5),
    )
    assert [row["method"] for row in rows] == ["GradCAM", "EigenCAM"]
    for row in rows:
        assert set(row) == {
            "method",
            "average_drop",
            "increase_in_confidence",
            "road_morf",
            "road_lerf",
            "road_combined",
        }
        assert 0 <= row["average_drop"] <= 100
        assert np.isfinite(row["road_combined"])
