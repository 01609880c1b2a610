"""The seed-compatible Grad-CAM API: :class:`GradCAMHeatmapGenerator` and friends.

Both generations of the seed API are served by one engine
(:mod:`shortcut_detect.cam.engine`): ``generate_heatmap`` / ``generate_attention_overlap`` /
``calculate_overlap`` with multi-head models, and ``generate`` / ``generate_batch`` /
``visualize`` / ``overlay`` / ``compare_groups`` with ``use_guided``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.analysis.groups import compare_groups as compare_group_attention
from shortcut_detect.analysis.maps import overlap_per_sample
from shortcut_detect.cam import explain_method
from shortcut_detect.cam.base import BaseCAM
from shortcut_detect.cam.engine import CAMEngine, Capture, minmax_normalize, prepare_inputs
from shortcut_detect.cam.guided import guided_backprop_for_scores
from shortcut_detect.cam.layers import LayerSpec, default_layer, resolve_layer
from shortcut_detect.common.device import place_model, resolve_device
from shortcut_detect.common.modes import eval_mode
from shortcut_detect.common.validation import positive_int
from shortcut_detect.results import AttentionOverlapResult, Explanation
from shortcut_detect.viz import overlay_heatmap

__all__ = [
    "AttentionOverlapResult",
    "Explanation",
    "GradCAMHeatmapGenerator",
    "HeadTargets",
    "class_probabilities",
    "compute_gradcam",
    "get_activation_maps",
    "get_conv_layers",
    "get_top_predictions",
    "head_logits",
    "primary_output",
    "select_head",
    "top_predictions",
    "upsampled_raw",
]

TensorOrArray = torch.Tensor | np.ndarray
HeadMapping = int | str | Callable[[Any], torch.Tensor] | None
TargetSpec = int | Sequence[int] | np.ndarray | torch.Tensor | None

DEFAULT_HEAD_MAPPINGS: dict[str, HeadMapping] = {"logits": None, "disease": 0, "attribute": 1}


def _available_heads(outputs: Any, mappings: Mapping[str, HeadMapping]) -> list[str]:
    names = [name for name, value in mappings.items() if _mapping_fits(value, outputs)]
    if isinstance(outputs, Mapping):
        names += [str(key) for key in outputs if key not in names]
    elif isinstance(outputs, (list, tuple)):
        names += [str(i) for i in range(len(outputs))]
    return names


def _mapping_fits(value: HeadMapping, outputs: Any) -> bool:
    if value is None:
        return _has_primary_output(outputs)
    if isinstance(value, int) and not isinstance(value, bool):
        return isinstance(outputs, (list, tuple)) and -len(outputs) <= value < len(outputs)
    if isinstance(value, str):
        return isinstance(outputs, Mapping) and value in outputs
    return callable(value)


def _has_primary_output(outputs: Any) -> bool:
    if isinstance(outputs, Mapping):
        return "logits" in outputs
    if isinstance(outputs, (list, tuple)):
        return len(outputs) > 0
    return isinstance(outputs, torch.Tensor) or hasattr(outputs, "logits")


def primary_output(outputs: Any) -> Any:
    """The class scores of a model output, when no head is named.

    A tensor is returned as it is; a tuple or list gives its **first** element; a dict (or
    a Hugging Face style output) its ``"logits"`` entry, or an object its ``.logits``
    attribute. A dict without ``"logits"`` is an error that lists its keys.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "logits" in outputs:
            return outputs["logits"]
        keys = ", ".join(repr(key) for key in outputs) or "none"
        raise KeyError(
            f"The model returns a dict without a 'logits' entry (keys: {keys}); pick the "
            "scores to explain with head='<key>', or head_mappings={'logits': '<key>'}."
        )
    if isinstance(outputs, (list, tuple)):
        if not outputs:
            raise ValueError(f"The model returned an empty {type(outputs).__name__}")
        return outputs[0]
    if hasattr(outputs, "logits"):
        return outputs.logits
    raise TypeError(
        f"The model returns {type(outputs).__name__}, not a tensor, tuple, list or dict of "
        "scores; map it to a tensor with head_mappings={'logits': lambda out: ...}."
    )


def first_output_warning(outputs: Any, head: str | int) -> str | None:
    """The warning to give when ``head`` takes the first of several outputs, else ``None``."""
    if not isinstance(outputs, (list, tuple)) or not outputs:
        return None
    shape = tuple(outputs[0].shape) if isinstance(outputs[0], torch.Tensor) else "?"
    return (
        f"The model returns a {type(outputs).__name__} of {len(outputs)} outputs; head "
        f"{head!r} explains the first one (shape {shape}). Pass head=<index> (e.g. head=1) "
        "or head_mappings={'logits': <index or callable>} to explain another."
    )


