"""Discovery without metadata: candidates from heatmaps, confirmed or rejected by intervention."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shortcut_detect import GradCAMHeatmapGenerator
from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.interventions import discover_candidates, find_shortcuts

FAST = {"n_bootstrap": 400, "n_permutations": 400}


@pytest.fixture(scope="module")
def images(test_data):
    return test_data.images[:150]


def _heatmaps(model, images):
    with GradCAMHeatmapGenerator(model, target_layer="features") as generator:
        return heatmaps_from_images(generator, images, batch_size=75)


def test_finds_and_confirms_the_demo_marker_without_metadata(shortcut_model, test_data, images):
    heatmaps = _heatmaps(shortcut_model, images)
    result = find_shortcuts(shortcut_model, images, heatmaps=heatmaps, **FAST)
    assert result.candidates, "no candidate found"
    assert result.confirmed
    marker = test_data.marker_mask
    assert all((test.candidate.region & marker).any() for test in result.confirmed)
    assert "relies on the top-left" in result.summary
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["n_confirmed"] == len(result.confirmed)


def test_confirms_nothing_on_the_clean_model(clean_model, images):
    result = find_shortcuts(clean_model, images, heatmaps=_heatmaps(clean_model, images), **FAST)
    assert not result.confirmed
    assert all(not test.result.relied_on for test in result.tests)


def test_hotspot_candidate_from_constructed_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((40, 24, 24)) * 0.1
    maps[:30, 2:5, 18:21] += 1.0  # 75% of maps peak in the top-right ninth
    maps[30:, 11:13, 11:13] += 1.0  # the rest in the centre
    candidates = discover_candidates(maps, use_spray=False)
    assert len(candidates) == 1
    candidate = candidates[0]
    assert candidate.source == "hotspot" and candidate.score == pytest.approx(0.75)
    assert candidate.box == (18, 2, 21, 5)
    assert "top-right" in candidate.description


def test_evenly_spread_peaks_give_no_hotspot():
    rng = np.random.default_rng(1)
    maps = rng.random((90, 24, 24))
    assert discover_candidates(maps, use_spray=False) == []


def test_group_comparison_gives_a_candidate_with_carriers():
    rng = np.random.default_rng(2)
    maps = rng.random((60, 24, 24)) * 0.2
    groups = np.arange(60) % 2
    maps[groups == 1, 20:23, 2:5] += 1.0
    candidates = discover_candidates(maps, groups=groups, use_spray=False, n_permutations=200)
    from_groups = [c for c in candidates if c.source == "group comparison"]
    assert len(from_groups) == 1 or any(c.source == "hotspot" for c in candidates)
    bottom_left = [c for c in candidates if (c.region[20:23, 2:5]).all()]
    assert bottom_left


def test_discovery_refuses_volumes():
    with pytest.raises(ValueError, match="2-D heatmaps"):
        discover_candidates(np.ones((5, 4, 4, 4)))


# -- object part or fixed pattern -------------------------------------------------------------

SIZE = 32
TOP = (slice(2, 9), slice(12, 20))  # an off-centre region at the top


def _blobs(count: int, seed: int) -> torch.Tensor:
    """Gray images of smooth random blobs: content that varies from image to image."""
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 1, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear")


def _with_marker(images: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A bright fixed square on every other image, on a dark noisy background at the top
    (where tags and markers sit: off the object)."""
    generator = torch.Generator().manual_seed(seed)
    marked = images.clone()
    top = marked[:, :, TOP[0], TOP[1]]
    marked[:, :, TOP[0], TOP[1]] = 0.1 + 0.05 * torch.randn(top.shape, generator=generator)
    carriers = np.arange(len(images)) % 2 == 0
    marked[torch.from_numpy(carriers), :, 3:7, 14:18] = 1.0
    return marked, carriers


