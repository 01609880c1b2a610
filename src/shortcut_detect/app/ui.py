"""The Gradio page. Importing this module imports Gradio (the optional ``app`` extra)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from shortcut_detect.app import callbacks, view_panels, views, volume_panel
from shortcut_detect.app.audit_browser import ALL
from shortcut_detect.app.explorer import (
    PREDICTED,
    Explorer,
    HeatmapResult,
    Selection,
)
from shortcut_detect.app.result_files import with_atomic_files
from shortcut_detect.interventions.fills import FILLS

__all__ = ["create_blocks"]

LOGGER = logging.getLogger("shortcut_detect.app")
GALLERY_SIZE = 20
CUSTOM_BOX = "custom box"  # the box preset picker's value once the box was clicked
F = TypeVar("F", bound=Callable[..., Any])

INTRO = """\
# Shortcut explorer
Pick an image, choose a layer, a CAM method and a class, and press **Generate**: the heatmap
shows where the model looked (warm = important). A model that learned a shortcut looks at the
shortcut (a corner tag, a watermark) instead of the object.
"""


def _guard(fn: F) -> F:
    """Show unexpected failures as an error message in the page (and log the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            LOGGER.exception("explorer callback %s failed", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(error).__name__}): {error}") from error

    return wrapper  # type: ignore[return-value]


@dataclass
class _AuditTab:
    sort_by: gr.Dropdown
    group: gr.Dropdown
    outcome: gr.Dropdown
    message: gr.Markdown
    table: gr.Dataframe
    ids: gr.State
    sample_id: gr.Textbox
    open: gr.Button
    embedding: view_panels.EmbeddingPanel | None = None
    volume: volume_panel.VolumePanel | None = None


@dataclass
class _InterveneTab:
    """The *Intervene* tab: a box, what to do with it, and the image before and after."""

    preset: gr.Dropdown
    corners: list[gr.Number]  # x0, y0, x1, y1
    action: gr.Radio
    fill: gr.Dropdown
    donor: gr.Dropdown
    apply: gr.Button
    before: gr.Image
    edited: gr.Image
    after: gr.Image
    top_before: gr.Label
    top_after: gr.Label
    message: gr.Markdown


@dataclass
class _Inputs:
    """The left column: where the image comes from and what to explain."""

    gallery: gr.Gallery
    resample: gr.Button
    upload: gr.File
    preview: gr.Image
    layer: gr.Dropdown
    method: gr.Dropdown
    target: gr.Dropdown
    opacity: gr.Slider
    generate: gr.Button
    lime: view_panels.LimeControls


@dataclass
class _Results:
    """The right column: status line, result tabs and what they show."""

    status: gr.Markdown
    tabs: gr.Tabs
    original: gr.Image
    heatmap: gr.Image
    overlay: gr.Image
    top: gr.Label
    first_class: gr.Dropdown
    second_class: gr.Dropdown
    compare_classes: gr.Button
    class_overlays: list[gr.Image]
    class_status: gr.Markdown
    layer_pickers: list[gr.Dropdown]
    compare_layers: gr.Button
    layer_overlays: list[gr.Image]
    layer_status: gr.Markdown
    intervention: _InterveneTab
    audit: _AuditTab | None
    activations: view_panels.ActivationPanel


@dataclass
class _Page:
    """Every component the events read or write."""

    model_picker: gr.Radio
    model_note: gr.Markdown
    inputs: _Inputs
    results: _Results
    selection: gr.State
    result: gr.State
    class_results: gr.State
    layer_results: gr.State
    gallery_ids: gr.State
    has_gallery: bool

    @property
    def picked_outputs(self) -> list[Any]:
        """What choosing an image sets: the selection, preview, status, cleared views."""
        views = self.results
        return [
            self.selection,
            self.inputs.preview,
            views.status,
            views.original,
            views.heatmap,
            views.overlay,
            views.top,
            self.result,
        ]

    @property
    def generate_inputs(self) -> list[Any]:
        controls = self.inputs
        return [
            self.selection,
            self.model_picker,
            controls.layer,
            controls.method,
            controls.target,
            controls.opacity,
            controls.lime.samples,
            controls.lime.seed,
        ]

    @property
    def generate_outputs(self) -> list[Any]:
        views = self.results
        return [views.original, views.heatmap, views.overlay, views.top, views.status, self.result]


