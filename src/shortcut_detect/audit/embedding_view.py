"""The audit's embedding map: the embeddings the embedding tests extracted, mapped to 2-D.

:func:`audit_embedding_map` maps them (t-SNE, deterministic with the audit's seed) and
measures, for the colourings that matter, what the map shows in one sentence: whether the
classes separate, and whether the groups form islands *within* each class (the picture of a
model that encodes the hospital or the scanner). The report draws one figure per such
colouring (:func:`embedding_map_figures`); ``embedding_map.json`` in the audit directory
keeps every point (sample id, position, label, group, prediction, correctness, SpRAy
cluster) for the app's interactive map.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from shortcut_detect.analysis.embedding_map import (
    EmbeddingMap,
    describe_embedding_map,
    embedding_map,
)
from shortcut_detect.common.serialization import to_jsonable

__all__ = [
    "COLOURINGS",
    "EMBEDDING_MAP_FILE",
    "FIGURE_COLOURINGS",
    "audit_embedding_map",
    "embedding_map_figures",
    "map_points",
]

#: Per-point columns of the map, in selector order.
COLOURINGS = ("label", "group", "prediction", "correct", "spray_cluster")
#: The colourings the report draws, each with the sentence that says what it shows.
FIGURE_COLOURINGS = ("group", "label")
EMBEDDING_MAP_FILE = "embedding_map.json"
_TITLES = {
    "label": "true class",
    "group": "group",
    "prediction": "predicted class",
    "correct": "correct prediction",
    "spray_cluster": "SpRAy cluster",
}


def colouring_title(name: str) -> str:
    """What a colouring is called in legends and selectors."""
    return _TITLES.get(name, name)


def audit_embedding_map(
    embeddings: np.ndarray,
    sample_ids: Sequence[str],
    *,
    labels: Sequence[str | None],
    groups: Sequence[str],
    predictions: Sequence[str],
    seed: int = 0,
    method: str = "tsne",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Map the audit's embeddings and describe them.

    Parameters
    ----------
    embeddings:
        ``(N, D)`` embeddings of the samples ``sample_ids``.
    labels, groups, predictions:
        Per sample: true class name (``None`` when unknown), group, predicted class name.
    seed:
        Seed of the map and of the permutation tests.
    method:
        ``"tsne"``, ``"umap"``, ``"pca"`` or ``"auto"``.

    Returns
    -------
    (summary, points)
        ``summary``: the ``embedding_map`` section of ``summary.json`` (method, note and one
        description per colouring of :data:`FIGURE_COLOURINGS`); ``points``: per-point
        columns (``sample_id``, ``x``, ``y`` and the colourings) for ``embedding_map.json``.
    """
    count = len(sample_ids)
    if len(embeddings) != count:
        raise ValueError(f"{len(embeddings)} embeddings for {count} sample ids")
    result = embedding_map(embeddings, method, seed=seed)
    correct = [
        None if label is None else bool(label == prediction)
        for label, prediction in zip(labels, predictions)
    ]
    table = result.table(
        label=np.array(list(labels), dtype=object),
        group=np.array(list(groups), dtype=object),
        prediction=np.array(list(predictions), dtype=object),
        correct=np.array(correct, dtype=object),
    )
    descriptions = _descriptions(result, table, seed)
    summary = {
        "method": result.method,
        "note": result.note,
        "n_points": len(result),
        "seed": result.seed,
        "descriptions": {name: item.to_dict() for name, item in descriptions.items()},
        "file": EMBEDDING_MAP_FILE,
    }
    points = {
        "sample_id": [str(sample_ids[int(i)]) for i in table["index"]],
        "x": table["x"].astype(float).round(4).tolist(),
        "y": table["y"].astype(float).round(4).tolist(),
        **{name: to_jsonable(list(table[name])) for name in ("label", "group", "prediction")},
        "correct": list(table["correct"]),
    }
    return summary, points


def _descriptions(result: EmbeddingMap, table: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Groups within each class, and classes, on the map (unlabelled points cannot be put in
    a class: they are left out of both when there are labelled points)."""
    labelled = np.array([label is not None for label in table["label"]], dtype=bool)
    if labelled.sum() < 3:
        return {
            "group": describe_embedding_map(result.coordinates, None, table["group"], seed=seed)
        }
    points, labels = result.coordinates[labelled], table["label"][labelled]
    return {
        "group": describe_embedding_map(points, labels, table["group"][labelled], seed=seed),
        "label": describe_embedding_map(points, None, labels, seed=seed, group_name="classes"),
    }


def map_points(points: dict[str, list[Any]], spray_clusters: dict[str, int]) -> dict[str, Any]:
    """``points`` with the ``spray_cluster`` column (``None`` for samples SpRAy did not
    cluster)."""
    clusters = [spray_clusters.get(sample_id) for sample_id in points["sample_id"]]
    return {**points, "spray_cluster": clusters}


def _png_uri(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def embedding_map_figures(
    summary: dict[str, Any] | None, points: dict[str, Any] | None
) -> list[dict[str, str]]:
    """One report figure per colouring of :data:`FIGURE_COLOURINGS` that has a sentence:
    ``[{"colouring", "sentence", "image"}]`` with the image as a PNG data URI."""
    if not summary or not points:
        return []
    from shortcut_detect.viz_embeddings import plot_embedding_map

    coordinates = np.column_stack([points["x"], points["y"]]).astype(np.float32)
    result = EmbeddingMap(
        coordinates=coordinates,
        indices=np.arange(len(coordinates), dtype=np.int64),
        method=summary.get("method", "tsne"),
        n_input=len(coordinates),
        seed=int(summary.get("seed", 0)),
        note=summary.get("note", ""),
    )
    figures = []
    for name in FIGURE_COLOURINGS:
        description = summary.get("descriptions", {}).get(name)
        if description is None:
            continue
        values = np.array(points[name], dtype=object)
        figure = plot_embedding_map(result, values, name=colouring_title(name))
        figures.append(
            {
                "colouring": colouring_title(name),
                "sentence": description["sentence"],
                "image": _png_uri(figure),
            }
        )
    return figures
