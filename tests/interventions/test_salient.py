"""A salient marker the model does not use: attention alone says shortcut, intervention says no."""

from __future__ import annotations

import pytest

from shortcut_detect import GradCAMHeatmapGenerator
from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.data.scenarios import load_scenario
from shortcut_detect.interventions import intervene


@pytest.fixture(scope="module")
def salient_scenario():
    # Trained in seconds (cached): a bright marker on half the images, independent of the label.
    return load_scenario("shapes", "salient_unused", seed=0, n_test=150)


def test_salient_but_unused_marker_is_not_a_shortcut(salient_scenario):
    scenario = salient_scenario
    with GradCAMHeatmapGenerator(scenario.model, target_layer="features") as generator:
        heatmaps = heatmaps_from_images(generator, scenario.images, batch_size=75)
    result = intervene(
        scenario.model,
        scenario.images,
        scenario.masks,
        carriers=scenario.carriers,
        heatmaps=heatmaps,
        n_bootstrap=500,
        n_permutations=500,
    )
    # Attention alone would call it a shortcut: far more attention than the marker's area.
    assert result.attention is not None and result.attention.enrichment >= 2.0
    assert result.salient
    assert not result.relied_on
    assert result.reading == "salient but not relied on"
    assert abs(result.effect.value) < 0.1
