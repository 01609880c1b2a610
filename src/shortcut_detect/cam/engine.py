"""The one engine behind every CAM method: hooks, forward, targets, gradients, resizing.

The forward pass runs without a recorded graph up to the first target layer. The hook on
that layer swaps its output for a fresh leaf that requires grad and switches grad mode on,
so only the layers *after* the target layer are recorded, and ``torch.autograd.grad`` is
taken with respect to the captured activation alone (no parameter gradients, nothing left
in ``.grad``). Downstream layers receive a clone of the activation, so an in-place
operation after the target layer (``ReLU(inplace=True)``, ``out += identity``) cannot
change the activation or its gradient. Without gradients (EigenCAM, ScoreCAM,
AblationCAM) the forward pass runs under ``torch.inference_mode`` and the activation is
copied for the same reason. Extra forward passes (:meth:`CAMEngine.run`,
:meth:`CAMEngine.run_replacing`) restore the model the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shortcut_detect.cam.layers import LayerSpec, resolve_layers
from shortcut_detect.common.device import place_model
from shortcut_detect.common.modes import restore_modes, saved_modes

__all__ = [
    "CAMEngine",
    "Capture",
    "ScoreFn",
    "TargetScores",
    "classifier_logits",
    "current_input_size",
    "minmax_normalize",
    "prepare_inputs",
    "upsample",
]

ScoreFn = Callable[[Any], torch.Tensor]
"""Maps the model output to one score per sample, shape ``(B,)``.

Score functions may also offer ``for_sample(outputs, index) -> (N,)``: sample ``index``'s
target applied to every row of a batched output (used by methods that re-run the model on
perturbed copies of one sample, e.g. ScoreCAM); see :class:`TargetScores`.
"""

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]

_INPUT_SIZE: ContextVar[tuple[int, ...] | None] = ContextVar(
    "shortcut_detect_input_size", default=None
)


def current_input_size() -> tuple[int, ...] | None:
    """Spatial size of the input being explained, while the engine runs (else ``None``).

    Lets reshape transforms infer a token grid from the image's shape.
    """
    return _INPUT_SIZE.get()


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
    input_gradients:
        With ``input_gradient=True``: per score set, the gradient w.r.t. the input.
    hessian_vector_products:
        With ``hessian_vector=True``: ``[s][l]`` is ``H a``, the Hessian of score set ``s``
        w.r.t. layer ``l``'s activation ``a`` times ``a`` (zeros where the score is linear).
    """

    outputs: Any
    activations: list[torch.Tensor]
    gradients: list[list[torch.Tensor]] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    input_size: tuple[int, ...] = ()
    score_fns: list[Any] = field(default_factory=list)
    input_gradients: list[torch.Tensor] = field(default_factory=list)
    hessian_vector_products: list[list[torch.Tensor]] = field(default_factory=list)


