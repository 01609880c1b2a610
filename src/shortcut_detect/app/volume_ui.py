"""The Gradio page of a 3-D model (:class:`~shortcut_detect.app.volume_explorer.VolumeExplorer`):
pick or upload a volume, explain it, look at it a slice at a time.

Importing this module imports Gradio (the optional ``app`` extra).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from shortcut_detect.app import callbacks, views, volume_panel
from shortcut_detect.app.explorer import LIME, PREDICTED, HeatmapResult, Selection
from shortcut_detect.app.result_files import with_atomic_files
from shortcut_detect.app.ui import _guard
from shortcut_detect.app.volume_explorer import (
    INTERVENE_REFUSAL,
    NO_VOLUME,
    VolumeExplorer,
    choose_volume,
    choose_volume_upload,
    explain_volume,
)

__all__ = ["create_volume_blocks"]

INTRO = """\
# Shortcut explorer: volumes
Pick a volume or upload a NIfTI file, choose a layer, a CAM method and a class, and press
**Generate**: the 3-D heatmap shows where the model looked (warm = important). The slices open
at the heatmap's peak; change the plane or move the slider to look around it.
"""


def create_volume_blocks(
    explorer: VolumeExplorer, *, title: str = "shortcut-detect explorer"
) -> gr.Blocks:
    """The page of a 3-D model: volume picker and upload, layer / method / class choices,
    top predictions, and the volume panel (plane selector, slice slider, image, overlay)."""
    model_name = explorer.model_names[0]
    settings = callbacks.model_settings(explorer, model_name)
    # LIME's superpixels are 2-D.
    method_options = [item for item in views.method_choices(explorer) if item[1] != LIME]
    default_method = explorer.default_method
    if not any(key == default_method for _, key in method_options):
        default_method = method_options[0][1]
    ids = list(explorer.sample_ids())
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        selection, result = gr.State(None), gr.State(None)
        gr.Markdown(INTRO)
        gr.Markdown(f"Model: *{model_name}* · input {_shape(explorer)}", elem_id="model-note")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                with gr.Tab("Volumes", visible=bool(ids)):
                    picker = gr.Dropdown(
                        ids, value=None, label="Volume", elem_id="volume-pick", filterable=True
                    )
                with gr.Tab("Upload"):
                    upload = gr.File(
                        label="Upload a volume (.nii, .nii.gz, multi-frame DICOM)",
                        type="filepath",
                        file_count="single",
                        elem_id="volume-upload",
                    )
                layer = gr.Dropdown(
                    settings.layer_options,
                    value=settings.default_layer,
                    label="Target layer",
                    elem_id="layer",
                )
                method = gr.Dropdown(
                    method_options, value=default_method, label="CAM method", elem_id="method"
                )
                target = gr.Dropdown(
                    settings.class_options, value=PREDICTED, label="Target class", elem_id="target"
                )
                opacity = gr.Slider(
                    0.0, 1.0, value=0.45, step=0.05, label="Overlay opacity", elem_id="opacity"
                )
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3, min_width=480):
                status = gr.Markdown(NO_VOLUME, elem_id="status")
                top = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="top5")
                panel = volume_panel.volume_panel()
                with gr.Accordion("Intervene", open=False):
                    gr.Markdown(INTERVENE_REFUSAL, elem_id="intervene-note")
        _wire(explorer, selection, result, picker, upload, status, top, panel, opacity)

        @_guard
        def run_generate(
            sel: Selection | None,
            layer_name: str,
            method_name: str,
            target_value: str,
            plane: str,
            alpha: float,
        ) -> tuple[Any, ...]:
            explained = explain_volume(
                explorer, sel, layer_name, method_name, target_value, plane, alpha
            )
            shown = explained.shown
            if shown is None:
                return gr.Slider(), None, None, "", None, explained.status, None
            slider = gr.Slider(minimum=0, maximum=shown.count - 1, value=shown.index, step=1)
            return (
                slider,
                shown.image,
                shown.overlay,
                shown.caption,
                explained.top,
                explained.status,
                explained.result,
            )

        generate.click(
            run_generate,
            inputs=[selection, layer, method, target, panel.plane, opacity],
            outputs=[*volume_panel.volume_outputs(panel), top, status, result],
        )
    for block in demo.blocks.values():  # several sessions may be served the same picture
        if isinstance(block, gr.Image):
            with_atomic_files(block)
    demo.explorer = explorer  # type: ignore[attr-defined]
    return demo


def _shape(explorer: VolumeExplorer) -> str:
    model = explorer.get_model()
    return f"{model.in_channels}x{'x'.join(str(s) for s in model.input_size)} (C x X x Y x Z)"


def _wire(
    explorer: VolumeExplorer,
    selection: gr.State,
    result: gr.State,
    picker: gr.Dropdown,
    upload: gr.File,
    status: gr.Markdown,
    top: gr.Label,
    panel: volume_panel.VolumePanel,
    opacity: gr.Slider,
) -> None:
    """Picking, uploading, the plane, the slider and the opacity."""
    cleared = [result, top, panel.image, panel.overlay, panel.caption]

    @_guard
    def pick(sample_id: str | None) -> tuple[Any, ...]:
        return (*choose_volume(explorer, sample_id), None, None, None, None, "")

    @_guard
    def pick_upload(path: str | None) -> tuple[Any, ...]:
        picked = choose_volume_upload(explorer, path, upload.GRADIO_CACHE)
        return (*picked, None, None, None, None, "")

    def view(
        res: HeatmapResult, alpha: float, sel: Selection | None, plane: str, index: int | None
    ) -> Any:
        return explorer.view(res, plane, index, alpha, name=sel.caption if sel else "")

    picker.change(pick, inputs=[picker], outputs=[selection, status, *cleared])
    upload.upload(pick_upload, inputs=[upload], outputs=[selection, status, *cleared])
    volume_panel.wire_volume_panel(
        panel,
        view,
        [result, opacity, selection],
        _guard,
        empty="Press **Generate** to see the slices.",
    )

    @_guard
    def reblend(res: HeatmapResult | None, alpha: float, plane: str, index: float) -> Any:
        if res is None:
            return None
        return explorer.view(res, plane, int(index), alpha).overlay

    opacity.change(
        reblend,
        inputs=[result, opacity, panel.plane, panel.index],
        outputs=[panel.overlay],
        show_progress="hidden",
        trigger_mode="always_last",
    )
