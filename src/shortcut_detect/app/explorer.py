"""The explorer's engine room, without any web framework: models, samples, cached heatmaps.

:class:`Explorer` loads nothing itself; it is given the models (loaded once) and a sample
source. Heatmaps are cached per (model, image, layer, method, class) in a bounded LRU, so
re-blending at another opacity or revisiting an image never recomputes. Computation on a
model is serialised by the model's lock (CAM hooks on a shared module must not
interleave); cache hits never wait for it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from shortcut_detect.app.inputs import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    ExplorerInputError,
    display_name,
    read_image,
)
from shortcut_detect.app.models import ExplorerModel
from shortcut_detect.app.sources import Sample, SampleSource, to_uint8_rgb
from shortcut_detect.cam import EXPLAIN_METHODS, explain_method
from shortcut_detect.cam.image import apply_colormap
from shortcut_detect.cam.layers import (
    PASS_THROUGH_MODULES,
    default_layer,
    resolve_layer,
    spatial_layers,
)
from shortcut_detect.gradcam import (
    GradCAMHeatmapGenerator,
    class_probabilities,
    top_predictions,
)
from shortcut_detect.interventions.fills import FILLS, apply_fill
from shortcut_detect.interventions.regions import region_masks
from shortcut_detect.models import UnknownClassError, class_index
from shortcut_detect.viz import overlay_heatmap, to_display_image

if TYPE_CHECKING:
    from shortcut_detect.app.audit_browser import AuditBrowser

__all__ = [
    "LIME",
    "PREDICTED",
    "REGION_ACTIONS",
    "Explorer",
    "HeatmapResult",
    "LayerChoices",
    "RegionIntervention",
    "Selection",
    "render_views",
    "resolve_target",
]

PREDICTED = "predicted"
"""Value of the class picker that explains each image's predicted class."""

LIME = "lime"
# Methods that run many forward passes per image (perturbations of the input or channels).
SLOW_METHODS = frozenset({"scorecam", "ablationcam", "shapleycam", "sscam", "iscam"})
"""Method key of LIME in the method picker (computed by :mod:`shortcut_detect.app.views`)."""

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

REGION_ACTIONS = ("remove", "transplant")
"""What :meth:`Explorer.intervene_region` can do to a box: fill it, or paste a donor's."""

# Samples looked at when choosing a default transplant donor (the source may be large).
_DONOR_SEARCH = 256


@dataclass(frozen=True)
class Selection:
    """The image currently explored: a sample of the source or an upload."""

    key: str
    caption: str
    image: Image.Image | None = None
    array: np.ndarray | None = None
    label: str | None = None
    group: str | None = None

    @classmethod
    def from_sample(cls, sample: Sample) -> Selection:
        return cls(
            key=f"sample:{sample.sample_id}",
            caption=sample.caption,
            image=sample.image,
            array=sample.array,
            label=sample.label,
            group=sample.group,
        )


@dataclass(frozen=True)
class HeatmapResult:
    """One explanation of one image, at the model's input resolution.

    Attributes
    ----------
    heatmap:
        ``(H, W)`` float32 in [0, 1] (warm = important); ``(X, Y, Z)`` for a volume
        (:class:`~shortcut_detect.app.volume_explorer.VolumeExplorer`).
    image:
        ``(H, W, 3)`` float32 in [0, 1]: the model input as displayed (normalisation undone);
        ``(X, Y, Z)`` grey values for a volume.
    target_index, target_name:
        The class explained.
    target_probability:
        Softmax probability of that class.
    top:
        ``[(class_name, probability), ...]``, most likely first.
    layer, method:
        Target layer name and CAM method key.
    cached:
        True when the heatmap came from the cache.
    seconds:
        Time spent computing (0 for a cache hit).
    """

    heatmap: np.ndarray
    image: np.ndarray
    target_index: int
    target_name: str
    target_probability: float
    top: tuple[tuple[str, float], ...]
    layer: str
    method: str
    cached: bool = False
    seconds: float = 0.0

    @property
    def predicted_name(self) -> str:
        return self.top[0][0]

    @property
    def predicted_probability(self) -> float:
        return self.top[0][1]

    def top_dict(self) -> dict[str, float]:
        """Top predictions as ``{class_name: probability}`` (what ``gr.Label`` shows)."""
        return dict(self.top)


