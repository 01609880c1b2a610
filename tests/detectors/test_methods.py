"""The four embedding detectors against independent references and planted signals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.linalg import subspace_angles
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from shortcut_detect.detectors.embedding_base import within_fold_permutations
from shortcut_detect.detectors.geometric import GeometricDetector
from shortcut_detect.detectors.hbac import HBACDetector, _chi2_vs_rest, bisecting_tree
from shortcut_detect.detectors.probe import ProbeDetector, auc_to_d, d_to_auc, macro_auc
from shortcut_detect.detectors.statistical import StatisticalDetector, benjamini_hochberg

FAST = {"n_permutations": 200}


def _folds(codes, n_splits=5, seed=0):
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(len(codes)), codes))


def _ridge_oof(X, codes, folds, ridge=1.0):
    """Out-of-fold class-1 predictions of sklearn's StandardScaler + Ridge."""
    out = np.zeros(len(codes))
    for train, test in folds:
        model = make_pipeline(StandardScaler(), Ridge(alpha=ridge * len(train)))
        model.fit(X[train], (codes[train] == 1).astype(float))
        out[test] = model.predict(X[test])
    return out


# -- probe ---------------------------------------------------------------------------------
def test_probe_auc_and_accuracy_match_sklearn_ridge(planted):
    X, g = planted(n=200, dim=16, shift=0.5, seed=3)
    report = ProbeDetector(ridge=1.0, random_state=7, **FAST).fit(X, g).get_report()
    oof = _ridge_oof(X, g, _folds(g, seed=7))
    assert report["metrics"]["auc"] == pytest.approx(roc_auc_score(g, oof), abs=1e-10)
    assert report["metrics"]["accuracy"] == pytest.approx(np.mean((oof > 0.5) == g), abs=1e-12)
    assert report["metrics"]["baseline_accuracy"] == 0.5


def test_probe_dual_form_matches_sklearn_when_dimensions_exceed_samples(planted):
    X, g = planted(n=60, dim=150, shift=1.0, seed=1)
    report = ProbeDetector(ridge=0.3, random_state=0, **FAST).fit(X, g).get_report()
    oof = _ridge_oof(X, g, _folds(g), ridge=0.3)
    assert report["metrics"]["auc"] == pytest.approx(roc_auc_score(g, oof), abs=1e-9)


def _numpy_ridge_oof(X, labels, folds, ridge=1.0):
    """Plain closed-form ridge on standardised features (class-1 indicator target)."""
    out = np.zeros(len(labels))
    for train, test in folds:
        mean, scale = X[train].mean(0), X[train].std(0)
        a, b = (X[train] - mean) / scale, (X[test] - mean) / scale
        y = (labels[train] == 1).astype(float)
        w = np.linalg.solve(a.T @ a + ridge * len(train) * np.eye(a.shape[1]), a.T @ (y - y.mean()))
        out[test] = y.mean() + b @ w
    return out


def test_probe_p_value_is_a_refitting_permutation_test(planted):
    """Re-derive the p-value by refitting a ridge on every permuted label vector."""
    X, g = planted(n=60, dim=6, shift=0.3, seed=5)
    n_perm = 100
    report = ProbeDetector(ridge=1.0, n_permutations=n_perm, random_state=11).fit(X, g).get_report()
    folds = _folds(g, seed=11)
    observed = roc_auc_score(g, _ridge_oof(X, g, folds))
    labels = within_fold_permutations(g, folds, n_perm, np.random.default_rng(11))
    null = np.array([roc_auc_score(row, _numpy_ridge_oof(X, row, folds)) for row in labels])
    expected = (1 + np.sum(null >= observed - 1e-12)) / (1 + n_perm)
    assert report["metrics"]["p_value"] == pytest.approx(expected)
    assert report["details"]["null_auc_mean"] == pytest.approx(null.mean())
    # the permuted rows keep each fold's group counts
    for _, test in folds:
        assert np.all(np.sort(labels[:, test], axis=1) == np.sort(g[test]))


