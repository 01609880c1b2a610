"""``ShortcutDetector``: runs several shortcut tests on one data set and sums them up.

It only orchestrates: each method is a small detector class (see
:mod:`shortcut_detect.detectors.registry`) with ``fit(...) -> self`` and
``get_report() -> dict``. A method that cannot run reports why (``success=False``) without
stopping the others.

Each embedding method is ``LOW`` unless its test of "no group information" is significant at
``alpha`` (0.01) *and* the effect reaches its moderate (``MODERATE``) or high (``HIGH``)
threshold. Overall risk: ``HIGH`` if at least two methods rate HIGH (all, if fewer ran),
``MODERATE`` if any method rates MODERATE or HIGH, otherwise ``LOW`` (see
:class:`ShortcutDetector` for why this differs from the audit's verdict).

Calibration (``benchmarks/bench_detector_false_alarms.py``, default settings):

- No group signal (standard normal embeddings, random groups), 100 seeds each: overall
  ``LOW`` in 99/100 (2 groups, N=300, D=32), 99/100 (N=120, D=256), 99/100 (3 groups,
  N=300, D=64) and 97/100 (groups 80/20, N=200, D=16).
- Planted signal, N=300, D=32: group 1 shifted by Cohen's d in 4 dimensions (Mahalanobis
  distance 2d). Overall ``HIGH`` in 20/20 seeds from d = 0.75; per method ``HIGH`` in 20/20
  from d = 0.75 (probe, geometric), d = 1.0 (statistical) and d = 1.5 (hbac).
"""

from __future__ import annotations

import copy
import inspect
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect import __version__
from shortcut_detect.common.progress import ProgressBar
from shortcut_detect.common.risk import Risk
from shortcut_detect.detectors.base import BaseDetector, ParamsMixin, failed_report
from shortcut_detect.detectors.embedding_base import (
    DEFAULT_ALPHA,
    EmbeddingDetector,
    as_embeddings,
    as_group_labels,
)
from shortcut_detect.detectors.registry import (
    EMBEDDING_METHODS,
    available_detectors,
    get_detector_class,
)
from shortcut_detect.detectors.report import render_report, report_format
from shortcut_detect.embeddings import PROGRESS_MIN_BATCHES, EmbeddingExtractor
from shortcut_detect.gradcam import GradCAMHeatmapGenerator

__all__ = ["DEFAULT_METHODS", "ShortcutDetector", "overall_risk"]

DEFAULT_METHODS = EMBEDDING_METHODS
_INPUT_ALIASES = {"groups": "group_labels"}
_REPORT_KEYS = ("method", "success", "metrics", "risk", "finding", "details")
_LOADER_KEYS = {
    "images": ("image", "images", "pixel_values", "input", "inputs", "x"),
    "labels": ("label", "labels", "target", "targets", "y"),
    "groups": ("group", "groups", "group_label", "group_labels", "attribute"),
    "masks": ("mask", "masks", "shortcut_mask", "shortcut_masks"),
}
# Inputs a method loader may provide as attributes of an object (besides the names the
# method's ``fit`` asks for); settings such as ``batch_size`` are never read this way.
_DATA_INPUTS = ("embeddings", "group_labels", "groups", "labels", "heatmaps", "masks", "images")

MethodSpec = str | BaseDetector
MethodLoader = Callable[[], Any] | Mapping[str, Any] | Any


def overall_risk(reports: Mapping[str, Mapping[str, Any]], high_agreement: int = 2) -> str:
    """Combine method risks (only methods that ran count).

    ``HIGH`` if at least ``high_agreement`` methods rate HIGH (all of them, if fewer ran);
    ``MODERATE`` if any method rates MODERATE or HIGH; ``LOW`` otherwise; ``UNKNOWN`` if no
    method ran.
    """
    risks = [_risk_of(r) for r in reports.values() if r.get("success")]
    if not risks:
        return Risk.UNKNOWN.value
    n_high = risks.count(Risk.HIGH)
    if n_high >= min(high_agreement, len(risks)):
        return Risk.HIGH.value
    if Risk.highest(risks) >= Risk.MODERATE:
        return Risk.MODERATE.value
    return Risk.LOW.value


def _risk_of(report: Mapping[str, Any]) -> Risk:
    """The risk of a report; an unrecognised value counts as UNKNOWN."""
    try:
        return Risk.parse(report.get("risk"))
    except ValueError:
        return Risk.UNKNOWN


