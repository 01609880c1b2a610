"""Guided backpropagation (Springenberg et al. 2015) and the pieces of Guided Grad-CAM.

At every ``nn.ReLU`` module only positive gradients flow back (and, as in any ReLU, only
where the input was positive). The patch is a forward hook that puts a gradient hook on
each ReLU output; both are removed when the call ends, also when it raises, so the model
is never modified (in-place ReLUs included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import prepare_inputs
from shortcut_detect.common.device import place_model
from shortcut_detect.common.modes import eval_mode

__all__ = [
    "GuidedBackpropReLUModel",
    "guided_backprop",
    "guided_backprop_for_scores",
    "guided_relus",
]

ScoreFn = Callable[[Any], torch.Tensor]


def _positive_part(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp_min(0)


def _guide(_module: nn.Module, _inputs: Any, output: Any) -> None:
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(_positive_part)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Inside the block, gradients through ``model``'s ``nn.ReLU`` modules are guided.

    Yields the number of ReLU modules patched. Functional ReLUs (``F.relu``) are left
    alone, as in pytorch-grad-cam and captum.
    """
    handles = []
    try:
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                handles.append(module.register_forward_hook(_guide))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop(
    model: nn.Module, inputs: torch.Tensor, score_fns: Sequence[ScoreFn]
) -> list[torch.Tensor]:
    """Guided-backpropagation gradients of each score set w.r.t. the input, from one forward.

    Parameters
    ----------
    model:
        Run in eval mode; its mode and ``requires_grad`` flags are restored, no ``.grad``
        is stored, and no hook outlives the call.
    inputs:
        ``(B, C, *spatial)`` prepared input (it is not modified).
    score_fns:
        Each maps the model output to ``(B,)`` scores.

    Returns
    -------
    list of torch.Tensor
        Per score function, ``(B, C, *spatial)`` gradients (same layout as ``inputs``).
    """
    score_fns = list(score_fns)
    parameters = list(model.parameters())
    flags = [param.requires_grad for param in parameters]
    leaf = inputs.detach().clone().requires_grad_(True)
    try:
        for param in parameters:
            param.requires_grad_(False)
        with eval_mode(model), guided_relus(model), torch.enable_grad():
            outputs = model(leaf.clone())  # a non-leaf: in-place ops on the input are allowed
            gradients = []
            for position, score_fn in enumerate(score_fns):
                scores = score_fn(outputs)
                (grad,) = torch.autograd.grad(
                    scores.sum(), leaf, retain_graph=position < len(score_fns) - 1
                )
                gradients.append(grad.detach())
        return gradients
    finally:
        for param, flag in zip(parameters, flags):
            param.requires_grad_(flag)


def guided_backprop_for_scores(
    model: nn.Module, batch: torch.Tensor, score_fns: Sequence[ScoreFn]
) -> list[torch.Tensor]:
    """Per-pixel guided-backpropagation magnitude for each score set: ``(B, *spatial)``, >= 0.

    The magnitude at a pixel is the largest absolute gradient over the input channels
    (as in Simonyan et al.'s saliency maps). Guided Grad-CAM is this times the Grad-CAM map.
    """
    return [grad.abs().amax(dim=1) for grad in guided_backprop(model, batch, score_fns)]


class GuidedBackpropReLUModel:
    """pytorch-grad-cam's guided backpropagation front: ``gb_model(input_img, target_category)``.

    Parameters
    ----------
    model:
        The model; it is never modified (pytorch-grad-cam swaps its ReLU modules).
    device:
        ``None`` uses the model's device; asking for CUDA or MPS where there is none raises
        :class:`~shortcut_detect.common.device.DeviceUnavailableError`.
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None) -> None:
        self.model = model
        self.device = place_model(model, device)

    def forward(self, input_img: torch.Tensor) -> Any:
        """The model's output."""
        return self.model(input_img.to(self.device))

    def __call__(
        self, input_img: torch.Tensor | np.ndarray, target_category: int | None = None
    ) -> np.ndarray:
        """Guided gradients of the first image's score for ``target_category``.

        Returns a float32 ``(H, W, C)`` array; ``target_category=None`` explains the
        predicted class.
        """
        inputs = prepare_inputs(input_img, self.device)

        def score(outputs: Any) -> torch.Tensor:
            if not isinstance(outputs, torch.Tensor):
                raise TypeError(
                    f"The model returns {type(outputs).__name__}; guided backpropagation "
                    "needs a model that returns a tensor of scores."
                )
            logits = outputs.reshape(outputs.shape[0], -1)
            category = int(logits[0].argmax()) if target_category is None else target_category
            if not -logits.shape[1] <= category < logits.shape[1]:
                raise ValueError(
                    f"target_category {category} is out of range for {logits.shape[1]} classes"
                )
            return logits[:1, category]

        (grad,) = guided_backprop(self.model, inputs, [score])
        return np.ascontiguousarray(grad[0].movedim(0, -1).cpu().numpy(), dtype=np.float32)
