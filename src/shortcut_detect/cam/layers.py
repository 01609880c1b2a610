"""Finding target layers: by module, by dotted path, or automatically."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from shortcut_detect.common.modes import eval_mode

__all__ = [
    "LayerInfo",
    "default_layer",
    "layer_name",
    "resolve_layer",
    "resolve_layers",
    "spatial_layers",
]

LayerSpec = str | nn.Module

# Modules whose spatial output only re-presents what the layer before it produced.
_PASS_THROUGH = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
)

_TOKEN = re.compile(r"[^.\[\]]+|\[-?\d+\]")


@dataclass(frozen=True)
class LayerInfo:
    """A module that produced an output during a dry forward pass."""

    name: str
    module: nn.Module
    output_shape: tuple[int, ...]

    @property
    def is_spatial(self) -> bool:
        """True for ``(B, C, *spatial)`` outputs with more than one spatial position."""
        shape = self.output_shape
        if len(shape) < 3:
            return False
        spatial = 1
        for size in shape[2:]:
            spatial *= size
        return spatial > 1


def layer_name(model: nn.Module, module: nn.Module) -> str:
    """Dotted name of ``module`` inside ``model`` (``""`` for the model itself)."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(
        f"The target layer {type(module).__name__} is not a sub-module of the model "
        f"{type(model).__name__}; pass a module of this model or its dotted name."
    )


def _walk_path(model: nn.Module, path: str) -> nn.Module | None:
    """Follow ``"encoder.layers[-1].ln_1"`` style paths (attributes and indices)."""
    current: object = model
    for token in _TOKEN.findall(path):
        if token.startswith("["):
            index = int(token[1:-1])
            try:
                current = current[index]  # type: ignore[index]
            except (IndexError, TypeError, KeyError):
                return None
        elif isinstance(current, nn.Module) and token in current._modules:
            current = current._modules[token]
        elif token.lstrip("-").isdigit() and isinstance(current, (nn.Sequential, nn.ModuleList)):
            try:
                current = current[int(token)]
            except IndexError:
                return None
        else:
            current = getattr(current, token, None)
            if current is None:
                return None
    return current if isinstance(current, nn.Module) else None


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a module or a dotted path.

    Parameters
    ----------
    model:
        The model that owns the layer.
    layer:
        The module itself, or a path such as ``"layer4"``, ``"layer4.1.conv2"``,
        ``"features.28"`` or ``"encoder.layers[-1].ln_1"``.

    Raises
    ------
    ValueError
        If the path does not name a sub-module; the message lists the closest names.
    """
    if isinstance(layer, nn.Module):
        return layer_name(model, layer), layer
    if not isinstance(layer, str):
        raise TypeError(
            f"target_layer must be an nn.Module or a dotted path string, got {type(layer).__name__}"
        )
    modules = dict(model.named_modules())
    if layer in modules:
        return layer, modules[layer]
    found = _walk_path(model, layer)
    if found is not None:
        return layer_name(model, found), found
    names = [name for name in modules if name]
    close = difflib.get_close_matches(layer, names, n=6, cutoff=0.4)
    if not close:
        close = [name for name in names if "." not in name][:10]
    raise ValueError(
        f"No layer named {layer!r} in {type(model).__name__}. "
        f"Closest valid names: {', '.join(close)}. "
        "List all candidates with shortcut_detect.get_conv_layers(model) or "
        "`shortcut-detect layers`."
    )


def resolve_layers(
    model: nn.Module, layers: LayerSpec | Sequence[LayerSpec]
) -> list[tuple[str, nn.Module]]:
    """Resolve one layer or a sequence of layers (see :func:`resolve_layer`)."""
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    resolved = [resolve_layer(model, layer) for layer in layers]
    if not resolved:
        raise ValueError("target_layers is empty; give at least one layer")
    return resolved


def spatial_layers(model: nn.Module, example_input: torch.Tensor) -> list[LayerInfo]:
    """Every sub-module with a tensor output, in the order they finish, from one dry forward.

    Only modules with spatial outputs (see :attr:`LayerInfo.is_spatial`) are returned.
    """
    records: list[LayerInfo] = []
    names = {id(module): name for name, module in model.named_modules()}
    handles = []

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            info = LayerInfo(names[id(module)], module, tuple(output.shape))
            if info.is_spatial and info.name:
                records.append(info)

    for module in model.modules():
        handles.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.inference_mode():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    seen: set[str] = set()
    unique = []
    for info in records:
        if info.name not in seen:
            seen.add(info.name)
            unique.append(info)
    return unique


def default_layer(model: nn.Module, example_input: torch.Tensor) -> LayerInfo:
    """The last layer (in execution order) with a spatial ``(B, C, *spatial)`` output.

    Pass-through modules (pooling to a fixed size, dropout, identity) are skipped, so a
    ResNet gives ``layer4`` and a VGG gives ``features``.
    """
    candidates = [
        info
        for info in spatial_layers(model, example_input)
        if not isinstance(info.module, _PASS_THROUGH)
    ]
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no layer with a spatial (B, C, H, W) output; "
            "pass target_layer explicitly, with a reshape_transform for token outputs "
            "(e.g. shortcut_detect.cam.vit_reshape_transform)."
        )
    return candidates[-1]


PASS_THROUGH_MODULES = _PASS_THROUGH