def create_blocks(explorer: Explorer, *, title: str = "shortcut-detect explorer") -> gr.Blocks:
    """The page for ``explorer``: explorer, class and layer comparisons, audit browser."""
    first_model = explorer.model_names[0]
    settings = callbacks.model_settings(explorer, first_model)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        states = [gr.State(None), gr.State(None), gr.State([]), gr.State([]), gr.State([])]
        gr.Markdown(INTRO)
        with gr.Row():
            model_picker = gr.Radio(
                choices=explorer.model_names,
                value=first_model,
                label="Model",
                visible=len(explorer.model_names) > 1,
                elem_id="model",
                scale=2,
            )
            model_note = gr.Markdown(settings.description, elem_id="model-note")
        has_gallery = bool(explorer.sample_ids())
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                inputs = _input_column(explorer, settings, has_gallery)
            with gr.Column(scale=3, min_width=480):
                results = _results_column(explorer, settings, first_model)
        page = _Page(model_picker, model_note, inputs, results, *states, has_gallery=has_gallery)
        _wire_explorer(demo, explorer, page)
        _wire_intervene(explorer, page, results.intervention)
        if results.audit is not None:
            _wire_audit(demo, explorer, page, results.audit)
    for block in demo.blocks.values():  # several sessions may be served the same picture
        if isinstance(block, (gr.Image, gr.Gallery)):
            with_atomic_files(block)
    return demo


def _input_column(
    explorer: Explorer, settings: callbacks.ModelSettings, has_gallery: bool
) -> _Inputs:
    """Gallery and upload tabs, the preview, and the layer / method / class / opacity pickers."""
    method_options = views.method_choices(explorer)
    default_method = method_options[0][1] if method_options else "gradcam"
    if any(key == explorer.default_method for _, key in method_options):
        default_method = explorer.default_method
    with gr.Tab("Test images", visible=has_gallery):
        gallery = gr.Gallery(
            label="Random test images (click one)",
            columns=4,
            height=360,
            allow_preview=False,
            interactive=False,
            format="png",
            elem_id="gallery",
        )
        resample = gr.Button("Resample", elem_id="resample", size="sm")
    with gr.Tab("Upload"):
        upload = gr.File(
            label="Upload an image (PNG, JPEG, BMP, TIFF, WebP)",
            type="filepath",
            file_count="single",
            elem_id="upload",
        )
    preview = gr.Image(
        label="Selected image",
        type="numpy",
        format="png",
        interactive=False,
        height=160,
        elem_id="preview",
    )
    layer = gr.Dropdown(
        choices=settings.layer_options,
        value=settings.default_layer,
        label="Target layer",
        info="Later layers: object-level evidence; earlier: edges and textures.",
        elem_id="layer",
    )
    method = gr.Dropdown(
        choices=method_options,
        value=default_method,
        label="CAM method",
        info="ScoreCAM and AblationCAM run the model once per channel: slow on large models.",
        elem_id="method",
    )
    lime = view_panels.lime_controls(default_method)
    target = gr.Dropdown(
        choices=settings.class_options, value=PREDICTED, label="Target class", elem_id="target"
    )
    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
    generate = gr.Button("Generate", variant="primary", elem_id="generate")
    return _Inputs(
        gallery, resample, upload, preview, layer, method, target, opacity, generate, lime
    )


def _results_column(
    explorer: Explorer, settings: callbacks.ModelSettings, model_name: str
) -> _Results:
    """The status line and the result tabs: explain, compare classes, compare layers, audit."""
    class_a, class_b = callbacks.default_class_pair(explorer, model_name)
    early, middle, late = settings.comparison_layers
    status = gr.Markdown(callbacks.NO_SELECTION, elem_id="status")
    with gr.Tabs(selected="explore") as tabs:
        with gr.Tab("Explain", id="explore"):
            with gr.Row():
                original = _image("Original", "original")
                heatmap = _image("Heatmap (warm = important)", "heatmap")
                overlay = _image("Overlay", "overlay")
            top = gr.Label(num_top_classes=5, label="Top-5 predictions", elem_id="top5")
            activations = view_panels.activation_panel()
        with gr.Tab("Compare classes", id="classes"):
            with gr.Row():
                first_class = gr.Dropdown(
                    settings.class_options, value=class_a, label="Left class", elem_id="class-a"
                )
                second_class = gr.Dropdown(
                    settings.class_options, value=class_b, label="Right class", elem_id="class-b"
                )
            compare_classes = gr.Button("Compare classes", elem_id="compare-classes")
            with gr.Row():
                class_overlays = [
                    _image("Left class", "class-overlay-a"),
                    _image("Right class", "class-overlay-b"),
                ]
            class_status = gr.Markdown("", elem_id="class-status")
        with gr.Tab("Compare layers", id="layers"):
            with gr.Row():
                layer_pickers = [
                    gr.Dropdown(
                        settings.layer_options, value=value, label=label, elem_id=f"layer-{key}"
                    )
                    for key, label, value in (
                        ("early", "Early layer", early),
                        ("middle", "Middle layer", middle),
                        ("late", "Late layer", late),
                    )
                ]
            compare_layers = gr.Button("Compare layers", elem_id="compare-layers")
            with gr.Row():
                layer_overlays = [
                    _image(f"{name} layer", f"layer-overlay-{name.lower()}")
                    for name in ("Early", "Middle", "Late")
                ]
            layer_status = gr.Markdown("", elem_id="layer-status")
        intervention = _intervene_tab(explorer, model_name)
        audit = _audit_tab(explorer) if explorer.audit is not None else None
    return _Results(
        status,
        tabs,
        original,
        heatmap,
        overlay,
        top,
        first_class,
        second_class,
        compare_classes,
        class_overlays,
        class_status,
        layer_pickers,
        compare_layers,
        layer_overlays,
        layer_status,
        intervention,
        audit,
        activations,
    )


# The outputs choosing an image clears: original, heatmap, overlay, top-5, last result.
_CLEARED = (None,) * 5


def _wire_explorer(demo: gr.Blocks, explorer: Explorer, page: _Page) -> None:
    """Events of the gallery, upload, model picker, Generate, opacity and comparisons."""
    controls, views = page.inputs, page.results

    @_guard
    def fill_gallery() -> tuple[list[Any], list[str]]:
        return callbacks.gallery_items(explorer, GALLERY_SIZE)

    @_guard
    def pick_from_gallery(ids: list[str], event: gr.SelectData) -> tuple[Any, ...]:
        return (*callbacks.choose_gallery_sample(explorer, ids, event.index), *_CLEARED)

    @_guard
    def pick_upload(path: str | None) -> tuple[Any, ...]:
        # The upload box is emptied again so that the next file can be dropped at once.
        picked = callbacks.choose_upload(explorer, path, controls.upload.GRADIO_CACHE)
        return (*picked, *_CLEARED, None)

    @_guard
    def change_model(name: str) -> tuple[Any, ...]:
        chosen = callbacks.model_settings(explorer, name)
        layer_updates = [
            gr.Dropdown(choices=chosen.layer_options, value=value)
            for value in chosen.comparison_layers
        ]
        a, b = callbacks.default_class_pair(explorer, name)
        return (
            gr.Dropdown(choices=chosen.layer_options, value=chosen.default_layer),
            gr.Dropdown(choices=chosen.class_options, value=PREDICTED),
            gr.Dropdown(choices=chosen.class_options, value=a),
            gr.Dropdown(choices=chosen.class_options, value=b),
            *layer_updates,
            chosen.description,
        )

    @_guard
    def run_reblend(
        res: HeatmapResult | None,
        classes_res: list[HeatmapResult],
        layers_res: list[HeatmapResult],
        alpha: float,
    ) -> tuple[Any, ...]:
        return (
            callbacks.reblend(explorer, res, alpha),
            *callbacks.reblend_many(explorer, classes_res, alpha, 2),
            *callbacks.reblend_many(explorer, layers_res, alpha, 3),
        )

    if page.has_gallery:
        demo.load(fill_gallery, outputs=[controls.gallery, page.gallery_ids])
        controls.resample.click(fill_gallery, outputs=[controls.gallery, page.gallery_ids])
        controls.gallery.select(
            pick_from_gallery, inputs=[page.gallery_ids], outputs=page.picked_outputs
        )
    controls.upload.upload(
        pick_upload, inputs=[controls.upload], outputs=[*page.picked_outputs, controls.upload]
    )
    page.model_picker.change(
        change_model,
        inputs=[page.model_picker],
        outputs=[
            controls.layer,
            controls.target,
            views.first_class,
            views.second_class,
            *views.layer_pickers,
            page.model_note,
        ],
    )
    generated = controls.generate.click(
        _generator(explorer), inputs=page.generate_inputs, outputs=page.generate_outputs
    )
    generated.then(lambda: gr.Tabs(selected="explore"), outputs=[views.tabs])
    _show_activations_after(generated, explorer, page)
    view_panels.wire_lime_controls(controls.method, controls.lime)
    controls.opacity.change(
        run_reblend,
        inputs=[page.result, page.class_results, page.layer_results, controls.opacity],
        outputs=[views.overlay, *views.class_overlays, *views.layer_overlays],
        show_progress="hidden",
        trigger_mode="always_last",
    )
    views.compare_classes.click(
        _class_comparer(explorer),
        inputs=[
            page.selection,
            page.model_picker,
            controls.layer,
            controls.method,
            views.first_class,
            views.second_class,
            controls.opacity,
        ],
        outputs=[*views.class_overlays, views.class_status, page.class_results],
    )
    views.compare_layers.click(
        _layer_comparer(explorer),
        inputs=[
            page.selection,
            page.model_picker,
            controls.method,
            controls.target,
            controls.opacity,
            *views.layer_pickers,
        ],
        outputs=[*views.layer_overlays, views.layer_status, page.layer_results],
    )