def select_head(
    outputs: Any, head: str | int, mappings: Mapping[str, HeadMapping] | None = None
) -> torch.Tensor:
    """Pick one prediction head out of a model output (tensor, tuple/list or dict).

    ``head`` is a name in ``mappings`` (whose value is an index, a dict key, a callable
    ``fn(output) -> Tensor`` or ``None`` for the model's scores, see
    :func:`primary_output`), a dict key, or an index.
    """
    mappings = DEFAULT_HEAD_MAPPINGS if mappings is None else mappings
    if isinstance(head, str) and head in mappings and _mapping_fits(mappings[head], outputs):
        value = mappings[head]
        if value is None:
            selected = primary_output(outputs)
        elif callable(value):
            selected = value(outputs)
        else:
            selected = outputs[value]
    elif (isinstance(outputs, Mapping) and head in outputs) or (
        isinstance(head, int)
        and isinstance(outputs, (list, tuple))
        and -len(outputs) <= head < len(outputs)
    ):
        selected = outputs[head]
    elif isinstance(head, str) and mappings.get(head, 0) is None:
        selected = primary_output(outputs)  # raises the error that says why
    elif isinstance(outputs, torch.Tensor):
        raise KeyError(
            f"Unknown head {head!r}: the model returns a single tensor of shape "
            f"{tuple(outputs.shape)}, so it has one head, 'logits' (the default). Explain "
            "it with head='logits'; several heads need a model that returns a tuple or dict."
        )
    else:
        kind = type(outputs).__name__
        raise KeyError(
            f"Unknown head {head!r} for a model output of type {kind}. Available heads: "
            f"{', '.join(_available_heads(outputs, mappings)) or 'none'}. "
            "Map names to indices, keys or callables with head_mappings={...}."
        )
    if not isinstance(selected, torch.Tensor):
        raise TypeError(f"Head {head!r} gives {type(selected).__name__}, not a tensor of scores")
    return selected