class _RegionModel(torch.nn.Module):
    """Class 1 when the mean of the top region is above ``level``: relies on that region."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 40.0 * (x[:, :, TOP[0], TOP[1]].mean(dim=(1, 2, 3)) - self.level)
        return torch.stack([-score, score], dim=1)


def _top_maps(count: int) -> np.ndarray:
    maps = np.full((count, SIZE, SIZE), 0.05, dtype=np.float32)
    maps[:, TOP[0], TOP[1]] = 1.0
    return maps


def test_pattern_separation_tells_a_marker_from_varying_content():
    from shortcut_detect.interventions.discovery import FIXED_PATTERN, pattern_separation

    region = np.zeros((SIZE, SIZE), dtype=bool)
    region[TOP] = True
    blobs = _blobs(200, seed=0)
    marked, _ = _with_marker(blobs)
    varying = pattern_separation(blobs, region)
    fixed = pattern_separation(marked, region)
    # Over seeds 0-19 the blobs measure 2.80-3.09 and the marker 35.6-38.7.
    assert varying < 0.8 * FIXED_PATTERN
    assert fixed > 4 * FIXED_PATTERN
    assert pattern_separation(torch.zeros(20, 1, SIZE, SIZE), region) == 0.0


def test_relied_on_object_part_is_not_a_shortcut():
    images = _blobs(160, seed=1)
    level = float(images[:, :, TOP[0], TOP[1]].mean(dim=(1, 2, 3)).median())
    model = _RegionModel(level).eval()
    result = find_shortcuts(model, images, heatmaps=_top_maps(len(images)), **FAST)
    relied = [test for test in result.tests if test.result.relied_on]
    assert relied, "the model uses the region only, so removing it must matter"
    assert all(test.object_like and not test.confirmed for test in relied)
    assert not result.confirmed
    assert "part of the object" in relied[0].reading and "none is a shortcut" in result.summary
    assert json.loads(json.dumps(result.to_dict()))["tests"][0]["object_like"] is True


def test_relied_on_fixed_marker_is_a_shortcut():
    images, carriers = _with_marker(_blobs(160, seed=2))
    marker_mean = float(images[:, :, TOP[0], TOP[1]][torch.from_numpy(carriers)].mean())
    blob_mean = float(images[:, :, TOP[0], TOP[1]][torch.from_numpy(~carriers)].mean())
    model = _RegionModel((marker_mean + blob_mean) / 2).eval()
    result = find_shortcuts(model, images, heatmaps=_top_maps(len(images)), **FAST)
    assert result.confirmed and not any(test.object_like for test in result.tests)
    assert result.confirmed[0].candidate.pattern_separation > 5


def _squares(count: int, places: list[int], seed: int) -> torch.Tensor:
    """A 4-pixel bright square at one of ``places`` (columns of a strip at the top) on every
    other image, on a dark noisy background."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 + 0.02 * torch.randn(count, 1, SIZE, SIZE, generator=generator)
    where = torch.randint(0, len(places), (count,), generator=generator)
    for index in range(0, count, 2):
        column = places[int(where[index])]
        images[index, :, 3:7, column : column + 4] = 0.9
    return images


def test_pattern_consistency_tells_a_fixed_mark_from_one_that_moves():
    from shortcut_detect.interventions.discovery import (
        CONSISTENT_PATTERN,
        FIXED_PATTERN,
        pattern_consistency,
        pattern_separation,
    )

    strip = np.zeros((SIZE, SIZE), dtype=bool)
    strip[0:11, :] = True
    fixed = _squares(160, [14], seed=3)
    moving = _squares(160, [2, 10, 18, 26], seed=3)
    # Both hold a well-separated pattern: separation alone would call both a shortcut.
    assert pattern_separation(fixed, strip) > 2 * FIXED_PATTERN
    assert pattern_separation(moving, strip) > 2 * FIXED_PATTERN
    # Every window on the fixed square singles out the same images; on the moving one, each
    # of the four places singles out its own quarter of them. Over seeds 0-19: separations
    # 78-86, consistency 1.0 (fixed) and 0.26 (moving).
    assert pattern_consistency(fixed, strip) == 1.0
    assert pattern_consistency(moving, strip) < 0.5 * CONSISTENT_PATTERN
    assert pattern_consistency(torch.zeros(20, 1, SIZE, SIZE), strip) == 0.0