@dataclass(frozen=True)
class LayerChoices:
    """Candidate target layers of a model, in execution order."""

    names: tuple[str, ...]
    default: str
    comparison: tuple[str, str, str]  # early, middle, late
    kinds: tuple[str, ...] = ()  # module type and output shape, per name

    def options(self) -> list[tuple[str, str]]:
        """``(label, value)`` pairs, e.g. ``("features.4 · Conv2d 32x24x24", "features.4")``,
        with the default marked."""
        options = []
        for position, name in enumerate(self.names):
            label = name
            if position < len(self.kinds) and self.kinds[position]:
                label += f" · {self.kinds[position]}"
            if name == self.default:
                label += " (default)"
            options.append((label, name))
        return options


@dataclass(frozen=True)
class RegionIntervention:
    """An image before and after a box was removed (filled) or transplanted from a donor.

    Attributes
    ----------
    box:
        ``(x0, y0, x1, y1)`` in pixels of the model input (``x1``/``y1`` exclusive).
    action:
        ``"remove"`` or ``"transplant"``.
    fill:
        The fill of a removal (``None`` for a transplant).
    donor:
        The sample the transplanted pixels come from (``None`` for a removal).
    edited:
        The edited image, a selection that can be explained like any other.
    before, after:
        Explanations of the original and the edited image, both for the class the
        original was explained for (``before.target_index``).
    """

    box: tuple[int, int, int, int]
    action: str
    fill: str | None
    donor: Selection | None
    edited: Selection
    before: HeatmapResult
    after: HeatmapResult

    @property
    def class_name(self) -> str:
        """The class whose probability is followed."""
        return self.before.target_name

    @property
    def change(self) -> float:
        """Probability of :attr:`class_name` after minus before."""
        return self.after.target_probability - self.before.target_probability

    @property
    def flipped(self) -> bool:
        """True when the predicted class changed."""
        return self.after.predicted_name != self.before.predicted_name

    def sentence(self) -> str:
        """One sentence, e.g. "removing the box (0, 0, 9, 9) changes P(cross) from 0.97 to
        0.12: the prediction flips to disk"."""
        if self.action == "remove":
            what = f"removing the box {self.box} ({self.fill} fill)"
        else:
            donor = self.donor.caption if self.donor is not None else "the donor"
            what = f"transplanting the box {self.box} from *{donor}*"
        outcome = (
            f"the prediction flips to {self.after.predicted_name}"
            if self.flipped
            else f"the prediction stays {self.after.predicted_name}"
        )
        return (
            f"{what[0].upper()}{what[1:]} changes P({self.class_name}) from "
            f"{self.before.target_probability:.2f} to {self.after.target_probability:.2f}: "
            f"{outcome}."
        )


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: object) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def resolve_target(value: object, class_names: Sequence[str]) -> int | None:
    """The class index a picker value means (:func:`shortcut_detect.models.class_index`).

    Unknown classes raise :class:`ExplorerInputError`, shown on the page.
    """
    try:
        return class_index(value, class_names)
    except UnknownClassError as error:
        raise ExplorerInputError(str(error)) from error


def tensor_key(tensor: torch.Tensor) -> str:
    """A digest of a model input: the cache key of its image."""
    return hashlib.sha1(tensor.numpy().tobytes() + str(tuple(tensor.shape)).encode()).hexdigest()


def _method_registry() -> dict[str, type]:
    # Read at call time: more CAM methods may have been registered since the import.
    return dict(EXPLAIN_METHODS)


