"""From a finished store to findings: accuracy, group comparison, masks, SpRAy, embeddings.

:func:`analyse_store` reads the per-sample table and (a bounded sample of) the stored
heatmaps, runs the visual analysis and the detectors on them, and returns an
:class:`Analysis`: the JSON summary (with the verdict on top) plus the arrays the report
draws. Every test that cannot run (no groups, no masks, a missing optional dependency) is
listed with the reason instead of silently missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shortcut_detect.audit.store import AuditStore
from shortcut_detect.audit.verdict import Signal, decide_verdict

__all__ = ["Analysis", "analyse_store"]

MAX_FAILED_LISTED = 500
GRID_SIZE = 12
MAX_SPRAY_SAMPLES = 1000
ANALYSIS_COLUMNS = (
    "sample_id",
    "path",
    "status",
    "error",
    "label",
    "prediction",
    "confidence",
    "group",
    "peak_y",
    "peak_x",
    "entropy",
    "cam_max",
    "has_mask",
    "mask",
    "mask_attention",
    "mask_center_y",
    "mask_center_x",
    "width",
    "height",
)


@dataclass
class Analysis:
    """Findings of one audit.

    Attributes
    ----------
    summary:
        JSON-serialisable dict written to ``summary.json`` (``"verdict"`` first).
    group_means:
        Mean stored heatmap per group label (native CAM resolution).
    divergence:
        Signed difference of the two group means (or their spread for more groups).
    top_attention:
        ``(title, explanation, [sample ids], [scores])`` for the "most shortcut attention" grid.
    misclassified:
        Sample ids of misclassified images, most confident first.
    spray:
        The SpRAy report (with cluster representatives as sample ids), or ``None``.
    """

    summary: dict[str, Any]
    group_means: dict[str, np.ndarray] = field(default_factory=dict)
    divergence: np.ndarray | None = None
    significance: np.ndarray | None = None
    top_attention: tuple[str, str, list[str], list[float]] | None = None
    misclassified: list[str] = field(default_factory=list)
    spray: dict[str, Any] | None = None
    spray_ids: list[list[str]] = field(default_factory=list)
    group_comparison_figure: Any = None


def _columns(table: Any) -> dict[str, np.ndarray]:
    """Columns as numpy arrays (numbers with nulls become NaN, strings stay objects)."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _float_array(values: np.ndarray) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _json_number(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def jsonable(value: Any) -> Any:
    """Recursively turn numpy values/arrays, tuples and NaN into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.size > 4096:
            return f"<array {value.shape}>"
        return jsonable(value.tolist())
    return _json_number(value)


# -- accuracy ----------------------------------------------------------------------------------


def _rate(correct: np.ndarray) -> float | None:
    return float(correct.mean()) if correct.size else None


def accuracy_tables(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray | None, class_names: list[str]
) -> dict[str, Any]:
    """Overall, per-class, per-group and per-group-per-class accuracy (recall)."""
    known = labels >= 0
    labels, predictions = labels[known], predictions[known]
    groups = groups[known] if groups is not None else None
    correct = labels == predictions
    result: dict[str, Any] = {"n_labelled": int(known.sum()), "overall": _rate(correct)}

    def name(index: int) -> str:
        return class_names[index] if 0 <= index < len(class_names) else str(index)

    result["per_class"] = {
        name(int(c)): {"n": int((labels == c).sum()), "accuracy": _rate(correct[labels == c])}
        for c in np.unique(labels)
    }
    if groups is not None:
        result["per_group"] = {
            str(g): {"n": int((groups == g).sum()), "accuracy": _rate(correct[groups == g])}
            for g in sorted(set(groups.tolist()))
        }
        result["per_group_class"] = {
            str(g): {
                name(int(c)): {
                    "n": int(((groups == g) & (labels == c)).sum()),
                    "accuracy": _rate(correct[(groups == g) & (labels == c)]),
                }
                for c in np.unique(labels)
            }
            for g in sorted(set(groups.tolist()))
        }
    k = max(len(class_names), int(max(labels.max(initial=0), predictions.max(initial=0))) + 1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    if k <= 30:
        result["confusion_matrix"] = confusion.tolist()
    return result


def prediction_group_signal(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray, class_names: list[str]
) -> Signal:
    """Do predictions depend on the group among images of the same true class?

    For each class, accuracy (recall) is compared across groups with a chi-squared test;
    the class with the largest significant gap is reported. A model that follows a
    shortcut gets images of one class right in the group that carries the shortcut and
    wrong in the other.
    """
    from scipy.stats import chi2_contingency

    best: dict[str, Any] | None = None
    for c in np.unique(labels[labels >= 0]):
        in_class = labels == c
        group_values = sorted(set(groups[in_class].tolist()))
        counts = []
        rates = {}
        for g in group_values:
            members = in_class & (groups == g)
            n = int(members.sum())
            if n < 10:
                continue
            right = int((predictions[members] == c).sum())
            counts.append([right, n - right])
            rates[str(g)] = right / n
        if len(counts) < 2:
            continue
        table = np.array(counts)
        # A column of zeros (everyone right, or everyone wrong) means no difference to test.
        degenerate = (table.sum(axis=0) == 0).any()
        p_value = 1.0 if degenerate else float(chi2_contingency(table)[1])
        gap = max(rates.values()) - min(rates.values())
        candidate = {
            "class": class_names[int(c)] if int(c) < len(class_names) else str(int(c)),
            "accuracy_by_group": rates,
            "gap": gap,
            "p_value": p_value,
        }
        if best is None or (p_value < 0.05, gap) > (best["p_value"] < 0.05, best["gap"]):
            best = candidate
    if best is None:
        return Signal(
            "prediction_by_group",
            "Accuracy by group within each class",
            "UNKNOWN",
            "Not enough labelled samples per group and class (10 needed) to compare.",
        )
    rates = best["accuracy_by_group"]
    high_group = max(rates, key=rates.get)
    low_group = min(rates, key=rates.get)
    finding = (
        f"Among '{best['class']}' images, accuracy is {rates[high_group]:.0%} in group "
        f"'{high_group}' but {rates[low_group]:.0%} in group '{low_group}' "
        f"(chi-squared p = {best['p_value']:.2g})."
    )
    if best["p_value"] < 0.001 and best["gap"] >= 0.5:
        risk = "HIGH"
        finding += " Predictions follow the group more than the object."
    elif best["p_value"] < 0.01 and best["gap"] >= 0.15:
        risk = "MODERATE"
    else:
        risk = "LOW"
    return Signal("prediction_by_group", "Accuracy by group within each class", risk, finding, best)


# -- heatmaps ----------------------------------------------------------------------------------


def _subsample(ids: np.ndarray, strata: np.ndarray | None, limit: int, seed: int) -> np.ndarray:
    """Positions of at most ``limit`` samples, stratified by ``strata`` when given."""
    n = len(ids)
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.sort(rng.choice(n, size=limit, replace=False))
    chosen = []
    values = sorted(set(strata.tolist()), key=str)
    for value in values:
        members = np.flatnonzero(strata == value)
        share = max(2, round(limit * len(members) / n))
        chosen.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def peak_concentration_signal(peak_y: np.ndarray, peak_x: np.ndarray) -> Signal:
    """Do many heatmaps peak in the same border cell of a 3x3 grid (corner tags, rulers)?"""
    from shortcut_detect.analysis.maps import location_words

    defined = ~(np.isnan(peak_y) | np.isnan(peak_x))
    if defined.sum() < 10:
        return Signal(
            "peak_concentration",
            "Where heatmaps peak",
            "UNKNOWN",
            "Fewer than 10 heatmaps with a peak.",
        )
    rows = np.minimum((peak_y[defined] * 3).astype(int), 2)
    cols = np.minimum((peak_x[defined] * 3).astype(int), 2)
    cells = rows * 3 + cols
    counts = np.bincount(cells, minlength=9)
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    where = location_words((top // 3, top % 3), (3, 3))
    border = top != 4
    finding = f"{share:.0%} of the heatmaps peak in the {where} ninth of the image."
    details = {
        "cell": where,
        "share": float(share),
        "shares": {
            location_words((i // 3, i % 3), (3, 3)): float(c / counts.sum())
            for i, c in enumerate(counts)
        },
    }
    # Without groups or masks this is only a hint, so it stays below HIGH.
    risk = "MODERATE" if border and share >= 0.5 else "LOW"
    if risk == "MODERATE":
        finding += (
            " Objects rarely sit in the same border region of most images; check for a tag, "
            "ruler or text there."
        )
    return Signal(
        "peak_concentration", "Where heatmaps peak", risk, finding, details, location=where
    )


def _group_signal(result: Any, groups_order: list[Any]) -> Signal:
    from shortcut_detect.analysis.maps import location_words

    metrics = result.metrics
    grid = tuple(metrics["grid"])
    where = location_words(metrics["divergence_peak"], grid)
    overlap = float(result.overlap_score)
    p_value = metrics.get("p_value")
    if len(groups_order) == 2:
        more = groups_order[1] if metrics["divergence_peak_value"] > 0 else groups_order[0]
        place = f"group '{more}' attends more to the {where} of the image"
    else:
        place = f"the groups differ most in the {where} of the image"
    finding = (
        f"Attention differs between groups: the group mean heatmaps share {overlap:.0%} of their "
        f"attention mass; {place}"
    )
    if p_value is not None:
        finding += f" (permutation test p = {p_value:.2g})."
    else:
        finding += " (no significance test run)."
    significant = bool(metrics.get("significant"))
    moved = 1.0 - overlap
    if significant and moved >= 0.3:
        risk = "HIGH"
    elif significant and moved >= 0.15:
        risk = "MODERATE"
    else:
        risk = "LOW"
        finding = (
            f"Attention is similar across groups: the group mean heatmaps share {overlap:.0%} of "
            "their attention mass"
        )
        if significant:
            finding += (
                f" (the difference is small though detectable, permutation test p = {p_value:.2g})."
            )
        elif p_value is not None:
            finding += f" (permutation test p = {p_value:.2g})."
        else:
            finding += "."
    details = {
        key: metrics.get(key)
        for key in (
            "n_samples",
            "group_sizes",
            "mass_overlap",
            "dice",
            "iou",
            "cosine",
            "p_value",
            "significant",
            "significant_fraction",
            "divergence_peak",
            "divergence_peak_relative",
            "divergence_peak_value",
            "grid",
            "n_permutations",
        )
    }
    details["overlap_score"] = overlap
    details["location"] = where
    details["summary"] = result.summary
    return Signal("group_attention", "Attention by group", risk, finding, details, location=where)


def _mask_signal(report: dict[str, Any], location: str | None) -> Signal:
    metrics = report.get("metrics", {})
    finding = report.get("finding", "")
    if location:
        finding = f"Attention on the mask region ({location}): {finding}"
    return Signal(
        "mask_attention",
        "Attention in the given masks",
        report.get("risk", "UNKNOWN"),
        finding,
        metrics,
        location=location,
    )


def _unavailable(name: str, title: str, reason: str) -> Signal:
    return Signal(name, title, "UNKNOWN", f"Not available: {reason}", {"available": False})


def _rebuild_masks(
    masks: np.ndarray, widths: np.ndarray, heights: np.ndarray, preprocessing: Any
) -> np.ndarray:
    from shortcut_detect.data.images import load_image, mask_from_text

    out = np.zeros((len(masks), *preprocessing.size), dtype=np.float32)
    for i, (text, width, height) in enumerate(zip(masks, widths, heights)):
        spec = mask_from_text(text)
        if spec is None or not width or not height:
            continue
        kind, value = spec
        try:
            if kind == "box":
                out[i] = preprocessing.box_mask(value, (int(width), int(height)))
            else:
                out[i] = preprocessing.mask(load_image(value), (int(width), int(height)))
        except Exception:  # the mask was readable during the run; a vanished file is empty now
            continue
    return out


# -- embeddings --------------------------------------------------------------------------------


def embedding_tests(
    loaded: Any,
    paths: list[str],
    groups: list[str],
    preprocessing: Any,
    *,
    batch_size: int,
    num_workers: int,
) -> tuple[Signal, dict[str, Any]]:
    """Run the embedding-based ShortcutDetector on the model's penultimate features."""
    try:
        from shortcut_detect.detectors import ShortcutDetector
        from shortcut_detect.embeddings import extract_embeddings
    except ImportError as error:
        reason = f"the embedding tests are not installed in this version ({error})"
        return _unavailable("embeddings", "Embedding tests", reason), {
            "available": False,
            "reason": reason,
        }
    from shortcut_detect.data.images import ImageRecord, ImageRecordDataset, make_loader

    records = [
        ImageRecord(sample_id=str(i), index=i, path=p, label=-1, label_name="")
        for i, p in enumerate(paths)
    ]
    dataset = ImageRecordDataset(records, preprocessing)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    embeddings = extract_embeddings(loaded.model, None, loader, batch_size, progress=False)
    detector = ShortcutDetector(random_state=0).fit(embeddings, np.asarray(groups))
    risk = detector.overall_risk
    reasons = detector.reasons()
    finding = " ".join(reasons) if reasons else "Embedding tests ran."
    results = detector.get_results()
    report = {
        "available": True,
        "n_samples": len(paths),
        "embedding_dim": int(embeddings.shape[1]),
        "overall_risk": risk,
        "finding": finding,
        "reports": {
            name: {
                "risk": result.get("risk", "UNKNOWN"),
                "success": bool(result.get("success")),
                "finding": result.get("finding") or result.get("error", ""),
                "metrics": result.get("metrics", {}),
            }
            for name, result in results.items()
        },
    }
    signal = Signal(
        "embeddings",
        "Group information in the model's embeddings",
        risk,
        finding,
        {name: item["risk"] for name, item in report["reports"].items()},
    )
    return signal, jsonable(report)


