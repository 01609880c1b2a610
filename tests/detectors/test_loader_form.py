"""``fit_from_loaders({method: loader})``: ShortKit-ML's loader form, one loader per method."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector
from shortcut_detect.detectors.shortcut_detector import ShortcutDetector
from shortcut_detect.detectors.spray import SpRAyDetector

FAST = {name: {"n_permutations": 200} for name in ("probe", "hbac", "geometric")}


@pytest.fixture
def marked_maps():
    """Heatmaps with most attention on a 2x2 corner mask in every sample."""
    rng = np.random.default_rng(0)
    maps = rng.random((24, 8, 8))
    maps[:, :2, :2] += 4.0
    masks = np.zeros((24, 8, 8))
    masks[:, :2, :2] = 1.0
    return maps, masks


def test_seed_loader_form_of_the_mask_overlap_method(marked_maps):
    maps, masks = marked_maps
    loader = lambda: {"heatmaps": maps, "masks": masks}  # noqa: E731 (as in the seed docs)
    detector = ShortcutDetector(methods=["gradcam_mask_overlap"])
    assert detector.fit_from_loaders({"gradcam_mask_overlap": loader}) is detector
    result = detector.get_results()["gradcam_mask_overlap"]
    assert result["success"] is True
    assert result["metrics"]["n_samples"] == 24
    alone = GradCAMMaskOverlapDetector().fit(maps, masks).get_report()
    assert result["metrics"] == alone["metrics"]
    assert result["risk"] == alone["risk"] == "HIGH"
    assert detector.overall_risk == "HIGH"
    assert detector.summary().splitlines()[1] == "24 samples"


def test_every_method_reads_its_own_loader(planted, marked_maps):
    X, groups = planted(n=120, dim=8, shift=1.5, seed=1)
    maps, masks = marked_maps
    methods = ["probe", "statistical", "hbac", "geometric", "gradcam_mask_overlap", "spray"]
    loaders = {
        "probe": lambda: {"embeddings": X, "group_labels": groups},
        "statistical": {"embeddings": X, "groups": groups},  # the dict itself, alias key
        "hbac": SimpleNamespace(embeddings=X, group_labels=groups),  # attributes
        "geometric": [  # batches, concatenated
            {"embeddings": X[:60], "group_labels": groups[:60]},
            {"embeddings": X[60:], "group_labels": groups[60:]},
        ],
        "gradcam_mask_overlap": lambda: SimpleNamespace(heatmaps=maps, masks=masks),
        "spray": lambda: {"heatmaps": maps},
    }
    detector = ShortcutDetector(methods=methods, method_params=FAST)
    detector.fit_from_loaders(loaders)
    results = detector.get_results()
    assert list(results) == methods
    for name in methods:
        assert results[name]["success"], (name, results[name].get("error"))
    counts = {name: results[name]["metrics"]["n_samples"] for name in methods}
    assert counts == {**dict.fromkeys(methods[:4], 120), "gradcam_mask_overlap": 24, "spray": 24}
    # each method saw exactly what the plain fit gives it
    direct = ShortcutDetector(methods=methods[:4], method_params=FAST).fit(X, groups)
    for name in methods[:4]:
        expected = direct.get_results()[name]["metrics"]
        assert {k: v for k, v in results[name]["metrics"].items() if k != "n_samples"} == (
            pytest.approx(expected)
        )
    spray = SpRAyDetector().fit(maps).get_report()
    assert results["spray"]["metrics"]["n_clusters"] == spray["metrics"]["n_clusters"]
    assert detector.inputs_["samples_per_method"] == counts
    assert detector.inputs_["groups"] == {"0": 60, "1": 60}


def test_a_method_without_a_loader_is_named(marked_maps):
    maps, _ = marked_maps
    detector = ShortcutDetector(methods=["gradcam_mask_overlap", "spray"])
    with pytest.raises(ValueError, match=r"no loader for method 'spray'"):
        detector.fit_from_loaders({"gradcam_mask_overlap": lambda: {"heatmaps": maps}})
    with pytest.raises(ValueError, match=r"not selected: \['probe'\]"):
        detector.fit_from_loaders(
            {"gradcam_mask_overlap": {}, "spray": {}, "probe": {"embeddings": maps}}
        )


def test_bad_loader_results_are_errors_naming_the_method(planted):
    X, groups = planted(n=40, dim=4, seed=0)
    detector = ShortcutDetector(methods=["probe"])
    with pytest.raises(TypeError, match=r"loader of method 'probe' gave a int"):
        detector.fit_from_loaders({"probe": lambda: 3})
    with pytest.raises(ValueError, match=r"loader of method 'probe': group_labels are required"):
        detector.fit_from_loaders({"probe": {"embeddings": X}})
    with pytest.raises(ValueError, match=r"loader of method 'probe': embeddings have 40 rows"):
        detector.fit_from_loaders({"probe": {"embeddings": X, "group_labels": groups[:-1]}})
    with pytest.raises(TypeError, match=r"yielded a tuple; batches must be dicts"):
        detector.fit_from_loaders({"probe": [(X, groups)]})


def test_the_two_forms_are_told_apart_by_the_first_argument(marked_maps):
    maps, _ = marked_maps
    detector = ShortcutDetector(methods=["gradcam_mask_overlap"])
    with pytest.raises(TypeError, match="not a mapping and loaders"):
        detector.fit_from_loaders({"gradcam_mask_overlap": {}}, [maps])
    with pytest.raises(TypeError, match=r"fit_from_loaders\(model, loaders\) needs the data"):
        detector.fit_from_loaders(object())


def test_a_failing_method_in_the_loader_form_is_reported(marked_maps):
    maps, _ = marked_maps
    detector = ShortcutDetector(methods=["gradcam_mask_overlap", "spray"])
    detector.fit_from_loaders(
        {"gradcam_mask_overlap": {"heatmaps": maps}, "spray": {"heatmaps": maps}}
    )
    results = detector.get_results()
    assert results["gradcam_mask_overlap"]["success"] is False
    assert "needs masks" in results["gradcam_mask_overlap"]["error"]
    assert results["spray"]["success"] is True