def method_key(method: str) -> str:
    """The registry key of a CAM method name (case and punctuation ignored)."""
    registry = _method_registry()
    try:
        cls = explain_method(method)
    except ValueError as error:
        raise ExplorerInputError(str(error)) from error
    for key, candidate in registry.items():
        if candidate is cls:
            return key
    return str(method)


def method_choices() -> list[tuple[str, str]]:
    """``(label, key)`` for every registered CAM method, one per class (aliases dropped)."""
    seen: set[type] = set()
    choices = []
    for key, cls in _method_registry().items():
        if cls in seen:
            continue
        seen.add(cls)
        choices.append((getattr(cls, "__name__", key), key))
    return choices


def _display_image(selection: Selection, tensor: torch.Tensor, model: ExplorerModel) -> np.ndarray:
    """What the model sees, as RGB float ``(H, W, 3)`` in [0, 1] (normalisation undone)."""
    expected = tuple(tensor.shape[1:])
    if selection.image is not None and model.display is not None:
        shown = np.asarray(model.display(selection.image), dtype=np.float32)
        if shown.shape[:2] == expected:
            return to_display_image(shown)
    values = tensor.detach().float().cpu()
    if model.mean is not None and model.std is not None and len(model.mean) == values.shape[0]:
        mean = torch.tensor(model.mean).view(-1, 1, 1)
        std = torch.tensor(model.std).view(-1, 1, 1)
        values = (values * std + mean).clamp(0.0, 1.0)
    return to_display_image(values.numpy())


def _probabilities(head_output: torch.Tensor, class_count: int) -> torch.Tensor:
    """Class probabilities of the first sample: softmax, or sigmoid for a one-logit head."""
    probabilities = class_probabilities(head_output[:1])[0]
    if probabilities.numel() != class_count:
        raise ExplorerInputError(
            f"The model gives {probabilities.numel()} class scores but has {class_count} class "
            "names; pass the right class names."
        )
    return probabilities


