"""Activation grids: the strongest channels of a layer, raw and upsampled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortcut_detect.analysis.activations import activation_grid
from shortcut_detect.viz_embeddings import plot_activation_grid


def _layer_output(model, image, module):
    captured = {}
    handle = module.register_forward_hook(lambda _m, _i, out: captured.update(out=out.clone()))
    try:
        with torch.inference_mode():
            model(torch.from_numpy(image)[None])
    finally:
        handle.remove()
    return captured["out"][0].numpy()


def test_grid_holds_the_strongest_channels_of_the_layer(shortcut_model, test_data):
    image = test_data.images[0]
    grid = activation_grid(shortcut_model, image, "features.4", top_k=5)
    reference = _layer_output(shortcut_model, image, shortcut_model.features[4])  # (32, 24, 24)
    means = reference.reshape(32, -1).mean(axis=1)
    np.testing.assert_array_equal(grid.channels, np.argsort(-means, kind="stable")[:5])
    np.testing.assert_allclose(grid.channel_means, np.sort(means)[::-1][:5], rtol=1e-5)
    assert grid.layer == "features.4" and grid.layer_shape == (32, 24, 24)
    assert grid.maps.shape == (5, 48, 48)
    # bilinear x2 upsampling keeps the mean of each channel's map closely
    np.testing.assert_allclose(grid.maps.mean(axis=(1, 2)), grid.channel_means, rtol=0.05)
    np.testing.assert_allclose(grid.mean_map, grid.maps.mean(axis=0), rtol=1e-6)
    scaled = grid.normalized()
    assert scaled.max() == pytest.approx(1.0) and scaled.min() >= 0.0


def test_default_layer_is_the_last_spatial_one_and_top_k_is_capped(shortcut_model, test_data):
    grid = activation_grid(shortcut_model, test_data.images[0], top_k=500)
    assert grid.layer == "features"
    assert len(grid.channels) == 64 and grid.maps.shape == (64, 48, 48)
    assert grid.to_dict()["layer_shape"] == [64, 12, 12]


def test_modes_are_restored_and_bad_input_refused(test_data):
    from shortcut_detect.data.synthetic import SmallCNN

    model = SmallCNN().train()
    activation_grid(model, test_data.images[0], "features.2", top_k=2)
    assert all(module.training for module in model.modules())
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        activation_grid(model, test_data.images[0], top_k=0)
    with pytest.raises(ValueError, match="takes one image, got a batch of 2"):
        activation_grid(model, test_data.images[:2])


def test_plot_shows_image_gradcam_mean_and_each_channel(shortcut_model, test_data, tmp_path):
    image = test_data.images[0]
    grid = activation_grid(shortcut_model, image, "features", top_k=6)
    figure = plot_activation_grid(
        grid, image, heatmap=np.zeros((48, 48)), columns=3, save_path=tmp_path / "grid.png"
    )
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles[:3] == ["Image", "Grad-CAM", "Mean of top 6"]
    assert titles[3:] == [f"ch {c}: {m:.3g}" for c, m in zip(grid.channels, grid.channel_means)]
    assert (tmp_path / "grid.png").stat().st_size > 0