@pytest.mark.parametrize("n_groups", [2, 3])
def test_probe_chooses_ridge_per_fold_like_ridgecv(planted, n_groups):
    """Nested choice of the ridge strength: the leave-one-out error of sklearn's RidgeCV."""
    from sklearn.linear_model import RidgeCV

    from shortcut_detect.detectors.probe import RIDGE_GRID

    X, g = planted(n=150, dim=20, shift=0.6, n_groups=n_groups, seed=4)
    X = X @ np.random.default_rng(0).normal(size=(20, 20))  # correlated features
    detector = ProbeDetector(random_state=2, **FAST).fit(X, g)
    folds = _folds(g, seed=2)
    scores = np.zeros((len(g), n_groups))
    for fold, (train, test) in enumerate(folds):
        targets = np.eye(n_groups)[g[train]][:, 1:] if n_groups == 2 else np.eye(n_groups)[g[train]]
        alphas = np.array(RIDGE_GRID) * len(train)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas)).fit(X[train], targets)
        chosen = model[-1].alpha_ / len(train)
        assert detector.ridge_per_fold_[fold] == pytest.approx(chosen)
        predicted = model.predict(X[test]).reshape(len(test), -1)
        scores[test] = np.c_[1 - predicted, predicted] if n_groups == 2 else predicted
    expected = (
        roc_auc_score(g, scores[:, 1])
        if n_groups == 2
        else macro_auc(scores[None], g[None], n_groups)[0]
    )
    assert detector.get_report()["metrics"]["auc"] == pytest.approx(expected, abs=1e-8)


def test_macro_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(90) % 3)
    raw = rng.integers(1, 4, size=(90, 3)).astype(float)
    scores = raw / raw.sum(axis=1, keepdims=True)  # probabilities with many ties
    expected = roc_auc_score(labels, scores, multi_class="ovr", average="macro")
    assert macro_auc(scores[None], labels[None], 3)[0] == pytest.approx(expected)
    binary = labels % 2
    assert macro_auc(scores[None], binary[None], 2)[0] == pytest.approx(
        roc_auc_score(binary, scores[:, 1])
    )


def test_auc_d_conversion_round_trips():
    assert d_to_auc(0.0) == pytest.approx(0.5)
    assert auc_to_d(d_to_auc(0.8)) == pytest.approx(0.8)
    assert d_to_auc(0.5) == pytest.approx(0.638, abs=1e-3)


def test_probe_flags_planted_signal_and_not_noise(planted):
    X, g = planted(shift=1.0, seed=0)
    strong = ProbeDetector(random_state=0).fit(X, g).get_report()
    assert strong["risk"] == "HIGH"
    assert strong["metrics"]["auc"] > 0.85
    assert strong["metrics"]["p_value"] == pytest.approx(1 / 1001)
    X0, g0 = planted(shift=0.0, seed=0)
    null = ProbeDetector(random_state=0).fit(X0, g0).get_report()
    assert null["risk"] == "LOW"
    assert null["metrics"]["p_value"] > 0.01


def test_probe_logistic_matches_sklearn_cross_val_predict(planted):
    X, g = planted(n=80, dim=8, shift=1.2, seed=2)
    detector = ProbeDetector("logistic", n_permutations=19, alpha=0.1, random_state=4)
    report = detector.fit(X, g).get_report()
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=4)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with threadpool_limits(1):
        proba = cross_val_predict(model, X, g, cv=cv, method="predict_proba")[:, 1]
    assert report["metrics"]["auc"] == pytest.approx(roc_auc_score(g, proba), abs=1e-9)
    assert report["risk"] == "HIGH"
    assert report["details"]["model"] == "logistic"


def test_probe_mlp_matches_sklearn_cross_val_predict(planted):
    from sklearn.neural_network import MLPClassifier

    X, g = planted(n=60, dim=4, shift=0.8, seed=2)
    detector = ProbeDetector("mlp", hidden_units=8, n_permutations=4, alpha=0.25, random_state=1)
    report = detector.fit(X, g).get_report()
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=1)
    mlp = MLPClassifier((8,), solver="lbfgs", alpha=1e-2, max_iter=200, random_state=1)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        proba = cross_val_predict(
            make_pipeline(StandardScaler(), mlp), X, g, cv=cv, method="predict_proba"
        )[:, 1]
    assert report["metrics"]["auc"] == pytest.approx(roc_auc_score(g, proba), abs=1e-9)
    assert report["details"]["model"] == "mlp"


def test_probe_within_label_auc_uses_task_labels(planted):
    X, g = planted(n=200, dim=8, shift=1.0, seed=4)
    labels = np.arange(200) % 2
    report = ProbeDetector(**FAST).fit(X, g, labels=labels).get_report()
    assert 0.5 < report["metrics"]["within_label_auc"] <= 1.0
    assert "within_label_auc" not in ProbeDetector(**FAST).fit(X, g).get_report()["metrics"]


def test_probe_too_small_group_reports_failure():
    X = np.random.default_rng(0).normal(size=(23, 4))
    groups = np.array(["a"] * 20 + ["b"] * 3)
    report = ProbeDetector(**FAST).fit(X, groups).get_report()
    assert report["success"] is False
    assert "'b': 3" in report["error"] and "at least 5" in report["error"]