def _generator(explorer: Explorer) -> Callable[..., callbacks.View]:
    """The *Generate* handler (also run after opening a sample from the audit table)."""

    @_guard
    def run_generate(
        sel: Selection | None,
        model_name: str,
        layer_name: str,
        method_name: str,
        target_value: str,
        alpha: float,
        lime_samples: float,
        lime_seed: float,
    ) -> callbacks.View:
        return views.generate(
            explorer,
            sel,
            model_name,
            layer_name,
            method_name,
            target_value,
            alpha,
            lime_samples,
            lime_seed,
        )

    return run_generate


def _show_activations_after(event: Any, explorer: Explorer, page: _Page) -> None:
    """The chosen layer's activation maps, computed after a *Generate*."""
    inputs = [page.selection, page.model_picker, page.inputs.layer]
    view_panels.show_activations_after(event, explorer, page.results.activations, inputs, _guard)


def _class_comparer(explorer: Explorer) -> Callable[..., tuple[Any, ...]]:
    """The *Compare classes* handler."""

    @_guard
    def run_compare_classes(
        sel: Selection | None,
        model_name: str,
        layer_name: str,
        method_name: str,
        a: str,
        b: str,
        alpha: float,
    ) -> tuple[Any, ...]:
        return callbacks.compare_classes(
            explorer, sel, model_name, layer_name, method_name, a, b, alpha
        )

    return run_compare_classes


def _layer_comparer(explorer: Explorer) -> Callable[..., tuple[Any, ...]]:
    """The *Compare layers* handler."""

    @_guard
    def run_compare_layers(
        sel: Selection | None,
        model_name: str,
        method_name: str,
        target_value: str,
        alpha: float,
        *names: str,
    ) -> tuple[Any, ...]:
        overlays, message, results = callbacks.compare_layers(
            explorer, sel, model_name, names, method_name, target_value, alpha
        )
        return (*overlays, message, results)

    return run_compare_layers


