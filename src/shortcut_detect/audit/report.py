"""The audit report: ``summary.json`` and one self-contained ``report.html``.

Images are embedded as PNG data URIs, styles are inline: the file opens offline and can be
mailed or attached to a CI run as it is.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.audit.analysis import Analysis, analyse_store
from shortcut_detect.audit.embedding_view import (
    EMBEDDING_MAP_FILE,
    embedding_map_figures,
    map_points,
)
from shortcut_detect.audit.html import format_number, format_percent, render
from shortcut_detect.audit.store import INTERVENTIONS_DIR, AuditStore, write_json, write_text
from shortcut_detect.common.faults import fault_point
from shortcut_detect.common.logs import forward_log
from shortcut_detect.common.serialization import to_jsonable

__all__ = ["build_report", "render_html"]

TILE_PIXELS = 176
MAX_TILES = 12
MAX_CLUSTERS = 8
MAX_CLUSTER_TILES = 6


def _png_uri(array: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure_uri(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fit(array: np.ndarray, pixels: int = TILE_PIXELS) -> np.ndarray:
    """Shrink a uint8 image whose longer side exceeds ``pixels``; small images stay as they
    are (the page scales them up without smoothing, which keeps them crisp and the file small)."""
    from PIL import Image

    height, width = array.shape[:2]
    if max(height, width) <= pixels:
        return array
    scale = pixels / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))


class _SampleImages:
    """Display copies and overlays of stored samples, read from disk on demand."""

    def __init__(self, store: AuditStore, rows: dict[str, dict[str, Any]]) -> None:
        from shortcut_detect.data.transforms import Preprocessing

        self.store = store
        self.rows = rows
        self.preprocessing = Preprocessing.from_dict(store.config["preprocessing"])

    def tile(
        self, sample_id: str, score: float | None = None, score_name: str = ""
    ) -> dict[str, Any]:
        from shortcut_detect.data.images import load_image
        from shortcut_detect.viz import overlay_heatmap

        row = self.rows[sample_id]
        if self.preprocessing.is_3d:
            return self._volume_tile(sample_id, row, score, score_name)
        try:
            image = load_image(row["path"], window=self.preprocessing.window)
            display = self.preprocessing.display(image)
        except Exception as error:  # the file moved since the run: say so in the tile
            return {"id": sample_id, "error": str(error), "caption": sample_id}
        heat = self.store.upsampled([sample_id], display.shape[:2])[0]
        overlay = overlay_heatmap(display, heat, alpha=0.45)
        original = np.uint8(np.clip(display, 0, 1) * 255 + 0.5)
        correct = row.get("correct")
        return {
            "id": sample_id,
            "original": _png_uri(_fit(original)),
            "overlay": _png_uri(_fit(overlay)),
            "label": row.get("label_name"),
            "prediction": row.get("prediction_name"),
            "confidence": row.get("confidence"),
            "group": row.get("group"),
            "correct": correct,
            "score": score,
            "score_name": score_name,
        }

    def _volume_tile(
        self, sample_id: str, row: dict[str, Any], score: float | None, score_name: str
    ) -> dict[str, Any]:
        """A volume's tile: orthogonal slices through the heatmap's peak and an axial
        montage, image and overlay side by side."""
        from shortcut_detect.data.images import load_volume
        from shortcut_detect.viz_volume import resize_volume, volume_panel

        shape = self.preprocessing.input_shape
        try:
            volume = load_volume(row["path"], window=self.preprocessing.window)
            display = volume.display()
            if display.ndim == 4:
                display = display.mean(axis=-1)
            display = resize_volume(display, shape)
        except Exception as error:  # the file moved since the run: say so in the tile
            return {"id": sample_id, "error": str(error), "caption": sample_id}
        heat = self.store.heatmaps([sample_id])[0]
        panel = volume_panel(display, resize_volume(heat, shape))
        pixels = 2 * TILE_PIXELS
        return {
            "id": sample_id,
            "original": _png_uri(_fit(panel.image, pixels)),
            "overlay": _png_uri(_fit(panel.overlay, pixels)),
            "label": row.get("label_name"),
            "prediction": row.get("prediction_name"),
            "confidence": row.get("confidence"),
            "group": row.get("group"),
            "correct": row.get("correct"),
            "score": score,
            "score_name": score_name,
            "peak_voxel": list(panel.point),
        }

    def heat_only(self, heatmap: np.ndarray, diverging: bool = False) -> str:
        from shortcut_detect.cam.image import apply_colormap
        from shortcut_detect.gradcam import upsampled_raw

        if np.asarray(heatmap).ndim == 3:
            return self._volume_heat(np.asarray(heatmap, dtype=np.float64), diverging)
        size = self.preprocessing.size
        if diverging:
            scale = float(np.abs(heatmap).max()) or 1.0
            values = upsampled_raw(((heatmap / scale + 1.0) / 2.0)[None], size)[0]
            colours = apply_colormap(values, "RdBu_r")
        else:
            colours = apply_colormap(upsampled_raw(np.asarray(heatmap)[None], size)[0], "jet")
        return _png_uri(_fit(np.uint8(colours * 255 + 0.5)))

    def _volume_heat(self, heatmap: np.ndarray, diverging: bool) -> str:
        """A 3-D mean or difference map: its orthogonal slices through the largest value."""
        from shortcut_detect.cam.image import apply_colormap
        from shortcut_detect.viz_volume import PLANE_AXES, peak_voxel, resize_volume, volume_slice

        shape = self.preprocessing.input_shape
        if diverging:
            scale = float(np.abs(heatmap).max()) or 1.0
            values, colormap = (heatmap / scale + 1.0) / 2.0, "RdBu_r"
            point = peak_voxel(np.abs(resize_volume(heatmap, shape)))
        else:
            values, colormap = heatmap, "jet"
            point = None
        values = resize_volume(values, shape)
        point = point or peak_voxel(values)
        pictures = [
            np.uint8(apply_colormap(volume_slice(values, plane, point[axis]), colormap) * 255 + 0.5)
            for plane, axis in PLANE_AXES.items()
        ]
        height = max(p.shape[0] for p in pictures)
        row = np.concatenate(
            [np.pad(p, ((0, height - p.shape[0]), (0, 2), (0, 0))) for p in pictures], axis=1
        )
        return _png_uri(_fit(row, 2 * TILE_PIXELS))


def _group_figure(analysis: Analysis, images: _SampleImages) -> dict[str, Any] | None:
    if not analysis.group_means:
        return None
    result = analysis.group_comparison_figure
    try:
        from shortcut_detect import viz

        plot = viz.plot_group_comparison
    except (ImportError, AttributeError):
        plot = None
    if plot is not None and result is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "groups.png"
            try:
                figure = plot(result, save_path=str(path))
                if path.exists():
                    return {"figure": _file_uri(path)}
                if figure is not None and hasattr(figure, "savefig"):
                    return {"figure": _figure_uri(figure)}
            except Exception:  # fall back to the plain maps below
                pass
    panels = [
        {"title": f"group '{name}'", "image": images.heat_only(mean)}
        for name, mean in analysis.group_means.items()
    ]
    if analysis.divergence is not None:
        names = list(analysis.group_means)
        title = (
            f"'{names[1]}' minus '{names[0]}' (red: more)"
            if len(names) == 2
            else "spread of group means"
        )
        panels.append(
            {
                "title": title,
                "image": images.heat_only(analysis.divergence, diverging=len(names) == 2),
            }
        )
    return {"panels": panels}


def _spray_section(analysis: Analysis, images: _SampleImages) -> list[dict[str, Any]]:
    if analysis.spray is None:
        return []
    clusters = analysis.spray.get("details", {}).get("clusters", [])
    sections = []
    for cluster, members in list(zip(clusters, analysis.spray_ids))[:MAX_CLUSTERS]:
        mean_map = np.asarray(cluster.get("mean_map", []), dtype=np.float64)
        sections.append(
            {
                "cluster": cluster.get("cluster"),
                "size": cluster.get("size"),
                "share": cluster.get("share"),
                "flagged": cluster.get("flagged"),
                "peak_location": cluster.get("peak_location"),
                "majority_group": cluster.get("majority_group"),
                "group_purity": cluster.get("group_purity"),
                "majority_label": cluster.get("majority_label"),
                "mean_image": images.heat_only(mean_map) if mean_map.ndim in (2, 3) else None,
                "tiles": [images.tile(sid) for sid in members[:MAX_CLUSTER_TILES]],
            }
        )
    return sections


def _key_numbers(summary: dict[str, Any]) -> list[dict[str, str]]:
    audit = summary["audit"]
    cards = [
        {"label": "images analysed", "value": f"{audit['samples_analysed']:,}"},
        {"label": "unreadable images", "value": f"{audit['samples_failed']:,}"},
    ]
    accuracy = summary.get("accuracy", {})
    if accuracy.get("overall") is not None:
        cards.append({"label": "accuracy", "value": format_percent(accuracy["overall"], 1)})
    for signal in summary.get("signals", []):
        metrics = signal.get("metrics", {})
        if signal["name"] == "mask_attention" and metrics.get("attention_in_mask_mean") is not None:
            cards.append(
                {
                    "label": "attention in mask",
                    "value": format_percent(metrics["attention_in_mask_mean"], 1),
                    "note": f"mask covers {format_percent(metrics.get('mask_area_share_mean'), 1)}",
                }
            )
        if signal["name"] == "interventions" and metrics.get("n_candidates"):
            cards.append(
                {
                    "label": "regions relied on",
                    "value": f"{metrics['n_confirmed']} of {metrics['n_candidates']}",
                    "note": "tested by removal",
                }
            )
        if signal["name"] == "group_attention" and metrics.get("overlap_score") is not None:
            cards.append(
                {
                    "label": "attention shared by groups",
                    "value": format_percent(metrics["overlap_score"]),
                    "note": f"p = {format_number(metrics.get('p_value'), 2)}",
                }
            )
    return cards


def _shown_ids(analysis: Analysis) -> set[str]:
    ids = set(analysis.misclassified[:MAX_TILES])
    if analysis.top_attention is not None:
        ids.update(analysis.top_attention[2])
    for members in analysis.spray_ids[:MAX_CLUSTERS]:
        ids.update(members[:MAX_CLUSTER_TILES])
    return ids


def _rows_of(store: AuditStore, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Table rows of the samples the report shows (not the whole table)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = store.table()
    wanted = table.filter(pc.is_in(table.column("sample_id"), pa.array(sorted(ids), pa.string())))
    return {row["sample_id"]: row for row in wanted.to_pylist()}


def _stage_file(store: AuditStore, name: Any) -> Path | None:
    """The intervention stage's picture ``name`` (relative to the audit folder), only when it
    is a file inside the stage's folder once links are followed: whatever a tampered
    ``interventions.json`` names, the report embeds no other file."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return None
    folder = (store.root / INTERVENTIONS_DIR).resolve()
    path = (store.root / name).resolve()
    return path if folder in path.parents and path.is_file() else None