def test_permutation_count_must_allow_significance():
    X = np.random.default_rng(0).normal(size=(40, 3))
    groups = np.arange(40) % 2
    with pytest.raises(ValueError, match="at least 100 permutations"):
        ProbeDetector(n_permutations=50).fit(X, groups)
    with pytest.raises(ValueError, match="cannot give p < alpha"):
        HBACDetector(n_permutations=9, alpha=0.05).fit(X, groups)


# -- statistical ---------------------------------------------------------------------------
def test_statistical_matches_scipy_tests_and_bh(planted):
    X, g = planted(n=120, dim=10, shift=0.6, seed=1)
    report = StatisticalDetector(top_k=10).fit(X, g).get_report()
    p = stats.ttest_ind(X[g == 0], X[g == 1], equal_var=False).pvalue
    adjusted = stats.false_discovery_control(p, method="bh")
    top = {row["dimension"]: row for row in report["details"]["top_dimensions"]}
    for j in range(10):
        assert top[j]["p_value"] == pytest.approx(p[j])
        assert top[j]["p_adjusted"] == pytest.approx(adjusted[j])
        a, b = X[g == 1, j], X[g == 0, j]
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / 118)
        assert top[j]["effect_size_d"] == pytest.approx((a.mean() - b.mean()) / pooled)
    assert report["metrics"]["n_significant"] == int(np.sum(adjusted < 0.05))
    assert report["metrics"]["p_value"] == pytest.approx(adjusted.min())


def test_statistical_nonparametric_and_multigroup_use_the_right_tests(planted):
    X, g = planted(n=90, dim=5, shift=0.8, n_groups=3, seed=2)
    parts = [X[g == k] for k in range(3)]
    for test, reference in (("parametric", stats.f_oneway), ("nonparametric", stats.kruskal)):
        top = StatisticalDetector(test, top_k=5).fit(X, g).get_report()["details"]
        expected = reference(*parts, axis=0).pvalue
        for row in top["top_dimensions"]:
            assert row["p_value"] == pytest.approx(expected[row["dimension"]])
    X2, g2 = planted(n=60, dim=4, shift=0.8, seed=3)
    rows = StatisticalDetector("nonparametric").fit(X2, g2).get_report()["details"]
    expected = stats.mannwhitneyu(X2[g2 == 0], X2[g2 == 1], axis=0).pvalue
    for row in rows["top_dimensions"]:
        assert row["p_value"] == pytest.approx(expected[row["dimension"]])


def test_statistical_multigroup_effect_is_twice_cohens_f(planted):
    X, g = planted(n=90, dim=3, shift=1.0, n_groups=3, seed=0)
    rows = StatisticalDetector().fit(X, g).get_report()["details"]["top_dimensions"]
    for row in rows:
        x = X[:, row["dimension"]]
        between = sum((g == k).sum() * (x[g == k].mean() - x.mean()) ** 2 for k in range(3))
        eta2 = between / ((x - x.mean()) ** 2).sum()
        assert row["effect_size_d"] == pytest.approx(2 * np.sqrt(eta2 / (1 - eta2)))


def test_benjamini_hochberg_fallback_matches_scipy(monkeypatch):
    p = np.random.default_rng(0).random(40) ** 3
    expected = stats.false_discovery_control(p, method="bh")
    monkeypatch.delattr("scipy.stats.false_discovery_control")
    assert np.allclose(benjamini_hochberg(p), expected)


def test_statistical_handles_constant_and_perfectly_separating_dimensions():
    g = np.arange(40) % 2
    X = np.random.default_rng(0).normal(size=(40, 3))
    X[:, 1] = 5.0  # constant: not tested
    X[:, 2] = g * 2.0  # each group constant, different values: perfect separation
    report = StatisticalDetector().fit(X, g).get_report()
    assert report["details"]["n_constant_dimensions"] == 1
    assert report["metrics"]["n_dimensions_tested"] == 2
    top = report["details"]["top_dimensions"][0]
    assert top["dimension"] == 2 and top["p_value"] == 0.0 and top["significant"]
    assert report["risk"] == "HIGH"


def test_statistical_flags_planted_dimensions(planted):
    X, g = planted(shift=1.0, seed=0)
    report = StatisticalDetector(top_k=4).fit(X, g).get_report()
    assert report["risk"] == "HIGH"
    assert {row["dimension"] for row in report["details"]["top_dimensions"]} == {0, 1, 2, 3}
    assert report["metrics"]["n_significant"] >= 4


