"""``ShortcutDetector``: runs several shortcut tests on one data set and sums them up.

It only orchestrates: each method is a small detector class (see
:mod:`shortcut_detect.detectors.registry`) with ``fit(...) -> self`` and
``get_report() -> dict``. A method that cannot run reports why (``success=False``) without
stopping the others.

Each embedding method is ``LOW`` unless its test of "no group information" is significant at
``alpha`` (0.01) *and* the effect reaches its moderate (``MODERATE``) or high (``HIGH``)
threshold. Overall risk: ``HIGH`` if at least two methods rate HIGH (all, if fewer ran),
``MODERATE`` if any method rates MODERATE or HIGH, otherwise ``LOW``.

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
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.detectors.base import BaseDetector, failed_report
from shortcut_detect.detectors.embedding_base import (
    DEFAULT_ALPHA,
    EmbeddingDetector,
    as_embeddings,
    as_group_labels,
)
from shortcut_detect.detectors.registry import EMBEDDING_METHODS, get_detector_class

__all__ = ["DEFAULT_METHODS", "RISK_ORDER", "ShortcutDetector", "overall_risk"]

DEFAULT_METHODS = EMBEDDING_METHODS
RISK_ORDER = {"UNKNOWN": -1, "LOW": 0, "MODERATE": 1, "HIGH": 2}
_INPUT_ALIASES = {"groups": "group_labels"}
_REPORT_KEYS = ("method", "success", "metrics", "risk", "finding", "details")
_LOADER_KEYS = {
    "images": ("image", "images", "pixel_values", "input", "inputs", "x"),
    "labels": ("label", "labels", "target", "targets", "y"),
    "groups": ("group", "groups", "group_label", "group_labels", "attribute"),
    "masks": ("mask", "masks", "shortcut_mask", "shortcut_masks"),
}

MethodSpec = str | BaseDetector


def overall_risk(reports: Mapping[str, Mapping[str, Any]], high_agreement: int = 2) -> str:
    """Combine method risks (only methods that ran count).

    ``HIGH`` if at least ``high_agreement`` methods rate HIGH (all of them, if fewer ran);
    ``MODERATE`` if any method rates MODERATE or HIGH; ``LOW`` otherwise; ``UNKNOWN`` if no
    method ran.
    """
    risks = [r.get("risk", "UNKNOWN") for r in reports.values() if r.get("success")]
    if not risks:
        return "UNKNOWN"
    n_high = risks.count("HIGH")
    if n_high >= min(high_agreement, len(risks)):
        return "HIGH"
    if n_high or "MODERATE" in risks:
        return "MODERATE"
    return "LOW"


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


class ShortcutDetector:
    """Run several shortcut tests and combine them into one risk, summary and report.

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
        One method alone gives MODERATE: e.g. a probe can decode a marker that the model
        sees but hardly uses, while the geometric and clustering views show no dominant
        group structure.

    Examples
    --------
    >>> detector = ShortcutDetector(methods=["hbac", "probe", "statistical", "geometric"])
    >>> detector.fit(embeddings, group_labels)                    # doctest: +SKIP
    >>> detector.get_results()["probe"]["accuracy"]               # doctest: +SKIP
    >>> print(detector.summary())                                 # doctest: +SKIP
    >>> detector.generate_report("report.html")                   # doctest: +SKIP
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
        if isinstance(methods, (str, BaseDetector)):
            methods = [methods]
        items = (
            list(methods.items())
            if isinstance(methods, Mapping)
            else [
                (m if isinstance(m, str) else getattr(m, "name", type(m).__name__), m)
                for m in methods
            ]
        )
        if not items:
            raise ValueError("methods is empty; choose at least one, e.g. ['probe']")
        from shortcut_detect.detectors.registry import available_detectors

        names = [name for name, _ in items]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(
                f"method names must be unique, {duplicated} repeat; pass a dict "
                "{name: detector} to run one method with different settings"
            )
        for name, spec in items:
            if isinstance(spec, str) and spec not in available_detectors():
                raise ValueError(
                    f"unknown method {spec!r}; available: {', '.join(available_detectors())}"
                )
            if not isinstance(spec, (str, BaseDetector)):
                raise TypeError(
                    f"method {name!r} must be a registered name or a BaseDetector instance, "
                    f"got {type(spec).__name__}"
                )
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if high_agreement < 1:
            raise ValueError(f"high_agreement must be at least 1, got {high_agreement}")
        self.high_agreement = int(high_agreement)
        params = dict(method_params or {})
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ValueError(f"method_params has entries for methods not selected: {unknown}")
        self.methods: list[tuple[str, MethodSpec]] = items
        self.random_state = random_state
        self.alpha = float(alpha)
        self.method_params = {name: dict(value) for name, value in params.items()}
        # Build the detectors now, so a bad setting fails here rather than during fit; a
        # method whose module cannot be imported fails (reported) at fit time instead.
        self._import_errors: dict[str, str] = {}
        self.detectors_: dict[str, BaseDetector] = {}
        for name, spec in items:
            try:
                self.detectors_[name] = self._build(name, spec)
            except ImportError as error:
                self._import_errors[name] = f"ImportError: {error}"
            except (TypeError, ValueError) as error:
                raise type(error)(f"method {name!r}: {error}") from error
        self.reports_: dict[str, dict[str, Any]] | None = None
        self.timings_: dict[str, float] = {}
        self.inputs_: dict[str, Any] = {}
        self._loader_inputs: dict[str, Any] = {}

    # -- building the detectors ------------------------------------------------------------
    @property
    def method_names(self) -> list[str]:
        """Names of the selected methods, in order."""
        return [name for name, _ in self.methods]

    def _build(self, name: str, spec: MethodSpec) -> BaseDetector:
        if isinstance(spec, BaseDetector):
            if self.method_params.get(name):
                raise ValueError("method_params apply to methods given by name, not instances")
            return spec
        cls = get_detector_class(spec)
        kwargs = dict(self.method_params.get(name, {}))
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
            Mismatched lengths, NaN/Inf embeddings, a single group, missing inputs.
        """
        if group_labels is None:
            group_labels = labels_or_groups
        elif labels_or_groups is not None:
            if labels is not None:
                raise TypeError("task labels given twice: positionally and as labels=")
            labels = labels_or_groups
        if group_labels is None:
            raise ValueError(
                "group_labels are required: fit(embeddings, group_labels) or "
                "fit(embeddings, labels, group_labels=...)"
            )
        X = None
        if embeddings is not None:
            X = as_embeddings(embeddings)
        elif any(self._uses_embeddings(spec) for _, spec in self.methods):
            needing = [name for name, spec in self.methods if self._uses_embeddings(spec)]
            raise ValueError(f"embeddings are required by {', '.join(needing)}")
        codes, groups = as_group_labels(group_labels, None if X is None else len(X))
        n_samples = len(codes)
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
        for name, value in per_sample.items():
            if value is not None and len(value) != n_samples:
                raise ValueError(
                    f"{name} has {len(value)} entries but there are {n_samples} samples "
                    "(group labels); they must describe the same samples in order"
                )
        pool: dict[str, Any] = {
            "embeddings": X,
            "group_labels": _numpy(group_labels),
            "labels": task,
            "heatmaps": heatmaps,
            "masks": masks,
            **inputs,
        }
        counts = np.bincount(codes, minlength=len(groups))
        # fit_from_loaders leaves the layers it used here for the report.
        from_loaders, self._loader_inputs = self._loader_inputs, {}
        self.inputs_ = {
            "n_samples": n_samples,
            "n_features": None if X is None else int(X.shape[1]),
            "groups": {str(g): int(c) for g, c in zip(groups, counts)},
            "task_labels": task is not None,
            "heatmaps": heatmaps is not None,
            "masks": masks is not None,
        } | from_loaders
        self.reports_ = {}
        self.timings_ = {}
        for name, spec in self.methods:
            started = time.perf_counter()
            self.reports_[name] = self._run_one(name, spec, pool)
            self.timings_[name] = time.perf_counter() - started
        return self

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
        loaders: Iterable[Any] | Sequence[Iterable[Any]],
        *,
        embedding_layer: Any = None,
        target_layer: Any = None,
        pool: Any = "avg",
        cam_method: str = "gradcam",
        device: Any = None,
        progress: bool | None = None,
    ) -> ShortcutDetector:
        """Compute embeddings (and heatmaps, if a heatmap method is selected) from a model
        and data loaders, then :meth:`fit`.

        Parameters
        ----------
        model:
            The PyTorch model.
        loaders:
            A loader (any iterable of batches) or a list of loaders, read once, in order.
            A batch is ``(images, labels, groups)`` or ``(images, labels, groups, masks)``, or
            a dict with keys ``image``/``images``, ``label``/``labels``, ``group``/``groups``
            and optionally ``mask``/``masks``.
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
        from shortcut_detect.embeddings import EmbeddingExtractor, _progress

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
            self._method_input(name, spec, "heatmaps") for name, spec in self.methods
        )
        extractor = EmbeddingExtractor(model, embedding_layer, pool=pool, device=device)
        generator = None
        if needs_heatmaps:
            from shortcut_detect.gradcam import GradCAMHeatmapGenerator

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
        batches = (batch for source in sources for batch in source)
        for batch in _progress(batches, total, progress):
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
        self._loader_inputs = {"embedding_layer": extractor.layer_name}
        if generator is not None:
            self._loader_inputs["heatmap_layer"] = generator.target_layer_name
        return self.fit(
            joined["embeddings"],
            joined["labels"],
            group_labels=joined["groups"],
            heatmaps=joined["heatmaps"],
            masks=joined["masks"],
        )

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
        if self.reports_ is None:
            raise RuntimeError("ShortcutDetector is not fitted; call fit(...) first")
        return self.reports_

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
        """``LOW`` / ``MODERATE`` / ``HIGH`` (the highest method risk), ``UNKNOWN`` if none ran."""
        return overall_risk(self._require_fitted(), self.high_agreement)

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
                if RISK_ORDER.get(report.get("risk"), -1) >= RISK_ORDER["MODERATE"]:
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
        groups = ", ".join(f"{g}: {c}" for g, c in info["groups"].items())
        shape = (
            f"{info['n_samples']} samples, {info['n_features']} dimensions"
            if info.get("n_features") is not None
            else f"{info['n_samples']} samples"
        )
        lines = [
            f"Shortcut detection: overall risk {self.overall_risk}",
            f"{shape}, {len(info['groups'])} groups ({groups})",
            "Why:",
        ]
        lines += [f"  - {reason}" for reason in self.reasons()]
        width = max(len(name) for name in reports)
        lines.append("Methods:")
        for name, report in reports.items():
            lines.append(f"  {name:<{width}}  {report['risk']:<8}  {report.get('finding', '')}")
        return "\n".join(lines)

    def report_payload(self) -> dict[str, Any]:
        """Everything the report shows, as plain data (also the JSON report)."""
        from shortcut_detect import __version__

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
                "alpha": self.alpha,
                "random_state": self.random_state,
                "high_agreement": self.high_agreement,
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
        from shortcut_detect.detectors.report import render_report, report_format

        path = Path(path)
        kind = report_format(path, format)
        if not path.parent.exists():
            raise FileNotFoundError(f"the folder {str(path.parent)!r} does not exist")
        text = render_report(self.report_payload(), kind)
        path.write_text(text, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        state = "unfitted" if self.reports_ is None else f"overall risk {self.overall_risk}"
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
