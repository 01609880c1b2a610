"""What each control of the page does, as plain functions (no Gradio needed to call them).

Every function takes the :class:`~shortcut_detect.app.explorer.Explorer` first and plain
values after it, and returns plain values (numpy images, dicts, Markdown strings) in the
order of the page's output components. Refused input never raises: it becomes an
``**Error:**`` message for the status line, with the images cleared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from shortcut_detect.app.audit_browser import sample_at
from shortcut_detect.app.explorer import (
    PREDICTED,
    Explorer,
    HeatmapResult,
    RegionIntervention,
    Selection,
    render_views,
)
from shortcut_detect.app.inputs import ExplorerInputError, resolve_inside
from shortcut_detect.app.sources import Sample, thumbnail

__all__ = [
    "AUTO_DONOR",
    "ERROR_PREFIX",
    "Intervened",
    "ModelSettings",
    "Picked",
    "View",
    "audit_row_sample",
    "audit_table",
    "box_preset",
    "box_preview",
    "choose_gallery_sample",
    "choose_upload",
    "compare_classes",
    "compare_layers",
    "donor_choices",
    "error_message",
    "gallery_items",
    "generate",
    "intervene",
    "model_settings",
    "move_box",
    "open_sample",
    "outline_box",
    "preview_image",
    "reblend",
    "reblend_many",
]

ERROR_PREFIX = "**Error:**"
NO_SELECTION = "Pick a test image from the gallery or upload one first."


def error_message(message: str) -> str:
    """A status line for refused input."""
    return f"{ERROR_PREFIX} {message}"


class View(NamedTuple):
    """Outputs of *Generate*: the three images, the top predictions, a status line."""

    original: np.ndarray | None
    heatmap: np.ndarray | None
    overlay: np.ndarray | None
    top: dict[str, float] | None
    status: str
    result: HeatmapResult | None


class Picked(NamedTuple):
    """Outputs of choosing an image: the selection, its preview and a status line."""

    selection: Selection | None
    preview: np.ndarray | None
    status: str


class ModelSettings(NamedTuple):
    """Choices that depend on the model: layers, classes and the comparison layers."""

    layer_options: list[tuple[str, str]]
    default_layer: str
    class_options: list[tuple[str, str]]
    comparison_layers: tuple[str, str, str]
    description: str


# -- choosing an image ------------------------------------------------------------------------


def preview_image(selection: Selection, side: int = 256) -> np.ndarray:
    """The selected image as uint8 RGB, enlarged (pixelated) or reduced to about ``side``."""
    if selection.array is not None:
        sample = Sample(selection.key, selection.caption, array=selection.array)
    else:
        sample = Sample(selection.key, selection.caption, image=selection.image)
    return np.asarray(thumbnail(sample, side).convert("RGB"))


def gallery_items(
    explorer: Explorer, count: int = 20, seed: int | None = None
) -> tuple[list[tuple[Image.Image, str]], list[str]]:
    """``count`` random samples as ``(thumbnail, caption)`` pairs, and their ids.

    A sample that cannot be read is skipped (its error would only hide the others).
    """
    rng = np.random.default_rng(seed)
    ids = list(explorer.sample_ids())
    if not ids:
        return [], []
    order = rng.permutation(len(ids))
    items: list[tuple[Image.Image, str]] = []
    chosen: list[str] = []
    for position in order:
        if len(chosen) >= count:
            break
        try:
            sample = explorer.source.get(ids[int(position)])  # type: ignore[union-attr]
        except ExplorerInputError:
            continue
        items.append((thumbnail(sample), sample.caption))
        chosen.append(sample.sample_id)
    return items, chosen


def _picked(explorer: Explorer, selection: Selection, what: str) -> Picked:
    del explorer
    return Picked(
        selection,
        preview_image(selection),
        f"Selected {what} *{selection.caption}*. Press **Generate**.",
    )


def choose_gallery_sample(
    explorer: Explorer, gallery_ids: Sequence[str] | None, index: int | None
) -> Picked:
    """The gallery item at ``index`` (ids as returned by :func:`gallery_items`)."""
    ids = list(gallery_ids or [])
    if index is None or not 0 <= int(index) < len(ids):
        return Picked(None, None, error_message("That gallery item no longer exists; resample."))
    return open_sample(explorer, ids[int(index)])


def open_sample(explorer: Explorer, sample_id: str | None) -> Picked:
    """A sample of the data (or audit) by id; paths outside the data directory are refused."""
    if sample_id is None or not str(sample_id).strip():
        return Picked(None, None, error_message("Give a sample id."))
    try:
        selection = explorer.select_sample(str(sample_id).strip())
    except ExplorerInputError as error:
        return Picked(None, None, error_message(str(error)))
    return _picked(explorer, selection, "test image")


def choose_upload(
    explorer: Explorer, path: str | Path | None, upload_folder: str | Path | None = None
) -> Picked:
    """An uploaded file: any non-image, oversized or undecodable file gives a message.

    With ``upload_folder`` (where the web server stores uploads) a path outside it is
    refused: a crafted request could otherwise name any file of the server as an upload.
    """
    if path is None or str(path) == "":
        return Picked(None, None, "Upload cleared. " + NO_SELECTION)
    try:
        if upload_folder is not None:
            path = resolve_inside(upload_folder, path)
        selection = explorer.select_upload(path)
    except ExplorerInputError as error:
        return Picked(None, None, error_message(str(error)))
    mode = selection.image.mode if selection.image is not None else "?"
    size = selection.image.size if selection.image is not None else (0, 0)
    picked = _picked(explorer, selection, "upload")
    detail = f" ({size[0]}x{size[1]}, {'grayscale' if mode == 'L' else 'RGB'})"
    return picked._replace(status=picked.status.replace("*. Press", f"*{detail}. Press"))


# -- explaining -------------------------------------------------------------------------------


def _describe(explorer: Explorer, result: HeatmapResult, model_name: str | None) -> str:
    model = explorer.get_model(model_name)
    timing = "from cache" if result.cached else f"computed in {result.seconds:.2f} s"
    return (
        f"Heatmap of **{result.target_name}** (p = {result.target_probability:.3f}) · "
        f"predicted **{result.predicted_name}** ({result.predicted_probability:.1%}) · "
        f"model *{model.name}* · layer `{result.layer}` · {result.method} · {timing}"
    )


def generate(
    explorer: Explorer,
    selection: Selection | None,
    model_name: str | None,
    layer: str | None,
    method: str | None,
    target: object,
    opacity: float,
) -> View:
    """The original, heatmap, overlay and top predictions for the current choices."""
    if selection is None:
        return View(None, None, None, None, error_message(NO_SELECTION), None)
    try:
        result = explorer.explain(selection, model_name, layer, method or "gradcam", [target])[0]
        original, coloured, overlay = render_views(result, opacity, explorer.display_side)
    except ExplorerInputError as error:
        return View(None, None, None, None, error_message(str(error)), None)
    status = f"*{selection.caption}*: " + _describe(explorer, result, model_name)
    return View(original, coloured, overlay, result.top_dict(), status, result)


def reblend(explorer: Explorer, result: HeatmapResult | None, opacity: float) -> np.ndarray | None:
    """The overlay at another opacity, from the heatmap already computed (nothing recomputed)."""
    if result is None:
        return None
    try:
        return render_views(result, opacity, explorer.display_side)[2]
    except ExplorerInputError:
        return None


def reblend_many(
    explorer: Explorer, results: Sequence[HeatmapResult] | None, opacity: float, count: int
) -> tuple[np.ndarray | None, ...]:
    """:func:`reblend` for each of ``count`` comparison panels."""
    results = list(results or [])
    overlays = [reblend(explorer, result, opacity) for result in results]
    return tuple(overlays + [None] * (count - len(overlays)))[:count]


def compare_classes(
    explorer: Explorer,
    selection: Selection | None,
    model_name: str | None,
    layer: str | None,
    method: str | None,
    class_a: object,
    class_b: object,
    opacity: float,
) -> tuple[np.ndarray | None, np.ndarray | None, str, list[HeatmapResult]]:
    """Overlays of two classes' heatmaps for the same image (one forward pass)."""
    if selection is None:
        return None, None, error_message(NO_SELECTION), []
    try:
        results = explorer.explain(
            selection, model_name, layer, method or "gradcam", [class_a, class_b]
        )
        overlays = [render_views(r, opacity, explorer.display_side)[2] for r in results]
    except ExplorerInputError as error:
        return None, None, error_message(str(error)), []
    first, second = results
    correlation = _correlation(first.heatmap, second.heatmap)
    status = (
        f"*{selection.caption}* at `{first.layer}` ({first.method}): left **{first.target_name}** "
        f"(p = {first.target_probability:.3f}), right **{second.target_name}** "
        f"(p = {second.target_probability:.3f}); correlation of the two maps {correlation:+.2f}"
    )
    return overlays[0], overlays[1], status, results