def _upscale_factor(height: int, width: int, side: int) -> int:
    return max(1, side // max(height, width))


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` ``(H, W, ...)`` with each pixel repeated ``factor`` times along both axes."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def render_views(
    result: HeatmapResult, opacity: float, side: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The original, the coloured heatmap and the overlay as uint8 ``(h, w, 3)`` arrays.

    Small inputs are enlarged by an integer factor so that the longer side reaches about
    ``side`` pixels (pixels of the image stay sharp; the heatmap is interpolated).
    Only the blend depends on ``opacity``; nothing is recomputed.
    """
    opacity = float(opacity)
    if not 0.0 <= opacity <= 1.0:
        raise ExplorerInputError(f"Opacity must be between 0 and 1, got {opacity}.")
    height, width = result.heatmap.shape
    factor = _upscale_factor(height, width, side)
    image = result.image
    heat = result.heatmap
    if factor > 1:
        image = _enlarge(image, factor)
        heat = (
            torch.nn.functional.interpolate(
                torch.from_numpy(np.ascontiguousarray(heat))[None, None],
                scale_factor=factor,
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            .clamp(0.0, 1.0)
            .numpy()
        )
    original = to_uint8_rgb(image)
    coloured = np.uint8(apply_colormap(heat) * 255 + 0.5)
    overlay = overlay_heatmap(image, heat, alpha=opacity)
    return original, coloured, overlay


def blend(result: HeatmapResult, opacity: float, side: int = 256) -> np.ndarray:
    """Only the overlay of :func:`render_views`."""
    return render_views(result, opacity, side)[2]


class Explorer:
    """Models, samples and cached heatmaps behind the web page.

    Parameters
    ----------
    models:
        One or more :class:`ExplorerModel` (already loaded; never reloaded).
    source:
        Where gallery samples come from (``None``: uploads only).
    cache_size:
        Heatmaps kept (least recently used are dropped).
    max_pixels, max_upload_bytes:
        Limits for uploaded images.
    top_k:
        Predictions listed.
    display_side:
        Approximate side, in pixels, of the images shown.
    """

    def __init__(
        self,
        models: Sequence[ExplorerModel],
        source: SampleSource | None = None,
        *,
        cache_size: int = 256,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        top_k: int = 5,
        display_side: int = 256,
    ) -> None:
        if not models:
            raise ValueError("The explorer needs at least one model")
        self.models: dict[str, ExplorerModel] = {}
        for model in models:
            if model.name in self.models:
                raise ValueError(f"Two models are named {model.name!r}; names must be unique")
            self.models[model.name] = model
        self.source = source
        self.max_pixels = int(max_pixels)
        self.max_upload_bytes = int(max_upload_bytes)
        self.top_k = int(top_k)
        self.display_side = int(display_side)
        self._cache = _LRU(cache_size)
        self._layers: dict[str, LayerChoices] = {}
        self._generators: dict[tuple[str, str, str], object] = {}
        self.computations = 0  # heatmap computations actually run (cache misses)
        self.audit: AuditBrowser | None = None  # set when an audit is browsed
        self.default_method = "gradcam"
        # One perturbation-method computation at a time: it holds the model for many forward
        # passes, so others' Grad-CAM waits for at most one of them, never for a queue.
        self._slow_gate = threading.Semaphore(1)

    # -- models, layers, methods, classes -------------------------------------------------
    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def get_model(self, name: str | None = None) -> ExplorerModel:
        """The model called ``name`` (the first one for ``None``)."""
        if name is None or name == "":
            return next(iter(self.models.values()))
        try:
            return self.models[name]
        except KeyError:
            raise ExplorerInputError(
                f"Unknown model {name!r}; available: {', '.join(self.models)}"
            ) from None

    def layer_choices(self, model_name: str | None = None) -> LayerChoices:
        """Candidate layers (from one dry forward pass, done once per model)."""
        model = self.get_model(model_name)
        if model.name in self._layers:
            return self._layers[model.name]
        example = torch.zeros(1, model.in_channels, *model.input_size)
        try:
            device = next(model.model.parameters()).device
            example = example.to(device)
        except StopIteration:
            pass
        with model.lock:
            infos = spatial_layers(model.model, example)
            default = model.default_layer or default_layer(model.model, example).name
        names = tuple(info.name for info in infos)
        kinds = tuple(
            f"{type(info.module).__name__} {'x'.join(str(s) for s in info.output_shape[1:])}"
            for info in infos
        )
        if default not in names:
            try:
                resolve_layer(model.model, default)
            except (ValueError, TypeError) as error:
                raise ExplorerInputError(str(error)) from error
            raise ExplorerInputError(
                f"Layer {default!r} of {model.name} has no spatial (C, H, W) output, so it "
                f"cannot be explained; choose one of: {', '.join(names[-8:])}"
            )
        useful = [info for info in infos if not isinstance(info.module, PASS_THROUGH_MODULES)]
        convs = [info.name for info in useful if isinstance(info.module, _CONV_TYPES)]
        pool = convs if len(convs) >= 2 else [info.name for info in useful] or [default]
        comparison = (pool[0], pool[len(pool) // 2], default)
        choices = LayerChoices(names=names, default=default, comparison=comparison, kinds=kinds)
        self._layers[model.name] = choices
        return choices

    @staticmethod
    def method_choices() -> list[tuple[str, str]]:
        """``(label, key)`` of every CAM method registered now."""
        return method_choices()

    def class_choices(self, model_name: str | None = None) -> list[tuple[str, str]]:
        """``(label, value)``: the predicted class first, then every class by name."""
        names = self.get_model(model_name).class_names
        return [("predicted class", PREDICTED)] + [(name, str(i)) for i, name in enumerate(names)]

    # -- samples and uploads ------------------------------------------------------------
    def sample_ids(self) -> Sequence[str]:
        return self.source.ids() if self.source is not None else []

    def random_samples(
        self, count: int = 20, rng: np.random.Generator | None = None
    ) -> list[Sample]:
        """``count`` distinct random samples of the source (fewer if it is smaller)."""
        ids = self.sample_ids()
        if not ids:
            return []
        rng = rng if rng is not None else np.random.default_rng()
        picks = rng.choice(len(ids), size=min(count, len(ids)), replace=False)
        return [self.source.get(ids[int(i)]) for i in picks]  # type: ignore[union-attr]

    def select_sample(self, sample_id: str) -> Selection:
        """The sample ``sample_id`` of the source, ready to explain."""
        if self.source is None:
            raise ExplorerInputError("This explorer has no sample set; upload an image instead.")
        return Selection.from_sample(self.source.get(str(sample_id)))

    def select_upload(self, path: str | Path) -> Selection:
        """An uploaded file, read with the size and decompression-bomb guards."""
        image = read_image(path, max_pixels=self.max_pixels, max_bytes=self.max_upload_bytes)
        digest = hashlib.sha1(image.tobytes()).hexdigest()[:16]
        return Selection(key=f"upload:{digest}", caption=display_name(path), image=image)

    def input_tensor(self, selection: Selection, model: ExplorerModel) -> torch.Tensor:
        """The model input ``(C, H, W)`` for a selection."""
        expected = (model.in_channels, *model.input_size)
        if selection.array is not None:
            array = np.asarray(selection.array, dtype=np.float32)
            if tuple(array.shape) == expected:
                return torch.from_numpy(np.ascontiguousarray(array))
            image = Image.fromarray(to_uint8_rgb(array))
        else:
            assert selection.image is not None
            image = selection.image
        try:
            tensor = model.transform(image)
        except Exception as error:
            raise ExplorerInputError(
                f"The model's preprocessing failed on {selection.caption}: {error}"
            ) from error
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
            raise ExplorerInputError(
                f"The model's transform returned {type(tensor).__name__} "
                f"{tuple(getattr(tensor, 'shape', ()))}; it must give a (C, H, W) tensor."
            )
        return tensor.float()

    # -- heatmaps ------------------------------------------------------------------------
    def _generator(self, model: ExplorerModel, layer: str, method: str) -> object:
        key = (model.name, layer, method)
        generator = self._generators.get(key)
        if generator is None:
            try:
                generator = GradCAMHeatmapGenerator(model.model, layer, method=method)
            except ValueError as error:
                raise ExplorerInputError(str(error)) from error
            self._generators[key] = generator
        return generator

    def _check_layer(self, model: ExplorerModel, layer: str | None) -> str:
        choices = self.layer_choices(model.name)
        if layer is None or layer == "":
            return choices.default
        if layer not in choices.names:
            raise ExplorerInputError(
                f"{layer!r} is not a candidate layer of {model.name}; choose one of the list."
            )
        return layer

    def explain(
        self,
        selection: Selection,
        model_name: str | None = None,
        layer: str | None = None,
        method: str = "gradcam",
        targets: Sequence[object] = (PREDICTED,),
    ) -> list[HeatmapResult]:
        """Heatmaps of one image for one or several classes (one forward pass for the misses).

        Parameters
        ----------
        selection:
            The image (see :meth:`select_sample`, :meth:`select_upload`).
        model_name, layer, method:
            ``None`` / ``""`` mean the first model and its default layer.
        targets:
            Per requested heatmap: :data:`PREDICTED`, a class index or a class name.
        """
        model = self.get_model(model_name)
        layer = self._check_layer(model, layer)
        if str(method).lower() == LIME:
            raise ExplorerInputError(
                "LIME explains one class of one image (press Generate); comparisons of classes "
                "and layers need a CAM method."
            )
        method = method_key(method or "gradcam")
        indices = [resolve_target(target, model.class_names) for target in targets]
        tensor = self.input_tensor(selection, model)
        image_key = tensor_key(tensor)
        keys = [(model.name, image_key, layer, method, index) for index in indices]
        results = {key: self._cached(key) for key in keys}
        if any(result is None for result in results.values()):
            slow = method in SLOW_METHODS
            if slow and not self._slow_gate.acquire(blocking=False):
                raise ExplorerInputError(
                    f"Another {method} computation is running (it takes many forward passes); "
                    "try again in a moment, or use a gradient method such as gradcam."
                )
            try:
                results = self._compute_missing(model, selection, tensor, layer, method, keys)
            finally:
                if slow:
                    self._slow_gate.release()
        return [results[key] for key in keys]  # type: ignore[misc]

    def _compute_missing(
        self,
        model: ExplorerModel,
        selection: Selection,
        tensor: torch.Tensor,
        layer: str,
        method: str,
        keys: list[tuple[Any, ...]],
    ) -> dict[tuple[Any, ...], HeatmapResult | None]:
        """The results of ``keys``, computed under the model's lock where not cached."""
        with model.lock:
            # Another request may have computed some while this one waited.
            results = {key: self._cached(key) for key in keys}
            missing = [key for key, result in results.items() if result is None]
            if missing:
                fresh = self._compute(
                    model, selection, tensor, layer, method, [key[-1] for key in missing]
                )
                for key, computed in zip(missing, fresh):
                    self._cache.put(key, computed)
                    results[key] = computed
        return results

    def remember(
        self, model: ExplorerModel, key: Hashable, compute: Callable[[], HeatmapResult]
    ) -> HeatmapResult:
        """The cached result of ``key``, or ``compute()`` run under the model's lock and
        cached (for views other than CAM methods, e.g. LIME)."""
        hit = self._cached(key)
        if hit is not None:
            return hit
        with model.lock:
            hit = self._cached(key)
            if hit is not None:
                return hit
            result = compute()
            self.computations += 1
            self._cache.put(key, result)
            return result

    def _cached(self, key: Hashable) -> HeatmapResult | None:
        hit = self._cache.get(key)
        return replace(hit, cached=True, seconds=0.0) if isinstance(hit, HeatmapResult) else None

    def _compute(
        self,
        model: ExplorerModel,
        selection: Selection,
        tensor: torch.Tensor,
        layer: str,
        method: str,
        indices: Sequence[int | None],
    ) -> list[HeatmapResult]:
        generator = self._generator(model, layer, method)
        started = time.perf_counter()
        try:
            explanations = generator.explain(  # type: ignore[attr-defined]
                tensor[None], [("logits", index) for index in indices]
            )
        except (ValueError, TypeError, RuntimeError) as error:
            raise ExplorerInputError(
                f"Could not compute {method} at layer {layer!r} for {model.name}: {error}"
            ) from error
        seconds = time.perf_counter() - started
        self.computations += 1
        display = self.display_input(selection, tensor, model)
        probabilities = _probabilities(explanations[0].head_output, len(model.class_names))
        top = tuple(
            (entry["class_name"], entry["confidence"])
            for entry in top_predictions(probabilities, model.class_names, self.top_k)
        )
        results = []
        for explanation in explanations:
            target = int(explanation.target_indices[0])
            results.append(
                HeatmapResult(
                    heatmap=np.ascontiguousarray(explanation.heatmaps[0], dtype=np.float32),
                    image=display,
                    target_index=target,
                    target_name=model.class_names[target],
                    target_probability=float(probabilities[target]),
                    top=top,
                    layer=layer,
                    method=method,
                    seconds=seconds / len(explanations),
                )
            )
        return results

    def display_input(
        self, selection: Selection, tensor: torch.Tensor, model: ExplorerModel
    ) -> np.ndarray:
        """What the model sees, as float RGB ``(H, W, 3)`` in [0, 1] (the
        :attr:`HeatmapResult.image` of a computation)."""
        return _display_image(selection, tensor, model)

    @property
    def cache_info(self) -> dict[str, int]:
        """Hits, misses and size of the heatmap cache."""
        return {"hits": self._cache.hits, "misses": self._cache.misses, "size": len(self._cache)}

    def shown_image(self, selection: Selection, model_name: str | None = None) -> np.ndarray:
        """What the model sees, as uint8 ``(h, w, 3)`` enlarged like :func:`render_views`."""
        model = self.get_model(model_name)
        image = _display_image(selection, self.input_tensor(selection, model), model)
        factor = _upscale_factor(image.shape[0], image.shape[1], self.display_side)
        return to_uint8_rgb(_enlarge(image, factor))

    # -- interventions on a box ------------------------------------------------------------
    def region_presets(self, model_name: str | None = None) -> dict[str, tuple[int, int, int, int]]:
        """Named boxes ``(x0, y0, x1, y1)`` in the model input's pixels: the corner and centre
        ninths, and the source's known shortcut box (the demo's "marker box") if it has one."""
        height, width = self.get_model(model_name).input_size
        third_w, third_h = max(1, width // 3), max(1, height // 3)
        presets = {
            "top-left ninth": (0, 0, third_w, third_h),
            "top-right ninth": (width - third_w, 0, width, third_h),
            "centre ninth": (third_w, third_h, 2 * third_w, 2 * third_h),
            "bottom-left ninth": (0, height - third_h, third_w, height),
            "bottom-right ninth": (width - third_w, height - third_h, width, height),
        }
        marker = getattr(self.source, "marker_box", None)
        if marker is not None:
            presets = {"marker box": tuple(int(v) for v in marker), **presets}
        return presets  # type: ignore[return-value]

    def intervene_region(
        self,
        selection: Selection,
        box: Sequence[object],
        action: str = "remove",
        fill: str = "blur",
        donor: Selection | str | None = None,
        *,
        model_name: str | None = None,
        layer: str | None = None,
        method: str = "gradcam",
        target: object = PREDICTED,
        seed: int = 0,
    ) -> RegionIntervention:
        """Remove a box from an image (fill it) or transplant it from a donor, and explain
        the image before and after.

        Parameters
        ----------
        selection:
            The current image.
        box:
            ``(x0, y0, x1, y1)`` in pixels of the model input (what the explorer displays,
            before enlarging), ``x1``/``y1`` exclusive.
        action:
            ``"remove"``: the box is replaced by the ``fill`` of
            :mod:`shortcut_detect.interventions.fills` (``"blur"``, ``"mean"`` or ``"noise"``),
            built from the surroundings only. ``"transplant"``: the box gets the donor's
            pixels at the same place.
        donor:
            For a transplant: a selection or a sample id of the source. ``None``: the first
            sample of the source whose label differs from the image's (predicted) class,
            preferring one of another group too.
        model_name, layer, method:
            As in :meth:`explain`.
        target:
            The class explained and followed before and after (default: the class the
            original image is predicted as).
        seed:
            Seed of the ``"noise"`` fill.

        Raises
        ------
        ExplorerInputError
            For a box that is incomplete, empty, inverted or outside the image, an unknown
            action or fill, or a transplant without a possible donor.
        """
        if action not in REGION_ACTIONS:
            raise ExplorerInputError(
                f"Unknown action {action!r}; choose one of: {', '.join(REGION_ACTIONS)}."
            )
        if action == "remove" and fill not in FILLS:
            raise ExplorerInputError(f"Unknown fill {fill!r}; choose one of: {', '.join(FILLS)}.")
        model = self.get_model(model_name)
        tensor = self.input_tensor(selection, model)
        corners = _checked_box(box, tuple(tensor.shape[1:]))
        mask = torch.from_numpy(region_masks(corners, 1, tuple(tensor.shape[1:])))
        before = self.explain(selection, model.name, layer, method, [target])[0]
        if action == "remove":
            generator = torch.Generator().manual_seed(int(seed))
            edited = apply_fill(tensor[None], mask, fill, generator=generator)[0]
            donor_selection = None
            caption = f"{selection.caption}, box {corners} removed ({fill})"
        else:
            if donor is None or donor == "":
                donor_selection = self._default_donor(selection, before)
            elif isinstance(donor, Selection):
                donor_selection = donor
            else:
                donor_selection = self.select_sample(str(donor))
            if donor_selection.key == selection.key:
                raise ExplorerInputError(
                    "The donor is the image itself; pick another sample to transplant from."
                )
            donor_tensor = self.input_tensor(donor_selection, model)
            edited = torch.where(mask[0], donor_tensor, tensor)
            caption = f"{selection.caption}, box {corners} from {donor_selection.caption}"
        edited_array = np.ascontiguousarray(edited.numpy(), dtype=np.float32)
        digest = hashlib.sha1(edited_array.tobytes()).hexdigest()[:16]
        edited_selection = Selection(
            key=f"edited:{digest}",
            caption=caption,
            array=edited_array,
            label=selection.label,
            group=selection.group,
        )
        after = self.explain(edited_selection, model.name, layer, method, [before.target_index])[0]
        return RegionIntervention(
            box=corners,
            action=action,
            fill=fill if action == "remove" else None,
            donor=donor_selection,
            edited=edited_selection,
            before=before,
            after=after,
        )

    def _default_donor(self, selection: Selection, before: HeatmapResult) -> Selection:
        """A sample of another class (and, if possible, another group) than ``selection``."""
        own_class = selection.label if selection.label is not None else before.predicted_name
        fallback = None
        for sample_id in list(self.sample_ids())[:_DONOR_SEARCH]:
            sample = self.source.get(sample_id)  # type: ignore[union-attr]
            if sample.label is None or sample.label == own_class:
                continue
            if selection.group is None or sample.group != selection.group:
                return Selection.from_sample(sample)
            fallback = fallback or Selection.from_sample(sample)
        if fallback is None:
            raise ExplorerInputError(
                f"No labelled sample of a class other than {own_class!r} to transplant from; "
                "pick a donor."
            )
        return fallback


def _checked_box(box: Sequence[object], spatial: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``box`` as four whole numbers inside an image of size ``spatial`` ``(H, W)``."""
    is_sequence = isinstance(box, (Sequence, np.ndarray)) and not isinstance(box, str)
    values = list(box) if is_sequence else []
    if len(values) != 4 or any(value is None or value == "" for value in values):
        raise ExplorerInputError(
            f"Give the box as four numbers x0, y0, x1, y1 (pixels); got {box!r}."
        )
    try:
        numbers = [float(value) for value in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ExplorerInputError(f"Box coordinates must be numbers; got {box!r}.") from None
    if any(number != int(number) for number in numbers):
        raise ExplorerInputError(f"Box coordinates must be whole pixels; got {tuple(numbers)}.")
    x0, y0, x1, y1 = (int(number) for number in numbers)
    height, width = spatial
    if x1 <= x0 or y1 <= y0:
        raise ExplorerInputError(
            f"The box ({x0}, {y0}, {x1}, {y1}) is empty or inverted: need x0 < x1 and y0 < y1 "
            "(x1 and y1 exclusive)."
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ExplorerInputError(
            f"The box ({x0}, {y0}, {x1}, {y1}) is outside the image: the model input is "
            f"{width}x{height}, so need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}."
        )
    if (x1 - x0) * (y1 - y0) == width * height:
        raise ExplorerInputError(
            "The box covers the whole image; leave some of it outside the box (the fill is "
            "built from the surroundings)."
        )
    return x0, y0, x1, y1