def _intervene_tab(explorer: Explorer, model_name: str) -> _InterveneTab:
    """The *Intervene* tab (inside the results tabs)."""
    presets = list(explorer.region_presets(model_name))
    first = explorer.region_presets(model_name)[presets[0]]
    with gr.Tab("Intervene", id="intervene"):
        gr.Markdown(
            "Remove a box (fill it from its surroundings) or transplant it from another image, "
            "and see whether the prediction follows. Pick a preset, type the corners (pixels "
            "of the model input, x1 and y1 exclusive) or click the left image to move the box."
        )
        with gr.Row():
            preset = gr.Dropdown(
                [*presets, (CUSTOM_BOX, CUSTOM_BOX)],
                value=presets[0],
                label="Box preset",
                elem_id="box-preset",
                scale=2,
                min_width=160,
            )
            corners = [
                gr.Number(
                    value=value,
                    label=name,
                    precision=0,
                    elem_id=f"box-{name}",
                    scale=1,
                    min_width=64,
                )
                for name, value in zip(("x0", "y0", "x1", "y1"), first)
            ]
        with gr.Row():
            action = gr.Radio(
                [("remove the box", "remove"), ("transplant the box", "transplant")],
                value="remove",
                label="Action",
                elem_id="box-action",
            )
            fill = gr.Dropdown(
                list(FILLS),
                value="blur",
                label="Fill (remove)",
                info="Built from the pixels around the box only.",
                elem_id="box-fill",
            )
            donor = gr.Dropdown(
                callbacks.donor_choices(explorer, []),
                value=callbacks.AUTO_DONOR,
                label="Donor (transplant)",
                info="The gallery's images; automatic: a sample of another class.",
                elem_id="box-donor",
            )
        apply = gr.Button("Apply to the current image", variant="primary", elem_id="box-apply")
        message = gr.Markdown("", elem_id="box-message")
        with gr.Row():
            before = _image("Before (click to move the box)", "box-before")
            edited = _image("Edited image", "box-edited")
            after = _image("After", "box-after")
        with gr.Row():
            top_before = gr.Label(num_top_classes=5, label="Before", elem_id="box-top-before")
            top_after = gr.Label(num_top_classes=5, label="After", elem_id="box-top-after")
    return _InterveneTab(
        preset,
        corners,
        action,
        fill,
        donor,
        apply,
        before,
        edited,
        after,
        top_before,
        top_after,
        message,
    )


def _wire_intervene(explorer: Explorer, page: _Page, tab: _InterveneTab) -> None:
    """Events of the *Intervene* tab: presets, box fields, clicks, donors and *Apply*."""
    controls = page.inputs

    def set_preset(model_name: str, preset: str) -> tuple[Any, ...]:
        box = callbacks.box_preset(explorer, model_name, preset)
        return tuple(gr.skip() for _ in range(4)) if box is None else box

    @_guard
    def preview(sel: Selection | None, model_name: str, *box: Any) -> Any:
        return callbacks.box_preview(explorer, sel, model_name, box)

    def click_box(
        model_name: str, shown: Any, x0: Any, y0: Any, x1: Any, y1: Any, event: gr.SelectData
    ) -> tuple[Any, ...]:
        width = int(shown.shape[1]) if shown is not None else 0
        moved = callbacks.move_box(explorer, model_name, (x0, y0, x1, y1), width, event.index)
        return tuple(gr.skip() for _ in range(5)) if moved is None else (*moved, CUSTOM_BOX)

    def refresh_donors(ids: list[str]) -> Any:
        return gr.Dropdown(choices=callbacks.donor_choices(explorer, ids))

    @_guard
    def run_intervene(
        sel: Selection | None,
        model_name: str,
        layer_name: str,
        method_name: str,
        target_value: str,
        alpha: float,
        action: str,
        fill: str,
        donor: str,
        *box: Any,
    ) -> tuple[Any, ...]:
        outcome = callbacks.intervene(
            explorer,
            sel,
            model_name,
            layer_name,
            method_name,
            target_value,
            box,
            action,
            fill,
            donor,
            alpha,
        )
        return tuple(outcome[:-1])

    view_inputs = [page.selection, page.model_picker, controls.layer, controls.method]
    tab.preset.change(set_preset, inputs=[page.model_picker, tab.preset], outputs=tab.corners)
    gr.on(
        [corner.change for corner in tab.corners]
        # The preview changes with every new selection (a State's change event would hash
        # the selection's arrays).
        + [controls.preview.change, page.model_picker.change],
        preview,
        inputs=[page.selection, page.model_picker, *tab.corners],
        outputs=[tab.before],
        show_progress="hidden",
        trigger_mode="always_last",
    )
    tab.before.select(
        click_box,
        inputs=[page.model_picker, tab.before, *tab.corners],
        outputs=[*tab.corners, tab.preset],
    )
    page.gallery_ids.change(refresh_donors, inputs=[page.gallery_ids], outputs=[tab.donor])
    tab.apply.click(
        run_intervene,
        inputs=[
            *view_inputs,
            controls.target,
            controls.opacity,
            tab.action,
            tab.fill,
            tab.donor,
            *tab.corners,
        ],
        outputs=[tab.before, tab.edited, tab.after, tab.top_before, tab.top_after, tab.message],
    )