def _numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _accepts(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _fit_arguments(detector: BaseDetector, pool: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs ``detector.fit`` asks for, by parameter name; raises if one is missing."""
    parameters = inspect.signature(detector.fit).parameters
    kwargs: dict[str, Any] = {}
    missing = []
    for name, parameter in parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        value = pool.get(name)
        if value is None and name in _INPUT_ALIASES:
            value = pool.get(_INPUT_ALIASES[name])
        if value is not None:
            kwargs[name] = value
        elif parameter.default is inspect.Parameter.empty:
            missing.append(name)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for name, value in pool.items():
            if value is not None and name not in kwargs and name not in _INPUT_ALIASES:
                kwargs.setdefault(name, value)
    if missing:
        listed = ", ".join(f"{name}=..." for name in missing)
        raise ValueError(
            f"needs {listed}; pass it to ShortcutDetector.fit(embeddings, group_labels, "
            f"{listed}) or use fit_from_loaders(...)"
        )
    return kwargs


def _method_items(methods: Any) -> list[tuple[str, MethodSpec]]:
    """``(name, spec)`` pairs of a ``methods`` argument (a name, a detector, a list or a
    mapping); a detector instance is named by its ``name``."""
    if isinstance(methods, (str, BaseDetector)):
        methods = [methods]
    if isinstance(methods, Mapping):
        return list(methods.items())
    return [(m if isinstance(m, str) else getattr(m, "name", type(m).__name__), m) for m in methods]


def _input_pool(
    embeddings: Any,
    group_labels: Any,
    labels: Any,
    heatmaps: Any,
    masks: Any,
    extra: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked inputs every method picks from, and what the report says about them.

    Group labels may be missing only in the loader form, for methods that do not need them.
    """
    X = None if embeddings is None else as_embeddings(embeddings)
    group_counts: dict[str, int] = {}
    if group_labels is not None:
        codes, groups = as_group_labels(group_labels, None if X is None else len(X))
        n_samples: int | None = len(codes)
        counts = np.bincount(codes, minlength=len(groups))
        group_counts = {str(g): int(c) for g, c in zip(groups, counts)}
    else:
        n_samples = _sample_count(X, heatmaps, masks, labels, extra)
    task = None
    if labels is not None:
        task = _numpy(labels)
        if task.ndim != 1 or len(task) != n_samples:
            raise ValueError(
                f"labels must be 1-D with one entry per sample ({n_samples}), "
                f"got shape {task.shape}"
            )
    # Heatmaps are per sample; masks may also be one shared mask or a box, so only a
    # stack of masks (N, H, W) is checked.
    per_sample = {"heatmaps": heatmaps}
    if masks is not None and np.ndim(masks) == 3:
        per_sample["masks"] = masks
    counted_by = " (group labels)" if group_labels is not None else ""
    for name, value in per_sample.items():
        if value is not None and len(value) != n_samples:
            raise ValueError(
                f"{name} has {len(value)} entries but there are {n_samples} samples"
                f"{counted_by}; they must describe the same samples in order"
            )
    pool: dict[str, Any] = {
        "embeddings": X,
        "group_labels": None if group_labels is None else _numpy(group_labels),
        "labels": task,
        "heatmaps": heatmaps,
        "masks": masks,
        **extra,
    }
    info = {
        "n_samples": n_samples,
        "n_features": None if X is None else int(X.shape[1]),
        "groups": group_counts,
        "task_labels": task is not None,
        "heatmaps": heatmaps is not None,
        "masks": masks is not None,
    }
    return pool, info


def _sample_count(
    X: np.ndarray | None, heatmaps: Any, masks: Any, labels: Any, extra: Mapping[str, Any]
) -> int | None:
    """The number of samples when there are no group labels to count them by."""
    if X is not None:
        return len(X)
    for value in (heatmaps, labels, masks if np.ndim(masks) == 3 else None, extra.get("images")):
        if value is not None:
            return len(value)
    return None


def _load_method_inputs(name: str, loader: MethodLoader, wanted: Sequence[str]) -> dict[str, Any]:
    """The inputs one method's loader gives, as a dict (see ``fit_from_loaders``)."""
    source = loader() if callable(loader) and not isinstance(loader, Mapping) else loader
    if isinstance(source, Mapping):
        return dict(source)
    readable = list(dict.fromkeys([*_DATA_INPUTS, *wanted]))
    if any(hasattr(source, key) for key in _DATA_INPUTS):
        return {key: getattr(source, key) for key in readable if hasattr(source, key)}
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes, np.ndarray)):
        parts: dict[str, list[np.ndarray]] = {}
        for batch in source:
            if not isinstance(batch, Mapping):
                raise TypeError(
                    f"the loader of method {name!r} yielded a {type(batch).__name__}; "
                    "batches must be dicts of inputs such as {'heatmaps': ..., 'masks': ...}"
                )
            for key, value in batch.items():
                parts.setdefault(str(key), []).append(_numpy(value))
        if not parts:
            raise ValueError(f"the loader of method {name!r} yielded no batches")
        return {key: np.concatenate(values) for key, values in parts.items()}
    raise TypeError(
        f"the loader of method {name!r} gave a {type(source).__name__}; a loader returns a dict "
        f"of the method's inputs (it reads {', '.join(wanted) or 'none'}), an object with them "
        "as attributes, or an iterable of dict batches"
    )


