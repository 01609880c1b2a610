"""The models the explorer serves: the built-in demo pair, or a model loaded from a spec."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from shortcut_detect.data.demo import load_demo_models
from shortcut_detect.data.synthetic import CLASS_NAMES

__all__ = ["ExplorerModel", "ResizeToTensor", "demo_explorer_models", "explorer_model_from_loaded"]

DEMO_INPUT_SIZE = (48, 48)


class ResizeToTensor:
    """PIL image -> float tensor ``(C, H, W)`` in [0, 1], resized to ``size`` (no normalisation)."""

    def __init__(self, size: tuple[int, int], channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.size = (int(size[0]), int(size[1]))
        self.channels = channels

    def __call__(self, image: Image.Image) -> torch.Tensor:
        mode = "L" if self.channels == 1 else "RGB"
        height, width = self.size
        resized = image.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))

    def __repr__(self) -> str:
        return f"ResizeToTensor(size={self.size}, channels={self.channels})"


@dataclass
class ExplorerModel:
    """One model as the explorer needs it.

    Attributes
    ----------
    name:
        Shown in the model picker; unique within an explorer.
    model:
        The network, in eval mode.
    class_names:
        One name per output logit.
    transform:
        PIL image -> model input ``(C, H, W)``.
    input_size:
        ``(H, W)`` of the model input (for the dry run that lists layers).
    in_channels:
        Channels of the model input.
    default_layer:
        Target layer used when none is chosen (``None``: the last spatial layer).
    mean, std:
        The normalisation inside ``transform``, if known, undone to display the input.
    display:
        PIL image -> float RGB ``(H, W, 3)`` in [0, 1] at the model's input geometry
        (e.g. :meth:`shortcut_detect.data.transforms.Preprocessing.display`); preferred
        over undoing ``mean``/``std`` when given.
    """

    name: str
    model: nn.Module
    class_names: tuple[str, ...]
    transform: Callable[[Image.Image], torch.Tensor]
    input_size: tuple[int, int]
    in_channels: int = 3
    default_layer: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    display: Callable[[Image.Image], np.ndarray] | None = None
    description: str = ""
    # One computation at a time per model: CAM hooks on a shared module must not interleave.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.class_names = tuple(str(name) for name in self.class_names)


def demo_explorer_models(cache_dir: str | None = None) -> list[ExplorerModel]:
    """The demo's shortcut model and clean model (trained once, then loaded from the cache)."""
    demo = load_demo_models(cache_dir)
    transform = ResizeToTensor(DEMO_INPUT_SIZE, channels=3)
    shared: dict[str, Any] = {
        "class_names": CLASS_NAMES,
        "transform": transform,
        "input_size": DEMO_INPUT_SIZE,
        "in_channels": 3,
        "default_layer": "features",
    }
    return [
        ExplorerModel(
            name="demo: shortcut model",
            model=demo.shortcut_model,
            description="Trained where a corner marker agrees with the label 95% of the time.",
            **shared,
        ),
        ExplorerModel(
            name="demo: clean model",
            model=demo.clean_model,
            description="Trained where the corner marker carries no label information.",
            **shared,
        ),
    ]


def _normalisation(transform: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """Mean and std of a torchvision ``Normalize`` inside ``transform``, if there is one."""
    steps: Sequence[Any] = getattr(transform, "transforms", None) or [transform]
    for step in steps:
        mean, std = getattr(step, "mean", None), getattr(step, "std", None)
        if mean is not None and std is not None:
            return tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std))
    return None, None


def explorer_model_from_loaded(loaded: Any, name: str | None = None) -> ExplorerModel:
    """Wrap a :class:`shortcut_detect.models.LoadedModel` for the explorer."""
    mean, std = _normalisation(loaded.transform)
    if mean is None:
        mean = getattr(loaded, "mean", None)
        std = getattr(loaded, "std", None)
    class_names = loaded.class_names
    if not class_names:
        raise ValueError("The loaded model has no class names; pass classes=... or num_classes")
    size = loaded.input_size
    if isinstance(size, int):
        size = (size, size)
    return ExplorerModel(
        name=name or str(loaded.spec),
        model=loaded.model,
        class_names=tuple(class_names),
        transform=loaded.transform,
        input_size=(int(size[-2]), int(size[-1])),
        in_channels=int(loaded.in_channels),
        default_layer=loaded.default_layer,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        display=getattr(loaded.transform, "display", None),
    )