def _intervention_section(
    summary: dict[str, Any], store: AuditStore
) -> list[dict[str, Any]] | None:
    """The candidates of the intervention stage with their before/after images embedded."""
    if not any(
        s["name"] == "interventions" and s["risk"] != "UNKNOWN" for s in summary.get("signals", [])
    ):
        return None
    entries = []
    for entry in summary.get("interventions", []):
        pairs = []
        for example in entry.get("examples") or []:
            original = _stage_file(store, example.get("original"))
            removed = _stage_file(store, example.get("removed"))
            if original is not None and removed is not None:
                pairs.append(
                    example | {"original": _file_uri(original), "removed": _file_uri(removed)}
                )
        entries.append(entry | {"pairs": pairs})
    return entries


def render_html(
    summary: dict[str, Any],
    analysis: Analysis,
    store: AuditStore,
) -> str:
    """Render the report HTML from an analysis (images are read from the data on disk)."""

    rows = _rows_of(store, _shown_ids(analysis))
    images = _SampleImages(store, rows)
    top = None
    if analysis.top_attention is not None:
        title, explanation, ids, scores = analysis.top_attention
        top = {
            "title": title,
            "explanation": explanation,
            "tiles": [images.tile(sid, score, "in region") for sid, score in zip(ids, scores)],
        }
    misclassified = [images.tile(sid) for sid in analysis.misclassified[:MAX_TILES]]
    return render(
        "report.html",
        summary=summary,
        verdict=summary["verdict"],
        key_numbers=_key_numbers(summary),
        groups_figure=_group_figure(analysis, images),
        top=top,
        misclassified=misclassified,
        misclassified_count=summary.get("misclassified", {}).get("count", 0),
        spray=_spray_section(analysis, images),
        embedding_maps=embedding_map_figures(
            summary.get("embedding_map"), analysis.embedding_points
        ),
        interventions=_intervention_section(summary, store),
        generated=time.strftime("%Y-%m-%d %H:%M"),
        # Small inputs are embedded at their own size and scaled up without smoothing.
        px="px" if max(images.preprocessing.size) < 120 and not images.preprocessing.is_3d else "",
    )