def _combined_inputs(per_method: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What the report says about the inputs when each method had its own loader."""
    infos = list(per_method.values())
    counts = [info["n_samples"] for info in infos if info["n_samples"] is not None]
    return {
        "n_samples": max(counts, default=None),
        "n_features": next((i["n_features"] for i in infos if i["n_features"] is not None), None),
        "groups": next((dict(info["groups"]) for info in infos if info["groups"]), {}),
        "task_labels": any(info["task_labels"] for info in infos),
        "heatmaps": any(info["heatmaps"] for info in infos),
        "masks": any(info["masks"] for info in infos),
        "samples_per_method": {name: info["n_samples"] for name, info in per_method.items()},
    }


class ShortcutDetector(ParamsMixin):
    """Run several shortcut tests and combine them into one risk, summary and report.

    Follows scikit-learn's conventions: the parameters are stored as given and checked in
    ``fit`` (or ``fit_from_loaders``), and ``get_params`` / ``set_params`` let
    ``sklearn.base.clone`` copy an unfitted detector.

    Parameters
    ----------
    methods:
        Method names (``"probe"``, ``"statistical"``, ``"hbac"``, ``"geometric"``,
        ``"gradcam_mask_overlap"``, ``"spray"`` or any registered name) and/or detector
        instances; a mapping ``{name: method}`` names them yourself. Default: the four
        embedding methods.
    random_state:
        Seed given to every method that takes one (splits, clustering, permutations).
    alpha:
        Significance level given to every method that takes one (default 0.01).
    method_params:
        Constructor arguments per method name, e.g. ``{"probe": {"model": "mlp"}}``.
    high_agreement:
        How many methods must rate HIGH for an overall HIGH (all of them if fewer ran).

    Notes
    -----
    **Overall risk.** ``HIGH`` when at least ``high_agreement`` (2) of the methods that ran
    rate HIGH (all of them, if fewer ran); ``MODERATE`` when any rates MODERATE or HIGH;
    ``LOW`` otherwise; ``UNKNOWN`` when none ran.

    **Why this differs from the audit's verdict** (:mod:`shortcut_detect.audit.verdict`).
    The audit ranks *primary* signals, which measure what the model uses (attention by
    group or in a mask, accuracy by group): the highest one decides, since one such
    signal is direct evidence. The detector's default methods all measure what the
    embeddings *encode*: a model may encode a visible marker that it hardly uses (a probe
    decodes it while the geometric and clustering views show no dominant group
    structure), so one method alone gives MODERATE and HIGH needs two kinds of evidence to
    agree. The audit treats this embedding evidence the same way, as a secondary signal
    that supports a primary finding but never decides on its own.

    Examples
    --------
    >>> detector = ShortcutDetector(methods=["hbac", "probe", "statistical", "geometric"])
    >>> detector.fit(embeddings, group_labels)                    # doctest: +SKIP
    >>> detector.get_results()["probe"]["accuracy"]               # doctest: +SKIP
    >>> print(detector.summary())                                 # doctest: +SKIP
    >>> detector.generate_report("report.html")                   # doctest: +SKIP

    Heatmap methods with a loader per method (each returns that method's inputs):

    >>> detector = ShortcutDetector(methods=["gradcam_mask_overlap"])
    >>> detector.fit_from_loaders(
    ...     {"gradcam_mask_overlap": lambda: {"heatmaps": maps, "masks": masks}}
    ... )                                                         # doctest: +SKIP
    """

    def __init__(
        self,
        methods: Sequence[MethodSpec] | Mapping[str, MethodSpec] = DEFAULT_METHODS,
        random_state: int | None = 0,
        *,
        alpha: float = DEFAULT_ALPHA,
        method_params: Mapping[str, Mapping[str, Any]] | None = None,
        high_agreement: int = 2,
    ) -> None:
        self.methods = methods
        self.random_state = random_state
        self.alpha = alpha
        self.method_params = method_params
        self.high_agreement = high_agreement

    # -- building the detectors ------------------------------------------------------------
    @property
    def method_names(self) -> list[str]:
        """Names of the selected methods, in order."""
        return [name for name, _ in _method_items(self.methods)]

    def _setup(self) -> None:
        """Check the parameters and build the detectors (start of every fit).

        A method whose module cannot be imported is not an error here: it is reported
        (``success=False``) when the others run.
        """
        items = _method_items(self.methods)
        if not items:
            raise ValueError("methods is empty; choose at least one, e.g. ['probe']")
        names = [name for name, _ in items]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(
                f"method names must be unique, {duplicated} repeat; pass a dict "
                "{name: detector} to run one method with different settings"
            )
        for name, spec in items:
            if not isinstance(spec, (str, BaseDetector)):
                raise TypeError(
                    f"method {name!r} must be a registered name or a BaseDetector instance, "
                    f"got {type(spec).__name__}"
                )
            if isinstance(spec, str) and spec not in available_detectors():
                raise ValueError(
                    f"unknown method {spec!r}; available: {', '.join(available_detectors())}"
                )
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.high_agreement < 1:
            raise ValueError(f"high_agreement must be at least 1, got {self.high_agreement}")
        params = dict(self.method_params or {})
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(f"method_params has entries for methods not selected: {unknown}")
        self.method_specs_: list[tuple[str, MethodSpec]] = items
        self._import_errors: dict[str, str] = {}
        self.detectors_: dict[str, BaseDetector] = {}
        for name, spec in items:
            try:
                detector = self._build(name, spec, params.get(name))
                detector.validate_params()
            except ImportError as error:
                self._import_errors[name] = f"ImportError: {error}"
            except (TypeError, ValueError) as error:
                raise type(error)(f"method {name!r}: {error}") from error
            else:
                self.detectors_[name] = detector

    def _build(self, name: str, spec: MethodSpec, params: Mapping[str, Any] | None) -> BaseDetector:
        if isinstance(spec, BaseDetector):
            if params:
                raise ValueError("method_params apply to methods given by name, not instances")
            return spec
        cls = get_detector_class(spec)
        kwargs = dict(params or {})
        for key, value in (("random_state", self.random_state), ("alpha", self.alpha)):
            if key not in kwargs and _accepts(cls.__init__, key):
                kwargs[key] = value
        return cls(**kwargs)

    @staticmethod
    def _uses_embeddings(spec: MethodSpec) -> bool:
        if isinstance(spec, str):
            return spec in EMBEDDING_METHODS
        return isinstance(spec, EmbeddingDetector)

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        embeddings: Any = None,
        labels_or_groups: Any = None,
        group_labels: Any = None,
        *,
        labels: Any = None,
        heatmaps: Any = None,
        masks: Any = None,
        **inputs: Any,
    ) -> ShortcutDetector:
        """Run every selected method.

        Call as ``fit(embeddings, group_labels)`` or ``fit(embeddings, labels,
        group_labels=...)``: with two positional arguments the second is the group labels;
        task labels come only as the middle of three, or as ``labels=``.

        Parameters
        ----------
        embeddings:
            ``(N, D)`` array or tensor (``(N,)`` is one feature); required by the embedding
            methods.
        labels_or_groups:
            Group labels (two-argument form) or task labels (with ``group_labels=``).
        group_labels:
            One group per sample: ints, strings or booleans; two or more groups.
        labels:
            Optional task labels (e.g. the probe then also reports the AUC within classes).
        heatmaps, masks, **inputs:
            Inputs of heatmap methods (``gradcam_mask_overlap``, ``spray``) or custom ones;
            each method receives the inputs its ``fit`` names.

        Raises
        ------
        ValueError
            Invalid parameters, mismatched lengths, NaN/Inf embeddings, a single group,
            missing inputs.
        """
        if group_labels is None:
            group_labels = labels_or_groups
        elif labels_or_groups is not None:
            if labels is not None:
                raise TypeError("task labels given twice: positionally and as labels=")
            labels = labels_or_groups
        self._setup()
        if group_labels is None:
            raise ValueError(
                "group_labels are required: fit(embeddings, group_labels) or "
                "fit(embeddings, labels, group_labels=...)"
            )
        if embeddings is None:
            needing = [n for n, spec in self.method_specs_ if self._uses_embeddings(spec)]
            if needing:
                raise ValueError(f"embeddings are required by {', '.join(needing)}")
        pool, info = _input_pool(embeddings, group_labels, labels, heatmaps, masks, inputs)
        # fit_from_loaders leaves the layers it used here for the report.
        from_loaders, self._loader_inputs = getattr(self, "_loader_inputs", {}), {}
        self.inputs_ = info | from_loaders
        self.reports_: dict[str, dict[str, Any]] | None = {}
        self.timings_: dict[str, float] = {}
        for name, spec in self.method_specs_:
            self._run_timed(name, spec, pool)
        return self

    def _run_timed(self, name: str, spec: MethodSpec, pool: Mapping[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        report = self._run_one(name, spec, pool)
        assert self.reports_ is not None
        self.reports_[name] = report
        self.timings_[name] = time.perf_counter() - started
        return report

    def _run_one(self, name: str, spec: MethodSpec, pool: Mapping[str, Any]) -> dict[str, Any]:
        """One method's report; any failure becomes a report with ``success=False``."""
        if name in self._import_errors:
            return failed_report(name, self._import_errors[name])
        detector = self.detectors_[name]
        try:
            detector.fit(**_fit_arguments(detector, pool))
            report = dict(detector.get_report())
        except Exception as error:  # one failing method must not sink the others
            report = failed_report(name, f"{type(error).__name__}: {error}")
            report["details"] = {"traceback": traceback.format_exc(limit=6)}
            return report
        for key, default in zip(_REPORT_KEYS, (name, False, {}, "UNKNOWN", "", {})):
            report.setdefault(key, default)
        report["method"] = name
        return report

    def fit_from_loaders(
        self,
        model: Any,
        loaders: Iterable[Any] | Sequence[Iterable[Any]] | None = None,
        *,
        embedding_layer: Any = None,
        target_layer: Any = None,
        pool: Any = "avg",
        cam_method: str = "gradcam",
        device: Any = None,
        progress: bool | None = None,
    ) -> ShortcutDetector:
        """Fit from data loaders, in one of two forms (told apart by the first argument).

        - ``fit_from_loaders({method: loader, ...})``: one loader per selected method.
          A loader gives that method's inputs: a callable returning a dict (e.g.
          ``{"heatmaps": ..., "masks": ...}`` or ``{"embeddings": ..., "group_labels":
          ...}``), the dict itself, an object with those inputs as attributes, or an
          iterable of dict batches (concatenated). Each method runs on its own inputs, and
          its metrics include ``n_samples``. A selected method without a loader is an error
          naming it.
        - ``fit_from_loaders(model, loaders)``: compute embeddings (and heatmaps, if a
          heatmap method is selected) from a model and data loaders, then :meth:`fit`.

        Parameters
        ----------
        model:
            The PyTorch model, or the mapping ``{method name: loader}``.
        loaders:
            With a model: a loader (any iterable of batches) or a list of loaders, read
            once, in order. A batch is ``(images, labels, groups)`` or ``(images, labels,
            groups, masks)``, or a dict with keys ``image``/``images``, ``label``/``labels``,
            ``group``/``groups`` and optionally ``mask``/``masks``.
        embedding_layer:
            Layer whose pooled output is the embedding; ``None``: the input of the final
            classifier (see :func:`shortcut_detect.embeddings.extract_embeddings`).
        target_layer:
            Grad-CAM target layer for the heatmaps (``None``: chosen automatically).
        pool:
            Pooling of the embedding layer's output (see ``extract_embeddings``).
        cam_method:
            CAM method for the heatmaps (``"gradcam"``, ``"gradcam++"``, ...).
        device:
            ``None`` uses the model's device.
        progress:
            Progress bar: ``None`` only for long inputs on a terminal.
        """
        if isinstance(model, Mapping):
            if loaders is not None:
                raise TypeError(
                    "give either fit_from_loaders({method: loader}) or "
                    "fit_from_loaders(model, loaders), not a mapping and loaders"
                )
            return self._fit_from_method_loaders(model)
        if loaders is None:
            raise TypeError(
                "fit_from_loaders(model, loaders) needs the data loaders; or give one loader "
                "per method: fit_from_loaders({'probe': loader, ...})"
            )
        self._setup()
        joined, layers = self._read_model_loaders(
            model, loaders, embedding_layer, target_layer, pool, cam_method, device, progress
        )
        self._loader_inputs = layers
        return self.fit(
            joined["embeddings"],
            joined["labels"],
            group_labels=joined["groups"],
            heatmaps=joined["heatmaps"],
            masks=joined["masks"],
        )

    def _read_model_loaders(
        self,
        model: Any,
        loaders: Any,
        embedding_layer: Any,
        target_layer: Any,
        pool: Any,
        cam_method: str,
        device: Any,
        progress: bool | None,
    ) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
        """Embeddings, labels, groups, masks and heatmaps from every batch, concatenated,
        and the layers used."""
        if (
            isinstance(loaders, (list, tuple))
            and loaders
            and all(
                not isinstance(item, (list, tuple, dict, np.ndarray)) and not hasattr(item, "shape")
                for item in loaders
            )
        ):
            sources = list(loaders)
        else:
            sources = [loaders]
        needs_heatmaps = any(
            self._method_input(name, spec, "heatmaps") for name, spec in self.method_specs_
        )
        extractor = EmbeddingExtractor(model, embedding_layer, pool=pool, device=device)
        generator = None
        if needs_heatmaps:
            generator = GradCAMHeatmapGenerator(
                model, target_layer, device=device, method=cam_method
            )
        parts: dict[str, list[np.ndarray]] = {
            "embeddings": [],
            "labels": [],
            "groups": [],
            "masks": [],
            "heatmaps": [],
        }
        total = (
            sum(len(s) for s in sources) if all(hasattr(s, "__len__") for s in sources) else None
        )
        if progress is None:
            long_input = total is None or total >= PROGRESS_MIN_BATCHES
            progress = long_input and sys.stderr.isatty()
        batches = (batch for source in sources for batch in source)
        bar = ProgressBar(total, "Embeddings", enabled=progress, unit="batch")
        for batch in bar.track(batches):
            fields = _split_batch(batch)
            parts["embeddings"].append(extractor(fields["images"]))
            parts["groups"].append(_numpy(fields["groups"]))
            if fields.get("labels") is not None:
                parts["labels"].append(_numpy(fields["labels"]))
            if fields.get("masks") is not None:
                parts["masks"].append(_numpy(fields["masks"]))
            if generator is not None:
                parts["heatmaps"].append(np.asarray(generator.generate_heatmap(fields["images"])))
        if not parts["embeddings"]:
            raise ValueError("the loaders yielded no batches")
        n_batches = len(parts["embeddings"])
        for key in ("labels", "masks"):
            if parts[key] and len(parts[key]) != n_batches:
                raise ValueError(f"some batches have {key} and some do not")
        joined = {key: np.concatenate(value) if value else None for key, value in parts.items()}
        layers = {"embedding_layer": extractor.layer_name}
        if generator is not None:
            layers["heatmap_layer"] = generator.target_layer_name
        return joined, layers

    def _fit_from_method_loaders(self, loaders: Mapping[str, MethodLoader]) -> ShortcutDetector:
        """The ``{method: loader}`` form of :meth:`fit_from_loaders`."""
        self._setup()
        names = [name for name, _ in self.method_specs_]
        missing = [name for name in names if name not in loaders]
        if missing:
            raise ValueError(
                f"no loader for method {', '.join(map(repr, missing))}; give "
                "fit_from_loaders one loader per selected method "
                f"({', '.join(names)})"
            )
        extra = sorted(str(key) for key in loaders if key not in names)
        if extra:
            raise ValueError(
                f"loaders given for methods that are not selected: {extra}; selected: "
                f"{', '.join(names)}"
            )
        self.reports_ = {}
        self.timings_ = {}
        per_method: dict[str, dict[str, Any]] = {}
        for name, spec in self.method_specs_:
            wanted = self._fit_parameter_names(name)
            values = _load_method_inputs(name, loaders[name], wanted)
            groups = values.pop("group_labels", None)
            if groups is None:
                groups = values.pop("groups", None)
            try:
                if groups is None and self._uses_embeddings(spec):
                    raise ValueError("group_labels are required by an embedding method")
                pool, info = _input_pool(
                    values.pop("embeddings", None),
                    groups,
                    values.pop("labels", None),
                    values.pop("heatmaps", None),
                    values.pop("masks", None),
                    values,
                )
            except ValueError as error:
                raise ValueError(f"loader of method {name!r}: {error}") from error
            per_method[name] = info
            report = self._run_timed(name, spec, pool)
            if report.get("success"):
                report["metrics"].setdefault("n_samples", info["n_samples"])
        self.inputs_ = _combined_inputs(per_method)
        return self

    def _fit_parameter_names(self, name: str) -> list[str]:
        """The names a method's ``fit`` takes (none if it could not be imported)."""
        detector = self.detectors_.get(name)
        if detector is None:
            return []
        parameters = inspect.signature(detector.fit).parameters
        return [
            key
            for key, parameter in parameters.items()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        ]

    def _method_input(self, name: str, spec: MethodSpec, input_name: str) -> bool:
        """Whether a method's ``fit`` takes ``input_name`` (False if it cannot be imported)."""
        try:
            cls = type(spec) if isinstance(spec, BaseDetector) else get_detector_class(spec)
        except (ImportError, KeyError):
            return False
        try:
            parameters = inspect.signature(cls.fit).parameters
        except (TypeError, ValueError):
            return False
        return input_name in parameters

    # -- results ---------------------------------------------------------------------------
    def _require_fitted(self) -> dict[str, dict[str, Any]]:
        reports = getattr(self, "reports_", None)
        if reports is None:
            raise RuntimeError("ShortcutDetector is not fitted; call fit(...) first")
        return reports

    def get_results(self) -> dict[str, dict[str, Any]]:
        """One dict per method (a copy): the method's report (``success``, ``risk``,
        ``finding``, ``metrics``, ``details``, ``error`` if it failed) with its metrics also
        at the top level, e.g. ``results["probe"]["accuracy"]``."""
        results = {}
        for name, report in self._require_fitted().items():
            flat = copy.deepcopy(report)
            for key, value in report.get("metrics", {}).items():
                flat.setdefault(key, copy.deepcopy(value))
            results[name] = flat
        return results

    @property
    def overall_risk(self) -> str:
        """``LOW`` / ``MODERATE`` / ``HIGH`` by the rule in the class notes, ``UNKNOWN`` if
        no method ran."""
        return overall_risk(self._require_fitted(), int(self.high_agreement))

    def reasons(self) -> list[str]:
        """Why the overall risk is what it is, one sentence per point."""
        reports = self._require_fitted()
        risk = self.overall_risk
        ran = {name: r for name, r in reports.items() if r.get("success")}
        failed = {name: r for name, r in reports.items() if not r.get("success")}
        reasons: list[str] = []
        if risk == "UNKNOWN":
            reasons.append("No method could run, so there is no evidence either way.")
        elif risk == "LOW":
            reasons.append(
                f"None of {', '.join(ran)} found group information that is both significant "
                f"(alpha={self.alpha:g}) and above its moderate effect threshold."
            )
        else:
            high = [n for n, r in ran.items() if r.get("risk") == "HIGH"]
            moderate = [n for n, r in ran.items() if r.get("risk") == "MODERATE"]
            if risk == "HIGH":
                reasons.append(
                    f"HIGH because {_listing(high)} {_verb(high)} the group information HIGH "
                    f"({len(high)} of {len(ran)} methods that ran)."
                )
            elif high:
                reasons.append(
                    f"MODERATE: {_listing(high)} {_verb(high)} the group information HIGH, but "
                    f"an overall HIGH needs {min(self.high_agreement, len(ran))} methods to "
                    "agree; one kind of evidence only."
                )
            else:
                reasons.append(
                    f"MODERATE because {_listing(moderate)} {_verb(moderate)} the group "
                    "information MODERATE and none rates it HIGH."
                )
            for name, report in ran.items():
                if _risk_of(report) >= Risk.MODERATE:
                    reasons.append(f"{name} ({report['risk']}): {report.get('finding', '')}")
        for name, report in failed.items():
            reasons.append(f"{name} could not run: {report.get('error', 'unknown error')}")
        return reasons

    def risk_rules(self) -> list[str]:
        """The rules behind the risk levels, for the methods that ran."""
        rules = [
            f"A method is LOW unless its test of 'no group information' is significant "
            f"(p < alpha = {self.alpha:g}); then MODERATE or HIGH by its effect size:",
        ]
        for name, detector in self.detectors_.items():
            rule = getattr(detector, "risk_rule", None)
            if callable(rule):
                rules.append(f"{name}: {rule()}")
        rules.append(
            f"Overall: HIGH if at least {self.high_agreement} methods rate HIGH (all of them if "
            "fewer ran), MODERATE if any rates MODERATE or HIGH, LOW otherwise."
        )
        return rules

    def summary(self) -> str:
        """A short text: overall risk, why, and one line per method."""
        reports = self._require_fitted()
        info = self.inputs_
        shape = (
            f"{info['n_samples']} samples, {info['n_features']} dimensions"
            if info.get("n_features") is not None
            else f"{info['n_samples']} samples"
        )
        if info["groups"]:
            groups = ", ".join(f"{g}: {c}" for g, c in info["groups"].items())
            shape += f", {len(info['groups'])} groups ({groups})"
        lines = [f"Shortcut detection: overall risk {self.overall_risk}", shape, "Why:"]
        lines += [f"  - {reason}" for reason in self.reasons()]
        width = max(len(name) for name in reports)
        lines.append("Methods:")
        for name, report in reports.items():
            lines.append(f"  {name:<{width}}  {report['risk']:<8}  {report.get('finding', '')}")
        return "\n".join(lines)

    def report_payload(self) -> dict[str, Any]:
        """Everything the report shows, as plain data (also the JSON report)."""
        reports = self._require_fitted()
        methods = []
        for name, report in reports.items():
            entry = {key: report.get(key) for key in _REPORT_KEYS}
            entry["method"] = name
            entry["seconds"] = round(self.timings_.get(name, 0.0), 4)
            if not report.get("success"):
                entry["error"] = report.get("error", "")
            methods.append(entry)
        return {
            "title": "Shortcut detection report",
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "version": __version__,
            "overall_risk": self.overall_risk,
            "reasons": self.reasons(),
            "inputs": dict(self.inputs_),
            "settings": {
                "methods": self.method_names,
                "alpha": float(self.alpha),
                "random_state": self.random_state,
                "high_agreement": int(self.high_agreement),
            },
            "methods": methods,
            "risk_rules": self.risk_rules(),
        }

    def generate_report(self, path: str | Path, format: str | None = None) -> Path:
        """Write the report to ``path`` as HTML, Markdown or JSON.

        Parameters
        ----------
        path:
            Output file; its parent directory must exist.
        format:
            ``"html"``, ``"md"`` or ``"json"``; ``None`` uses the suffix (``.html``/``.htm``,
            ``.md``/``.markdown``, ``.json``).

        Returns
        -------
        pathlib.Path
            The written file.
        """
        path = Path(path)
        kind = report_format(path, format)
        if not path.parent.exists():
            raise FileNotFoundError(f"the folder {str(path.parent)!r} does not exist")
        text = render_report(self.report_payload(), kind)
        path.write_text(text, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        fitted = getattr(self, "reports_", None) is not None
        state = f"overall risk {self.overall_risk}" if fitted else "unfitted"
        return f"ShortcutDetector(methods={self.method_names}, {state})"


def _listing(names: Sequence[str]) -> str:
    return ", ".join(names)


def _verb(names: Sequence[str]) -> str:
    return "rates" if len(names) == 1 else "rate"


def _split_batch(batch: Any) -> dict[str, Any]:
    """``images``, ``labels``, ``groups`` and ``masks`` of one loader batch."""
    if isinstance(batch, Mapping):
        fields: dict[str, Any] = {}
        for field, keys in _LOADER_KEYS.items():
            for key in keys:
                if key in batch:
                    fields[field] = batch[key]
                    break
        for required in ("images", "groups"):
            if required not in fields:
                raise ValueError(
                    f"a dict batch needs a {required!r} entry (one of {_LOADER_KEYS[required]}); "
                    f"got keys {sorted(map(str, batch))}"
                )
        return fields
    if isinstance(batch, (tuple, list)) and len(batch) in (3, 4):
        names = ("images", "labels", "groups", "masks")
        return dict(zip(names, batch))
    raise ValueError(
        "each batch must be (images, labels, groups), (images, labels, groups, masks) or a "
        f"dict with 'image' and 'group' keys; got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )
