"""BaseCAM: the pytorch-grad-cam style front of the engine. A CAM method only weights channels.

A subclass sets ``uses_gradients`` and overrides :meth:`BaseCAM.channel_weights` (``(B, C)``
weights per channel) or, for element-wise methods, :meth:`BaseCAM.cam_image`.
Everything else (hooks, forward, targets, backward, ReLU, resizing, normalisation, several
layers, smoothing) happens once, here and in :mod:`shortcut_detect.cam.engine`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import (
    CAMEngine,
    Capture,
    ReshapeTransform,
    ScoreFn,
    TargetScores,
    classifier_logits,
    minmax_normalize,
    prepare_inputs,
    upsample,
)
from shortcut_detect.cam.layers import LayerSpec
from shortcut_detect.cam.targets import ClassifierOutputTarget

__all__ = [
    "BaseCAM",
    "GradCAM",
    "centred_positions",
    "eigen_projection",
    "principal_direction",
    "require_gradients",
    "spatial_mean",
]


def spatial_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every spatial axis of ``(B, C, *spatial)``: ``(B, C)``."""
    return tensor.flatten(2).mean(dim=2)


def centred_positions(weighted: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` as float64 ``(B, positions, C)`` rows, centred per channel (NaN: 0)."""
    batch, channels = weighted.shape[:2]
    points = torch.nan_to_num(weighted.detach().to(torch.float64), nan=0.0)
    points = points.reshape(batch, channels, -1).transpose(1, 2)
    return points - points.mean(dim=1, keepdim=True)


def principal_direction(centred: torch.Tensor) -> torch.Tensor:
    """First right-singular vector of each ``(positions, C)`` matrix: ``(B, C)``, unit length.

    Found as the top eigenvector of the smaller Gram matrix (``C x C``, or ``positions x
    positions`` mapped back through the matrix), which costs a fraction of a full SVD
    (e.g. 49 x 49 instead of an SVD of 49 x 512 for a ResNet's last layer). The sign is
    arbitrary, as an SVD's; a matrix of zeros gives a zero projection either way.
    """
    positions, channels = centred.shape[1:]
    if channels <= positions:
        return torch.linalg.eigh(centred.mT @ centred).eigenvectors[..., -1]
    top = torch.linalg.eigh(centred @ centred.mT).eigenvectors[..., -1:]
    direction = (centred.mT @ top).squeeze(-1)
    return direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-300)


def eigen_projection(weighted: torch.Tensor) -> torch.Tensor:
    """Projection of ``(B, C, *spatial)`` on its first principal component: ``(B, *spatial)``.

    Per sample, the channel vectors at each position are centred and projected on the
    first right-singular vector, as pytorch-grad-cam's ``eigen_smooth`` / EigenCAM do.

    The sign of a singular vector is arbitrary, so we fix it: the direction is oriented
    so that its components sum to a positive number, which makes the map correlate
    positively with the channel sum (where the layer is most active). pytorch-grad-cam
    keeps whatever sign LAPACK returns, so its EigenCAM map is either ours or the map of
    the opposite direction.
    """
    centred = centred_positions(weighted)  # (B, positions, C)
    direction = principal_direction(centred)
    sign = torch.where(direction.sum(dim=1) < 0, -1.0, 1.0).to(direction)
    projection = (centred @ (direction * sign[:, None]).unsqueeze(-1)).squeeze(-1)
    return projection.to(weighted.dtype).reshape(weighted.shape[0], *weighted.shape[2:])


class BaseCAM:
    """Class activation maps for a model and one or more target layers.

    Call signature, return shapes and dtypes follow pytorch-grad-cam 1.5.

    Parameters
    ----------
    model:
        The model to explain.
    target_layers:
        Layers (modules or dotted paths) whose activations are weighted. With several
        layers, each layer's map is normalised, resized, and the maps are averaged.
    reshape_transform:
        Turns a non-spatial layer output into ``(B, C, *spatial)`` (ViT, Swin); see
        :mod:`shortcut_detect.cam.reshape`.
    compute_input_gradient:
        Accepted for compatibility; maps never need the input gradient.
    uses_gradients:
        Accepted for compatibility; each method knows whether it needs gradients.
    tta_transforms:
        Test-time augmentations for ``aug_smooth=True``: any iterable of objects with
        ``augment_image(tensor)`` and ``deaugment_mask(tensor)`` (e.g. a ``ttach.Compose``).
        ``None`` uses horizontal flips times brightness factors (0.9, 1, 1.1), as
        pytorch-grad-cam does.
    detach:
        Must be ``True``; maps are always detached from the graph.
    device:
        ``None`` uses the model's device; asking for CUDA or MPS where there is none raises
        :class:`~shortcut_detect.common.device.DeviceUnavailableError`.
    """

    uses_gradients: bool = True
    relu_maps: bool = True
    """Clip each layer's map at 0 before normalising (torchcam's CAM does not)."""
    capture_options: dict[str, bool] = {}  # noqa: RUF012 (read-only class default)
    """Extra :meth:`CAMEngine.capture` flags (e.g. ``hessian_vector`` for ShapleyCAM)."""

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        compute_input_gradient: bool = False,
        uses_gradients: bool | None = None,
        tta_transforms: Any = None,
        detach: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        if not detach:
            raise ValueError(
                "detach=False (keeping the graph for second-order gradients) is not supported; "
                "maps are always detached."
            )
        if uses_gradients is not None and bool(uses_gradients) != type(self).uses_gradients:
            kind = "needs" if type(self).uses_gradients else "does not use"
            raise ValueError(
                f"{type(self).__name__} {kind} gradients; drop uses_gradients={uses_gradients}."
            )
        self.model = model
        self.engine = CAMEngine(model, target_layers, reshape_transform, device)
        self.device = self.engine.device
        self.target_layers = self.engine.target_layers
        self.reshape_transform = reshape_transform
        self.compute_input_gradient = compute_input_gradient
        self.tta_transforms = tta_transforms
        self.outputs: Any = None

    # -- what a method defines -----------------------------------------------------------
    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        """``(B, C)`` channel weights; the base map is ``sum_k w_k A_k``."""
        raise NotImplementedError

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        """Map at layer resolution, ``(B, *spatial)``, before ReLU."""
        weights = self.channel_weights(activations, gradients, **context)
        weighted = weights.reshape(*weights.shape, *([1] * (activations.ndim - 2))) * activations
        if eigen_smooth:
            return eigen_projection(weighted)
        return weighted.sum(dim=1)

    # -- the shared pipeline -------------------------------------------------------------
    def layer_maps(
        self,
        capture: Capture,
        score_index: int = 0,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> list[torch.Tensor]:
        """Raw (unnormalised, after ReLU) maps at each layer's resolution."""
        maps = []
        for layer_index, activations in enumerate(capture.activations):
            gradients = capture.gradients[score_index][layer_index] if capture.gradients else None
            cam = self.cam_image(
                activations,
                gradients,
                eigen_smooth=eigen_smooth,
                layer_index=layer_index,
                score_index=score_index,
                capture=capture,
                **context,
            )
            maps.append(torch.relu(cam.float()) if self.relu_maps else cam.float())
        return maps

    @staticmethod
    def combine(layer_maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Normalise each layer's map, resize it to ``size``, average, normalise again.

        The order is pytorch-grad-cam's: with several layers, normalising before or after
        resizing weighs the layers slightly differently (bilinear resizing does not keep
        interior extremes), so the same order gives the same maps.
        """
        resized = [upsample(minmax_normalize(cam), size) for cam in layer_maps]
        combined = resized[0] if len(resized) == 1 else torch.stack(resized).mean(dim=0)
        return minmax_normalize(combined)

    @staticmethod
    def _score_resolver(targets: Sequence[Any] | None) -> Callable[[Any], list[ScoreFn]]:
        def from_outputs(outputs: Any) -> list[ScoreFn]:
            logits = classifier_logits(outputs)
            # A list of per-image outputs (torchvision detection models) works with targets
            # that read one image's output, e.g. FasterRCNNBoxScoreTarget.
            per_image = isinstance(outputs, list) and targets is not None
            if logits is None and not per_image:
                raise TypeError(
                    f"The model returns {type(outputs).__name__} without class scores; "
                    "pytorch-grad-cam style classes read a tensor, an output with .logits, a "
                    "dict with 'logits' or a tuple starting with the logits (or, with "
                    "explicit targets, a list with one output per image). Wrap the model, or "
                    "use GradCAMHeatmapGenerator with head_mappings for multi-head outputs."
                )
            select = None if logits is None or logits is outputs else classifier_logits
            if targets is None:
                chosen = [ClassifierOutputTarget(c) for c in logits.argmax(dim=-1).tolist()]
            else:
                chosen = list(targets)
                if len(chosen) == 1:
                    chosen = chosen * len(logits if logits is not None else outputs)
            return [TargetScores(chosen, select)]

        return from_outputs

    def capture_for(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        score_from_outputs: Callable[[Any], list[ScoreFn]] | None = None,
        **options: bool,
    ) -> tuple[torch.Tensor, Capture]:
        """Prepared inputs and the engine's capture for them (sets :attr:`outputs`).

        ``score_from_outputs`` replaces the targets' resolution; ``options`` override
        :attr:`capture_options` and ``need_gradients``.
        """
        inputs = prepare_inputs(input_tensor, self.device)
        settings = {"need_gradients": self.uses_gradients, **self.capture_options, **options}
        capture = self.engine.capture(
            inputs,
            score_from_outputs=score_from_outputs or self._score_resolver(targets),
            **settings,
        )
        self.outputs = capture.outputs
        return inputs, capture

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """One pass: ``(B, H, W)`` float32 maps in [0, 1] at input resolution."""
        inputs, capture = self.capture_for(input_tensor, targets)
        maps = self.layer_maps(capture, 0, eigen_smooth, inputs=inputs)
        return self.combine(maps, capture.input_size).cpu().numpy().astype(np.float32)

    def forward_augmentation_smoothing(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Mean of the maps over test-time augmentations, each mapped back to the input frame.

        By default: horizontal flip (off, on) times brightness factors (0.9, 1, 1.1).
        """
        inputs = prepare_inputs(input_tensor, self.device)
        maps = []
        if self.tta_transforms is not None:
            for transform in self.tta_transforms:
                cam = self.forward(transform.augment_image(inputs), targets, eigen_smooth)
                restored = transform.deaugment_mask(torch.from_numpy(cam)[:, None])[:, 0]
                maps.append(np.asarray(restored, dtype=np.float32))
        else:
            for flip in (False, True):
                for factor in (0.9, 1.0, 1.1):
                    augmented = inputs.flip(-1) if flip else inputs
                    cam = self.forward(augmented * factor, targets, eigen_smooth)
                    maps.append(cam[..., ::-1] if flip else cam)
        return np.mean(np.stack(maps), axis=0).astype(np.float32)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        if aug_smooth:
            return self.forward_augmentation_smoothing(input_tensor, targets, eigen_smooth)
        return self.forward(input_tensor, targets, eigen_smooth)

    # -- resources -----------------------------------------------------------------------
    def close(self) -> None:
        """Remove every hook (idempotent; hooks never outlive a call anyway)."""
        self.engine.close()

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type: object, exc_value: object, traceback: object) -> bool:
        self.close()
        return False

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def require_gradients(method: BaseCAM, gradients: torch.Tensor | None) -> torch.Tensor:
    """The gradients a gradient method was given, or a clear error."""
    if gradients is None:
        raise ValueError(
            f"{type(method).__name__} needs gradients, but the capture has none; capture with "
            "need_gradients=True."
        )
    return gradients


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channels weighted by their mean gradient."""

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        return spatial_mean(require_gradients(self, gradients))
