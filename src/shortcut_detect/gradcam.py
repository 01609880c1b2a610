"""The seed-compatible Grad-CAM API: :class:`GradCAMHeatmapGenerator` and friends.

Both generations of the seed API are served by one engine
(:mod:`shortcut_detect.cam.engine`): ``generate_heatmap`` / ``generate_attention_overlap`` /
``calculate_overlap`` with multi-head models, and ``generate`` / ``generate_batch`` /
``visualize`` / ``overlay`` / ``compare_groups`` with ``use_guided``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.base import BaseCAM
from shortcut_detect.cam.engine import (
    CAMEngine,
    Capture,
    minmax_normalize,
    prepare_inputs,
    resolve_device,
)
from shortcut_detect.cam.layers import LayerSpec, default_layer, resolve_layer

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
    "select_head",
    "upsampled_raw",
]

TensorOrArray = torch.Tensor | np.ndarray
HeadMapping = int | str | Callable[[Any], torch.Tensor] | None
TargetSpec = int | Sequence[int] | np.ndarray | torch.Tensor | None

DEFAULT_HEAD_MAPPINGS: dict[str, HeadMapping] = {"logits": None, "disease": 0, "attribute": 1}


@dataclass
class AttentionOverlapResult:
    """Overlap of two attention patterns: two heads of one model, or groups of samples.

    Attributes
    ----------
    overlap_score:
        Similarity in [0, 1] (dice of the thresholded maps for two heads; for groups,
        see :meth:`GradCAMHeatmapGenerator.compare_groups`).
    metrics:
        ``{"dice", "iou", "cosine", ...}``.
    disease_heatmap, attribute_heatmap:
        ``(B, H, W)`` maps of the two heads, when the result came from two heads.
    group_heatmaps:
        Mean map per group label, when the result came from a group comparison.
    divergence_regions:
        ``(H, W)`` map of where the groups' attention differs.
    summary:
        A paragraph a person can read.
    """

    overlap_score: float
    metrics: dict[str, Any] = field(default_factory=dict)
    disease_heatmap: np.ndarray | None = None
    attribute_heatmap: np.ndarray | None = None
    group_heatmaps: dict[Hashable, np.ndarray] = field(default_factory=dict)
    divergence_regions: np.ndarray | None = None
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Explanation:
    """Heatmaps for one (head, target) request, with what the model predicted.

    Attributes
    ----------
    heatmaps:
        ``(B, *input_size)`` float32 in [0, 1].
    raw_heatmaps:
        ``(B, *layer_spatial)`` float32 at layer resolution, after ReLU, not normalised.
    target_indices:
        ``(B,)`` class explained per sample. A single-logit head (output ``(B,)`` or
        ``(B, 1)``) has classes 0 and 1: 1 explains the logit, 0 its negation.
    predictions, confidences:
        ``(B,)`` predicted class and its probability (softmax; sigmoid for one logit).
    head_output:
        ``(B, K)`` detached logits of the head (``(B,)`` for one logit).
    """

    heatmaps: np.ndarray
    raw_heatmaps: np.ndarray
    target_indices: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    head_output: torch.Tensor
    head: str | int = "logits"


def _available_heads(outputs: Any, mappings: Mapping[str, HeadMapping]) -> list[str]:
    names = [name for name, value in mappings.items() if _mapping_fits(value, outputs)]
    if isinstance(outputs, Mapping):
        names += [str(key) for key in outputs if key not in names]
    elif isinstance(outputs, (list, tuple)):
        names += [str(i) for i in range(len(outputs))]
    return names


def _mapping_fits(value: HeadMapping, outputs: Any) -> bool:
    if value is None:
        return isinstance(outputs, torch.Tensor)
    if isinstance(value, int) and not isinstance(value, bool):
        return isinstance(outputs, (list, tuple)) and -len(outputs) <= value < len(outputs)
    if isinstance(value, str):
        return isinstance(outputs, Mapping) and value in outputs
    return callable(value)


def select_head(
    outputs: Any, head: str | int, mappings: Mapping[str, HeadMapping] | None = None
) -> torch.Tensor:
    """Pick one prediction head out of a model output (tensor, tuple/list or dict).

    ``head`` is a name in ``mappings`` (whose value is an index, a dict key, a callable
    ``fn(output) -> Tensor`` or ``None`` for the whole output), a dict key, or an index.
    """
    mappings = DEFAULT_HEAD_MAPPINGS if mappings is None else mappings
    if isinstance(head, str) and head in mappings and _mapping_fits(mappings[head], outputs):
        value = mappings[head]
        if value is None:
            selected = outputs
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


def class_probabilities(head_output: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` float32 class probabilities from a head's output (e.g. ``head_output``).

    Softmax over the classes; a single-logit head (``(B,)`` or ``(B, 1)``) has two classes
    with probabilities ``[1 - sigmoid(logit), sigmoid(logit)]``.
    """
    logits = head_logits(head_output.detach().float())
    if logits.ndim == 1:
        positive = torch.sigmoid(logits)
        return torch.stack([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


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
        into the defaults ``{"logits": whole output, "disease": 0, "attribute": 1}``.
    device:
        ``None`` uses the model's device; CUDA where there is none warns and uses the CPU.
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
        self.device = resolve_device(model, device)
        if device is not None:
            model.to(self.device)
        self.head_mappings: dict[str, HeadMapping] = dict(DEFAULT_HEAD_MAPPINGS)
        if head_mappings:
            self.head_mappings.update(head_mappings)
        self.use_guided = bool(use_guided)
        self.reshape_transform = reshape_transform
        self._method_spec = method
        self._cam: BaseCAM | None = None
        self.target_layer_name: str | None = None
        self._target_layer: nn.Module | None = None
        if target_layer is not None:
            self.target_layer_name, self._target_layer = resolve_layer(model, target_layer)
            self._build_method()

    # -- layer and method ----------------------------------------------------------------
    @property
    def target_layer(self) -> nn.Module | None:
        """The resolved target layer (``None`` until the first call when chosen automatically)."""
        return self._target_layer

    def _build_method(self) -> None:
        from shortcut_detect.cam import get_method

        method_cls = get_method(self._method_spec)
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
    ) -> list[Explanation]:
        """Heatmaps for several ``(head, target)`` requests from **one** forward pass.

        Parameters
        ----------
        inputs:
            ``(B, C, H, W)`` or ``(C, H, W)`` (also ``(B, C, D, H, W)`` volumes).
        requests:
            ``(head, target)`` pairs; ``target`` is ``None`` (arg-max per sample), one class
            for the whole batch, or one class per sample.
        """
        batch = prepare_inputs(inputs, self.device)
        cam = self._ensure_layer(batch)
        requests = list(requests)
        if not requests:
            raise ValueError("requests is empty; ask for at least one (head, target)")

        def resolve(outputs: Any) -> list[HeadTargets]:
            fns = []
            for head, target in requests:
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
            batch, score_from_outputs=resolve, need_gradients=cam.uses_gradients
        )
        if self.use_guided:
            from shortcut_detect.cam.guided import guided_backprop_for_scores

            guided = guided_backprop_for_scores(self.model, batch, capture.score_fns)
        explanations = []
        for index, (head, _) in enumerate(requests):
            layer_maps = cam.layer_maps(capture, index, inputs=batch)
            heatmaps = cam.combine(layer_maps, capture.input_size)
            if self.use_guided:
                heatmaps = minmax_normalize((heatmaps * guided[index]).clamp_min(0))
            explanations.append(self._explanation(capture, index, head, heatmaps, layer_maps))
        return explanations

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
        if logits.ndim == 1:
            predictions = (logits > 0).long()
            confidences = torch.where(
                predictions == 1, torch.sigmoid(logits), torch.sigmoid(-logits)
            )
        else:
            probabilities = torch.softmax(logits, dim=1)
            confidences, predictions = probabilities.max(dim=1)
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

        Two empty thresholded maps count as full agreement is *not* assumed: their dice
        and IoU are 0, as in the seed implementation; cosine with an all-zero map is 0.
        """
        first = np.asarray(disease_heatmap, dtype=np.float64)
        second = np.asarray(attribute_heatmap, dtype=np.float64)
        if first.shape != second.shape:
            raise ValueError(
                f"Heatmaps must share the same shape to compute overlap: {first.shape} vs "
                f"{second.shape}"
            )
        if first.ndim == 2:
            first, second = first[None], second[None]
        if first.shape[0] == 0:
            return {"dice": 0.0, "iou": 0.0, "cosine": 0.0}
        flat_a = first.reshape(first.shape[0], -1)
        flat_b = second.reshape(second.shape[0], -1)
        bin_a = flat_a >= threshold
        bin_b = flat_b >= threshold
        intersection = (bin_a & bin_b).sum(axis=1)
        union = (bin_a | bin_b).sum(axis=1)
        sizes = bin_a.sum(axis=1) + bin_b.sum(axis=1)
        eps = 1e-8
        dice = 2.0 * intersection / (sizes + eps)
        iou = intersection / (union + eps)
        norms = np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_b, axis=1)
        dots = (flat_a * flat_b).sum(axis=1)
        cosine = np.where(norms > eps, dots / np.maximum(norms, eps), 0.0)
        return {
            "dice": float(dice.mean()),
            "iou": float(iou.mean()),
            "cosine": float(cosine.mean()),
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
        from shortcut_detect.viz import overlay_heatmap

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
        from shortcut_detect.analysis.groups import compare_groups

        return compare_groups(heatmaps_or_images, group_labels, generator=self, **kwargs)

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

    Returns ``[{"class_idx", "class_name", "confidence"}, ...]``, most likely first.
    """
    device = resolve_device(model, device)
    batch = prepare_inputs(image_tensor, device)[:1]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(batch)
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor):
        raise TypeError("get_top_predictions needs a model that returns one tensor of logits")
    probabilities = class_probabilities(logits)[0]
    if class_names is not None and len(class_names) != probabilities.numel():
        raise ValueError(
            f"{len(class_names)} class names for a model with {probabilities.numel()} outputs"
        )
    values, indices = probabilities.topk(min(top_k, probabilities.numel()))
    return [
        {
            "class_idx": int(index),
            "class_name": class_names[int(index)] if class_names is not None else str(int(index)),
            "confidence": float(value),
        }
        for value, index in zip(values, indices)
    ]


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
