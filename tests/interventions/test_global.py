"""intervene_global: reliance on an image-wide statistic, against the mirrored control."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_detect.interventions import find_global_shortcuts, intervene_global

FAST = {"n_bootstrap": 400, "n_permutations": 400}


def images_of_varied_brightness(n_samples: int = 80) -> torch.Tensor:
    """Noisy images whose overall brightness spreads from 0.3 to 0.7, with a random pattern
    (left half brighter or darker than the right half)."""
    rng = np.random.default_rng(0)
    levels = rng.uniform(0.3, 0.7, (n_samples, 1, 1, 1))
    images = levels + 0.05 * rng.normal(size=(n_samples, 1, 16, 16))
    images[:, :, :, :8] += rng.choice([-0.1, 0.1], (n_samples, 1, 1, 1))
    return torch.from_numpy(images.astype(np.float32))


class BrightnessModel(nn.Module):
    """Class 1 when the image is brighter than 0.5: a global-brightness shortcut."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logit = 20 * (images.flatten(1).mean(dim=1) - 0.5)
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


class PatternModel(nn.Module):
    """Class 1 when the left half is brighter than the right: blind to overall brightness."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logit = 20 * (images[..., :8].mean(dim=(1, 2, 3)) - images[..., 8:].mean(dim=(1, 2, 3)))
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def test_a_brightness_shortcut_is_relied_on():
    result = intervene_global(BrightnessModel(), images_of_varied_brightness(), **FAST)
    assert result.relied_on
    assert result.effect.value > 0.2 and result.effect.low > 0.1
    # Normalising flips many predictions; the same-size change away from the median flips
    # only images between the model's threshold (0.5) and the dataset median.
    assert result.flip_rate.value > 0.3
    assert result.control_flip_rate.value < 0.1
    assert result.median_level == pytest.approx(0.5, abs=0.05)
    assert "relies on image brightness" in result.summary
    assert json.loads(json.dumps(result.to_dict()))["statistic"] == "brightness"


def test_a_model_blind_to_brightness_is_not_relied_on():
    result = intervene_global(PatternModel(), images_of_varied_brightness(), **FAST)
    assert not result.relied_on
    assert abs(result.effect.value) < 1e-4
    assert "does not rely on image brightness" in result.summary


def test_global_hook_names_the_statistic_relied_on():
    results = find_global_shortcuts(BrightnessModel(), images_of_varied_brightness(), **FAST)
    flagged = {result.statistic: result.relied_on for result in results}
    # Rescaling contrast about each image's own mean keeps its brightness.
    assert flagged == {"brightness": True, "contrast": False}
    assert results[0].parameters["alpha"] == pytest.approx(0.025)


def test_bad_global_requests_are_refused():
    images = images_of_varied_brightness(10)
    with pytest.raises(ValueError, match="statistic must be one of"):
        intervene_global(BrightnessModel(), images, "sharpness")
    with pytest.raises(ValueError, match="at least 2 images"):
        intervene_global(BrightnessModel(), images[:1])
    with pytest.raises(ValueError, match="statistics is empty"):
        find_global_shortcuts(BrightnessModel(), images, statistics=[])
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        intervene_global(lambda x: x, images)