class HeadTargets:
    """Score function: the logit of ``indices[b]`` in ``head`` for each sample ``b``."""

    def __init__(
        self, head: str | int, indices: torch.Tensor, mappings: Mapping[str, HeadMapping]
    ) -> None:
        self.head = head
        self.indices = indices
        self.mappings = mappings

    def _logits(self, outputs: Any) -> torch.Tensor:
        return head_logits(select_head(outputs, self.head, self.mappings))

    def _scores(self, logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 1:  # one logit: class 1 is the logit, class 0 its negation
            return logits * (2 * indices.to(logits.device) - 1).to(logits.dtype)
        return logits.gather(1, indices.to(logits.device)[:, None])[:, 0]

    def __call__(self, outputs: Any) -> torch.Tensor:
        return self._scores(self._logits(outputs), self.indices)

    def for_sample(self, outputs: Any, index: int) -> torch.Tensor:
        logits = self._logits(outputs)
        return self._scores(logits, self.indices[index].expand(logits.shape[0]))


def head_logits(logits: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` class scores, or ``(B,)`` for a single-logit (sigmoid) head.

    ``(B,)`` and ``(B, 1)`` outputs are binary classifiers: class 1 when the logit is
    positive. Other shapes are flattened to ``(B, K)``.
    """
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    return logits.reshape(logits.shape[0], -1) if logits.ndim > 1 else logits


def class_probabilities(head_output: torch.Tensor | np.ndarray) -> Any:
    """Class probabilities ``(B, K)`` from a head's output (e.g. ``Explanation.head_output``).

    Softmax over the classes; a single-logit head (``(B,)`` or ``(B, 1)``) has two classes
    with probabilities ``[sigmoid(-logit), sigmoid(logit)]``.

    Parameters
    ----------
    head_output:
        Logits as a tensor (any device; the result is a float32 CPU tensor) or a numpy
        array (the result is a float64 array, computed in numpy: cheaper than torch for the
        small arrays of a report).
    """
    if isinstance(head_output, np.ndarray):
        logits = np.asarray(head_output, dtype=np.float64)
        logits = logits[:, 0] if logits.ndim == 2 and logits.shape[1] == 1 else logits
        if logits.ndim == 1:
            with np.errstate(over="ignore"):  # exp overflow gives inf, so probability 0
                return np.stack([1.0 / (1.0 + np.exp(logits)), 1.0 / (1.0 + np.exp(-logits))], 1)
        logits = logits.reshape(logits.shape[0], -1)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    logits = head_logits(head_output.detach().float().cpu())
    if logits.ndim == 1:
        return torch.stack([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
    return torch.softmax(logits, dim=1)


def top_predictions(
    probabilities: torch.Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """The ``top_k`` most likely classes of **one** sample, most likely first.

    Parameters
    ----------
    probabilities:
        ``(K,)`` class probabilities of one sample (tensor or array), e.g. a row of
        :func:`class_probabilities`. Ties keep the lower class index first.
    class_names:
        ``K`` names; ``None`` names each class by its index.
    top_k:
        How many classes (at most ``K``).

    Returns
    -------
    list of dict
        ``[{"class_idx", "class_name", "confidence"}, ...]``.
    """
    top_k = positive_int("top_k", top_k)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().cpu().numpy()
    values = np.asarray(probabilities, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            f"top_predictions takes the (K,) probabilities of one sample, got shape "
            f"{values.shape}; pass one row, e.g. probabilities[i]"
        )
    if class_names is not None and len(class_names) != values.size:
        raise ValueError(f"{len(class_names)} class names for a model with {values.size} outputs")
    order = np.argsort(-values, kind="stable")[: int(top_k)]
    return [
        {
            "class_idx": int(index),
            "class_name": class_names[int(index)] if class_names is not None else str(int(index)),
            "confidence": float(values[index]),
        }
        for index in order
    ]


def _target_indices(target: TargetSpec, logits: torch.Tensor, head: str | int) -> torch.Tensor:
    batch = logits.shape[0]
    flat = head_logits(logits)
    classes = 2 if flat.ndim == 1 else flat.shape[1]
    if target is None:
        return (flat > 0).long().cpu() if flat.ndim == 1 else flat.argmax(dim=1).cpu()
    indices = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target)
    if indices.is_floating_point() and not torch.equal(indices, indices.round()):
        raise ValueError(f"Target classes must be integers, got {target!r}")
    indices = indices.long().reshape(-1).cpu()
    if indices.numel() == 1:
        indices = indices.expand(batch).clone()
    if indices.numel() != batch:
        raise ValueError(
            f"Got {indices.numel()} target classes for a batch of {batch}; give one class for "
            "the whole batch, one per sample, or None for the predicted class."
        )
    bad = (indices < 0) | (indices >= classes)
    if bad.any():
        raise ValueError(
            f"Target class {int(indices[bad][0])} is out of range: head {head!r} has "
            f"{classes} classes (valid indices 0..{classes - 1})"
            + (" (a single-logit head: 1 = positive, 0 = negative)." if flat.ndim == 1 else ".")
        )
    return indices


class GradCAMHeatmapGenerator:
    """Grad-CAM heatmaps for one or several prediction heads of a PyTorch model.

    Parameters
    ----------
    model:
        The model. It is run in eval mode; its mode and ``requires_grad`` flags are left
        as they were, and no gradient is stored on its parameters.
    target_layer:
        Layer whose activations are weighted: the module, or a dotted path (``"layer4"``,
        ``"features.28"``). ``None`` picks the last layer with a spatial output on the first
        call and warns which one was chosen.
    head_mappings:
        Head name -> tuple index, dict key, or callable ``fn(output) -> Tensor``. Merged
        into the defaults ``{"logits": the scores, "disease": 0, "attribute": 1}``. The
        default head ``"logits"`` is a tensor output itself, the first element of a tuple
        or list (said once in a warning), or the ``"logits"`` entry of a dict (or the
        ``.logits`` attribute of an output object); see :func:`primary_output`.
    device:
        ``None`` uses the model's device; a device given is moved to, and asking for CUDA
        (or MPS) where there is none raises
        :class:`~shortcut_detect.common.device.DeviceUnavailableError`.
    use_guided:
        Return Guided Grad-CAM (guided backpropagation times the Grad-CAM map), sharper.
    method:
        CAM method name (``"gradcam"``, ``"gradcam++"``, ``"scorecam"``, ...) or a
        :class:`~shortcut_detect.cam.base.BaseCAM` subclass. Default Grad-CAM.
    reshape_transform:
        For transformer layers, see :mod:`shortcut_detect.cam.reshape`.

    Examples
    --------
    >>> gen = GradCAMHeatmapGenerator(model, target_layer="layer4")  # doctest: +SKIP
    >>> heatmaps = gen.generate_heatmap(images)                        # (B, H, W) in [0, 1]
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | None = None,
        head_mappings: Mapping[str, HeadMapping] | None = None,
        device: str | torch.device | None = None,
        use_guided: bool = False,
        method: str | type[BaseCAM] = "gradcam",
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = place_model(model, device)
        self.head_mappings: dict[str, HeadMapping] = dict(DEFAULT_HEAD_MAPPINGS)
        if head_mappings:
            self.head_mappings.update(head_mappings)
        self.use_guided = bool(use_guided)
        self.reshape_transform = reshape_transform
        self._method_spec = method
        self._cam: BaseCAM | None = None
        self.target_layer_name: str | None = None
        self._target_layer: nn.Module | None = None
        self._warned_first_output = False
        if target_layer is not None:
            self.target_layer_name, self._target_layer = resolve_layer(model, target_layer)
            self._build_method()

    # -- layer and method ----------------------------------------------------------------
    @property
    def target_layer(self) -> nn.Module | None:
        """The resolved target layer (``None`` until the first call when chosen automatically)."""
        return self._target_layer

    def _build_method(self) -> None:
        method_cls = explain_method(self._method_spec)
        self._cam = method_cls(
            self.model,
            [self._target_layer],
            reshape_transform=self.reshape_transform,
            device=self.device,
        )

    def _ensure_layer(self, inputs: torch.Tensor) -> BaseCAM:
        if self._cam is None:
            info = default_layer(self.model, inputs[:1])
            self.target_layer_name, self._target_layer = info.name, info.module
            warnings.warn(
                f"No target_layer given; using {info.name!r} "
                f"({type(info.module).__name__}, output {tuple(info.output_shape[1:])}), the last "
                "layer with a spatial output.",
                UserWarning,
                stacklevel=4,
            )
            self._build_method()
        assert self._cam is not None
        return self._cam

    @property
    def engine(self) -> CAMEngine:
        """The engine (after the target layer is known)."""
        if self._cam is None:
            raise RuntimeError("The target layer is chosen on the first call; call first.")
        return self._cam.engine

    # -- the core ------------------------------------------------------------------------
    def explain(
        self,
        inputs: TensorOrArray,
        requests: Sequence[tuple[str | int, TargetSpec]] = (("logits", None),),
        *,
        upsample: bool = True,
    ) -> list[Explanation]:
        """Heatmaps for several ``(head, target)`` requests from **one** forward pass.

        Parameters
        ----------
        inputs:
            ``(B, C, H, W)`` or ``(C, H, W)`` (also ``(B, C, D, H, W)`` volumes).
        requests:
            ``(head, target)`` pairs; ``target`` is ``None`` (arg-max per sample), one class
            for the whole batch, or one class per sample.
        upsample:
            ``False`` leaves ``heatmaps`` at the (first) target layer's resolution, which
            saves the resizing when only ``raw_heatmaps`` are needed. Guided methods always
            work at the input's size.
        """
        batch = prepare_inputs(inputs, self.device)
        cam = self._ensure_layer(batch)
        requests = list(requests)
        if not requests:
            raise ValueError("requests is empty; ask for at least one (head, target)")

        def resolve(outputs: Any) -> list[HeadTargets]:
            fns = []
            for head, target in requests:
                self._warn_first_output(outputs, head)
                logits = select_head(outputs, head, self.head_mappings)
                if logits.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"Head {head!r} has leading size {logits.shape[0]} for a batch of "
                        f"{batch.shape[0]}; it must give one row of scores per sample."
                    )
                indices = _target_indices(target, logits, head)
                fns.append(HeadTargets(head, indices, self.head_mappings))
            return fns

        capture = cam.engine.capture(
            batch,
            score_from_outputs=resolve,
            need_gradients=cam.uses_gradients,
            **cam.capture_options,
        )
        if self.use_guided:
            guided = guided_backprop_for_scores(self.model, batch, capture.score_fns)
        explanations = []
        for index, (head, _) in enumerate(requests):
            layer_maps = cam.layer_maps(capture, index, inputs=batch)
            size = capture.input_size if upsample or self.use_guided else layer_maps[0].shape[1:]
            heatmaps = cam.combine(layer_maps, size)
            if self.use_guided:
                heatmaps = minmax_normalize((heatmaps * guided[index]).clamp_min(0))
            explanations.append(self._explanation(capture, index, head, heatmaps, layer_maps))
        return explanations

    def _warn_first_output(self, outputs: Any, head: str | int) -> None:
        """Say once per generator that a default head took the first of several outputs."""
        if self._warned_first_output or not isinstance(head, str):
            return
        if head not in self.head_mappings or self.head_mappings[head] is not None:
            return
        message = first_output_warning(outputs, head)
        if message is not None:
            self._warned_first_output = True
            warnings.warn(message, UserWarning, stacklevel=5)

    def _explanation(
        self,
        capture: Capture,
        index: int,
        head: str | int,
        heatmaps: torch.Tensor,
        layer_maps: list[torch.Tensor],
    ) -> Explanation:
        score_fn = capture.score_fns[index]
        logits = score_fn._logits(capture.outputs).detach().float().cpu()
        confidences, predictions = class_probabilities(logits).max(dim=1)
        return Explanation(
            heatmaps=heatmaps.detach().cpu().numpy().astype(np.float32),
            raw_heatmaps=layer_maps[0].detach().cpu().numpy().astype(np.float32),
            target_indices=score_fn.indices.numpy().copy(),
            predictions=predictions.numpy(),
            confidences=confidences.numpy().astype(np.float32),
            head_output=logits,
            head=head,
        )

    # -- seed API, first generation ------------------------------------------------------
    def generate_heatmap(
        self,
        inputs: TensorOrArray,
        head: str | int = "logits",
        target_index: TargetSpec = None,
    ) -> np.ndarray:
        """Heatmaps ``(B, H, W)`` in [0, 1] for one prediction head.

        Parameters
        ----------
        inputs:
            ``(B, C, H, W)`` or ``(C, H, W)`` tensor or array.
        head:
            Head name (see ``head_mappings``), dict key or tuple index.
        target_index:
            ``None`` explains each sample's arg-max class; an int explains that class for
            every sample; a sequence gives one class per sample.
        """
        return self.explain(inputs, [(head, target_index)])[0].heatmaps

    def generate_attention_overlap(
        self,
        inputs: TensorOrArray,
        disease_target: TargetSpec = None,
        attribute_target: TargetSpec = None,
        disease_head: str | int = "disease",
        attribute_head: str | int = "attribute",
        threshold: float = 0.5,
    ) -> AttentionOverlapResult:
        """Heatmaps of two heads (from one forward pass) and their overlap."""
        disease, attribute = self.explain(
            inputs, [(disease_head, disease_target), (attribute_head, attribute_target)]
        )
        metrics = self.calculate_overlap(disease.heatmaps, attribute.heatmaps, threshold)
        return AttentionOverlapResult(
            overlap_score=metrics["dice"],
            metrics=metrics,
            disease_heatmap=disease.heatmaps,
            attribute_heatmap=attribute.heatmaps,
        )

    @staticmethod
    def calculate_overlap(
        disease_heatmap: np.ndarray, attribute_heatmap: np.ndarray, threshold: float = 0.5
    ) -> dict[str, float]:
        """Mean dice, IoU (of maps thresholded at ``threshold``) and cosine of two map sets.

        The per-sample values are those of
        :func:`~shortcut_detect.analysis.maps.overlap_per_sample`; where they are undefined
        (both thresholded maps empty, or an all-zero map for the cosine) they count as 0,
        as in the seed implementation. An empty batch gives 0 for every metric.
        """
        if np.shape(disease_heatmap)[:1] == (0,) and np.shape(attribute_heatmap)[:1] == (0,):
            return {"dice": 0.0, "iou": 0.0, "cosine": 0.0}
        per_sample = overlap_per_sample(disease_heatmap, attribute_heatmap, threshold)
        return {
            name: float(np.nan_to_num(values, nan=0.0).mean())
            for name, values in per_sample.items()
        }

    # -- seed API, second generation -----------------------------------------------------
    def generate(self, image: TensorOrArray, target_class: int | None = None) -> np.ndarray:
        """Heatmap ``(H, W)`` for one image ``(C, H, W)`` or ``(1, C, H, W)``."""
        tensor = torch.as_tensor(image) if isinstance(image, np.ndarray) else image
        if isinstance(tensor, torch.Tensor) and tensor.ndim >= 4 and tensor.shape[0] != 1:
            raise ValueError(
                f"generate() takes one image; got a batch of {tensor.shape[0]}. "
                "Use generate_batch() for batches."
            )
        return self.generate_heatmap(image, "logits", target_class)[0]

    def generate_batch(
        self, images: TensorOrArray, target_classes: TargetSpec = None
    ) -> list[np.ndarray]:
        """One ``(H, W)`` heatmap per image of a batch."""
        return list(self.generate_heatmap(images, "logits", target_classes))

    def overlay(
        self,
        image: TensorOrArray,
        heatmap: np.ndarray,
        alpha: float = 0.4,
        colormap: str = "jet",
    ) -> np.ndarray:
        """The heatmap blended on the image: uint8 ``(H, W, 3)``."""
        return overlay_heatmap(image, heatmap, alpha=alpha, colormap=colormap)

    def visualize(
        self,
        image: TensorOrArray,
        heatmap: np.ndarray,
        alpha: float = 0.4,
        colormap: str = "jet",
        save_path: str | Path | None = None,
    ) -> np.ndarray:
        """Overlay (uint8 ``(H, W, 3)``), saved as PNG when ``save_path`` is given."""
        blended = self.overlay(image, heatmap, alpha=alpha, colormap=colormap)
        if save_path is not None:
            from PIL import Image

            Image.fromarray(blended).save(save_path)
        return blended

    def compare_groups(
        self,
        heatmaps_or_images: TensorOrArray,
        group_labels: Sequence[Hashable] | np.ndarray,
        **kwargs: Any,
    ) -> AttentionOverlapResult:
        """Compare attention between groups of samples.

        Accepts heatmaps ``(N, H, W)`` or images ``(N, C, H, W)``; see
        :func:`shortcut_detect.analysis.groups.compare_groups` for the options.
        """
        return compare_group_attention(heatmaps_or_images, group_labels, generator=self, **kwargs)

    # -- resources -----------------------------------------------------------------------
    def close(self) -> None:
        """Remove any lingering hooks (safe to call multiple times)."""
        if self._cam is not None:
            self._cam.close()

    def __enter__(self) -> GradCAMHeatmapGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- functions from the other tool the users know ------------------------------------------


def compute_gradcam(
    model: nn.Module,
    device: str | torch.device | None,
    image_tensor: TensorOrArray,
    target_layer: LayerSpec,
    target_class: int | None = None,
) -> tuple[np.ndarray, int, float]:
    """Grad-CAM of one ``(C, H, W)`` image: ``(heatmap (H, W), predicted_class, confidence)``.

    ``confidence`` is the softmax probability of the predicted class.
    """
    with GradCAMHeatmapGenerator(model, target_layer, device=device) as gen:
        explanation = gen.explain(image_tensor, [("logits", target_class)])[0]
    return (
        explanation.heatmaps[0],
        int(explanation.predictions[0]),
        float(explanation.confidences[0]),
    )


def get_conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All convolution layers (1-D, 2-D, 3-D) of the model as ``(name, module)`` pairs."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [(name, module) for name, module in model.named_modules() if isinstance(module, kinds)]


def get_top_predictions(
    model: nn.Module,
    device: str | torch.device | None,
    image_tensor: TensorOrArray,
    class_names: Sequence[str] | None,
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Top-``k`` softmax predictions for one ``(C, H, W)`` image.

    A model with several outputs is read as :func:`primary_output` reads it (the first
    element of a tuple, the ``"logits"`` entry of a dict). Returns
    ``[{"class_idx", "class_name", "confidence"}, ...]``, most likely first (see
    :func:`top_predictions`, which does the same from probabilities you already have).
    """
    device = resolve_device(device, model)
    batch = prepare_inputs(image_tensor, device)[:1]
    with eval_mode(model), torch.inference_mode():
        outputs = model(batch)
    message = first_output_warning(outputs, "logits")
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=2)
    logits = primary_output(outputs)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"The model's scores are {type(logits).__name__}, not a tensor")
    return top_predictions(class_probabilities(logits)[0], class_names, top_k)


def get_activation_maps(
    model: nn.Module,
    device: str | torch.device | None,
    image_tensor: TensorOrArray,
    target_layer: LayerSpec,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Raw activations of a layer for one image: ``(C, *spatial)`` float32, no weighting."""
    engine = CAMEngine(model, [target_layer], reshape_transform, device)
    batch = prepare_inputs(image_tensor, engine.device)[:1]
    capture = engine.capture(batch, score_fns=[], need_gradients=False)
    return capture.activations[0][0].float().cpu().numpy()


def upsampled_raw(raw: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Upsample stored raw (layer-resolution) maps to ``size`` and normalise them, exactly as
    the engine turns raw maps into heatmaps (see :meth:`BaseCAM.combine`)."""
    tensor = torch.from_numpy(np.asarray(raw, dtype=np.float32))
    return BaseCAM.combine([tensor], size).numpy()
