"""The planted-shortcut data and its models: the test bed for everything else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortcut_detect.data.synthetic import (
    evaluate_accuracy,
    make_shortcut_dataset,
    train_shortcut_model,
)


def test_dataset_contents_and_determinism():
    data = make_shortcut_dataset(200, shortcut_strength=0.9, seed=3)
    assert data.images.shape == (200, 3, 48, 48) and data.images.dtype == np.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert set(np.unique(data.labels)) == {0, 1} and set(np.unique(data.groups)) == {0, 1}
    assert abs(data.labels.mean() - 0.5) < 0.01
    # the mask is exactly where the marker is drawn, and nowhere when absent
    x0, y0, x1, y1 = data.marker_box
    present = data.groups == 1
    assert data.masks[present].sum(axis=(1, 2)).tolist() == [(x1 - x0) * (y1 - y0)] * present.sum()
    assert not data.masks[~present].any()
    marker = data.images[present][:, :, y0:y1, x0:x1]
    assert np.all(marker[:, 0] == 1) and np.all(marker[:, 2] == 0)
    assert data.marker_area_fraction == pytest.approx(36 / 48**2)
    again = make_shortcut_dataset(200, shortcut_strength=0.9, seed=3)
    assert np.array_equal(data.images, again.images) and np.array_equal(data.groups, again.groups)
    other = make_shortcut_dataset(200, shortcut_strength=0.9, seed=4)
    assert not np.array_equal(data.images, other.images)


@pytest.mark.parametrize(
    ("strength", "low", "high"), [(1.0, 1.0, 1.0), (0.5, 0.4, 0.6), (0.9, 0.85, 0.95)]
)
def test_shortcut_strength_controls_agreement(strength, low, high):
    data = make_shortcut_dataset(2000, shortcut_strength=strength, seed=0)
    assert low <= data.aligned.mean() <= high


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="shortcut_strength"):
        make_shortcut_dataset(10, shortcut_strength=1.5)
    with pytest.raises(ValueError, match="image_size"):
        make_shortcut_dataset(10, image_size=8)
    with pytest.raises(ValueError, match="n_samples"):
        make_shortcut_dataset(1)


def test_smallest_images_are_made_and_an_impossible_layout_is_refused():
    # 24 px with the default 6 px marker: before, a shape drawn too big for the room beside
    # the marker was redrawn forever (a hang).
    data = make_shortcut_dataset(64, image_size=24, seed=3)
    assert data.images.shape == (64, 3, 24, 24)
    assert data.masks[data.groups == 1].sum(axis=(1, 2)).tolist() == [36] * (data.groups == 1).sum()
    with pytest.raises(ValueError, match="leaves no room for the shapes in 24x24 images"):
        make_shortcut_dataset(8, image_size=24, marker_size=6, marker_offset=8)


def test_training_is_deterministic_from_seed():
    data = make_shortcut_dataset(256, seed=9)
    first, _ = train_shortcut_model(data, epochs=1, seed=2)
    second, _ = train_shortcut_model(data, epochs=1, seed=2)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_shortcut_model_uses_the_marker(shortcut_model, test_data):
    aligned = test_data.aligned
    acc_aligned = evaluate_accuracy(
        shortcut_model, test_data.images[aligned], test_data.labels[aligned]
    )
    acc_conflict = evaluate_accuracy(
        shortcut_model, test_data.images[~aligned], test_data.labels[~aligned]
    )
    assert acc_aligned > 0.9
    assert acc_conflict < 0.5, "accuracy must drop sharply where marker and label disagree"


def test_clean_model_does_not_use_the_marker(clean_model, test_data):
    aligned = test_data.aligned
    acc_aligned = evaluate_accuracy(
        clean_model, test_data.images[aligned], test_data.labels[aligned]
    )
    acc_conflict = evaluate_accuracy(
        clean_model, test_data.images[~aligned], test_data.labels[~aligned]
    )
    assert acc_aligned > 0.75 and acc_conflict > 0.75
    assert abs(acc_aligned - acc_conflict) < 0.1