def _wire_audit(demo: gr.Blocks, explorer: Explorer, page: _Page, audit: _AuditTab) -> None:
    """Events of the *Audit results* tab: filters, row clicks, *Open in explorer*."""

    @_guard
    def show_audit(sort_by: str, group: str, outcome: str) -> tuple[Any, ...]:
        rows, ids, message = callbacks.audit_table(explorer, sort_by, group, outcome)
        return rows, ids, message

    def pick_row(ids: list[str], event: gr.SelectData) -> str:
        return callbacks.audit_row_sample(ids, event.index)

    @_guard
    def open_from_audit(sample_id: str) -> tuple[Any, ...]:
        return (*callbacks.open_sample(explorer, sample_id), *_CLEARED)

    filters = [audit.sort_by, audit.group, audit.outcome]
    table_outputs = [audit.table, audit.ids, audit.message]
    demo.load(show_audit, inputs=filters, outputs=table_outputs)
    for control in filters:
        control.change(show_audit, inputs=filters, outputs=table_outputs)
    audit.table.select(pick_row, inputs=[audit.ids], outputs=[audit.sample_id])
    opened = (
        audit.open.click(open_from_audit, inputs=[audit.sample_id], outputs=page.picked_outputs)
        .success(lambda: gr.Tabs(selected="explore"), outputs=[page.results.tabs])
        .then(_generator(explorer), inputs=page.generate_inputs, outputs=page.generate_outputs)
    )
    _show_activations_after(opened, explorer, page)
    if audit.embedding is not None and explorer.audit is not None:
        points = views.EmbeddingPoints.load(explorer.audit.root)
        assert points is not None
        view_panels.wire_embedding_panel(audit.embedding, points, audit.sample_id, _guard)
    if audit.volume is not None and explorer.audit is not None:
        slicer = volume_panel.VolumeSlicer(explorer.audit.root)
        volume_panel.wire_volume_panel(
            audit.volume,
            slicer.view,
            [audit.sample_id],
            _guard,
            triggers=[audit.sample_id.change],
        )


def _audit_tab(explorer: Explorer) -> _AuditTab:
    """The *Audit results* tab (inside the results tabs)."""
    browser = explorer.audit
    assert browser is not None
    with gr.Tab("Audit results", id="audit"):
        with gr.Row():
            sort_by = gr.Dropdown(
                browser.sort_choices(),
                value="attention" if browser.has_masks else "confidence",
                label="Sort by",
                elem_id="audit-sort",
            )
            group = gr.Dropdown(
                browser.group_choices(), value=ALL, label="Group", elem_id="audit-group"
            )
            outcome = gr.Dropdown(
                browser.outcome_choices(), value=ALL, label="Outcome", elem_id="audit-outcome"
            )
        message = gr.Markdown("", elem_id="audit-message")
        table = gr.Dataframe(
            headers=browser.select(limit=0).headers,
            interactive=False,
            wrap=False,
            max_height=420,
            elem_id="audit-table",
        )
        ids = gr.State([])
        embedding = view_panels.embedding_panel(views.EmbeddingPoints.load(browser.root))
        with gr.Row():
            sample_id = gr.Textbox(
                label="Sample id (click a row or pick a point of the map)",
                elem_id="audit-sample",
                scale=3,
            )
            # The explorer works on 2-D images; a 3-D audit's volumes are shown below.
            volumes = volume_panel.VolumeSlicer.is_volume_audit(browser.root)
            open_button = gr.Button(
                "Open in explorer", elem_id="audit-open", scale=1, visible=not volumes
            )
        volume = volume_panel.volume_panel() if volumes else None
    return _AuditTab(
        sort_by, group, outcome, message, table, ids, sample_id, open_button, embedding, volume
    )


def _image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(
        label=label,
        type="numpy",
        format="png",
        interactive=False,
        height=260,
        elem_id=elem_id,
        buttons=["download", "fullscreen"],
    )