def _correlation(first: np.ndarray, second: np.ndarray) -> float:
    a = first.ravel().astype(np.float64) - first.mean()
    b = second.ravel().astype(np.float64) - second.mean()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else 0.0


def compare_layers(
    explorer: Explorer,
    selection: Selection | None,
    model_name: str | None,
    layers: Sequence[str | None],
    method: str | None,
    target: object,
    opacity: float,
) -> tuple[tuple[np.ndarray | None, ...], str, list[HeatmapResult]]:
    """Overlays of the same image and class at several layers (early, middle, late)."""
    empty = tuple(None for _ in layers)
    if selection is None:
        return empty, error_message(NO_SELECTION), []
    results = []
    try:
        for layer in layers:
            results.append(
                explorer.explain(selection, model_name, layer, method or "gradcam", [target])[0]
            )
        overlays = tuple(render_views(r, opacity, explorer.display_side)[2] for r in results)
    except ExplorerInputError as error:
        return empty, error_message(str(error)), []
    names = ", ".join(f"`{r.layer}`" for r in results)
    status = f"*{selection.caption}*: **{results[0].target_name}** at {names} ({results[0].method})"
    return overlays, status, results


# -- removing or transplanting a box ------------------------------------------------------------

AUTO_DONOR = ""
"""Donor picker value: let the explorer choose a sample of another class."""