def classifier_logits(outputs: Any) -> torch.Tensor | None:
    """The class scores in a model's output, or ``None`` when there is no obvious one.

    A tensor is itself; Hugging Face-style outputs give their ``.logits`` (an object
    attribute or a dict key); a tuple or list starting with a tensor gives that tensor
    (``return_dict=False``). A list of per-image dicts (detection models) gives ``None``.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    return None


class TargetScores:
    """Per-sample targets (pytorch-grad-cam style callables on one sample's output).

    ``select`` picks what the targets read from the model's output (e.g.
    :func:`classifier_logits` for models returning ``.logits``); ``None`` passes it as is.
    """

    def __init__(
        self,
        targets: Sequence[Callable[[torch.Tensor], torch.Tensor]],
        select: Callable[[Any], Any] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.select = select

    def _outputs(self, outputs: Any) -> Any:
        return outputs if self.select is None else self.select(outputs)

    def __call__(self, outputs: Any) -> torch.Tensor:
        outputs = self._outputs(outputs)
        if len(self.targets) != len(outputs):
            raise ValueError(
                f"Got {len(self.targets)} targets for a batch of {len(outputs)}; give one "
                "target per sample (or a single target, which is used for every sample)."
            )
        return torch.stack([t(o).sum() for t, o in zip(self.targets, outputs)])

    def for_sample(self, outputs: Any, index: int) -> torch.Tensor:
        target = self.targets[index]
        return torch.stack([target(o).sum() for o in self._outputs(outputs)])


def _detach_output(output: Any, clone: bool = False) -> Any:
    """Detach every tensor of a (nested) output; ``clone`` also copies them (safe from later
    in-place operations)."""
    if isinstance(output, torch.Tensor):
        return output.detach().clone() if clone else output.detach()
    if isinstance(output, dict):
        return {key: _detach_output(value, clone) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_detach_output(value, clone) for value in output)
    return output


class CAMEngine:
    """Runs a model once with hooks on the target layers and returns what they saw.

    Parameters
    ----------
    model:
        Any ``nn.Module``. It is run in eval mode; every module's train/eval mode is
        restored after each call, and its ``requires_grad`` flags are never changed.
    target_layers:
        One layer or several, as modules or dotted paths.
    reshape_transform:
        Maps a non-spatial layer output (e.g. ViT tokens ``(B, N, C)``) to
        ``(B, C, *spatial)``; applied to activations and gradients alike.
    device:
        ``None`` uses the model's device; asking for CUDA (or MPS) where there is none
        raises :class:`~shortcut_detect.common.device.DeviceUnavailableError`.
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
        self.device = place_model(model, device)
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
    def _to_spatial(
        self, index: int, tensor: torch.Tensor, input_spatial_dims: int | None = None
    ) -> torch.Tensor:
        name = self.layer_names[index]
        if self.reshape_transform is not None:
            tensor = self.reshape_transform(tensor)
            if not isinstance(tensor, torch.Tensor) or tensor.ndim < 3:
                raise ValueError(
                    f"reshape_transform turned layer {name!r}'s output into "
                    f"{_describe(tensor)}; it must return (B, C, *spatial)."
                )
            return tensor
        _check_spatial_layout(name, self.target_layers[index], tensor, input_spatial_dims)
        return tensor

    def capture(
        self,
        inputs: torch.Tensor,
        score_fns: Sequence[ScoreFn] | None = None,
        *,
        score_from_outputs: Callable[[Any], Sequence[ScoreFn]] | None = None,
        need_gradients: bool = True,
        input_gradient: bool = False,
        hessian_vector: bool = False,
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
        input_gradient:
            Also the gradient w.r.t. the input (the graph is then recorded from the input,
            not from the first target layer).
        hessian_vector:
            Also Hessian-vector products ``H a`` (one double backward per score set).
        """
        if input_gradient:
            inputs = inputs.detach().requires_grad_(True)
        layer_count = len(self.target_layers)
        raw: list[torch.Tensor | None] = [None] * layer_count
        calls = [0] * layer_count
        grad_switched = [False]

        def make_hook(index: int) -> Callable[..., Any]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                calls[index] += 1
                if not isinstance(output, torch.Tensor):
                    if self.reshape_transform is not None and not need_gradients:
                        # e.g. a detection backbone's dict of maps, combined by the transform
                        raw[index] = _detach_output(output, clone=True)
                        return None
                    raise TypeError(
                        f"Layer {self.layer_names[index]!r} returns "
                        f"{type(output).__name__}, not a tensor; target a layer whose "
                        "output is a tensor (e.g. a sub-module of this one), or, with a "
                        "gradient-free method (EigenCAM, ScoreCAM, ...), pass a "
                        "reshape_transform that turns this output into (B, C, *spatial) "
                        "(e.g. fasterrcnn_reshape_transform for a detection backbone)."
                    )
                if not need_gradients:
                    # A copy: an in-place op downstream must not change what was captured.
                    raw[index] = output.detach().clone()
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

        with self._model_state(inputs):
            self._handles = [
                layer.register_forward_hook(make_hook(i))
                for i, layer in enumerate(self.target_layers)
            ]
            if need_gradients:
                # Fused attention kernels have no double backward; the math kernel does.
                attention = _math_attention() if hessian_vector else nullcontext()
                with torch.set_grad_enabled(input_gradient), attention:
                    outputs = self._forward(inputs)
            else:
                with torch.inference_mode():
                    outputs = self._forward(inputs)
            self._check_calls(calls)
            detached = _detach_output(outputs)
            spatial_dims = inputs.ndim - 2
            activations = [
                self._to_spatial(i, _detach_output(tensor), spatial_dims)
                for i, tensor in enumerate(raw)
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
            if not (grad_switched[0] or input_gradient) or any(
                t is None or not t.requires_grad for t in raw
            ):
                raise RuntimeError(
                    "No gradient can flow to the target layer: the model ran it under "
                    "torch.no_grad() or detached its output. Choose another layer."
                )
            leaves = [t for t in raw if t is not None]
            if input_gradient:
                leaves.insert(0, inputs)
            self._backward(capture, outputs, leaves, hessian_vector, input_gradient)
            return capture

    def _backward(
        self,
        capture: Capture,
        outputs: Any,
        leaves: list[torch.Tensor],
        hessian_vector: bool,
        input_gradient: bool,
    ) -> None:
        """Gradients (and Hessian-vector products) of each score set, into ``capture``."""
        score_fns = capture.score_fns
        with torch.enable_grad():
            for position, score_fn in enumerate(score_fns):
                scores = score_fn(outputs)
                if scores.ndim == 0:
                    scores = scores.reshape(1)
                last = position == len(score_fns) - 1
                try:
                    grads = torch.autograd.grad(
                        scores.sum(),
                        leaves,
                        retain_graph=hessian_vector or not last,
                        create_graph=hessian_vector,
                        allow_unused=True,
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
                if hessian_vector:
                    capture.hessian_vector_products.append(
                        self._hessian_vector(grads, leaves, retain_graph=not last)
                    )
                if input_gradient:
                    capture.input_gradients.append(grads[0].detach())
                    grads = grads[1:]
                capture.gradients.append(
                    [self._to_spatial(i, grad.detach()) for i, grad in enumerate(grads)]
                )
                capture.scores.append(scores.detach())

    def _hessian_vector(
        self,
        grads: Sequence[torch.Tensor],
        leaves: Sequence[torch.Tensor],
        retain_graph: bool,
    ) -> list[torch.Tensor]:
        """``H a`` per target layer from first-order gradients kept with their graph."""
        offset = len(leaves) - len(self.target_layers)
        layer_grads, layer_leaves = list(grads[offset:]), list(leaves[offset:])
        curved = [i for i, grad in enumerate(layer_grads) if grad.requires_grad]
        products = [torch.zeros_like(leaf.detach()) for leaf in layer_leaves]
        if curved:
            second = torch.autograd.grad(
                [layer_grads[i] for i in curved],
                [layer_leaves[i] for i in curved],
                grad_outputs=[layer_leaves[i].detach() for i in curved],
                retain_graph=retain_graph,
                allow_unused=True,
            )
            for i, value in zip(curved, second):
                if value is not None:
                    products[i] = value.detach()
        return [self._to_spatial(i, product) for i, product in enumerate(products)]

    @contextmanager
    def _model_state(self, inputs: torch.Tensor) -> Iterator[None]:
        """Eval mode inside; hooks removed, grad mode and every module's mode restored after.

        Modes are restored module by module, so a mixed state (e.g. a training model with
        frozen BatchNorm) comes back exactly. Reshape transforms called inside can read the
        input size (:func:`current_input_size`).
        """
        model = self.model
        modes = saved_modes(model)
        grad_mode = torch.is_grad_enabled()
        size_token = _INPUT_SIZE.set(tuple(int(s) for s in inputs.shape[2:]))
        try:
            if any(training for _, training in modes):
                model.eval()
            yield
        finally:
            _INPUT_SIZE.reset(size_token)
            self.close()
            torch.set_grad_enabled(grad_mode)
            restore_modes(modes)

    # -- extra forward passes (gradient-free methods) ------------------------------------
    def run(self, inputs: torch.Tensor) -> Any:
        """The model's output for ``inputs`` in eval mode under ``torch.inference_mode``."""
        with self._model_state(inputs), torch.inference_mode():
            return self._forward(inputs)

    def run_replacing(
        self,
        inputs: torch.Tensor,
        layer_index: int,
        replace: Callable[[torch.Tensor], torch.Tensor],
    ) -> Any:
        """Run the model with target layer ``layer_index``'s output swapped for ``replace(output)``.

        The raw layer output (before any reshape transform) is passed to ``replace``, whose
        result goes downstream; it may have more rows than ``inputs`` (e.g. ablated copies of
        one sample), as long as the layers after it treat rows independently.
        """

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            return replace(output)

        layer = self.target_layers[layer_index]
        with self._model_state(inputs), torch.inference_mode():
            self._handles = [layer.register_forward_hook(hook)]
            return self._forward(inputs)

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


def _math_attention() -> AbstractContextManager[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


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


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


_LAYOUTS = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
_TOKEN_HINT = (
    "pass reshape_transform=shortcut_detect.cam.vit_reshape_transform for ViT-style tokens "
    "(B, N, C) (class/register tokens are dropped, the grid is inferred), or "
    "swin_reshape_transform for Swin-style (B, H, W, C) outputs"
)


def _check_spatial_layout(
    name: str, module: nn.Module, tensor: torch.Tensor, input_spatial_dims: int | None
) -> None:
    """Refuse layer outputs that are not ``(B, C, *spatial)`` when no transform was given."""
    shape = tuple(tensor.shape)
    if tensor.ndim < 3:
        raise ValueError(
            f"Layer {name!r} outputs shape {shape}, which has no spatial axes. Choose a "
            f"convolutional layer, or {_TOKEN_HINT}."
        )
    if input_spatial_dims is not None and tensor.ndim != input_spatial_dims + 2:
        raise ValueError(
            f"Layer {name!r} outputs shape {shape}, but inputs with {input_spatial_dims} "
            f"spatial axes need a {_LAYOUTS.get(input_spatial_dims, '(B, C, *spatial)')} "
            "layer output. "
            f"This looks like a transformer layer: {_TOKEN_HINT}."
        )
    normalises_last_axis = isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (
        shape[-1],
    )
    if tensor.ndim == 4 and (normalises_last_axis or "swin" in type(module).__name__.lower()):
        raise ValueError(
            f"Layer {name!r} ({type(module).__name__}) outputs shape {shape}, channels last "
            "(B, H, W, C). Pass reshape_transform=shortcut_detect.cam.swin_reshape_transform."
        )
