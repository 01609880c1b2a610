"""Every detector follows scikit-learn's contract: parameters stored as given in ``__init__``,
checked in ``fit``, ``get_params`` / ``set_params``, so ``sklearn.base.clone`` works."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from shortcut_detect.detectors.base import BaseDetector
from shortcut_detect.detectors.geometric import GeometricDetector
from shortcut_detect.detectors.hbac import HBACDetector
from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector
from shortcut_detect.detectors.probe import ProbeDetector
from shortcut_detect.detectors.shortcut_detector import ShortcutDetector
from shortcut_detect.detectors.spray import SpRAyDetector
from shortcut_detect.detectors.statistical import StatisticalDetector

# Non-default settings, some of them in a form the detector normalises (a list, an int).
SETTINGS = [
    (ProbeDetector, {"model": "linear", "ridge": [0.1, 1], "n_permutations": 150, "C": 2}),
    (StatisticalDetector, {"test": "nonparametric", "fdr": 0.1, "thresholds": [0.4, 0.9]}),
    (HBACDetector, {"max_depth": 2, "min_cluster_size": 8, "thresholds": (0.2, 0.5)}),
    (GeometricDetector, {"n_splits": 3, "n_components": 2, "random_state": 7}),
    (GradCAMMaskOverlapDetector, {"threshold": 0.3, "high_enrichment": 4, "head": 1}),
    (SpRAyDetector, {"n_clusters": 3, "downsample": [8, 8], "n_neighbors": 5}),
]

# One invalid setting per detector, and the message that names it.
INVALID = [
    (ProbeDetector, {"model": "tree"}, "model must be one of"),
    (ProbeDetector, {"n_splits": 1}, "n_splits must be at least 2, got 1"),
    (ProbeDetector, {"ridge": [1.0, -1.0]}, "ridge strengths and C must be positive"),
    (ProbeDetector, {"alpha": 0}, r"alpha must be in \(0, 1\), got 0"),
    (StatisticalDetector, {"test": "z"}, "test must be one of"),
    (StatisticalDetector, {"fdr": 1.0}, r"fdr must be in \(0, 1\)"),
    (StatisticalDetector, {"thresholds": (0.9, 0.1)}, "thresholds must be \\(moderate, high\\)"),
    (HBACDetector, {"max_depth": 0}, "max_depth must be at least 1, got 0"),
    (HBACDetector, {"min_cluster_size": 1}, "min_cluster_size must be at least 2"),
    (GeometricDetector, {"n_components": 0}, "n_components must be at least 1, got 0"),
    (GeometricDetector, {"min_group_size": 2}, "min_group_size must be at least 3"),
    (GradCAMMaskOverlapDetector, {"threshold": 1.5}, r"threshold must be in \[0, 1\], got 1.5"),
    (
        GradCAMMaskOverlapDetector,
        {"moderate_enrichment": 5.0},
        "Need 0 < moderate_enrichment <= high_enrichment",
    ),
    (SpRAyDetector, {"n_clusters": 0}, "n_clusters must be a positive integer, got 0"),
    (SpRAyDetector, {"downsample": (1, 8)}, r"downsample must be \(h, w\) with sides >= 2"),
    (SpRAyDetector, {"gap_ratio": 0.5}, "gap_ratio must be at least 1, got 0.5"),
]


def _fit_inputs(cls: type[BaseDetector]) -> tuple:
    rng = np.random.default_rng(0)
    if cls is GradCAMMaskOverlapDetector:
        masks = np.zeros((12, 8, 8))
        masks[:, :2, :2] = 1.0
        return rng.random((12, 8, 8)), masks
    if cls is SpRAyDetector:
        return (rng.random((12, 8, 8)),)
    return rng.normal(size=(60, 4)), np.arange(60) % 2


@pytest.mark.parametrize(("cls", "settings"), SETTINGS, ids=lambda v: getattr(v, "__name__", ""))
def test_clone_copies_the_settings_exactly(cls, settings):
    detector = cls(**settings)
    for name, value in settings.items():
        assert getattr(detector, name) is value  # stored as given, not converted
    copy = clone(detector)
    assert type(copy) is cls and copy is not detector
    assert copy.get_params() == detector.get_params()
    assert set(copy.get_params()) == set(cls().get_params())
    # a clone of a fitted detector is unfitted
    fitted = cls(**settings).fit(*_fit_inputs(cls))
    assert fitted.get_report()["success"] in (True, False)
    with pytest.raises(RuntimeError, match="not fitted"):
        clone(fitted).get_report()


@pytest.mark.parametrize(("cls", "settings", "message"), INVALID)
def test_invalid_settings_raise_at_fit(cls, settings, message):
    detector = cls(**settings)  # accepted as given
    with pytest.raises(ValueError, match=message):
        detector.fit(*_fit_inputs(cls))


def test_set_params_changes_a_setting_and_rejects_unknown_names():
    detector = ProbeDetector().set_params(n_splits=3)
    assert detector.get_params()["n_splits"] == 3
    with pytest.raises(ValueError, match="ProbeDetector has no parameter 'n_split'"):
        detector.set_params(n_split=3)
    shortcut = ShortcutDetector().set_params(alpha=0.05)
    assert shortcut.get_params()["alpha"] == 0.05
    with pytest.raises(ValueError, match="ShortcutDetector has no parameter 'apha'"):
        shortcut.set_params(apha=0.05)


def test_shortcut_detector_clones_with_its_methods():
    probe = ProbeDetector(n_permutations=200)
    detector = ShortcutDetector(
        methods=["statistical", probe],
        random_state=3,
        alpha=0.05,
        method_params={"statistical": {"test": "nonparametric"}},
        high_agreement=1,
    )
    copy = clone(detector)
    params = copy.get_params()
    assert params["random_state"] == 3 and params["alpha"] == 0.05
    assert params["high_agreement"] == 1
    assert params["method_params"] == {"statistical": {"test": "nonparametric"}}
    assert params["methods"][0] == "statistical"
    cloned_probe = params["methods"][1]
    assert isinstance(cloned_probe, ProbeDetector) and cloned_probe is not probe
    assert cloned_probe.get_params() == probe.get_params()
    X, groups = _fit_inputs(ProbeDetector)
    copy.fit(X, groups)
    assert list(copy.get_results()) == ["statistical", "probe"]
    with pytest.raises(RuntimeError, match="not fitted"):
        clone(copy).summary()