BOX_COLOUR = (255, 0, 255)  # magenta: stands out on the jet colour map and a yellow marker


class Intervened(NamedTuple):
    """Outputs of *Apply*: the image before (box outlined) and after, predictions, a sentence."""

    before: np.ndarray | None
    edited: np.ndarray | None
    after: np.ndarray | None
    top_before: dict[str, float] | None
    top_after: dict[str, float] | None
    message: str
    result: RegionIntervention | None


def outline_box(
    image: np.ndarray, box: Sequence[int], factor: int, thickness: int = 2
) -> np.ndarray:
    """``image`` (uint8, enlarged ``factor`` times) with the box drawn as a magenta frame."""
    framed = np.array(image, copy=True)
    x0, y0, x1, y1 = (int(v) * factor for v in box)
    height, width = framed.shape[:2]
    x1, y1 = min(x1, width), min(y1, height)
    line = max(1, min(thickness, (x1 - x0) // 2, (y1 - y0) // 2))
    for rows, cols in (
        (slice(y0, y0 + line), slice(x0, x1)),
        (slice(y1 - line, y1), slice(x0, x1)),
        (slice(y0, y1), slice(x0, x0 + line)),
        (slice(y0, y1), slice(x1 - line, x1)),
    ):
        framed[rows, cols] = BOX_COLOUR
    return framed


def _framed_overlay(
    explorer: Explorer, result: HeatmapResult, box: Sequence[int] | None, opacity: float
) -> np.ndarray:
    original, _, overlay = render_views(result, opacity, explorer.display_side)
    if box is None:
        return overlay
    return outline_box(overlay, box, original.shape[0] // result.heatmap.shape[0])


def box_preset(
    explorer: Explorer, model_name: str | None, preset: str | None
) -> tuple[int, int, int, int] | None:
    """The box of a named preset (:meth:`Explorer.region_presets`), ``None`` if unknown."""
    if not preset:
        return None
    try:
        return explorer.region_presets(model_name).get(preset)
    except ExplorerInputError:
        return None


def move_box(
    explorer: Explorer,
    model_name: str | None,
    box: Sequence[Any],
    shown_width: int,
    clicked: Sequence[Any] | None,
) -> tuple[int, int, int, int] | None:
    """The box (same size, default a ninth of the image) centred where the shown image
    (``shown_width`` pixels wide, the model input enlarged) was clicked, kept inside it."""
    if clicked is None or len(clicked) != 2 or shown_width <= 0:
        return None
    try:
        height, width = explorer.get_model(model_name).input_size
    except ExplorerInputError:
        return None
    scale = shown_width / width
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
        box_w, box_h = x1 - x0, y1 - y0
        if not (0 < box_w < width and 0 < box_h < height):
            raise ValueError
    except (TypeError, ValueError):
        box_w, box_h = max(1, width // 3), max(1, height // 3)
    centre_x, centre_y = float(clicked[0]) / scale, float(clicked[1]) / scale
    left = int(np.clip(round(centre_x - box_w / 2), 0, width - box_w))
    top = int(np.clip(round(centre_y - box_h / 2), 0, height - box_h))
    return left, top, left + box_w, top + box_h


def donor_choices(explorer: Explorer, sample_ids: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(label, value)`` of the donor picker: automatic, then the given samples."""
    choices = [("a sample of another class (automatic)", AUTO_DONOR)]
    for sample_id in list(sample_ids or []):
        try:
            choices.append((explorer.select_sample(sample_id).caption, str(sample_id)))
        except ExplorerInputError:
            continue
    return choices


def box_preview(
    explorer: Explorer, selection: Selection | None, model_name: str | None, box: Sequence[Any]
) -> np.ndarray | None:
    """The current image as the model sees it with the box outlined (no heatmap is computed;
    the box is left out while it is not valid: the message comes when it is applied)."""
    if selection is None:
        return None
    try:
        shown = explorer.shown_image(selection, model_name)
        height, width = explorer.get_model(model_name).input_size
        x0, y0, x1, y1 = (int(v) for v in box)
    except ExplorerInputError:
        return None
    except (TypeError, ValueError):
        return shown
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        return shown
    return outline_box(shown, (x0, y0, x1, y1), shown.shape[0] // height)


def intervene(
    explorer: Explorer,
    selection: Selection | None,
    model_name: str | None,
    layer: str | None,
    method: str | None,
    target: object,
    box: Sequence[Any],
    action: str,
    fill: str,
    donor: str | None,
    opacity: float,
) -> Intervened:
    """Remove or transplant the box and explain the image before and after (refused input:
    an error message, and the image without heatmap to click a new box on)."""
    if selection is None:
        return Intervened(None, None, None, None, None, error_message(NO_SELECTION), None)
    try:
        result = explorer.intervene_region(
            selection,
            box,
            action,
            fill,
            donor or None,
            model_name=model_name,
            layer=layer,
            method=method or "gradcam",
            target=target or PREDICTED,
        )
        before = _framed_overlay(explorer, result.before, result.box, opacity)
        edited, _, after = render_views(result.after, opacity, explorer.display_side)
    except ExplorerInputError as error:
        # The image stays (without a box) so that a click can place a valid box.
        shown = box_preview(explorer, selection, model_name, box)
        return Intervened(shown, None, None, None, None, error_message(str(error)), None)
    after = outline_box(after, result.box, edited.shape[0] // result.after.heatmap.shape[0])
    return Intervened(
        before,
        edited,
        after,
        result.before.top_dict(),
        result.after.top_dict(),
        result.sentence(),
        result,
    )


# -- an audit's results ----------------------------------------------------------------------


def audit_table(
    explorer: Explorer, sort_by: str, group: str | None, outcome: str | None, limit: int = 200
) -> tuple[list[list[Any]], list[str], str]:
    """Rows of the audit for the table, their sample ids, and a one-line summary."""
    if explorer.audit is None:
        return [], [], error_message("No audit was given (start with --audit DIR).")
    try:
        page = explorer.audit.select(sort_by, group, outcome, limit)
    except ExplorerInputError as error:
        return [], [], error_message(str(error))
    return page.rows, page.sample_ids, page.message


def audit_row_sample(sample_ids: Sequence[str] | None, index: Any) -> str:
    """The sample id of a clicked row of the audit table (``""`` when none)."""
    return sample_at(sample_ids, index) or ""


# -- the model picker -------------------------------------------------------------------------


def model_settings(explorer: Explorer, model_name: str | None) -> ModelSettings:
    """Layer and class choices of a model (for when the model picker changes)."""
    model = explorer.get_model(model_name)
    layers = explorer.layer_choices(model.name)
    return ModelSettings(
        layer_options=layers.options(),
        default_layer=layers.default,
        class_options=explorer.class_choices(model.name),
        comparison_layers=layers.comparison,
        description=model.description,
    )


def default_class_pair(explorer: Explorer, model_name: str | None) -> tuple[str, str]:
    """Two classes to compare by default: the first two (or the one and the predicted)."""
    names = explorer.get_model(model_name).class_names
    if len(names) >= 2:
        return "0", "1"
    return PREDICTED, "0"