def build_report(
    store: AuditStore,
    *,
    loaded: Any = None,
    log: Callable[[str], None] | None = None,
    out: Path | None = None,
    **analysis_options: Any,
) -> tuple[dict[str, Any], Path]:
    """Merge the shards, analyse, and write ``summary.json`` and ``report.html``.

    Parameters
    ----------
    store, loaded:
        As for :func:`~shortcut_detect.audit.analysis.analyse_store`.
    log:
        Deprecated: progress messages go to the ``shortcut_detect.audit`` loggers; a
        callable given here also receives them.
    out:
        Folder for the two files (default: the store's folder).
    **analysis_options:
        The keyword options of :func:`~shortcut_detect.audit.analysis.analyse_store`
        (``n_permutations``, ``max_analysis_samples``, ``embedding_samples``, ``seed``,
        ``batch_size``, ``num_workers``).

    Returns
    -------
    tuple
        ``(summary, report_path)``.
    """
    with forward_log(log, deprecated="build_report(log=...)"):
        store.merge()
        fault_point("report.analysis")
        analysis = analyse_store(store, loaded=loaded, **analysis_options)
    target = Path(out) if out is not None else store.root
    summary = to_jsonable(analysis.summary)
    summary["files"] = {"report": "report.html", "table": "merged/results.parquet"}
    if analysis.embedding_points is not None:
        points = map_points(analysis.embedding_points, analysis.spray_clusters)
        write_json(target / EMBEDDING_MAP_FILE, points)
        summary["files"]["embedding_map"] = EMBEDDING_MAP_FILE
    write_json(target / "summary.json", summary)
    fault_point("report.summary")
    html = render_html(summary, analysis, store)
    report = target / "report.html"
    write_text(report, html)
    return summary, report


def signal_rows(summary: dict[str, Any]) -> Sequence[dict[str, Any]]:
    """The signals of a summary (for printing)."""
    return summary.get("signals", [])
