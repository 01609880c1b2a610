"""Gradio panels of :mod:`shortcut_detect.app.views`: LIME settings, a layer's activation
maps next to the heatmap, and the audit's interactive embedding map. Importing this module
imports Gradio (the optional ``app`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from shortcut_detect.app import views
from shortcut_detect.app.explorer import LIME, Explorer, Selection

__all__ = [
    "ActivationPanel",
    "EmbeddingPanel",
    "LimeControls",
    "activation_panel",
    "embedding_panel",
    "lime_controls",
    "show_activations_after",
    "wire_embedding_panel",
    "wire_lime_controls",
]

Guard = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass
class LimeControls:
    """Number of perturbed images and seed of LIME (shown while LIME is the method)."""

    box: gr.Accordion
    samples: gr.Number
    seed: gr.Number


def lime_controls(method: str) -> LimeControls:
    with gr.Accordion("LIME settings", open=True, visible=method == LIME) as box, gr.Row():
        samples = gr.Number(
            value=views.DEFAULT_LIME_SAMPLES,
            precision=0,
            minimum=2,
            maximum=views.MAX_LIME_SAMPLES,
            label="Samples",
            info="Perturbed images scored; more gives steadier weights.",
            elem_id="lime-samples",
        )
        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="lime-seed")
    return LimeControls(box, samples, seed)


def wire_lime_controls(method: gr.Dropdown, controls: LimeControls) -> None:
    """Show the LIME settings only while LIME is chosen."""
    method.change(
        lambda chosen: gr.Accordion(visible=chosen == LIME),
        inputs=[method],
        outputs=[controls.box],
        show_progress="hidden",
    )


@dataclass
class ActivationPanel:
    """The chosen layer's strongest channels and their mean (in the *Explain* tab)."""

    mean: gr.Image
    tiles: gr.Gallery
    status: gr.Markdown


def activation_panel() -> ActivationPanel:
    gr.Markdown("### Activation maps of the layer (raw responses, no gradient weighting)")
    with gr.Row():
        mean = gr.Image(
            label="Mean of the strongest channels",
            type="numpy",
            format="png",
            interactive=False,
            height=260,
            elem_id="activation-mean",
            scale=1,
        )
        tiles = gr.Gallery(
            label="Strongest channels",
            columns=4,
            height=260,
            allow_preview=True,
            interactive=False,
            format="png",
            elem_id="activation-grid",
            scale=2,
        )
    status = gr.Markdown("", elem_id="activation-status")
    return ActivationPanel(mean, tiles, status)


def show_activations_after(
    event: Any,
    explorer: Explorer,
    panel: ActivationPanel,
    inputs: list[Any],
    guard: Guard,
) -> None:
    """After ``event`` (a *Generate*), compute the activation maps of the chosen layer.

    ``inputs``: the selection state, the model picker and the layer picker.
    """

    @guard
    def show(selection: Selection | None, model_name: str, layer: str) -> tuple[Any, ...]:
        view = views.activation_view(explorer, selection, model_name, layer)
        return view.mean, view.tiles, view.status

    event.then(show, inputs=inputs, outputs=[panel.mean, panel.tiles, panel.status])


@dataclass
class EmbeddingPanel:
    """The audit's embedding map: colouring, plot, caption, and the points of a selection."""

    colour: gr.Radio
    plot: gr.ScatterPlot
    caption: gr.Markdown
    picker: gr.Dropdown
    message: gr.Markdown


def embedding_panel(points: views.EmbeddingPoints | None) -> EmbeddingPanel | None:
    """The map's components (``None`` when the audit made no map)."""
    if points is None:
        gr.Markdown(
            "*No embedding map: the audit makes one when it has a group column and the model.*"
        )
        return None
    gr.Markdown(
        "### Embedding map\nEach point is an image, placed by the model's features (nearby: "
        "represented alike). Hover for its id; drag across the plot to select a band of "
        "points, pick one, and open it in the explorer."
    )
    choices = points.colour_choices()
    first = "group" if any(name == "group" for _, name in choices) else choices[0][1]
    colour = gr.Radio(choices, value=first, label="Colour by", elem_id="map-colour")
    frame, caption_text = views.embedding_plot(points, first)
    plot = gr.ScatterPlot(
        frame,
        x="x",
        y="y",
        color=first,
        tooltip=["sample_id", *[name for _, name in choices]],
        height=420,
        x_title="map x",
        y_title="map y",
        label="Embedding map",
        elem_id="embedding-map",
    )
    caption = gr.Markdown(caption_text, elem_id="map-caption")
    picker = gr.Dropdown([], value=None, label="Points in the selection", elem_id="map-points")
    message = gr.Markdown("", elem_id="map-message")
    return EmbeddingPanel(colour, plot, caption, picker, message)


def wire_embedding_panel(
    panel: EmbeddingPanel, points: views.EmbeddingPoints, sample_id: gr.Textbox, guard: Guard
) -> None:
    """Recolour on the selector; a selected band fills the picker; the picked point becomes
    the sample that *Open in explorer* opens."""

    @guard
    def recolour(colour_by: str) -> tuple[Any, ...]:
        frame, caption = views.embedding_plot(points, colour_by)
        return gr.ScatterPlot(value=frame, color=colour_by), caption

    @guard
    def select(event: gr.SelectData) -> tuple[Any, ...]:
        choices, chosen, message = views.select_band(points, event.index)
        return gr.Dropdown(choices=choices, value=chosen), message

    panel.colour.change(recolour, inputs=[panel.colour], outputs=[panel.plot, panel.caption])
    panel.plot.select(select, outputs=[panel.picker, panel.message])
    panel.picker.change(lambda chosen: chosen or "", inputs=[panel.picker], outputs=[sample_id])
