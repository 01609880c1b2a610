"""The one engine behind every CAM method: hooks, forward, targets, gradients, resizing.

The forward pass runs without a recorded graph up to the first target layer. The hook on
that layer swaps its output for a fresh leaf that requires grad and switches grad mode on,
so only the layers *after* the target layer are recorded, and ``torch.autograd.grad`` is
taken with respect to the captured activation alone (no parameter gradients, nothing left
in ``.grad``). Downstream layers receive a clone of the activation, so an in-place
operation after the target layer (``ReLU(inplace=True)``, ``out += identity``) cannot
change the activation or its gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shortcut_detect.cam.layers import LayerSpec, resolve_layers

__all__ = [
    "CAMEngine",
    "Capture",
    "ScoreFn",
    "TargetScores",
    "minmax_normalize",
    "prepare_inputs",
    "resolve_device",
    "upsample",
]

ScoreFn = Callable[[Any], torch.Tensor]
"""Maps the model output to one score per sample, shape ``(B,)``.

Score functions may also offer ``for_sample(outputs, index) -> (N,)``: sample ``index``'s
target applied to every row of a batched output (used by methods that re-run the model on
perturbed copies of one sample, e.g. ScoreCAM); see :class:`TargetScores`.
"""

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device=None`` means the model's device; CUDA where there is none warns and uses CPU."""
    if device is None:
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device={str(device)!r} was requested but CUDA is not available; using the CPU.",
            RuntimeWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        warnings.warn("MPS is not available; using the CPU.", RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    return device


def prepare_inputs(
    inputs: torch.Tensor | np.ndarray,
    device: torch.device,
    *,
    spatial_dims: int | None = None,
) -> torch.Tensor:
    """Validate images and return a float ``(B, C, *spatial)`` tensor on ``device``.

    Accepts torch tensors and numpy arrays, batched or single (``(C, H, W)`` becomes
    ``(1, C, H, W)``). ``spatial_dims`` fixes the number of spatial axes (2 for images,
    3 for volumes); ``None`` accepts 2-D images and batched 3-D volumes.
    """
    if isinstance(inputs, np.ndarray):
        if inputs.dtype == np.uint8:
            raise ValueError(
                "Got a uint8 image array; convert it to the float tensor the model expects "
                "(e.g. shortcut_detect.cam.preprocess_image(img / 255.0))."
            )
        inputs = torch.from_numpy(np.ascontiguousarray(inputs))
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(
            f"inputs must be a torch.Tensor or numpy array, got {type(inputs).__name__}"
        )
    if not inputs.is_floating_point():
        inputs = inputs.float()
    ndim = inputs.ndim
    if spatial_dims is None:
        if ndim == 3:
            inputs = inputs.unsqueeze(0)
        elif ndim not in (4, 5):
            raise ValueError(
                f"inputs must be (B, C, H, W) or (C, H, W) (or (B, C, D, H, W) for volumes); "
                f"got shape {tuple(inputs.shape)}"
            )
    else:
        if ndim == spatial_dims + 1:
            inputs = inputs.unsqueeze(0)
        elif ndim != spatial_dims + 2:
            raise ValueError(
                f"inputs must have {spatial_dims + 2} dimensions (B, C, *spatial) or "
                f"{spatial_dims + 1} for one sample; got shape {tuple(inputs.shape)}"
            )
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch")
    if not torch.isfinite(inputs).all():
        bad = int((~torch.isfinite(inputs)).sum())
        raise ValueError(
            f"inputs contain {bad} NaN or Inf values; clean or re-normalise the images first"
        )
    return inputs.to(device)


def upsample(cams: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``(B, *spatial)`` maps to ``size`` (linear, bilinear or trilinear)."""
    size = tuple(int(s) for s in size)
    if tuple(cams.shape[1:]) == size:
        return cams
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(cams.unsqueeze(1), size=size, mode=mode, align_corners=False)[:, 0]


def minmax_normalize(cams: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling to [0, 1]; a constant map becomes all zeros (never NaN)."""
    flat = cams.reshape(cams.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-30), torch.zeros_like(flat))
    return scaled.reshape(cams.shape)


@dataclass
class Capture:
    """What one forward pass (and its backward passes) recorded.

    Attributes
    ----------
    outputs:
        The model's output (tensor, tuple or dict), detached.
    activations:
        One tensor per target layer, ``(B, C, *spatial)`` after any reshape transform.
    gradients:
        ``gradients[s][l]``: gradient of score set ``s`` w.r.t. layer ``l``'s activation,
        same shape as the activation; empty when no gradients were asked for.
    scores:
        One ``(B,)`` tensor per score set: the score each gradient was taken of.
    input_size:
        Spatial size of the input, to upsample maps to.
    score_fns:
        The score functions in effect (resolved from the outputs where needed); methods
        that re-run the model (ScoreCAM, AblationCAM) score new outputs with them.
    """

    outputs: Any
    activations: list[torch.Tensor]
    gradients: list[list[torch.Tensor]] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    input_size: tuple[int, ...] = ()
    score_fns: list[Any] = field(default_factory=list)


class TargetScores:
    """Per-sample targets (pytorch-grad-cam style callables on one sample's output)."""

    def __init__(self, targets: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.targets = list(targets)

    def __call__(self, outputs: torch.Tensor) -> torch.Tensor:
        if len(self.targets) != outputs.shape[0]:
            raise ValueError(
                f"Got {len(self.targets)} targets for a batch of {outputs.shape[0]}; give one "
                "target per sample (or a single target, which is used for every sample)."
            )
        return torch.stack([t(o).sum() for t, o in zip(self.targets, outputs)])

    def for_sample(self, outputs: torch.Tensor, index: int) -> torch.Tensor:
        target = self.targets[index]
        return torch.stack([target(o).sum() for o in outputs])


def _detach_output(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, dict):
        return {key: _detach_output(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_detach_output(value) for value in output)
    return output


class CAMEngine:
    """Runs a model once with hooks on the target layers and returns what they saw.

    Parameters
    ----------
    model:
        Any ``nn.Module``. Its train/eval mode and ``requires_grad`` flags are restored
        after every call; it is run in eval mode.
    target_layers:
        One layer or several, as modules or dotted paths.
    reshape_transform:
        Maps a non-spatial layer output (e.g. ViT tokens ``(B, N, C)``) to
        ``(B, C, *spatial)``; applied to activations and gradients alike.
    device:
        ``None`` uses the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = resolve_device(model, device)
        if device is not None:
            model.to(self.device)
        resolved = resolve_layers(model, target_layers)
        self.layer_names = [name for name, _ in resolved]
        self.target_layers = [module for _, module in resolved]
        self.reshape_transform = reshape_transform
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- context management --------------------------------------------------------------
    def close(self) -> None:
        """Remove any hook still registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> CAMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the forward pass ----------------------------------------------------------------
    def _to_spatial(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.reshape_transform is not None:
            tensor = self.reshape_transform(tensor)
        if tensor.ndim < 3:
            raise ValueError(
                f"Layer {name!r} outputs shape {tuple(tensor.shape)}, which has no spatial "
                "axes. Choose a convolutional layer, or pass a reshape_transform "
                "(vit_reshape_transform for ViT tokens (B, N, C), swin_reshape_transform "
                "for (B, H, W, C))."
            )
        return tensor

    def capture(
        self,
        inputs: torch.Tensor,
        score_fns: Sequence[ScoreFn] | None = None,
        *,
        score_from_outputs: Callable[[Any], Sequence[ScoreFn]] | None = None,
        need_gradients: bool = True,
    ) -> Capture:
        """One forward pass with hooks; gradients of each score set w.r.t. each layer.

        Parameters
        ----------
        inputs:
            A prepared ``(B, C, *spatial)`` tensor (see :func:`prepare_inputs`).
        score_fns:
            Each maps the model output to ``(B,)`` scores; one gradient set per function,
            all from the same forward pass.
        score_from_outputs:
            Alternative to ``score_fns`` when the scores depend on the outputs (e.g. the
            arg-max class): called with the detached outputs, returns the score functions.
        need_gradients:
            ``False`` runs under ``torch.inference_mode`` and records activations only.
        """
        model = self.model
        layer_count = len(self.target_layers)
        raw: list[torch.Tensor | None] = [None] * layer_count
        calls = [0] * layer_count
        grad_switched = [False]

        def make_hook(index: int) -> Callable[..., Any]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                calls[index] += 1
                if not isinstance(output, torch.Tensor):
                    raise TypeError(
                        f"Layer {self.layer_names[index]!r} returns "
                        f"{type(output).__name__}, not a tensor; target a layer whose "
                        "output is a tensor (e.g. a sub-module of this one)."
                    )
                if not need_gradients:
                    raw[index] = output.detach()
                    return None
                if not torch.is_grad_enabled():
                    # First target layer reached: start recording the graph from here.
                    output = output.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)
                    grad_switched[0] = True
                raw[index] = output
                # Downstream gets a copy, so in-place ops there cannot touch `output`.
                return output.clone()

            return hook

        was_training = model.training
        requires_grad = [p.requires_grad for p in model.parameters()]
        grad_mode = torch.is_grad_enabled()
        self._handles = [
            layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(self.target_layers)
        ]
        try:
            model.eval()
            if need_gradients:
                with torch.no_grad():
                    outputs = self._forward(inputs)
            else:
                with torch.inference_mode():
                    outputs = self._forward(inputs)
            self._check_calls(calls)
            detached = _detach_output(outputs)
            activations = [
                self._to_spatial(name, tensor.detach())
                for name, tensor in zip(self.layer_names, raw)  # type: ignore[arg-type]
            ]
            capture = Capture(
                outputs=detached, activations=activations, input_size=tuple(inputs.shape[2:])
            )
            if score_fns is None:
                if score_from_outputs is None:
                    raise ValueError("give score_fns or score_from_outputs")
                score_fns = score_from_outputs(detached)
            capture.score_fns = list(score_fns)
            if not need_gradients:
                return capture
            if not grad_switched[0] or any(t is None or not t.requires_grad for t in raw):
                raise RuntimeError(
                    "No gradient can flow to the target layer: the model ran it under "
                    "torch.no_grad() or detached its output. Choose another layer."
                )
            leaves = [t for t in raw if t is not None]
            with torch.enable_grad():
                for position, score_fn in enumerate(score_fns):
                    scores = score_fn(outputs)
                    if scores.ndim == 0:
                        scores = scores.reshape(1)
                    last = position == len(score_fns) - 1
                    try:
                        grads = torch.autograd.grad(
                            scores.sum(), leaves, retain_graph=not last, allow_unused=True
                        )
                    except RuntimeError as error:
                        raise RuntimeError(
                            f"Backward from the selected scores to layer(s) "
                            f"{self.layer_names} failed: {error}"
                        ) from error
                    if any(g is None for g in grads):
                        raise RuntimeError(
                            f"The selected score does not depend on layer(s) {self.layer_names}; "
                            "choose a layer that feeds the prediction head you explain."
                        )
                    capture.gradients.append(
                        [
                            self._to_spatial(name, grad.detach())
                            for name, grad in zip(self.layer_names, grads)
                        ]
                    )
                    capture.scores.append(scores.detach())
            return capture
        finally:
            self.close()
            torch.set_grad_enabled(grad_mode)
            model.train(was_training)
            for param, flag in zip(model.parameters(), requires_grad):
                if param.requires_grad != flag:
                    param.requires_grad_(flag)

    def _forward(self, inputs: torch.Tensor) -> Any:
        try:
            return self.model(inputs)
        except RuntimeError as error:
            message = str(error)
            if "channels" in message or "size mismatch" in message or "shape" in message:
                hint = _channel_hint(self.model, inputs)
                raise ValueError(
                    f"The model could not process inputs of shape {tuple(inputs.shape)}: "
                    f"{message.splitlines()[0]}{hint}"
                ) from error
            raise

    def _check_calls(self, calls: list[int]) -> None:
        for name, count in zip(self.layer_names, calls):
            if count == 0:
                raise RuntimeError(
                    f"Target layer {name!r} did not run during the forward pass; pick a layer "
                    "the model actually uses (see get_conv_layers(model))."
                )
            if count > 1:
                raise RuntimeError(
                    f"Target layer {name!r} ran {count} times in one forward pass (a shared "
                    "module); pick a layer that runs once."
                )


def _channel_hint(model: nn.Module, inputs: torch.Tensor) -> str:
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if module.in_channels != inputs.shape[1]:
                return (
                    f". The model's first convolution expects {module.in_channels} channels "
                    f"but the inputs have {inputs.shape[1]}; convert the images "
                    "(e.g. repeat a grayscale channel) before calling."
                )
            return ""
    return ""
