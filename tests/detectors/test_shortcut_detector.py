"""ShortcutDetector: calling conventions, risk calibration, edge cases, isolation, reports."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from shortcut_detect.detectors.base import BaseDetector
from shortcut_detect.detectors.registry import (
    available_detectors,
    get_detector_class,
    register_detector,
    unregister_detector,
)
from shortcut_detect.detectors.shortcut_detector import DEFAULT_METHODS, ShortcutDetector

FAST = {name: {"n_permutations": 200} for name in ("probe", "hbac", "geometric")}


def fast_detector(methods=("probe", "statistical", "hbac", "geometric"), **kwargs):
    params = {name: FAST[name] for name in methods if name in FAST}
    return ShortcutDetector(methods=list(methods), method_params=params, **kwargs)


# -- stub detectors for orchestration ------------------------------------------------------
class RecordingHeatmapDetector(BaseDetector):
    """Takes heatmap inputs by name and records what it was given."""

    name = "recording"

    def __init__(self, random_state=None) -> None:
        super().__init__()
        self.random_state = random_state
        self.seen: dict = {}

    def fit(self, heatmaps, masks, group_labels=None):
        self.seen = {"heatmaps": heatmaps, "masks": masks, "group_labels": group_labels}
        share = float(np.mean([(h * m).sum() / h.sum() for h, m in zip(heatmaps, masks)]))
        self._make_report({"attention_in_mask": share}, "HIGH", f"{share:.0%} in mask")
        return self


class BrokenDetector(BaseDetector):
    name = "broken"

    def fit(self, embeddings, group_labels):
        raise RuntimeError("deliberately broken")


@pytest.fixture
def registered():
    register_detector("recording", RecordingHeatmapDetector)
    register_detector("broken", BrokenDetector)
    yield
    unregister_detector("recording")
    unregister_detector("broken")


# -- calling conventions -------------------------------------------------------------------
def test_two_positional_arguments_are_embeddings_and_groups(planted):
    X, g = planted(shift=1.0, seed=0)
    detector = fast_detector(["probe"]).fit(X, g)
    assert detector.inputs_["groups"] == {"0": 150, "1": 150}
    assert detector.inputs_["task_labels"] is False
    results = detector.get_results()
    assert results["probe"]["accuracy"] == results["probe"]["metrics"]["accuracy"] > 0.75
    assert results["probe"]["auc"] > 0.85


def test_three_argument_form_takes_task_labels_in_the_middle(planted):
    X, g = planted(shift=1.0, seed=0)
    labels = np.arange(len(g)) % 2
    by_position = fast_detector(["probe"]).fit(X, labels, group_labels=g).get_results()
    by_keyword = fast_detector(["probe"]).fit(X, group_labels=g, labels=labels).get_results()
    plain = fast_detector(["probe"]).fit(X, g).get_results()
    assert by_position["probe"]["within_label_auc"] == by_keyword["probe"]["within_label_auc"]
    assert "within_label_auc" not in plain["probe"]
    assert by_position["probe"]["auc"] == plain["probe"]["auc"]
    with pytest.raises(TypeError, match="labels given twice"):
        fast_detector(["probe"]).fit(X, labels, group_labels=g, labels=labels)


def test_results_are_copies(planted):
    X, g = planted(shift=1.0, seed=0)
    detector = fast_detector(["probe"]).fit(X, g)
    detector.get_results()["probe"]["metrics"]["auc"] = -1
    assert detector.get_results()["probe"]["auc"] > 0.5


def test_unfitted_detector_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        ShortcutDetector().summary()


def test_settings_are_checked_at_fit_not_in_the_constructor(planted):
    X, g = planted(n=60, dim=4, seed=0)
    cases = [
        ({"methods": ["probbe"]}, ValueError, r"unknown method 'probbe'.*available: probe"),
        ({"methods": ["probe", "probe"]}, ValueError, "unique"),
        ({"methods": ["probe"], "method_params": {"hbac": {}}}, ValueError, "not selected"),
        ({"methods": []}, ValueError, "empty"),
        ({"alpha": 1.5}, ValueError, r"alpha must be in \(0, 1\), got 1.5"),
        ({"high_agreement": 0}, ValueError, "high_agreement must be at least 1"),
        (
            {"methods": ["probe"], "method_params": {"probe": {"n_permutations": 19}}},
            ValueError,
            "method 'probe': n_permutations=19 cannot give p < alpha",
        ),
        (
            {"methods": ["probe"], "method_params": {"probe": {"n_perms": 19}}},
            TypeError,
            r"method 'probe'.*unexpected keyword",
        ),
        (
            {"methods": ["probe"], "method_params": {"probe": {"model": "tree"}}},
            ValueError,
            "method 'probe': model must be one of",
        ),
    ]
    for params, error, message in cases:
        detector = ShortcutDetector(**params)  # stored as given, no check yet
        assert detector.get_params()["methods"] is params.get("methods", DEFAULT_METHODS)
        with pytest.raises(error, match=message):
            detector.fit(X, g)
        with pytest.raises(error, match=message):
            detector.fit_from_loaders({name: {"embeddings": X, "groups": g} for name in ["probe"]})


def test_method_params_and_random_state_reach_the_detectors(planted):
    X, g = planted(n=100, dim=6, shift=1.0, seed=0)
    detector = ShortcutDetector(
        methods=["probe"],
        random_state=5,
        alpha=0.05,
        method_params={"probe": {"model": "logistic", "n_permutations": 39}},
    ).fit(X, g)
    probe = detector.detectors_["probe"]
    assert (probe.model, probe.random_state, probe.alpha) == ("logistic", 5, 0.05)
    assert detector.get_results()["probe"]["details"]["model"] == "logistic"


def test_same_random_state_gives_same_results(planted):
    X, g = planted(shift=0.3, seed=2)
    first = fast_detector(random_state=3).fit(X, g).get_results()
    second = fast_detector(random_state=3).fit(X, g).get_results()
    for name in first:
        assert first[name]["metrics"] == second[name]["metrics"]


# -- risk calibration ----------------------------------------------------------------------
def test_strong_planted_signal_is_high_overall_and_per_method(planted):
    """Documented effect size: d = 1.5 in 4 of 32 dimensions (Mahalanobis 3), N = 300."""
    X, g = planted(shift=1.5, seed=0)
    detector = fast_detector().fit(X, g)
    assert detector.overall_risk == "HIGH"
    assert {name: r["risk"] for name, r in detector.get_results().items()} == dict.fromkeys(
        ("probe", "statistical", "hbac", "geometric"), "HIGH"
    )
    text = detector.summary()
    assert text.startswith("Shortcut detection: overall risk HIGH")
    assert "probe, statistical, hbac, geometric rate the group information HIGH" in text


def test_moderate_planted_signal_is_high_for_probe_statistical_geometric(planted):
    """Documented: d = 1.0 in 4 dimensions (Mahalanobis 2) is HIGH for these three."""
    for seed in range(3):
        X, g = planted(shift=1.0, seed=seed)
        results = fast_detector(["probe", "statistical", "geometric"]).fit(X, g).get_results()
        assert all(r["risk"] == "HIGH" for r in results.values()), (seed, results)


def test_no_signal_is_low_overall_in_nearly_all_seeds(planted):
    """The full 100-seed figure is in benchmarks/bench_detector_false_alarms.py."""
    risks = []
    for seed in range(12):
        X, g = planted(n=200, dim=24, shift=0.0, seed=100 + seed)
        risks.append(fast_detector(random_state=seed).fit(X, g).overall_risk)
    assert risks.count("LOW") >= 11, risks


class FixedRiskDetector(BaseDetector):
    """Reports a preset risk (to test how method risks combine)."""

    def __init__(self, risk: str) -> None:
        super().__init__()
        self.risk = risk

    def fit(self, group_labels):
        self._make_report({"value": 1.0}, self.risk, f"preset {self.risk}")
        return self


@pytest.mark.parametrize(
    ("risks", "agreement", "expected"),
    [
        (["HIGH", "HIGH", "LOW"], 2, "HIGH"),
        (["HIGH", "LOW", "LOW"], 2, "MODERATE"),
        (["HIGH", "LOW", "LOW"], 1, "HIGH"),
        (["HIGH"], 2, "HIGH"),  # the only method that ran
        (["MODERATE", "LOW"], 2, "MODERATE"),
        (["LOW", "LOW"], 2, "LOW"),
        (["HIGH", "HIGH", "HIGH"], 3, "HIGH"),
    ],
)
def test_overall_risk_needs_agreement_for_high(risks, agreement, expected):
    methods = {f"m{i}": FixedRiskDetector(risk) for i, risk in enumerate(risks)}
    detector = ShortcutDetector(methods=methods, high_agreement=agreement)
    detector.fit(group_labels=[0, 1] * 5)
    assert detector.overall_risk == expected
    assert detector.summary().startswith(f"Shortcut detection: overall risk {expected}")


def test_a_single_high_method_gives_moderate_and_says_why():
    methods = {"a": FixedRiskDetector("HIGH"), "b": FixedRiskDetector("LOW")}
    detector = ShortcutDetector(methods=methods).fit(group_labels=[0, 1] * 5)
    assert detector.overall_risk == "MODERATE"
    assert "MODERATE: a rates the group information HIGH" in detector.summary()
    assert "an overall HIGH needs 2 methods to agree; one kind of evidence only" in (
        detector.summary()
    )


def test_failed_methods_do_not_count_towards_agreement(registered):
    methods = {"a": FixedRiskDetector("HIGH"), "broken": "broken"}
    detector = ShortcutDetector(methods=methods).fit(np.zeros((10, 2)), [0, 1] * 5)
    assert detector.overall_risk == "HIGH"  # the only method that ran
    assert (
        ShortcutDetector(methods={"b": "broken"}).fit(np.zeros((10, 2)), [0, 1] * 5).overall_risk
        == "UNKNOWN"
    )


def test_low_summary_explains_why(planted):
    X, g = planted(n=200, dim=24, shift=0.0, seed=100)
    detector = fast_detector().fit(X, g)
    assert detector.overall_risk == "LOW"
    assert "None of probe, statistical, hbac, geometric found group information" in (
        detector.summary()
    )


# -- edge cases ----------------------------------------------------------------------------
def test_one_group_only_is_a_clear_error(planted):
    X, _ = planted(n=50, dim=4)
    with pytest.raises(ValueError, match=r"single group \('a'\).*at least two groups"):
        fast_detector().fit(X, ["a"] * 50)


def test_mismatched_lengths_are_a_clear_error(planted):
    X, g = planted(n=50, dim=4)
    with pytest.raises(ValueError, match="embeddings have 50 rows but group_labels has 49"):
        fast_detector().fit(X, g[:-1])
    with pytest.raises(ValueError, match="heatmaps has 3 entries but there are 50 samples"):
        fast_detector(["probe"]).fit(X, g, heatmaps=np.zeros((3, 4, 4)))


def test_nan_embeddings_are_a_clear_error(planted):
    X, g = planted(n=50, dim=4)
    X[7, 2] = np.nan
    X[9, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf in 2 of 50 rows \\(first at row 7\\)"):
        fast_detector().fit(X, g)


def test_missing_group_labels_and_bad_shapes_are_clear_errors(planted):
    X, g = planted(n=50, dim=4)
    with pytest.raises(ValueError, match=r"missing values.*first at index 3"):
        fast_detector().fit(X, [0, 1, 0, None] + [1] * 46)
    with pytest.raises(ValueError, match="must be \\(N, D\\)"):
        fast_detector().fit(X.reshape(50, 2, 2), g)
    with pytest.raises(ValueError, match="group_labels are required"):
        fast_detector().fit(X)
    with pytest.raises(ValueError, match="embeddings are required by probe"):
        fast_detector(["probe"]).fit(group_labels=g)


def test_string_group_labels_are_supported(planted):
    X, g = planted(shift=1.0, seed=0)
    names = np.where(g == 1, "marker", "no marker")
    detector = fast_detector().fit(X, names.tolist())
    assert detector.inputs_["groups"] == {"marker": 150, "no marker": 150}
    assert detector.overall_risk == "HIGH"
    numeric = fast_detector().fit(X, (g == 0).astype(int)).get_results()
    assert detector.get_results()["probe"]["auc"] == pytest.approx(numeric["probe"]["auc"])


def test_more_than_two_groups_are_supported(planted):
    X, g = planted(n=300, dim=16, shift=1.5, n_groups=3, seed=1)
    detector = fast_detector().fit(X, g)
    assert detector.inputs_["groups"] == {"0": 100, "1": 100, "2": 100}
    assert all(r["success"] for r in detector.get_results().values())
    assert detector.overall_risk == "HIGH"
    X0, g0 = planted(n=300, dim=16, shift=0.0, n_groups=3, seed=1)
    assert fast_detector().fit(X0, g0).overall_risk == "LOW"


def test_one_dimensional_embeddings_are_one_feature_per_sample():
    rng = np.random.default_rng(0)
    g = np.arange(200) % 2
    x = rng.normal(size=200) + 1.2 * g
    flat = fast_detector().fit(x, g).get_results()
    column = fast_detector().fit(x[:, None], g).get_results()
    for name in flat:
        assert flat[name]["metrics"] == column[name]["metrics"]
    assert flat["statistical"]["n_dimensions_tested"] == 1
    assert flat["probe"]["risk"] == "HIGH"


def test_too_few_samples_fail_one_method_not_the_others():
    rng = np.random.default_rng(0)
    g = np.arange(14) % 2
    X = rng.normal(size=(14, 3)) + 3.0 * g[:, None]
    detector = fast_detector().fit(X, g)
    results = detector.get_results()
    assert results["hbac"]["success"] is False
    assert results["hbac"]["risk"] == "UNKNOWN"
    assert "at least 20 samples" in results["hbac"]["error"]
    assert all(results[name]["success"] for name in ("probe", "statistical", "geometric"))
    assert "hbac could not run: hbac needs at least 20 samples" in detector.summary()


# -- orchestration with registered stubs ---------------------------------------------------
def test_a_failing_method_does_not_sink_the_others(planted, registered):
    X, g = planted(shift=1.0, seed=0)
    detector = fast_detector(["probe", "broken"]).fit(X, g)
    results = detector.get_results()
    assert results["broken"]["success"] is False
    assert results["broken"]["error"] == "RuntimeError: deliberately broken"
    assert "deliberately broken" in results["broken"]["details"]["traceback"]
    assert results["probe"]["success"] and detector.overall_risk == "HIGH"


def test_heatmap_methods_get_their_keyword_inputs(planted, registered):
    X, g = planted(n=40, dim=4, shift=1.0, seed=0)
    heatmaps = np.random.default_rng(1).random((40, 8, 8))
    masks = np.zeros((40, 8, 8))
    masks[:, :2, :2] = 1
    detector = ShortcutDetector(methods=["recording"], random_state=9)
    detector.fit(X, np.where(g == 1, "tag", "none"), heatmaps=heatmaps, masks=masks)
    stub = detector.detectors_["recording"]
    assert stub.random_state == 9
    assert stub.seen["heatmaps"] is heatmaps and stub.seen["masks"] is masks
    assert list(stub.seen["group_labels"]) == list(np.where(g == 1, "tag", "none"))
    expected = np.mean([(h * m).sum() / h.sum() for h, m in zip(heatmaps, masks)])
    assert detector.get_results()["recording"]["attention_in_mask"] == pytest.approx(expected)
    # heatmap-only runs need no embeddings
    alone = ShortcutDetector(methods=["recording"]).fit(
        group_labels=g, heatmaps=heatmaps, masks=masks
    )
    assert alone.get_results()["recording"]["success"]


def test_missing_keyword_input_is_reported_per_method(planted, registered):
    X, g = planted(n=40, dim=4, shift=1.0, seed=0)
    results = fast_detector(["probe", "recording"]).fit(X, g).get_results()
    assert results["recording"]["success"] is False
    assert "needs heatmaps=..., masks=..." in results["recording"]["error"]
    assert results["probe"]["success"]


def test_detector_instances_and_named_mappings(planted):
    from shortcut_detect.detectors.probe import ProbeDetector

    X, g = planted(n=100, dim=6, shift=1.0, seed=0)
    detector = ShortcutDetector(
        methods={
            "weak_ridge": ProbeDetector(ridge=0.01, n_permutations=200),
            "strong_ridge": ProbeDetector(ridge=100.0, n_permutations=200),
        }
    ).fit(X, g)
    results = detector.get_results()
    assert results["weak_ridge"]["method"] == "weak_ridge"
    assert results["weak_ridge"]["auc"] != results["strong_ridge"]["auc"]
    assert detector.detectors_["strong_ridge"].ridge == 100.0
    with pytest.raises(ValueError, match="method_params apply to methods given by name"):
        ShortcutDetector(
            methods={"p": ProbeDetector(n_permutations=200)}, method_params={"p": {"ridge": 2}}
        ).fit(X, g)


def test_registry_lists_and_imports_builtins():
    names = available_detectors()
    assert names[:6] == [
        "probe",
        "statistical",
        "hbac",
        "geometric",
        "gradcam_mask_overlap",
        "spray",
    ]
    assert get_detector_class("probe").__name__ == "ProbeDetector"
    with pytest.raises(KeyError, match="unknown shortcut detection method"):
        get_detector_class("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_detector("probe", BrokenDetector)


def test_heatmap_detectors_resolve_from_the_registry():
    """The visual-analysis detectors are reachable by name (lazy import)."""
    assert get_detector_class("gradcam_mask_overlap").__name__ == "GradCAMMaskOverlapDetector"
    assert get_detector_class("spray").__name__ == "SpRAyDetector"


# -- reports -------------------------------------------------------------------------------
@pytest.fixture
def report_detector(planted):
    X, g = planted(n=200, dim=16, shift=1.0, seed=0)
    names = np.where(g == 1, "<b>tagged</b>", "plain & simple")
    return fast_detector().fit(X, names)


def test_json_report_holds_every_result(report_detector, tmp_path):
    path = report_detector.generate_report(tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["overall_risk"] == report_detector.overall_risk == "HIGH"
    assert [m["method"] for m in data["methods"]] == ["probe", "statistical", "hbac", "geometric"]
    probe = data["methods"][0]
    assert probe["metrics"]["auc"] == pytest.approx(report_detector.get_results()["probe"]["auc"])
    assert data["inputs"]["groups"] == {"<b>tagged</b>": 100, "plain & simple": 100}
    assert data["reasons"] == report_detector.reasons()
    assert any("probe: out-of-fold AUC >= 0.64" in rule for rule in data["risk_rules"])


def test_html_report_is_self_contained_and_escaped(report_detector, tmp_path):
    path = report_detector.generate_report(tmp_path / "report.html")
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert '<span class="risk risk-HIGH">HIGH</span>' in html
    assert "&lt;b&gt;tagged&lt;/b&gt;" in html and "<b>tagged</b>" not in html
    assert "plain &amp; simple" in html
    assert "<script" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    for method in ("probe", "statistical", "hbac", "geometric"):
        assert f'<h2 id="{method}">' in html
    assert "top_dimensions" in html and "<th>effect_size_d</th>" in html


def test_markdown_report_and_format_override(report_detector, tmp_path):
    path = report_detector.generate_report(tmp_path / "notes.txt", format="md")
    text = path.read_text()
    assert text.startswith("# Shortcut detection report")
    assert "**Overall risk: HIGH**" in text
    assert "| probe | HIGH |" in text
    assert "| Metric | Value |" in text


def test_report_format_errors(report_detector, tmp_path):
    with pytest.raises(ValueError, match="cannot tell the report format"):
        report_detector.generate_report(tmp_path / "report.pdf")
    with pytest.raises(ValueError, match="format must be one of"):
        report_detector.generate_report(tmp_path / "report.html", format="pdf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report_detector.generate_report(tmp_path / "missing" / "report.html")


def test_report_lists_failed_methods(registered, planted, tmp_path):
    X, g = planted(n=60, dim=4, shift=1.0, seed=0)
    detector = fast_detector(["probe", "broken"]).fit(X, g)
    html = detector.generate_report(tmp_path / "r.html").read_text()
    assert "Could not run: RuntimeError: deliberately broken" in html
    data = json.loads(detector.generate_report(tmp_path / "r.json").read_text())
    assert data["methods"][1]["success"] is False
