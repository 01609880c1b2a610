"""Browsing an audit's per-sample results: sort, filter, and pick a sample to explore.

Reads the store written by ``shortcut-detect audit``
(:class:`shortcut_detect.audit.store.AuditStore`); no Gradio here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shortcut_detect.app.inputs import DEFAULT_MAX_PIXELS, ExplorerInputError
from shortcut_detect.app.sources import RecordSource, SampleRecord
from shortcut_detect.audit.store import AuditStore, StoreError

__all__ = ["ALL", "OUTCOMES", "SORT_KEYS", "AuditBrowser", "AuditRows"]

ALL = "all"
SORT_KEYS: dict[str, str] = {
    "attention": "attention in the shortcut region, highest first",
    "confidence": "confidence, highest first",
    "confidence-low": "confidence, lowest first",
    "order": "data order",
}
OUTCOMES: dict[str, str] = {
    ALL: "all samples",
    "correct": "correct",
    "misclassified": "misclassified",
    "failed": "could not be read",
}
COLUMNS = (
    "sample_id",
    "label_name",
    "prediction_name",
    "confidence",
    "correct",
    "group",
    "mask_attention",
    "status",
)
HEADERS = [
    "sample id",
    "label",
    "prediction",
    "confidence",
    "correct",
    "group",
    "attention in region",
    "status",
]


@dataclass
class AuditRows:
    """One page of the results table, as shown."""

    headers: list[str]
    rows: list[list[Any]]
    sample_ids: list[str]
    total: int  # rows that passed the filters (``rows`` may be fewer)
    message: str = ""


@dataclass
class AuditBrowser:
    """The rows of one audit and what the explorer needs to reproduce its heatmaps.

    Attributes
    ----------
    root:
        The audit directory.
    records:
        One dict per sample (the columns of :data:`COLUMNS`), in data order.
    model_spec, weights, layer, method:
        How the audit explained the samples (from ``audit.json``).
    class_names:
        The audit's class names.
    load_options:
        Preprocessing options the model was loaded with.
    input_size:
        The model's input size in the audit, ``(height, width)``.
    source:
        The audited images, by sample id.
    """

    root: Path
    records: list[dict[str, Any]]
    model_spec: str | None
    weights: str | None
    layer: str | None
    method: str | None
    class_names: list[str]
    load_options: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    source: RecordSource | None = None
    has_masks: bool = False

    @classmethod
    def open(cls, directory: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> AuditBrowser:
        """Read an audit directory (finished or not).

        Raises
        ------
        ExplorerInputError
            When ``directory`` is not an audit directory.
        """
        try:
            store = AuditStore(directory)
            config = store.config
            table = store.table()
        except (StoreError, OSError, ValueError, KeyError) as error:
            raise ExplorerInputError(f"Cannot read the audit in {directory}: {error}") from error
        columns = {name: table.column(name).to_pylist() for name in (*COLUMNS, "path")}
        records = [
            {name: columns[name][row] for name in (*COLUMNS, "path")}
            for row in range(table.num_rows)
        ]
        data = config.get("data")
        data_root = Path(data) if data else Path(directory)
        if data_root.suffix:  # a manifest: its folder holds the images
            data_root = data_root.parent
        source = RecordSource(
            f"audit {directory}",
            data_root,
            {
                record["sample_id"]: SampleRecord(
                    record["path"], record["label_name"], record["group"]
                )
                for record in records
                if record["path"]
            },
            max_pixels=max_pixels,
        )
        options = {
            key: value
            for key, value in (config.get("load_options") or {}).items()
            if key in ("preset", "resize", "crop", "mean", "std", "spatial_dims", "in_channels")
            and value is not None
        }
        model_spec = config.get("model")
        weights = config.get("weights")
        if model_spec and str(model_spec).startswith("demo"):
            weights = None  # the demo models bring their own weights
        elif weights and Path(str(weights)).resolve() == Path(str(model_spec)).resolve():
            weights = None  # a model file (pickled, TorchScript) holds its own weights
        return cls(
            root=Path(directory),
            records=records,
            model_spec=model_spec,
            weights=weights,
            layer=config.get("layer"),
            method=config.get("method"),
            class_names=list(config.get("class_names") or []),
            load_options=options,
            input_size=tuple(config["input_size"]) if config.get("input_size") else None,
            source=source,
            has_masks=bool(config.get("has_masks")),
        )

    # -- choices ---------------------------------------------------------------------------
    def groups(self) -> list[str]:
        """Distinct group values, sorted."""
        return sorted({str(r["group"]) for r in self.records if r["group"] is not None})

    def group_choices(self) -> list[tuple[str, str]]:
        return [("all groups", ALL)] + [(group, group) for group in self.groups()]

    @staticmethod
    def sort_choices() -> list[tuple[str, str]]:
        return [(label, key) for key, label in SORT_KEYS.items()]

    @staticmethod
    def outcome_choices() -> list[tuple[str, str]]:
        return [(label, key) for key, label in OUTCOMES.items()]

    # -- the table -------------------------------------------------------------------------
    def select(
        self,
        sort_by: str = "attention",
        group: str | None = ALL,
        outcome: str | None = ALL,
        limit: int = 200,
    ) -> AuditRows:
        """Rows filtered by ``group`` and ``outcome``, sorted by ``sort_by``, at most ``limit``."""
        if sort_by not in SORT_KEYS:
            raise ExplorerInputError(
                f"Unknown sort order {sort_by!r}; choose one of: {', '.join(SORT_KEYS)}"
            )
        outcome = outcome or ALL
        if outcome not in OUTCOMES:
            raise ExplorerInputError(
                f"Unknown outcome {outcome!r}; choose one of: {', '.join(OUTCOMES)}"
            )
        group = group or ALL

        def keep(record: dict[str, Any]) -> bool:
            in_group = group == ALL or str(record["group"]) == group
            return in_group and (outcome == ALL or _outcome(record) == outcome)

        chosen = [record for record in self.records if keep(record)]
        chosen = sorted(chosen, key=_sort_key(sort_by)) if sort_by != "order" else chosen
        shown = chosen[: max(0, int(limit))]
        message = f"{len(chosen)} of {len(self.records)} samples"
        if len(shown) < len(chosen):
            message += f" (showing the first {len(shown)})"
        if sort_by == "attention" and not self.has_masks:
            message += "; this audit has no shortcut-region masks, so attention is empty"
        return AuditRows(
            headers=list(HEADERS),
            rows=[_display_row(record) for record in shown],
            sample_ids=[record["sample_id"] for record in shown],
            total=len(chosen),
            message=message,
        )


def _outcome(record: dict[str, Any]) -> str:
    if record["status"] != "ok":
        return "failed"
    return "correct" if record["correct"] else "misclassified"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _sort_key(sort_by: str) -> Any:
    column = "mask_attention" if sort_by == "attention" else "confidence"
    sign = 1.0 if sort_by == "confidence-low" else -1.0

    def key(record: dict[str, Any]) -> tuple[bool, float]:
        value = _number(record[column])
        return (value is None, sign * value if value is not None else 0.0)

    return key


def _display_row(record: dict[str, Any]) -> list[Any]:
    def rounded(value: Any) -> Any:
        number = _number(value)
        return None if number is None else round(number, 3)

    return [
        record["sample_id"],
        record["label_name"],
        record["prediction_name"],
        rounded(record["confidence"]),
        record["correct"],
        record["group"],
        rounded(record["mask_attention"]),
        record["status"],
    ]


def sample_at(rows: Sequence[str] | None, index: Any) -> str | None:
    """The sample id of a clicked table row (``index`` is ``row`` or ``(row, column)``)."""
    if rows is None or index is None:
        return None
    row = index[0] if isinstance(index, (list, tuple)) else index
    try:
        row = int(row)
    except (TypeError, ValueError):
        return None
    return rows[row] if 0 <= row < len(rows) else None
