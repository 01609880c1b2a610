"""The app's view of volumes: a plane selector and a slice slider over a scan and its
heatmap (image and overlay side by side), for a 3-D audit's samples and for the volume
explorer (:mod:`shortcut_detect.app.volume_explorer`).

The pure part: :func:`slice_view` cuts one slice of a volume and its heatmap (by default
through the heatmap's peak); :class:`VolumeSlicer` reads an audited sample's volume and
stored heatmap once. :func:`volume_panel` and :func:`wire_volume_panel` put it on the page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.audit.store import AuditStore
from shortcut_detect.data.images import load_volume
from shortcut_detect.data.transforms import Preprocessing
from shortcut_detect.viz import overlay_heatmap
from shortcut_detect.viz_volume import (
    PLANE_AXES,
    grey_volume,
    peak_voxel,
    resize_volume,
    volume_slice,
)

__all__ = [
    "SliceView",
    "VolumeSlicer",
    "slice_view",
    "volume_outputs",
    "volume_panel",
    "wire_volume_panel",
]

PLANES = tuple(PLANE_AXES)
_ENLARGE_TO = 256  # small volumes are shown with whole-pixel enlargement up to this side


@dataclass(frozen=True)
class SliceView:
    """One slice of a sample: the image, its overlay, where it is and how many there are."""

    image: np.ndarray  # uint8 (H, W, 3)
    overlay: np.ndarray  # uint8 (H, W, 3)
    plane: str
    index: int
    count: int
    caption: str


class VolumeSlicer:
    """Slices of the volumes of a 3-D audit, with their heatmaps, for the app.

    Parameters
    ----------
    directory:
        The audit directory (its preprocessing must be 3-D, see :meth:`is_volume_audit`).
    """

    def __init__(self, directory: str | Path) -> None:
        self.store = AuditStore(directory)
        self.preprocessing = Preprocessing.from_dict(self.store.config["preprocessing"])
        if not self.preprocessing.is_3d:
            raise ExplorerInputError(f"The audit in {directory} is of 2-D images, not volumes")
        table = self.store.table(["sample_id", "path", "status"])
        self.paths = {
            sid: path
            for sid, path, status in zip(
                table.column("sample_id").to_pylist(),
                table.column("path").to_pylist(),
                table.column("status").to_pylist(),
            )
            if status == "ok"
        }
        self._cached: tuple[str, np.ndarray, np.ndarray] | None = None

    @staticmethod
    def is_volume_audit(directory: str | Path) -> bool:
        """Whether ``directory`` holds an audit of a 3-D model."""
        try:
            config = AuditStore(directory).config
            return Preprocessing.from_dict(config["preprocessing"]).is_3d
        except Exception:  # not an audit, or an older one: no volume view
            return False

    def _volume(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._cached is not None and self._cached[0] == sample_id:
            return self._cached[1], self._cached[2]
        path = self.paths.get(sample_id)
        if path is None:
            raise ExplorerInputError(f"No volume with a heatmap has the id {sample_id!r}")
        shape = self.preprocessing.input_shape
        volume = grey_volume(load_volume(path, window=self.preprocessing.window).display(), shape)
        heat = resize_volume(self.store.heatmaps([sample_id])[0], shape)
        self._cached = (sample_id, volume, heat)
        return volume, heat

    def peak(self, sample_id: str, plane: str) -> tuple[int, int]:
        """``(slice index through the heatmap's peak, slice count)`` of ``plane``."""
        volume, heat = self._volume(sample_id)
        axis = PLANE_AXES[plane]
        return peak_voxel(heat)[axis], volume.shape[axis]

    def view(self, sample_id: str, plane: str, index: int | None = None) -> SliceView:
        """Slice ``index`` of ``plane`` (default: through the heatmap's peak)."""
        volume, heat = self._volume(sample_id)
        return slice_view(volume, heat, plane, index, name=sample_id)


def slice_view(
    volume: np.ndarray,
    heatmap: np.ndarray,
    plane: str,
    index: int | None = None,
    *,
    name: str = "",
    alpha: float = 0.45,
) -> SliceView:
    """Slice ``index`` of ``plane`` of a volume ``[x, y, z]`` in [0, 1] and its heatmap (same
    shape), default: the slice through the heatmap's peak; an index past either end shows
    the end slice. The caption starts with ``name``. Small slices are enlarged by whole
    pixels up to about 256 pixels."""
    if plane not in PLANE_AXES:
        raise ExplorerInputError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    axis = PLANE_AXES[plane]
    count = volume.shape[axis]
    peak = peak_voxel(heatmap)[axis]
    index = peak if index is None else int(np.clip(int(index), 0, count - 1))
    picture = np.clip(volume_slice(volume, plane, index), 0.0, 1.0)
    rgb = np.repeat(picture[..., None], 3, axis=2)
    overlay = overlay_heatmap(rgb, volume_slice(heatmap, plane, index), alpha=alpha)
    factor = max(1, _ENLARGE_TO // max(picture.shape))
    image = np.uint8(rgb * 255 + 0.5)
    if factor > 1:
        image, overlay = (
            np.kron(a, np.ones((factor, factor, 1), np.uint8)) for a in (image, overlay)
        )
    mark = " (heatmap peak)" if index == peak else ""
    where = f"{plane} slice {index + 1} of {count}{mark}"
    caption = f"{name}: {where}" if name else where[0].upper() + where[1:]
    return SliceView(image, overlay, plane, index, count, caption)


@dataclass
class VolumePanel:
    """The components of the volume view."""

    plane: Any
    index: Any
    image: Any
    overlay: Any
    caption: Any


def volume_panel() -> VolumePanel:
    """Plane selector, slice slider, image and overlay (inside the current Blocks context)."""
    import gradio as gr

    with gr.Accordion("Volume slices", open=True, elem_id="volume-panel"):
        with gr.Row():
            plane = gr.Radio(list(PLANES), value="axial", label="Plane", elem_id="volume-plane")
            index = gr.Slider(
                0, 1, value=0, step=1, label="Slice", elem_id="volume-slice", interactive=True
            )
        caption = gr.Markdown("Pick a sample to see its slices.", elem_id="volume-caption")
        with gr.Row():
            image = gr.Image(label="Image", type="numpy", interactive=False, elem_id="volume-image")
            overlay = gr.Image(
                label="Heatmap", type="numpy", interactive=False, elem_id="volume-overlay"
            )
    return VolumePanel(plane, index, image, overlay, caption)


def wire_volume_panel(
    panel: VolumePanel,
    view: Callable[..., SliceView],
    chosen: Sequence[Any],
    guard: Any,
    *,
    triggers: Sequence[Any] = (),
    empty: str = "Pick a sample to see its slices.",
) -> Callable[..., tuple[Any, ...]]:
    """A new choice or plane jumps to the slice through the heatmap's peak; the slider moves
    through the slices.

    ``view(*values, plane, index)`` gives the slice, where ``values`` are those of the
    ``chosen`` components (the first one empty: nothing chosen yet) and ``index`` is
    ``None`` for the peak. ``triggers`` (event listeners, e.g. ``textbox.change``) and the
    plane selector run the jump; it is returned too, to be chained after other events
    (inputs ``[*chosen, panel.plane]``, outputs ``volume_outputs(panel)``).
    """
    import gradio as gr

    @guard
    def jump(*values: Any) -> tuple[Any, ...]:
        if not values[0]:
            return gr.Slider(), None, None, empty
        shown = view(*values, None)
        slider = gr.Slider(minimum=0, maximum=shown.count - 1, value=shown.index, step=1)
        return slider, shown.image, shown.overlay, shown.caption

    @guard
    def move(*values: Any) -> tuple[Any, ...]:
        if not values[0]:
            return None, None, empty
        *picked, index = values
        shown = view(*picked, int(index))
        return shown.image, shown.overlay, shown.caption

    gr.on(
        [*triggers, panel.plane.change],
        jump,
        inputs=[*chosen, panel.plane],
        outputs=volume_outputs(panel),
    )
    # `input`: a number typed into the slider's box (and dragging); `release`: a drag's end.
    gr.on(
        [panel.index.input, panel.index.release],
        move,
        inputs=[*chosen, panel.plane, panel.index],
        outputs=[panel.image, panel.overlay, panel.caption],
        trigger_mode="always_last",
    )
    return jump


def volume_outputs(panel: VolumePanel) -> list[Any]:
    """What jumping to a slice sets: the slider, image, overlay and caption."""
    return [panel.index, panel.image, panel.overlay, panel.caption]