# -- the analysis ------------------------------------------------------------------------------


def analyse_store(
    store: AuditStore,
    *,
    loaded: Any = None,
    n_permutations: int = 1000,
    max_analysis_samples: int = 5000,
    embedding_samples: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 2,
    log: Callable[[str], None] | None = None,
) -> Analysis:
    """Analyse an audit directory (see module docstring).

    Parameters
    ----------
    store:
        The audit store (complete or partial).
    loaded:
        The :class:`~shortcut_detect.models.LoadedModel`, needed only for the embedding tests.
    n_permutations:
        Permutations of the group-comparison test.
    max_analysis_samples:
        At most this many heatmaps (stratified by group) enter the group comparison and
        SpRAy; per-sample numbers and accuracy use every row.
    embedding_samples:
        At most this many images are re-read for the embedding tests (0 skips them).
    """
    from shortcut_detect.data.transforms import Preprocessing

    log = log or (lambda message: None)
    config = store.config
    class_names = list(config.get("class_names", []))
    preprocessing = Preprocessing.from_dict(config["preprocessing"])
    table = store.table(ANALYSIS_COLUMNS)
    data = _columns(table)
    n_rows = table.num_rows
    status = data.get("status", np.array([], dtype=object))
    ok = status == "ok"
    n_ok = int(ok.sum())
    failed_rows = np.flatnonzero(~ok)
    shard_status = store.shard_status()
    expected = int(config.get("n_samples", n_rows))
    summary: dict[str, Any] = {
        "verdict": None,
        "audit": {
            "directory": str(store.root),
            "complete": n_rows >= expected and not shard_status["unfinished"],
            "samples_expected": expected,
            "samples_stored": n_rows,
            "samples_analysed": n_ok,
            "samples_failed": len(failed_rows),
            "shards": shard_status,
        },
        "model": {
            "spec": config.get("model"),
            "weights": config.get("weights"),
            "layer": config.get("layer"),
            "method": config.get("method"),
            "target": config.get("target"),
            "class_names": class_names,
            "input_size": config.get("input_size"),
            "cam_size": config.get("cam_size"),
            "preprocessing": config.get("preprocessing_text"),
            "notes": config.get("model_notes", []),
        },
        "data": {
            "source": config.get("data"),
            "kind": config.get("data_kind"),
            "group_column": config.get("group_column"),
            "mask_column": config.get("mask_column"),
            "notes": config.get("data_notes", []),
        },
        "failed_images": [
            {"sample_id": data["sample_id"][i], "path": data["path"][i], "error": data["error"][i]}
            for i in failed_rows[:MAX_FAILED_LISTED]
        ],
        "notes": [],
    }
    signals: list[Signal] = []
    analysis = Analysis(summary=summary)
    if n_ok == 0:
        summary["notes"].append("No image could be analysed.")
        summary["verdict"] = decide_verdict([], has_groups=False, has_masks=False).to_dict()
        return analysis
    if not summary["audit"]["complete"]:
        summary["notes"].append(
            f"Partial audit: {n_rows} of {expected} samples are stored; the findings cover those."
        )

    rows = np.flatnonzero(ok)
    ids = data["sample_id"][rows]
    labels = data["label"][rows].astype(np.int64)
    predictions = data["prediction"][rows].astype(np.int64)
    confidence = _float_array(data["confidence"][rows])
    group_values = data["group"][rows]
    has_groups = bool(config.get("has_groups")) and any(g is not None for g in group_values)
    groups = np.array(["(none)" if g is None else str(g) for g in group_values], dtype=object)

    # accuracy --------------------------------------------------------------------------
    if (labels >= 0).any():
        summary["accuracy"] = accuracy_tables(
            labels, predictions, groups if has_groups else None, class_names
        )
    # misclassified ------------------------------------------------------------------------
    wrong = np.flatnonzero((labels >= 0) & (labels != predictions))
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    analysis.misclassified = [str(ids[i]) for i in order]
    by_pair: dict[str, int] = {}
    for i in wrong:
        key = f"{_class_name(class_names, labels[i])} -> {_class_name(class_names, predictions[i])}"
        by_pair[key] = by_pair.get(key, 0) + 1
    summary["misclassified"] = {
        "count": len(wrong),
        "by_true_and_predicted": dict(sorted(by_pair.items(), key=lambda kv: -kv[1])),
        "most_confident": [str(ids[i]) for i in order[:GRID_SIZE]],
    }

    # per-sample heatmap numbers -----------------------------------------------------------
    peak_y = _float_array(data["peak_y"][rows])
    peak_x = _float_array(data["peak_x"][rows])
    spreads = _float_array(data["entropy"][rows])
    summary["heatmaps"] = {
        "entropy_mean": _json_number(np.nanmean(spreads)) if np.isfinite(spreads).any() else None,
        "all_zero_heatmaps": int((np.nan_to_num(data["cam_max"][rows]) <= 0).sum()),
    }
    signals.append(peak_concentration_signal(peak_y, peak_x))

    # groups ---------------------------------------------------------------------------------
    analysis_positions = _subsample(ids, groups if has_groups else None, max_analysis_samples, seed)
    analysis_ids = [str(ids[i]) for i in analysis_positions]
    maps = store.heatmaps(analysis_ids)
    if has_groups:
        labelled = labels >= 0
        if labelled.any():
            signals.append(prediction_group_signal(labels, predictions, groups, class_names))
        sub_groups = groups[analysis_positions]
        counts = {g: int((sub_groups == g).sum()) for g in sorted(set(sub_groups.tolist()))}
        usable = [g for g, n in counts.items() if n >= 2 and g != "(none)"]
        if len(usable) >= 2:
            keep = np.isin(sub_groups, usable)
            from shortcut_detect.analysis.groups import compare_groups

            log("Comparing attention between groups...")
            result = compare_groups(
                maps[keep], sub_groups[keep].tolist(), n_permutations=n_permutations, seed=seed
            )
            order_groups = list(result.details.get("group_order", sorted(usable)))
            signals.append(_group_signal(result, order_groups))
            analysis.group_means = {str(g): np.asarray(m) for g, m in result.group_heatmaps.items()}
            analysis.divergence = np.asarray(result.divergence_regions)
            significance = result.details.get("significance_map")
            analysis.significance = None if significance is None else np.asarray(significance)
            analysis.group_comparison_figure = result
            association = _group_label_association(labels, groups)
            if association is not None and association >= 0.3:
                summary["notes"].append(
                    "Groups and labels are associated in this data (Cramér's V "
                    f"{association:.2f}); "
                    "part of the attention difference between groups may come from the classes."
                )
        else:
            signals.append(
                _unavailable(
                    "group_attention", "Attention by group", "fewer than 2 groups with 2+ samples"
                )
            )
    else:
        signals.append(
            _unavailable(
                "group_attention",
                "Attention by group",
                "no group column (pass --group-column with a manifest)",
            )
        )

    # masks -------------------------------------------------------------------------------------
    has_mask = np.array([bool(v) for v in data["has_mask"][rows]])
    fractions = _float_array(data["mask_attention"][rows])
    if has_mask.any():
        masked_positions = np.flatnonzero(has_mask & ~np.isnan(fractions))
        sub = masked_positions[_subsample(ids[masked_positions], None, max_analysis_samples, seed)]
        centre_y = np.nanmean(_float_array(data["mask_center_y"][rows][sub]))
        centre_x = np.nanmean(_float_array(data["mask_center_x"][rows][sub]))
        location = None
        if np.isfinite(centre_y) and np.isfinite(centre_x):
            from shortcut_detect.analysis.maps import location_words

            location = location_words((centre_y * 3 - 0.5, centre_x * 3 - 0.5), (3, 3))
        try:
            from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector

            sub_ids = [str(ids[i]) for i in sub]
            rebuilt = _rebuild_masks(
                data["mask"][rows][sub],
                data["width"][rows][sub],
                data["height"][rows][sub],
                preprocessing,
            )
            detector = GradCAMMaskOverlapDetector().fit(store.heatmaps(sub_ids), rebuilt)
            report = detector.get_report()
            signals.append(_mask_signal(report, location))
        except (ImportError, ValueError) as error:
            signals.append(
                _unavailable("mask_attention", "Attention in the given masks", str(error))
            )
        top = np.argsort(-np.nan_to_num(fractions, nan=-1.0), kind="stable")[:GRID_SIZE]
        top = [i for i in top if has_mask[i] and not np.isnan(fractions[i])]
        analysis.top_attention = (
            "Most attention on the mask region",
            "Images whose heatmap puts the largest share of its mass inside the given mask.",
            [str(ids[i]) for i in top],
            [float(fractions[i]) for i in top],
        )
    else:
        signals.append(
            _unavailable(
                "mask_attention",
                "Attention in the given masks",
                "no mask column (pass --mask-column with boxes or mask images of the suspected "
                "shortcut region)",
            )
        )

    if analysis.top_attention is None:
        analysis.top_attention = _divergence_top(analysis, maps, analysis_ids, spreads, ids)

    # SpRAy ----------------------------------------------------------------------------------------
    try:
        from shortcut_detect.detectors.spray import SpRAyDetector

        log("Clustering heatmaps (SpRAy)...")
        # SpRAy's spectral embedding grows with the cube of the sample count.
        spray_slots = _subsample(
            np.asarray(analysis_ids),
            groups[analysis_positions] if has_groups else None,
            MAX_SPRAY_SAMPLES,
            seed,
        )
        spray_positions = analysis_positions[spray_slots]
        spray_maps = maps[spray_slots]
        spray_ids = [analysis_ids[i] for i in spray_slots]
        detector = SpRAyDetector(random_state=seed).fit(
            heatmaps=spray_maps,
            labels=[_class_name(class_names, int(p)) for p in predictions[spray_positions]],
            group_labels=groups[spray_positions] if has_groups else None,
        )
        report = detector.get_report()
        clusters = report.get("details", {}).get("clusters", [])
        analysis.spray_ids = [
            [spray_ids[i] for i in cluster.get("representatives", [])] for cluster in clusters
        ]
        analysis.spray = report
        signals.append(
            Signal(
                "spray",
                "Explanation strategies (SpRAy)",
                report["risk"],
                report["finding"],
                jsonable(report.get("metrics", {})),
            )
        )
    except ImportError as error:
        signals.append(_unavailable("spray", "Explanation strategies (SpRAy)", str(error)))
    except ValueError as error:
        signals.append(_unavailable("spray", "Explanation strategies (SpRAy)", str(error)))

    # embeddings -------------------------------------------------------------------------------
    if not has_groups:
        signals.append(
            _unavailable(
                "embeddings", "Group information in the model's embeddings", "needs a group column"
            )
        )
    elif loaded is None:
        signals.append(
            _unavailable(
                "embeddings",
                "Group information in the model's embeddings",
                "the model was not loaded (report --no-model, or it could not be loaded again)",
            )
        )
    elif embedding_samples <= 0:
        signals.append(
            _unavailable(
                "embeddings",
                "Group information in the model's embeddings",
                "skipped (--embedding-samples 0)",
            )
        )
    else:
        positions = _subsample(ids, groups, embedding_samples, seed)
        positions = positions[groups[positions] != "(none)"]
        try:
            log("Embedding tests...")
            signal, report = embedding_tests(
                loaded,
                [str(data["path"][rows][i]) for i in positions],
                [str(groups[i]) for i in positions],
                preprocessing,
                batch_size=batch_size,
                num_workers=num_workers,
            )
            signals.append(signal)
            summary["embedding_tests"] = report
        except (ValueError, RuntimeError) as error:
            signals.append(
                _unavailable(
                    "embeddings", "Group information in the model's embeddings", str(error)
                )
            )

    verdict = decide_verdict(signals, has_groups=has_groups, has_masks=bool(has_mask.any()))
    summary["verdict"] = verdict.to_dict()
    summary["signals"] = [jsonable(s.to_dict()) for s in signals]
    if analysis.spray is not None:
        summary["spray"] = jsonable(
            {k: v for k, v in analysis.spray.items() if k != "details"}
            | {
                "clusters": [
                    {k: v for k, v in c.items() if k != "mean_map"}
                    for c in analysis.spray.get("details", {}).get("clusters", [])
                ]
            }
        )
    return analysis


