"""Heatmaps of the two demo models on the held-out planted-shortcut data (computed once)."""

from __future__ import annotations

import pytest
import torch

from shortcut_detect.gradcam import GradCAMHeatmapGenerator

TARGET_LAYER = "features"  # SmallCNN: 12x12 map for 48x48 input (stride 4)


def _explain(model, images):
    with GradCAMHeatmapGenerator(model, TARGET_LAYER) as gen:
        return gen.explain(torch.from_numpy(images), [("logits", None)])[0]


@pytest.fixture(scope="session")
def shortcut_explanation(shortcut_model, test_data):
    """Grad-CAM of each sample's predicted class: ``heatmaps`` 48x48, ``raw_heatmaps`` 12x12."""
    return _explain(shortcut_model, test_data.images)


@pytest.fixture(scope="session")
def clean_explanation(clean_model, test_data):
    return _explain(clean_model, test_data.images)
