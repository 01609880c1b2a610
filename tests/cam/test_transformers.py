"""Reshape transforms for ViT and Swin; transformer layers without one get a clear error."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import shortcut_detect.cam as sc
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


def _tokens(batch, prefix, height, width, channels=6):
    """Tokens whose patch values encode (row, column, channel) for checking the layout."""
    rows = torch.arange(height).reshape(height, 1, 1).expand(height, width, channels)
    cols = torch.arange(width).reshape(1, width, 1).expand(height, width, channels)
    chans = torch.arange(channels).reshape(1, 1, channels).expand(height, width, channels)
    patches = (rows * 10000 + cols * 100 + chans).reshape(1, height * width, channels).float()
    prefix_tokens = torch.full((1, prefix, channels), -1.0)
    return torch.cat([prefix_tokens, patches], dim=1).expand(batch, -1, -1)


def _expected_grid(batch, height, width, channels=6):
    rows = torch.arange(height).reshape(1, height, 1)
    cols = torch.arange(width).reshape(1, 1, width)
    chans = torch.arange(channels).reshape(channels, 1, 1)
    return (rows * 10000 + cols * 100 + chans).float().expand(batch, channels, height, width)


@pytest.mark.parametrize(
    ("prefix", "height", "width", "kwargs"),
    [
        (1, 4, 4, {}),  # class token (torchvision, timm)
        (0, 3, 3, {}),  # no class token
        (5, 4, 4, {}),  # class + 4 register tokens
        (2, 2, 2, {"num_prefix_tokens": 2}),
        (1, 3, 5, {"height": 3, "width": 5}),  # rectangular grid
        (1, 3, 5, {"height": 3}),
    ],
)
def test_vit_reshape_transform_drops_prefix_tokens(prefix, height, width, kwargs):
    result = sc.vit_reshape_transform(_tokens(2, prefix, height, width), **kwargs)
    assert torch.equal(result, _expected_grid(2, height, width))


def test_reshape_transform_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="height=, width="):
        sc.vit_reshape_transform(torch.zeros(1, 15, 4))  # no prefix count leaves a square
    with pytest.raises(ValueError, match="swin_reshape_transform"):
        sc.vit_reshape_transform(torch.zeros(1, 4, 4, 8))
    grid = torch.arange(2 * 3 * 3 * 4.0).reshape(2, 3, 3, 4)
    assert torch.equal(sc.swin_reshape_transform(grid), grid.permute(0, 3, 1, 2))
    tokens = grid.reshape(2, 9, 4)
    assert torch.equal(sc.swin_reshape_transform(tokens), grid.permute(0, 3, 1, 2))


def test_token_layer_without_transform_names_the_transform(zoo):
    zm = zoo("vit_b_16")
    with pytest.raises(ValueError, match="vit_reshape_transform"):
        sc.GradCAM(zm.model, [zm.layer(zm.model)])(zm.inputs[:1])
    with pytest.raises(ValueError, match="vit_reshape_transform"):
        GradCAMHeatmapGenerator(zm.model, "encoder.layers[-1].ln_1").generate_heatmap(zm.inputs[:1])


def test_swin_t_matches_pytorch_grad_cam_and_needs_its_transform(zoo, pgc, oracle_target):
    zm = zoo("swin_t")
    model, oracle = zm.model, zm.oracle()
    with pytest.raises(ValueError, match="swin_reshape_transform"):
        sc.GradCAM(model, [zm.layer(model)])(zm.inputs[:1])
    for method in ("GradCAM", "LayerCAM"):
        with getattr(sc, method)(
            model, [zm.layer(model)], reshape_transform=sc.swin_reshape_transform
        ) as cam:
            ours = cam(zm.inputs, targets=[sc.ClassifierOutputTarget(t) for t in zm.targets])
        with getattr(pgc, method)(
            oracle, [zm.layer(oracle)], reshape_transform=sc.swin_reshape_transform
        ) as cam:
            reference = cam(zm.inputs, targets=[oracle_target(t) for t in zm.targets])
        assert ours.max() == pytest.approx(1.0)
        assert np.abs(ours - reference).max() <= 1e-3, method


@pytest.mark.parametrize("image_size", [(64, 64), (48, 80)])
def test_timm_vit_with_register_tokens(image_size, pgc, oracle_target):
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=image_size,
        patch_size=16,
        embed_dim=48,
        depth=2,
        num_heads=3,
        reg_tokens=4,
        num_classes=10,
    ).eval()
    assert model.num_prefix_tokens == 5 and timm is not None
    rows, columns = image_size[0] // 16, image_size[1] // 16
    x = torch.randn(2, 3, *image_size)
    explicit = functools.partial(
        sc.vit_reshape_transform, height=rows, width=columns, num_prefix_tokens=5
    )
    targets = [3, 7]
    with sc.GradCAM(model, ["blocks[-1].norm1"], reshape_transform=sc.vit_reshape_transform) as c:
        inferred = c(x, targets=[sc.ClassifierOutputTarget(t) for t in targets])
    with sc.GradCAM(model, ["blocks[-1].norm1"], reshape_transform=explicit) as cam:
        given = cam(x, targets=[sc.ClassifierOutputTarget(t) for t in targets])
    with pgc.GradCAM(model, [model.blocks[-1].norm1], reshape_transform=explicit) as cam:
        reference = cam(x, targets=[oracle_target(t) for t in targets])
    np.testing.assert_array_equal(inferred, given)
    assert inferred.shape == (2, *image_size)
    assert np.abs(given - reference).max() <= 1e-3
    assert given.max() == pytest.approx(1.0)