def _class_name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def _group_label_association(labels: np.ndarray, groups: np.ndarray) -> float | None:
    """Cramér's V between group and label (labelled samples only)."""
    known = labels >= 0
    if known.sum() < 10:
        return None
    group_values = sorted(set(groups[known].tolist()))
    label_values = sorted(set(labels[known].tolist()))
    if len(group_values) < 2 or len(label_values) < 2:
        return None
    table = np.array(
        [
            [int(((groups == g) & (labels == c) & known).sum()) for c in label_values]
            for g in group_values
        ]
    )
    from scipy.stats.contingency import association

    return float(association(table, method="cramer"))


def _divergence_top(
    analysis: Analysis,
    maps: np.ndarray,
    analysis_ids: list[str],
    spreads: np.ndarray,
    ids: np.ndarray,
) -> tuple[str, str, list[str], list[float]]:
    """Samples with most attention where the groups differ (or the most focused maps)."""
    if analysis.divergence is not None and len(analysis.group_means) == 2:
        from shortcut_detect.analysis.regions import attention_in_region

        divergence = analysis.divergence
        peak = np.unravel_index(int(np.abs(divergence).argmax()), divergence.shape)
        sign = np.sign(divergence[peak]) or 1.0
        signed = divergence * sign
        region = signed >= 0.5 * signed.max()
        result = attention_in_region(maps, region.astype(np.float64))
        fractions = np.nan_to_num(result.fractions, nan=-1.0)
        top = np.argsort(-fractions, kind="stable")[:GRID_SIZE]
        return (
            "Most attention where the groups differ",
            "Images whose heatmap puts the largest share of its mass in the region where one "
            "group's mean attention exceeds the other's most.",
            [analysis_ids[i] for i in top],
            [float(fractions[i]) for i in top],
        )
    order = np.argsort(np.nan_to_num(spreads, nan=2.0), kind="stable")[:GRID_SIZE]
    return (
        "Most focused heatmaps",
        "Without groups or masks there is no shortcut region to score; these are the images "
        "whose attention is most concentrated (lowest spatial entropy).",
        [str(ids[i]) for i in order],
        [float(1.0 - spreads[i]) for i in order],
    )
