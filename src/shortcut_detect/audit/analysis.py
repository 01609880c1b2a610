"""From a finished store to findings: accuracy, group comparison, masks, SpRAy, embeddings.

:func:`analyse_store` reads the per-sample table and (a bounded sample of) the stored
heatmaps into an :class:`AuditData`, runs every function of :data:`SIGNALS` on it, and
returns an :class:`Analysis`: the JSON summary (with the verdict on top) plus the arrays the
report draws. Every test that cannot run (no groups, no masks, a missing optional dependency)
is listed with the reason instead of silently missing.

Adding a signal
---------------
Write ``def my_signal(data: AuditData) -> SignalOutput | None`` and add one line to
:data:`SIGNALS`. The :class:`SignalOutput` carries the :class:`Signal` (its risk, finding and
metrics; set ``primary=True`` on it to let it decide the verdict on its own), the sections it
adds to ``summary.json``, notes, and any arrays the report shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np

from shortcut_detect.analysis.maps import location_words
from shortcut_detect.audit.embedding_view import audit_embedding_map
from shortcut_detect.audit.store import AuditStore, load_interventions
from shortcut_detect.audit.verdict import Signal, decide_verdict
from shortcut_detect.common.logs import forward_log
from shortcut_detect.common.risk import Risk
from shortcut_detect.common.serialization import nan_to_none, to_jsonable

__all__ = [
    "SIGNALS",
    "Analysis",
    "AuditData",
    "SignalOutput",
    "analyse_store",
    "mask_location",
]

_LOG = logging.getLogger(__name__)

MAX_FAILED_LISTED = 500
GRID_SIZE = 12
MAX_SPRAY_SAMPLES = 1000
#: Share of the masks one ninth of the image must hold to be named alone.
DOMINANT_PLACE_SHARE = 0.8
_CORNERS = frozenset({"top-left", "top-right", "bottom-left", "bottom-right"})
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
    spray_clusters: dict[str, int] = field(default_factory=dict)
    embedding_points: dict[str, list[Any]] | None = None
    group_comparison_figure: Any = None


@dataclass
class SignalOutput:
    """What one signal function gives back.

    Attributes
    ----------
    signal:
        The finding that enters the verdict and the ``signals`` list of ``summary.json``.
    summary:
        Sections this signal adds to ``summary.json`` (e.g. ``{"embedding_tests": {...}}``).
    notes:
        Sentences for the summary's ``notes`` (caveats, not findings).
    report:
        :class:`Analysis` attributes the HTML report draws (e.g. ``group_means``).
    """

    signal: Signal
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditData:
    """The analysable (readable) samples of a store and the analysis settings.

    Per-sample arrays hold one entry per analysable sample, in data order. ``analysis_positions``
    index the bounded, group-stratified sample whose heatmaps (:attr:`maps`) enter the
    map-based tests.
    """

    store: AuditStore
    class_names: list[str]
    preprocessing: Any
    columns: dict[str, np.ndarray]
    groups: np.ndarray
    has_groups: bool
    analysis_positions: np.ndarray
    loaded: Any = None
    n_permutations: int = 1000
    max_analysis_samples: int = 5000
    embedding_samples: int = 1000
    seed: int = 0
    batch_size: int = 32
    num_workers: int = 2
    # (paths, preprocessing, batch_size) -> features; None: extract_audit_embeddings here
    embedder: Callable[[list[str], Any, int], np.ndarray] | None = None

    @cached_property
    def ids(self) -> np.ndarray:
        """Sample ids."""
        return self.columns["sample_id"]

    @cached_property
    def labels(self) -> np.ndarray:
        """True class indices (-1 unknown)."""
        return self.columns["label"].astype(np.int64)

    @cached_property
    def predictions(self) -> np.ndarray:
        """Predicted class indices."""
        return self.columns["prediction"].astype(np.int64)

    @cached_property
    def has_mask(self) -> np.ndarray:
        """Whether a mask was given, per sample."""
        return np.array([bool(v) for v in self.columns["has_mask"]], dtype=bool)

    def numbers(self, name: str) -> np.ndarray:
        """A numeric column as float64 (nulls become NaN)."""
        return _float_array(self.columns[name])

    @cached_property
    def analysis_ids(self) -> list[str]:
        """Ids of the samples whose heatmaps the map-based tests use."""
        return [str(self.ids[i]) for i in self.analysis_positions]

    @cached_property
    def maps(self) -> np.ndarray:
        """Stored heatmaps of :attr:`analysis_ids`, read on first use."""
        return self.store.heatmaps(self.analysis_ids)

    def class_name(self, index: int) -> str:
        """Name of a class index (the index itself when unknown)."""
        return _class_name(self.class_names, int(index))


SignalFunction = Callable[[AuditData], "SignalOutput | None"]


def _columns(table: Any) -> dict[str, np.ndarray]:
    """Columns as numpy arrays (numbers with nulls become NaN, strings stay objects)."""
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _float_array(values: np.ndarray) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _unavailable(name: str, title: str, reason: str) -> SignalOutput:
    return SignalOutput(
        Signal(name, title, Risk.UNKNOWN, f"Not available: {reason}", {"available": False})
    )


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
        return _class_name(class_names, index)

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


def _accuracy_gap_by_class(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray, class_names: list[str]
) -> dict[str, Any] | None:
    """The class whose accuracy differs most (significantly, if any) between groups."""
    from scipy.stats import chi2_contingency

    best: dict[str, Any] | None = None
    for c in np.unique(labels[labels >= 0]):
        in_class = labels == c
        counts = []
        rates = {}
        for g in sorted(set(groups[in_class].tolist())):
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
            "class": _class_name(class_names, int(c)),
            "accuracy_by_group": rates,
            "gap": gap,
            "p_value": p_value,
        }
        if best is None or (p_value < 0.05, gap) > (best["p_value"] < 0.05, best["gap"]):
            best = candidate
    return best


def _quoted(names: list[str]) -> str:
    """``'a'``, ``'a' and 'b'``, ``'a', 'b' and 'c'``."""
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def prediction_group_signal(
    labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray, class_names: list[str]
) -> Signal:
    """Do predictions depend on the group among images of the same true class?

    For each class, accuracy (recall) is compared across groups with a chi-squared test;
    the class with the largest significant gap is reported. A model that follows a
    shortcut gets images of one class right in the group that carries the shortcut and
    wrong in the other.
    """
    title = "Accuracy by group within each class"
    best = _accuracy_gap_by_class(labels, predictions, groups, class_names)
    if best is None:
        return Signal(
            "prediction_by_group",
            title,
            Risk.UNKNOWN,
            "Not enough labelled samples per group and class (10 needed) to compare.",
        )
    rates = best["accuracy_by_group"]
    if best["gap"] == 0:
        rate = next(iter(rates.values()))
        finding = (
            f"Among '{best['class']}' images, accuracy is {rate:.0%} in each of the groups "
            f"{_quoted(list(rates))}."
        )
        return Signal("prediction_by_group", title, Risk.LOW, finding, best)
    high_group = max(rates, key=rates.get)
    low_group = min(rates, key=rates.get)
    finding = (
        f"Among '{best['class']}' images, accuracy is {rates[high_group]:.0%} in group "
        f"'{high_group}' but {rates[low_group]:.0%} in group '{low_group}' "
        f"(chi-squared p = {best['p_value']:.2g})."
    )
    if best["p_value"] < 0.001 and best["gap"] >= 0.5:
        risk = Risk.HIGH
        finding += " Predictions follow the group more than the object."
    elif best["p_value"] < 0.01 and best["gap"] >= 0.15:
        risk = Risk.MODERATE
    else:
        risk = Risk.LOW
    return Signal("prediction_by_group", title, risk, finding, best)


def accuracy_by_group(data: AuditData) -> SignalOutput | None:
    """Signal: accuracy by group within each class (needs groups and labels)."""
    if not data.has_groups or not (data.labels >= 0).any():
        return None
    return SignalOutput(
        prediction_group_signal(data.labels, data.predictions, data.groups, data.class_names)
    )


# -- heatmaps ----------------------------------------------------------------------------------


def stratified_subsample(
    ids: np.ndarray, strata: np.ndarray | None, limit: int, seed: int
) -> np.ndarray:
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


def _ninths(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cell 0..8 of a 3x3 grid (row-major) of points with coordinates in [0, 1]."""
    rows = np.minimum((y * 3).astype(int), 2)
    cols = np.minimum((x * 3).astype(int), 2)
    return rows * 3 + cols


