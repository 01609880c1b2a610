"""A salient marker the model does not use: attention alone says shortcut, intervention says no."""

from __future__ import annotations

import numpy as np
import pytest

from shortcut_detect.data.scenarios import load_scenario
from shortcut_detect.interventions import intervene


@pytest.fixture(scope="module")
def salient_scenario():
    # Trained in seconds (cached): a bright marker on half the training images, independent
    # of the label, so the model has no reason to use it.
    return load_scenario("shapes", "salient_unused", seed=0, n_test=150)


def contrast_maps(images: np.ndarray) -> np.ndarray:
    """A bottom-up salience map: each pixel's distance from the image's median colour."""
    median = np.median(images.reshape(*images.shape[:2], -1), axis=2)
    return np.abs(images - median[:, :, None, None]).sum(axis=1)


def test_salient_but_unused_marker_is_not_a_shortcut(salient_scenario):
    scenario = salient_scenario
    result = intervene(
        scenario.model,
        scenario.images,
        scenario.masks,
        carriers=scenario.carriers,
        heatmaps=contrast_maps(scenario.images),
        n_bootstrap=500,
        n_permutations=500,
    )
    # Attention alone would call it a shortcut: far more attention than the marker's area.
    assert result.attention is not None and result.attention.enrichment >= 3.0
    assert result.salient
    # The intervention shows the model does not use it.
    assert not result.relied_on
    assert abs(result.effect.value) < 0.1
    assert result.reading == "salient but not relied on"


def test_the_same_marker_is_relied_on_when_it_predicts_the_label():
    scenario = load_scenario("shapes", "fixed_marker", seed=0, n_test=150)
    result = intervene(
        scenario.model,
        scenario.images,
        scenario.masks,
        carriers=scenario.carriers,
        heatmaps=contrast_maps(scenario.images),
        n_bootstrap=500,
        n_permutations=500,
    )
    assert result.reading == "relied on" and result.relied_on
    # Scenario models also learn the shapes, so removal alone may move little; reliance must be
    # shown by removal or by transplant, with an interval above zero.
    evidence = [result.effect]
    if result.transplant is not None:
        evidence.append(result.transplant.effect)
    assert max(estimate.low for estimate in evidence) > 0
