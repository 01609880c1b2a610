"""The explorer's views beyond CAM heatmaps, as plain functions (no Gradio needed to call them).

- **LIME** as one more entry of the method picker (:func:`generate` dispatches to it), with
  its number of samples and seed;
- a layer's **activation maps**: the strongest channels as tiles and their mean, without
  gradient weighting (:func:`activation_view`);
- the audit's **embedding map** (:class:`EmbeddingPoints`), read from the
  ``embedding_map.json`` the audit report writes, coloured by a chosen column; selecting a
  band of the plot lists its points, nearest to the band's centre first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from shortcut_detect.analysis.activations import activation_grid
from shortcut_detect.app import callbacks
from shortcut_detect.app.explorer import (
    LIME,
    Explorer,
    HeatmapResult,
    Selection,
    _display_image,
    _enlarge,
    _probabilities,
    _upscale_factor,
    render_views,
    resolve_target,
    tensor_key,
)
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.audit.embedding_view import COLOURINGS, EMBEDDING_MAP_FILE, colouring_title
from shortcut_detect.cam.image import apply_colormap
from shortcut_detect.common.modes import eval_mode
from shortcut_detect.gradcam import DEFAULT_HEAD_MAPPINGS, select_head, top_predictions
from shortcut_detect.lime import explain_lime

__all__ = [
    "DEFAULT_LIME_SAMPLES",
    "ActivationView",
    "EmbeddingPoints",
    "activation_view",
    "generate",
    "lime_result",
    "method_choices",
]

DEFAULT_LIME_SAMPLES = 300
MAX_LIME_SAMPLES = 5000
ACTIVATION_CHANNELS = 8
TILE_SIDE = 96
MISSING = "missing"


def method_choices(explorer: Explorer) -> list[tuple[str, str]]:
    """The CAM methods of the explorer, then LIME."""
    return [*explorer.method_choices(), ("LIME (superpixels)", LIME)]


# -- LIME ---------------------------------------------------------------------------------------


def _lime_settings(samples: Any, seed: Any) -> tuple[int, int]:
    try:
        count, chosen_seed = int(samples), int(seed)
    except (TypeError, ValueError):
        raise ExplorerInputError(
            f"LIME samples and seed must be whole numbers, got {samples!r} and {seed!r}."
        ) from None
    if not 2 <= count <= MAX_LIME_SAMPLES:
        raise ExplorerInputError(
            f"LIME samples must be between 2 and {MAX_LIME_SAMPLES}, got {count}."
        )
    return count, chosen_seed


def lime_result(
    explorer: Explorer,
    selection: Selection,
    model_name: str | None,
    target: object,
    samples: Any = DEFAULT_LIME_SAMPLES,
    seed: Any = 0,
) -> HeatmapResult:
    """LIME of one image as a :class:`HeatmapResult` (the heatmap: positive superpixel
    weights), cached like the CAM heatmaps by model, image, class, samples and seed."""
    count, chosen_seed = _lime_settings(samples, seed)
    model = explorer.get_model(model_name)
    index = resolve_target(target, model.class_names)
    tensor = explorer.input_tensor(selection, model)
    key = (model.name, tensor_key(tensor), LIME, count, chosen_seed, index)

    def compute() -> HeatmapResult:
        started = time.perf_counter()
        try:
            device = next(model.model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        try:
            explanation = explain_lime(
                model.model, tensor, index, num_samples=count, seed=chosen_seed, device=device
            )
            with eval_mode(model.model), torch.inference_mode():
                outputs = model.model(tensor[None].to(device))
        except (ValueError, TypeError, RuntimeError, ImportError) as error:
            raise ExplorerInputError(f"Could not compute LIME for {model.name}: {error}") from error
        head = select_head(outputs, "logits", DEFAULT_HEAD_MAPPINGS)
        probabilities = _probabilities(head, len(model.class_names))
        top = tuple(
            (entry["class_name"], entry["confidence"])
            for entry in top_predictions(probabilities, model.class_names, explorer.top_k)
        )
        return HeatmapResult(
            heatmap=np.ascontiguousarray(explanation.heatmap, dtype=np.float32),
            image=_display_image(selection, tensor, model),
            target_index=explanation.target,
            target_name=model.class_names[explanation.target],
            target_probability=explanation.target_probability,
            top=top,
            layer="(none: LIME hides superpixels)",
            method=f"LIME, {count} samples, seed {chosen_seed}",
            seconds=time.perf_counter() - started,
        )

    return explorer.remember(model, key, compute)


def generate(
    explorer: Explorer,
    selection: Selection | None,
    model_name: str | None,
    layer: str | None,
    method: str | None,
    target: object,
    opacity: float,
    lime_samples: Any = DEFAULT_LIME_SAMPLES,
    lime_seed: Any = 0,
) -> callbacks.View:
    """:func:`callbacks.generate`, with LIME as one more method."""
    if method != LIME or selection is None:
        return callbacks.generate(explorer, selection, model_name, layer, method, target, opacity)
    try:
        result = lime_result(explorer, selection, model_name, target, lime_samples, lime_seed)
        original, coloured, overlay = render_views(result, opacity, explorer.display_side)
    except ExplorerInputError as error:
        return callbacks.View(None, None, None, None, callbacks.error_message(str(error)), None)
    timing = "from cache" if result.cached else f"computed in {result.seconds:.2f} s"
    status = (
        f"*{selection.caption}*: LIME weights of **{result.target_name}** "
        f"(p = {result.target_probability:.3f}) · predicted **{result.predicted_name}** "
        f"({result.predicted_probability:.1%}) · {result.method} · {timing}"
    )
    return callbacks.View(original, coloured, overlay, result.top_dict(), status, result)


# -- activation maps -------------------------------------------------------------------------


class ActivationView(NamedTuple):
    """The strongest channels as ``(image, caption)`` tiles, their mean, and a status line."""

    tiles: list[tuple[np.ndarray, str]]
    mean: np.ndarray | None
    status: str


def _coloured(values: np.ndarray, side: int) -> np.ndarray:
    factor = _upscale_factor(values.shape[0], values.shape[1], side)
    image = np.uint8(apply_colormap(np.clip(values, 0.0, 1.0), "viridis") * 255 + 0.5)
    return _enlarge(image, factor) if factor > 1 else image


def activation_view(
    explorer: Explorer,
    selection: Selection | None,
    model_name: str | None,
    layer: str | None,
    channels: int = ACTIVATION_CHANNELS,
) -> ActivationView:
    """Raw activations of ``layer`` on the selected image: the ``channels`` strongest
    (highest mean) on one shared colour scale, and their mean."""
    if selection is None:
        return ActivationView([], None, "")
    try:
        model = explorer.get_model(model_name)
        layers = explorer.layer_choices(model.name)
        name = layer or layers.default
        if name not in layers.names:
            raise ExplorerInputError(f"{name!r} is not a candidate layer of {model.name}.")
        tensor = explorer.input_tensor(selection, model)
        with model.lock:
            grid = activation_grid(model.model, tensor, name, channels)
    except (ExplorerInputError, ValueError, TypeError, RuntimeError) as error:
        return ActivationView([], None, callbacks.error_message(str(error)))
    scaled = grid.normalized()
    tiles = [
        (_coloured(tile, TILE_SIDE), f"channel {int(channel)} (mean {float(mean):.3g})")
        for channel, mean, tile in zip(grid.channels, grid.channel_means, scaled)
    ]
    peak = float(grid.mean_map.max())
    mean = grid.mean_map / peak if peak > 0 else np.zeros_like(grid.mean_map)
    status = (
        f"Layer `{grid.layer}` ({'x'.join(str(s) for s in grid.layer_shape)}): the "
        f"{len(tiles)} channels with the highest mean activation, on one shared scale "
        "(bright = strong), and their mean. Raw responses, no gradient weighting."
    )
    return ActivationView(tiles, _coloured(mean, explorer.display_side), status)


# -- the audit's embedding map ---------------------------------------------------------------


def _display_value(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    if name == "correct":
        return "correct" if value else "wrong"
    if name == "spray_cluster":
        return f"cluster {value}"
    return str(value)


@dataclass
class EmbeddingPoints:
    """The points of an audit's embedding map and what the audit says about them.

    Attributes
    ----------
    columns:
        ``sample_id``, ``x``, ``y`` and the colourings of
        :data:`~shortcut_detect.audit.embedding_view.COLOURINGS`, one entry per point.
    sentences:
        ``{colouring: sentence}`` computed by the audit.
    note:
        How the map was made.
    """

    columns: dict[str, list[Any]]
    sentences: dict[str, str]
    note: str = ""

    @classmethod
    def load(cls, root: str | Path) -> EmbeddingPoints | None:
        """The map of the audit in ``root`` (``None`` when the audit made none)."""
        path = Path(root) / EMBEDDING_MAP_FILE
        if not path.is_file():
            return None
        try:
            columns = json.loads(path.read_text())
            summary = json.loads((Path(root) / "summary.json").read_text()).get("embedding_map", {})
        except (OSError, ValueError) as error:
            raise ExplorerInputError(f"Cannot read the embedding map in {root}: {error}") from error
        missing = [name for name in ("sample_id", "x", "y") if name not in columns]
        if missing:
            raise ExplorerInputError(f"{path} lacks the columns {', '.join(missing)}")
        sentences = {
            name: item["sentence"]
            for name, item in summary.get("descriptions", {}).items()
            if item.get("sentence")
        }
        return cls(columns, sentences, summary.get("note", ""))

    def __len__(self) -> int:
        return len(self.columns["sample_id"])

    def colour_choices(self) -> list[tuple[str, str]]:
        """``(title, column)`` of the colourings this map has."""
        return [(colouring_title(name), name) for name in COLOURINGS if name in self.columns]

    def frame(self, colour_by: str) -> Any:
        """A pandas DataFrame for ``gr.ScatterPlot``: ``x``, ``y``, ``sample_id`` and the
        colourings as text (the colour column is ``colour_by``'s)."""
        import pandas as pd

        if colour_by not in self.columns or colour_by not in COLOURINGS:
            raise ExplorerInputError(
                f"Cannot colour the map by {colour_by!r}; choose one of "
                f"{', '.join(name for _, name in self.colour_choices())}."
            )
        data: dict[str, Any] = {
            "x": np.asarray(self.columns["x"], dtype=np.float64),
            "y": np.asarray(self.columns["y"], dtype=np.float64),
            "sample_id": [str(item) for item in self.columns["sample_id"]],
        }
        for name in COLOURINGS:
            if name in self.columns:
                data[name] = [_display_value(name, value) for value in self.columns[name]]
        return pd.DataFrame(data)

    def caption(self, colour_by: str) -> str:
        """The note, and the audit's sentence for ``colour_by`` when it has one."""
        sentence = self.sentences.get(colour_by)
        return f"{self.note} {sentence or ''}".strip()

    def in_band(self, x_range: Sequence[float]) -> list[int]:
        """Positions of the points whose ``x`` lies in ``x_range``, nearest to its centre
        first."""
        low, high = sorted(float(value) for value in x_range)
        xs = np.asarray(self.columns["x"], dtype=np.float64)
        inside = np.flatnonzero((xs >= low) & (xs <= high))
        centre = (low + high) / 2.0
        return inside[np.argsort(np.abs(xs[inside] - centre), kind="stable")].tolist()

    def describe_point(self, position: int) -> str:
        """``"id · label · group · prediction"`` of one point (a picker label)."""
        parts = [str(self.columns["sample_id"][position])]
        for name in ("label", "group", "prediction", "correct"):
            if name in self.columns:
                parts.append(
                    f"{colouring_title(name)}: {_display_value(name, self.columns[name][position])}"
                )
        return " · ".join(parts)


def embedding_plot(points: EmbeddingPoints | None, colour_by: str) -> tuple[Any, str]:
    """The scatter plot's data and caption for a colouring."""
    if points is None:
        return None, "This audit has no embedding map (it needs a group column and the model)."
    try:
        return points.frame(colour_by), points.caption(colour_by)
    except ExplorerInputError as error:
        return None, callbacks.error_message(str(error))


def select_band(
    points: EmbeddingPoints | None, x_range: Any, limit: int = 50
) -> tuple[list[tuple[str, str]], str | None, str]:
    """Picker choices for the points in a selected ``x`` band (nearest to its centre first,
    at most ``limit``), the one chosen, and a message."""
    if points is None or not isinstance(x_range, (list, tuple)) or len(x_range) != 2:
        return [], None, ""
    chosen = points.in_band(x_range)
    if not chosen:
        return [], None, "No point in the selected band; select a wider one."
    choices = [
        (points.describe_point(i), str(points.columns["sample_id"][i])) for i in chosen[:limit]
    ]
    shown = "" if len(chosen) <= limit else f" (the {limit} nearest its centre listed)"
    message = (
        f"{len(chosen)} point(s) in the selected band{shown}; the one nearest its centre is "
        "chosen. Press **Open in explorer** to see its image and heatmap."
    )
    return choices, choices[0][1], message