def _ninth_name(cell: int) -> str:
    return location_words((cell // 3, cell % 3), (3, 3))


def peak_concentration_signal(peak_y: np.ndarray, peak_x: np.ndarray) -> Signal:
    """Do many heatmaps peak in the same border cell of a 3x3 grid (corner tags, rulers)?"""
    defined = ~(np.isnan(peak_y) | np.isnan(peak_x))
    if defined.sum() < 10:
        return Signal(
            "peak_concentration",
            "Where heatmaps peak",
            Risk.UNKNOWN,
            "Fewer than 10 heatmaps with a peak.",
        )
    counts = np.bincount(_ninths(peak_y[defined], peak_x[defined]), minlength=9)
    top = int(counts.argmax())
    share = counts[top] / counts.sum()
    where = _ninth_name(top)
    border = top != 4
    finding = f"{share:.0%} of the heatmaps peak in the {where} ninth of the image."
    details = {
        "cell": where,
        "share": float(share),
        "shares": {_ninth_name(i): float(c / counts.sum()) for i, c in enumerate(counts)},
    }
    # Without groups or masks this is only a hint, so it stays below HIGH.
    risk = Risk.MODERATE if border and share >= 0.5 else Risk.LOW
    if risk is Risk.MODERATE:
        finding += (
            " Objects rarely sit in the same border region of most images; check for a tag, "
            "ruler or text there."
        )
    return Signal(
        "peak_concentration", "Where heatmaps peak", risk, finding, details, location=where
    )


def peak_concentration(data: AuditData) -> SignalOutput:
    """Signal: where the heatmaps peak."""
    return SignalOutput(peak_concentration_signal(data.numbers("peak_y"), data.numbers("peak_x")))


# -- attention by group -------------------------------------------------------------------------


_GROUP_DETAIL_KEYS = (
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


def _group_signal(result: Any, groups_order: list[Any]) -> Signal:
    metrics = result.metrics
    where = location_words(metrics["divergence_peak"], tuple(metrics["grid"]))
    overlap = float(result.overlap_score)
    p_value = metrics.get("p_value")
    significant = bool(metrics.get("significant"))
    shared = f"the group mean heatmaps share {overlap:.0%} of their attention mass"
    test = "no significance test run" if p_value is None else f"permutation test p = {p_value:.2g}"
    moved = 1.0 - overlap
    if significant and moved >= 0.15:
        risk = Risk.HIGH if moved >= 0.3 else Risk.MODERATE
        if len(groups_order) == 2:
            more = groups_order[1] if metrics["divergence_peak_value"] > 0 else groups_order[0]
            place = f"group '{more}' attends more to the {where} of the image"
        else:
            place = f"the groups differ most in the {where} of the image"
        finding = f"Attention differs between groups: {shared}; {place} ({test})."
    elif significant:
        risk = Risk.LOW
        finding = (
            f"Attention differs only slightly between groups: {shared} ({test}; a real but "
            "small difference)."
        )
    else:
        risk = Risk.LOW
        finding = f"Attention is similar across groups: {shared} ({test})."
    details = {key: metrics.get(key) for key in _GROUP_DETAIL_KEYS}
    details["overlap_score"] = overlap
    details["location"] = where
    details["summary"] = result.summary
    return Signal("group_attention", "Attention by group", risk, finding, details, location=where)


def group_attention(data: AuditData) -> SignalOutput:
    """Signal: do the groups' mean heatmaps differ (permutation test)?"""
    title = "Attention by group"
    if not data.has_groups:
        reason = "no group column (set group_column to a column of the manifest)"
        return _unavailable("group_attention", title, reason)
    sub_groups = data.groups[data.analysis_positions]
    counts = {g: int((sub_groups == g).sum()) for g in sorted(set(sub_groups.tolist()))}
    usable = [g for g, n in counts.items() if n >= 2 and g != "(none)"]
    if len(usable) < 2:
        return _unavailable("group_attention", title, "fewer than 2 groups with 2+ samples")
    from shortcut_detect.analysis.groups import compare_groups

    keep = np.isin(sub_groups, usable)
    _LOG.info("Comparing attention between groups...")
    result = compare_groups(
        data.maps[keep],
        sub_groups[keep].tolist(),
        n_permutations=data.n_permutations,
        seed=data.seed,
        inputs="heatmaps",
    )
    order_groups = list(result.details.get("group_order", sorted(usable)))
    significance = result.details.get("significance_map")
    output = SignalOutput(
        _group_signal(result, order_groups),
        report={
            "group_means": {str(g): np.asarray(m) for g, m in result.group_heatmaps.items()},
            "divergence": np.asarray(result.divergence_regions),
            "significance": None if significance is None else np.asarray(significance),
            "group_comparison_figure": result,
        },
    )
    association = _group_label_association(data.labels, data.groups)
    if association is not None and association >= 0.3:
        output.notes.append(
            f"Groups and labels are associated in this data (Cramér's V {association:.2f}); "
            "part of the attention difference between groups may come from the classes."
        )
    return output


# -- attention in masks -------------------------------------------------------------------------


def _places(shares: dict[str, float]) -> str:
    """``"top-left (40%), centre (35%) and bottom-right (25%)"``, largest share first."""
    ordered = sorted(shares.items(), key=lambda item: -item[1])
    parts = [f"{name} ({share:.0%})" for name, share in ordered]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def mask_location(centre_y: np.ndarray, centre_x: np.ndarray) -> str | None:
    """Where the masks are, in words, from where each one is (not from their average).

    Each mask counts in the ninth of the image (3x3 grid) that holds its centre. One ninth
    with at least :data:`DOMINANT_PLACE_SHARE` of the masks is named alone (``"top-left"``);
    masks in all four corners and nowhere else give ``"corners"``; otherwise the places with
    their shares (``"top-left (60%) and centre (40%)"``). ``None`` without any mask centre.
    """
    centre_y = np.asarray(centre_y, dtype=np.float64)
    centre_x = np.asarray(centre_x, dtype=np.float64)
    defined = np.isfinite(centre_y) & np.isfinite(centre_x)
    if not defined.any():
        return None
    counts = np.bincount(_ninths(centre_y[defined], centre_x[defined]), minlength=9)
    shares = {_ninth_name(i): c / counts.sum() for i, c in enumerate(counts) if c}
    top = max(shares, key=shares.get)
    if shares[top] >= DOMINANT_PLACE_SHARE:
        return top
    if set(shares) == _CORNERS:
        return "corners"
    return _places(shares)


def _rebuild_masks(
    masks: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    preprocessing: Any,
    paths: np.ndarray | None = None,
) -> np.ndarray:
    from shortcut_detect.data.images import load_image, mask_from_text, volume_region

    out = np.zeros((len(masks), *preprocessing.input_shape), dtype=np.float32)
    for i, (text, width, height) in enumerate(zip(masks, widths, heights)):
        spec = mask_from_text(text)
        if spec is None or not width or not height:
            continue
        kind, value = spec
        try:
            if preprocessing.is_3d and paths is not None:
                out[i] = preprocessing.volume_mask(volume_region(spec, str(paths[i])))
            elif kind == "box":
                out[i] = preprocessing.box_mask(value, (int(width), int(height)))
            else:
                out[i] = preprocessing.mask(load_image(value), (int(width), int(height)))
        except Exception:  # the mask was readable during the run; a vanished file is empty now
            continue
    return out


def _mask_signal(report: dict[str, Any], location: str | None) -> Signal:
    finding = report.get("finding", "")
    if location:
        finding = f"Attention on the mask region ({location}): {finding}"
    return Signal(
        "mask_attention",
        "Attention in the given masks",
        report.get("risk", Risk.UNKNOWN),
        finding,
        report.get("metrics", {}),
        location=location,
    )


def mask_attention(data: AuditData) -> SignalOutput:
    """Signal: how much attention falls inside the given masks (vs their area)."""
    title = "Attention in the given masks"
    if not data.has_mask.any():
        reason = (
            "no mask column (set mask_column to a column of boxes or mask images of the "
            "suspected shortcut region)"
        )
        return _unavailable("mask_attention", title, reason)
    fractions = data.numbers("mask_attention")
    masked = np.flatnonzero(data.has_mask & ~np.isnan(fractions))
    sub = masked[stratified_subsample(data.ids[masked], None, data.max_analysis_samples, data.seed)]
    location = mask_location(data.numbers("mask_center_y")[sub], data.numbers("mask_center_x")[sub])
    try:
        from shortcut_detect.detectors.mask_overlap import GradCAMMaskOverlapDetector

        rebuilt = _rebuild_masks(
            data.columns["mask"][sub],
            data.columns["width"][sub],
            data.columns["height"][sub],
            data.preprocessing,
            data.columns["path"][sub],
        )
        heatmaps = data.store.heatmaps([str(data.ids[i]) for i in sub])
        report = GradCAMMaskOverlapDetector().fit(heatmaps, rebuilt).get_report()
        output = SignalOutput(_mask_signal(report, location))
    except (ImportError, ValueError) as error:
        output = _unavailable("mask_attention", title, str(error))
    top = np.argsort(-np.nan_to_num(fractions, nan=-1.0), kind="stable")[:GRID_SIZE]
    top = [i for i in top if data.has_mask[i] and not np.isnan(fractions[i])]
    output.report["top_attention"] = (
        "Most attention on the mask region",
        "Images whose heatmap puts the largest share of its mass inside the given mask.",
        [str(data.ids[i]) for i in top],
        [float(fractions[i]) for i in top],
    )
    return output


# -- SpRAy ---------------------------------------------------------------------------------------


def _spray_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The SpRAy report for ``summary.json``: no details, clusters without their mean maps."""
    clusters = report.get("details", {}).get("clusters", [])
    return to_jsonable(
        {k: v for k, v in report.items() if k != "details"}
        | {"clusters": [{k: v for k, v in c.items() if k != "mean_map"} for c in clusters]}
    )


def spray(data: AuditData) -> SignalOutput:
    """Signal: do the heatmaps form clusters (explanation strategies) tied to a group?"""
    title = "Explanation strategies (SpRAy)"
    try:
        from shortcut_detect.detectors.spray import SpRAyDetector

        _LOG.info("Clustering heatmaps (SpRAy)...")
        strata = data.groups[data.analysis_positions] if data.has_groups else None
        # SpRAy's spectral embedding grows with the cube of the sample count.
        slots = stratified_subsample(
            np.asarray(data.analysis_ids), strata, MAX_SPRAY_SAMPLES, data.seed
        )
        positions = data.analysis_positions[slots]
        spray_ids = [data.analysis_ids[i] for i in slots]
        detector = SpRAyDetector(random_state=data.seed).fit(
            heatmaps=data.maps[slots],
            labels=[data.class_name(p) for p in data.predictions[positions]],
            group_labels=data.groups[positions] if data.has_groups else None,
        )
        report = detector.get_report()
    except (ImportError, ValueError) as error:
        return _unavailable("spray", title, str(error))
    clusters = report.get("details", {}).get("clusters", [])
    signal = Signal(
        "spray", title, report["risk"], report["finding"], to_jsonable(report.get("metrics", {}))
    )
    return SignalOutput(
        signal,
        summary={"spray": _spray_summary(report)},
        report={
            "spray": report,
            "spray_ids": [
                [spray_ids[i] for i in cluster.get("representatives", [])] for cluster in clusters
            ],
            "spray_clusters": dict(
                zip(spray_ids, report.get("details", {}).get("assignments", []))
            ),
        },
    )


# -- embeddings --------------------------------------------------------------------------------

_EMBEDDINGS_TITLE = "Group information in the model's embeddings"


def extract_audit_embeddings(
    loaded: Any, paths: list[str], preprocessing: Any, *, batch_size: int, num_workers: int
) -> np.ndarray:
    """The model's penultimate features of the images ``paths``."""
    from shortcut_detect.data.images import ImageRecord, ImageRecordDataset, make_loader
    from shortcut_detect.embeddings import extract_embeddings

    records = [
        ImageRecord(sample_id=str(i), index=i, path=p, label=-1, label_name="")
        for i, p in enumerate(paths)
    ]
    dataset = ImageRecordDataset(records, preprocessing)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    return extract_embeddings(loaded.model, None, loader, batch_size, progress=False)


def embedding_tests(embeddings: np.ndarray, groups: list[str]) -> tuple[Signal, dict[str, Any]]:
    """Run the embedding-based ShortcutDetector on the model's penultimate features."""
    from shortcut_detect.detectors import ShortcutDetector

    detector = ShortcutDetector(random_state=0).fit(embeddings, np.asarray(groups))
    risk = detector.overall_risk
    reasons = detector.reasons()
    finding = " ".join(reasons) if reasons else "Embedding tests ran."
    results = detector.get_results()
    report = {
        "available": True,
        "n_samples": len(groups),
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
        _EMBEDDINGS_TITLE,
        risk,
        finding,
        {name: item["risk"] for name, item in report["reports"].items()},
    )
    return signal, to_jsonable(report)


def embeddings(data: AuditData) -> SignalOutput:
    """Signal: can the groups be told apart from the model's embeddings?"""
    if not data.has_groups:
        return _unavailable("embeddings", _EMBEDDINGS_TITLE, "needs a group column")
    if data.loaded is None:
        reason = "the model was not loaded (pass loaded=, or it could not be loaded again)"
        return _unavailable("embeddings", _EMBEDDINGS_TITLE, reason)
    if data.embedding_samples <= 0:
        return _unavailable("embeddings", _EMBEDDINGS_TITLE, "skipped (embedding_samples=0)")
    positions = stratified_subsample(data.ids, data.groups, data.embedding_samples, data.seed)
    positions = positions[data.groups[positions] != "(none)"]
    try:
        _LOG.info("Embedding tests...")
        paths = [str(data.columns["path"][i]) for i in positions]
        if data.embedder is not None:
            features = data.embedder(paths, data.preprocessing, data.batch_size)
        else:
            features = extract_audit_embeddings(
                data.loaded,
                paths,
                data.preprocessing,
                batch_size=data.batch_size,
                num_workers=data.num_workers,
            )
        signal, report = embedding_tests(features, [str(data.groups[i]) for i in positions])
    except ImportError as error:
        reason = f"the embedding tests are not installed in this version ({error})"
        output = _unavailable("embeddings", _EMBEDDINGS_TITLE, reason)
        output.summary["embedding_tests"] = {"available": False, "reason": reason}
        return output
    except (ValueError, RuntimeError) as error:
        return _unavailable("embeddings", _EMBEDDINGS_TITLE, str(error))
    output = SignalOutput(signal, summary={"embedding_tests": report})
    try:
        labels = data.labels[positions]
        section, points = audit_embedding_map(
            features,
            [str(data.ids[i]) for i in positions],
            labels=[data.class_name(c) if c >= 0 else None for c in labels],
            groups=[str(data.groups[i]) for i in positions],
            predictions=[data.class_name(p) for p in data.predictions[positions]],
            seed=data.seed,
        )
    except (ImportError, ValueError) as error:
        output.notes.append(f"No embedding map: {error}")
        return output
    output.summary["embedding_map"] = section
    output.report["embedding_points"] = points
    return output


# -- interventions ---------------------------------------------------------------------------

_INTERVENTIONS_TITLE = "Interventions: does removing the region change predictions?"
_SUMMARY_ENTRY_KEYS = (
    "source",
    "description",
    "location",
    "box",
    "confirmed",
    "object_like",
    "pattern_separation",
    "pattern_consistency",
    "ninths",
    "reading",
    "sentence",
    "effect",
    "interval",
    "p",
    "flip_rate",
    "flip_interval",
    "control_flip_rate",
    "control_drop",
    "fill",
    "n_tested",
    "salient",
    "attention_enrichment",
    "examples",
)


def interventions(data: AuditData) -> SignalOutput:
    """Signal: does the model rely on the given or discovered regions (intervention stage)?

    A confirmed reliance (removing the region changes predictions significantly more than
    removing a control region) is HIGH and primary; otherwise LOW, with each candidate's
    reading. A discovered region the model relies on but that holds no fixed pattern reads
    as part of the object (``object_like``) and is not a shortcut. Regions found not relied
    on, and those read as part of the object, are listed in the metrics (``not_relied_on``,
    ``object_like``), which :func:`~shortcut_detect.audit.verdict.decide_verdict` uses to
    cap attention signals.
    """
    stored = load_interventions(data.store)
    stale = stored is not None and stored["fingerprint"].get("n_samples_stored") != len(data.ids)
    if stored is None or stale:
        reason = (
            "the stored intervention results cover an earlier state of the store; rerun "
            "`shortcut-detect audit` with --intervention-samples N to redo them"
            if stale
            else "the intervention stage did not run (--intervention-samples 0, or the store "
            "was not finished by `shortcut-detect audit`)"
        )
        output = _unavailable("interventions", _INTERVENTIONS_TITLE, reason)
        output.summary["interventions"] = []
        return output
    entries = [
        {key: entry.get(key) for key in _SUMMARY_ENTRY_KEYS} for entry in stored["candidates"]
    ]
    confirmed = [entry for entry in entries if entry["confirmed"]]
    object_like = [entry for entry in entries if entry.get("object_like")]
    rejected = [entry for entry in entries if not entry["confirmed"] and entry not in object_like]
    metrics = {
        "n_samples": stored.get("n_samples"),
        "n_candidates": len(entries),
        "n_confirmed": len(confirmed),
        "n_object_like": len(object_like),
        "tried": [f"{e['source']}: {e['location']}" for e in entries],
        "not_relied_on": [
            {
                "source": e["source"],
                "location": e["location"],
                "ninths": e.get("ninths") or [],
                "reading": e["reading"],
            }
            for e in rejected
        ],
        # Relied on, but part of the object: attention there is explained, not a shortcut.
        "object_like": [
            {
                "source": e["source"],
                "location": e["location"],
                "ninths": e.get("ninths") or [],
                "reading": "part of the object",
            }
            for e in object_like
        ],
    }
    if confirmed:
        risk = Risk.HIGH
        finding = " ".join(entry["sentence"] for entry in confirmed)
        location = confirmed[0]["location"]
    elif entries:
        risk, location = Risk.LOW, None
        finding = (
            f"Tried {len(entries)} candidate region(s) on {stored.get('n_samples')} images; "
            "none is a shortcut: " + " ".join(entry["sentence"] for entry in entries)
        )
    else:
        risk, location = Risk.LOW, None
        finding = "No candidate region to test (no mask column, and discovery found none)."
    signal = Signal(
        "interventions", _INTERVENTIONS_TITLE, risk, finding, metrics, location=location
    )
    return SignalOutput(signal, summary={"interventions": entries}, notes=stored.get("notes", []))


#: Every signal of an audit, in the order of ``summary.json``: name -> function.
SIGNALS: dict[str, SignalFunction] = {
    "peak_concentration": peak_concentration,
    "prediction_by_group": accuracy_by_group,
    "group_attention": group_attention,
    "mask_attention": mask_attention,
    "spray": spray,
    "embeddings": embeddings,
    "interventions": interventions,
}
# Sections placed after the ``signals`` list of summary.json (where they always were).
_SECTIONS_AFTER_SIGNALS = ("spray", "interventions")


# -- the analysis ------------------------------------------------------------------------------


def _overview(store: AuditStore, data: dict[str, np.ndarray], n_rows: int) -> dict[str, Any]:
    """The first sections of ``summary.json``: what was audited, with which model and data."""
    config = store.config
    ok = data.get("status", np.array([], dtype=object)) == "ok"
    failed_rows = np.flatnonzero(~ok)
    shard_status = store.shard_status()
    expected = int(config.get("n_samples", n_rows))
    return {
        "verdict": None,
        "audit": {
            "directory": str(store.root),
            "complete": n_rows >= expected and not shard_status["unfinished"],
            "samples_expected": expected,
            "samples_stored": n_rows,
            "samples_analysed": int(ok.sum()),
            "samples_failed": len(failed_rows),
            "shards": shard_status,
        },
        "model": {
            "spec": config.get("model"),
            "weights": config.get("weights"),
            "layer": config.get("layer"),
            "method": config.get("method"),
            "target": config.get("target"),
            "class_names": list(config.get("class_names", [])),
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
            "window": config.get("window"),
            "slices": config.get("slices"),
            "notes": config.get("data_notes", []),
        },
        "failed_images": [
            {"sample_id": data["sample_id"][i], "path": data["path"][i], "error": data["error"][i]}
            for i in failed_rows[:MAX_FAILED_LISTED]
        ],
        "notes": [],
    }


def _descriptive_sections(data: AuditData, analysis: Analysis) -> dict[str, Any]:
    """Accuracy tables, misclassified images and heatmap statistics (no risk attached)."""
    labels, predictions, ids = data.labels, data.predictions, data.ids
    sections: dict[str, Any] = {}
    if (labels >= 0).any():
        sections["accuracy"] = accuracy_tables(
            labels, predictions, data.groups if data.has_groups else None, data.class_names
        )
    wrong = np.flatnonzero((labels >= 0) & (labels != predictions))
    order = wrong[np.argsort(-data.numbers("confidence")[wrong], kind="stable")]
    analysis.misclassified = [str(ids[i]) for i in order]
    by_pair: dict[str, int] = {}
    for i in wrong:
        key = f"{data.class_name(labels[i])} -> {data.class_name(predictions[i])}"
        by_pair[key] = by_pair.get(key, 0) + 1
    sections["misclassified"] = {
        "count": len(wrong),
        "by_true_and_predicted": dict(sorted(by_pair.items(), key=lambda kv: -kv[1])),
        "most_confident": [str(ids[i]) for i in order[:GRID_SIZE]],
    }
    spreads = data.numbers("entropy")
    sections["heatmaps"] = {
        "entropy_mean": nan_to_none(np.nanmean(spreads)) if np.isfinite(spreads).any() else None,
        "all_zero_heatmaps": int((np.nan_to_num(data.columns["cam_max"]) <= 0).sum()),
    }
    return sections


def _audit_data(store: AuditStore, columns: dict[str, np.ndarray], **settings: Any) -> AuditData:
    from shortcut_detect.data.transforms import Preprocessing

    config = store.config
    ok_columns = {name: values[columns["status"] == "ok"] for name, values in columns.items()}
    group_values = ok_columns["group"]
    has_groups = bool(config.get("has_groups")) and any(g is not None for g in group_values)
    groups = np.array(["(none)" if g is None else str(g) for g in group_values], dtype=object)
    positions = stratified_subsample(
        ok_columns["sample_id"],
        groups if has_groups else None,
        settings["max_analysis_samples"],
        settings["seed"],
    )
    return AuditData(
        store=store,
        class_names=list(config.get("class_names", [])),
        preprocessing=Preprocessing.from_dict(config["preprocessing"]),
        columns=ok_columns,
        groups=groups,
        has_groups=has_groups,
        analysis_positions=positions,
        **settings,
    )


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
    embedder: Callable[[list[str], Any, int], np.ndarray] | None = None,
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
    seed, batch_size, num_workers:
        Random seed of the subsampling and tests; batching of the embedding tests.
    embedder:
        ``(paths, preprocessing, batch_size) -> (n, d) features`` to use instead of extracting
        the embeddings in this process (the Ray executor's actor pool).
    log:
        Deprecated: progress messages go to the ``shortcut_detect.audit.analysis`` logger;
        a callable given here receives them too.
    """
    with forward_log(log, deprecated="analyse_store(log=...)"):
        table = store.table(ANALYSIS_COLUMNS)
        columns = _columns(table)
        summary = _overview(store, columns, table.num_rows)
        analysis = Analysis(summary=summary)
        audit = summary["audit"]
        if audit["samples_analysed"] == 0:
            summary["notes"].append("No image could be analysed.")
            summary["verdict"] = decide_verdict([], has_groups=False, has_masks=False).to_dict()
            return analysis
        if not audit["complete"]:
            summary["notes"].append(
                f"Partial audit: {audit['samples_stored']} of {audit['samples_expected']} samples "
                "are stored; the findings cover those."
            )
        data = _audit_data(
            store,
            columns,
            loaded=loaded,
            n_permutations=n_permutations,
            max_analysis_samples=max_analysis_samples,
            embedding_samples=embedding_samples,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            embedder=embedder,
        )
        summary.update(_descriptive_sections(data, analysis))
        outputs = [output for function in SIGNALS.values() if (output := function(data))]
        analysis_fields = {f.name for f in fields(Analysis)}
        for output in outputs:
            summary["notes"].extend(output.notes)
            for name, value in output.report.items():
                if name not in analysis_fields:
                    raise ValueError(f"signal {output.signal.name!r} sets unknown report {name!r}")
                setattr(analysis, name, value)
        if analysis.top_attention is None:
            analysis.top_attention = _divergence_top(analysis, data)
        signals = [output.signal for output in outputs]
        verdict = decide_verdict(
            signals, has_groups=data.has_groups, has_masks=bool(data.has_mask.any())
        )
        summary["verdict"] = verdict.to_dict()
        sections = {key: value for output in outputs for key, value in output.summary.items()}
        summary.update({k: v for k, v in sections.items() if k not in _SECTIONS_AFTER_SIGNALS})
        summary["signals"] = [to_jsonable(s.to_dict()) for s in signals]
        summary.update({k: v for k, v in sections.items() if k in _SECTIONS_AFTER_SIGNALS})
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


def _divergence_top(analysis: Analysis, data: AuditData) -> tuple[str, str, list[str], list[float]]:
    """Samples with most attention where the groups differ (or the most focused maps)."""
    if analysis.divergence is not None and len(analysis.group_means) == 2:
        from shortcut_detect.analysis.regions import attention_in_region

        divergence = analysis.divergence
        peak = np.unravel_index(int(np.abs(divergence).argmax()), divergence.shape)
        sign = np.sign(divergence[peak]) or 1.0
        signed = divergence * sign
        region = signed >= 0.5 * signed.max()
        result = attention_in_region(data.maps, region.astype(np.float64))
        fractions = np.nan_to_num(result.fractions, nan=-1.0)
        top = np.argsort(-fractions, kind="stable")[:GRID_SIZE]
        return (
            "Most attention where the groups differ",
            "Images whose heatmap puts the largest share of its mass in the region where one "
            "group's mean attention exceeds the other's most.",
            [data.analysis_ids[i] for i in top],
            [float(fractions[i]) for i in top],
        )
    spreads = data.numbers("entropy")
    order = np.argsort(np.nan_to_num(spreads, nan=2.0), kind="stable")[:GRID_SIZE]
    return (
        "Most focused heatmaps",
        "Without groups or masks there is no shortcut region to score; these are the images "
        "whose attention is most concentrated (lowest spatial entropy).",
        [str(data.ids[i]) for i in order],
        [float(1.0 - spreads[i]) for i in order],
    )
