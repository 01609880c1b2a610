"""Discovery without metadata: candidates from heatmaps, confirmed or rejected by intervention."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
