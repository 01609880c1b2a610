"""Session-wide fixtures: the trained demo models and held-out synthetic data.

Models are trained once (about 10 s each on 2 CPU cores) and cached under ``.cache/`` in
the repository (or ``$SHORTCUT_DETECT_CACHE``), so every test module shares them.
"""

from __future__ import annotations

import os
from pathlib import Path

# As `import shortcut_detect` does when it loads torch first (pytest may import torch earlier).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from shortcut_detect.gradcam import GradCAMHeatmapGenerator

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SHORTCUT_DETECT_CACHE", str(REPO / ".cache"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def demo_models():
    from shortcut_detect.data.demo import load_demo_models

    return load_demo_models()


@pytest.fixture(scope="session")
def shortcut_model(demo_models):
    """SmallCNN trained where the corner marker agrees with the label 95% of the time."""
    return demo_models.shortcut_model


@pytest.fixture(scope="session")
def clean_model(demo_models):
    """SmallCNN trained where the marker carries no label information."""
    return demo_models.clean_model


@pytest.fixture(scope="session")
def test_data():
    """400 held-out images, marker independent of the label (strength 0.5)."""
    from shortcut_detect.data.demo import make_demo_test_set

    return make_demo_test_set(400, seed=1234)


DEMO_TARGET_LAYER = "features"  # SmallCNN: 12x12 map for 48x48 input (stride 4)


def _explain_demo(model, images):
    with GradCAMHeatmapGenerator(model, DEMO_TARGET_LAYER) as gen:
        return gen.explain(torch.from_numpy(images), [("logits", None)])[0]


@pytest.fixture(scope="session")
def shortcut_explanation(shortcut_model, test_data):
    """Grad-CAM of each held-out sample's predicted class by the shortcut model:
    ``heatmaps`` 48x48, ``raw_heatmaps`` 12x12."""
    return _explain_demo(shortcut_model, test_data.images)


@pytest.fixture(scope="session")
def clean_explanation(clean_model, test_data):
    """As ``shortcut_explanation``, for the clean model."""
    return _explain_demo(clean_model, test_data.images)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def bright_voxel_model_file(tmp_path_factory):
    """A tiny 3-D model saved whole (load it with ``trust_pickle=True``): its evidence is the
    voxels above 0.6 of the window, so on the synthetic NIfTI set with window 250,700 its
    heatmap peaks in the marker cube (white) and class 1 is the marker's."""
    from torch import nn

    conv, head = nn.Conv3d(1, 1, 1), nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.fill_(-0.6)
        head.weight.copy_(torch.tensor([[-100.0], [100.0]]))
        head.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), head).eval()
    path = tmp_path_factory.mktemp("bright_voxel_model") / "model.pt"
    torch.save(model, path)
    return path