# -- hbac ----------------------------------------------------------------------------------
def test_hbac_chi2_matches_scipy_contingency():
    counts = np.array([[30.0, 5.0, 2.0], [10.0, 20.0, 3.0]])
    totals = np.array([60.0, 40.0, 20.0])
    for row, value in zip(counts, _chi2_vs_rest(counts, totals)):
        table = np.stack([row, totals - row])
        expected = stats.chi2_contingency(table, correction=False).statistic
        assert value == pytest.approx(expected)


def test_hbac_tree_respects_min_cluster_size():
    Z = np.random.default_rng(0).normal(size=(200, 3))
    with threadpool_limits(1):
        nodes = bisecting_tree(Z, max_depth=3, min_cluster_size=20, random_state=0)
    assert nodes[0].path == "root" and len(nodes[0].members) == 200
    for node in nodes:
        assert len(node.members) >= 20
        if node.children:
            merged = np.sort(np.concatenate([c.members for c in node.children]))
            assert np.array_equal(merged, np.sort(node.members))
    assert max(node.depth for node in nodes) <= 3


def test_hbac_finds_group_pure_cluster(planted):
    X, g = planted(shift=1.5, seed=0)
    report = HBACDetector(**FAST).fit(X, g).get_report()
    assert report["risk"] == "HIGH"
    best = report["details"]["most_biased_cluster"]
    assert best["purity"] >= 0.8
    counts = best["group_counts"]
    assert counts[best["dominant_group"]] == max(counts.values())
    assert report["details"]["top_clusters"][0]["enrichment"] >= best["enrichment"]


def test_hbac_is_low_without_signal(planted):
    X, g = planted(shift=0.0, seed=1)
    report = HBACDetector(**FAST).fit(X, g).get_report()
    assert report["risk"] == "LOW" and report["metrics"]["p_value"] > 0.01


def test_hbac_too_few_samples_reports_failure():
    X = np.random.default_rng(0).normal(size=(12, 3))
    report = HBACDetector(**FAST).fit(X, np.arange(12) % 2).get_report()
    assert report["success"] is False and "at least 20 samples" in report["error"]


# -- geometric -----------------------------------------------------------------------------
def _reference_held_out_d(X, g, folds):
    scores = np.zeros(len(g))
    for train, test in folds:
        w = X[train][g[train] == 1].mean(0) - X[train][g[train] == 0].mean(0)
        scores[test] = (X[test] - X[train].mean(0)) @ (w / np.linalg.norm(w))
    a, b = scores[g == 1], scores[g == 0]
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(g) - 2))
    return (a.mean() - b.mean()) / pooled


def test_geometric_matches_straightforward_computation(planted):
    X, g = planted(n=150, dim=12, shift=0.7, seed=2)
    report = GeometricDetector(random_state=3, **FAST).fit(X, g).get_report()
    m = report["metrics"]
    assert m["separation_d"] == pytest.approx(_reference_held_out_d(X, g, _folds(g, seed=3)))
    diff = X[g == 1].mean(0) - X[g == 0].mean(0)
    u = diff / np.linalg.norm(diff)
    centred = X - X.mean(0)
    assert m["bias_magnitude"] == pytest.approx(np.linalg.norm(diff))
    assert m["variance_explained"] == pytest.approx((centred @ u).var() / centred.var(0).sum())
    axes = []
    for k in (0, 1):
        _, _, vt = np.linalg.svd(X[g == k] - X[g == k].mean(0), full_matrices=False)
        axes.append(vt[:5].T)
    angles = subspace_angles(axes[0], axes[1])
    assert m["subspace_overlap"] == pytest.approx(np.mean(np.cos(angles) ** 2))
    assert m["subspace_overlap_chance"] == pytest.approx(5 / 12)


def test_geometric_flags_signal_and_not_noise(planted):
    X, g = planted(shift=1.0, seed=0)
    assert GeometricDetector(**FAST).fit(X, g).get_report()["risk"] == "HIGH"
    X0, g0 = planted(shift=0.0, seed=0)
    null = GeometricDetector(**FAST).fit(X0, g0).get_report()
    assert null["risk"] == "LOW" and abs(null["metrics"]["separation_d"]) < 0.3


def test_geometric_three_groups_reports_each_group(planted):
    X, g = planted(n=240, dim=16, shift=1.2, n_groups=3, seed=0)
    names = np.array(["cat", "dog", "eel"])[g]
    report = GeometricDetector(**FAST).fit(X, names).get_report()
    per_group = report["details"]["per_group_separation"]
    assert set(per_group) == {"cat", "dog", "eel"}
    assert report["metrics"]["separation_d"] == pytest.approx(max(per_group.values()))
    assert report["risk"] == "HIGH"
    assert set(report["details"]["subspace_overlap_pairs"]) == {
        "cat vs dog",
        "cat vs eel",
        "dog vs eel",
    }
