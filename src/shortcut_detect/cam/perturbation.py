"""Gradient-free CAM methods that re-run the model: ScoreCAM and AblationCAM.

Both run under ``torch.inference_mode`` and batch their extra forward passes
(``batch_size`` per pass). Work that cannot change the result is skipped:

* ScoreCAM: a channel that is constant over the layer gives an all-zero mask, so all
  such channels share one forward pass of a zero image; channels whose normalised maps
  are identical share one masked forward pass. The masked passes run on a copy of the
  model with BatchNorm folded into the convolutions (on oneDNN tensors on CPU where every
  operation supports them, else in channels-last memory), checked against the original
  model's scores on the call's own inputs before use.
* AblationCAM: the layers before the target layer run once per chunk of ablated
  channels (on the one sample) instead of once per channel; only the layers after it
  see the ablated copies. Checked against the unablated score on the first chunk; a
  model that mixes rows falls back to repeating the input.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shortcut_detect.cam.base import BaseCAM, eigen_projection
from shortcut_detect.cam.engine import CAMEngine, Capture, ReshapeTransform
from shortcut_detect.cam.layers import LayerSpec
from shortcut_detect.common.validation import positive_int

__all__ = ["AblationCAM", "PerturbationCAM", "ScoreCAM", "channel_layout"]

_UPSAMPLE_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _scores_match(new: torch.Tensor, reference: torch.Tensor) -> bool:
    new, reference = new.detach().float().cpu(), reference.detach().float().cpu()
    if new.shape != reference.shape:
        return False
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return bool(torch.allclose(new, reference, rtol=1e-4, atol=1e-4 * scale))


class _MkldnnConv2d(nn.Module):
    """A 2-D convolution on oneDNN tensors with its weight reordered once (inference only)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        padding, stride, dilation, groups = self.geometry
        weight = conv.weight.detach().contiguous().to_mkldnn()
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight, padding, stride, dilation, groups
        )
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.bias = bias.detach().contiguous().to_mkldnn()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        padding, stride, dilation, groups = self.geometry
        return torch.mkldnn_convolution(
            inputs, self.weight, self.bias, padding, stride, dilation, groups
        )


class _DenseLinear(nn.Module):
    """A linear layer that takes oneDNN or dense inputs and returns a dense tensor."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs.to_dense() if inputs.is_mkldnn else inputs)


def _mkldnn_model(folded: nn.Module) -> nn.Module | None:
    """A copy of a (BatchNorm-folded) model whose 2-D convolutions run on oneDNN tensors.

    Activations stay in oneDNN's blocked layout between layers, which saves the layout
    conversions of every convolution (most of the gain at small images). ``None`` when
    oneDNN is unavailable or a convolution or parameter does not qualify; a model with
    an operation oneDNN tensors do not support fails on its first run and is not used.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in folded.parameters()):
        return None
    convolutions = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions or any(
        isinstance(m.padding, str) or m.padding_mode != "zeros" for m in convolutions
    ):
        return None
    duplicate = copy.deepcopy(folded)
    for name, module in list(duplicate.named_modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parent, _, leaf = name.rpartition(".")
            owner = duplicate.get_submodule(parent) if parent else duplicate
            fast = _MkldnnConv2d(module) if isinstance(module, nn.Conv2d) else _DenseLinear(module)
            setattr(owner, leaf, fast)
    return duplicate


def _dense(output: Any) -> Any:
    """Every oneDNN tensor of a (nested) output as a dense tensor."""
    if isinstance(output, torch.Tensor):
        return output.to_dense() if output.is_mkldnn else output
    if isinstance(output, dict):
        return {key: _dense(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_dense(value) for value in output)
    return output


class _InferenceCopy:
    """Fast copies of a model for many inference passes, with BatchNorm folded.

    Two variants, tried in this order: 2-D convolutions on oneDNN tensors (CPU), and
    channels-last memory. Rebuilt when the model's parameters, buffers or modules change;
    each variant is validated against the original model's scores on every call, and one
    that disagrees (or fails) is dropped.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._variants: list[tuple[str, Callable[[torch.Tensor], Any]]] = []
        self.used: str | None = None
        """The variant the last call used: ``"onednn"``, ``"channels_last"``, ``"folded"`` or
        ``None`` (the original model)."""

    @staticmethod
    def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
        tensors = [*model.parameters(), *model.buffers()]
        return (
            tuple(id(module) for module in model.modules()),
            tuple((id(t), t._version, t.dtype, t.device) for t in tensors),
        )

    def _build(self, model: nn.Module, inputs: torch.Tensor) -> None:
        from torch.fx.experimental.optimization import fuse

        duplicate = copy.deepcopy(model).eval()  # the original's modes stay untouched
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                folded = fuse(duplicate, inplace=True)
        except Exception:
            folded = copy.deepcopy(model).eval()  # not traceable: unfolded
        folded.eval()
        for param in folded.parameters():
            param.requires_grad_(False)
        self._variants = []
        images = inputs.ndim == 4 and any(isinstance(m, nn.Conv2d) for m in folded.modules())
        if images and inputs.device.type == "cpu":
            try:
                mkldnn = _mkldnn_model(folded)
            except Exception:
                mkldnn = None
            if mkldnn is not None:
                self._variants.append(("onednn", _forward_on(mkldnn, lambda x: x.to_mkldnn())))
        if images:
            folded = folded.to(memory_format=torch.channels_last)
            layout = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
            self._variants.append(("channels_last", _forward_on(folded, layout)))
        else:
            self._variants.append(("folded", _forward_on(folded, lambda x: x)))

    def runner(
        self,
        engine: CAMEngine,
        capture: Capture,
        inputs: torch.Tensor,
        score_fn: Callable[[Any], torch.Tensor],
    ) -> Callable[[torch.Tensor], Any]:
        """The first fast variant that reproduces ``capture``'s scores, else the engine's run."""
        key = self._fingerprint(engine.model)
        if key != self._key:
            self._key = key
            try:
                self._build(engine.model, inputs)
            except Exception:
                self._variants = []
        reference = score_fn(capture.outputs)
        for name, forward in list(self._variants):
            try:
                # torch.fx prints the failing line of a traced forward; the failure is expected
                with contextlib.redirect_stderr(io.StringIO()):
                    if _scores_match(score_fn(forward(inputs)), reference):
                        self.used = name
                        return forward
            except Exception:
                pass
            self._variants.remove((name, forward))
        self.used = None
        return engine.run


def _forward_on(
    model: nn.Module, layout: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], Any]:
    """Inference forward of ``model`` on inputs converted by ``layout``, dense outputs."""

    def forward(inputs: torch.Tensor) -> Any:
        with torch.inference_mode():
            return _dense(model(layout(inputs)))

    return forward


class PerturbationCAM(BaseCAM):
    """Base of the gradient-free methods that re-run the model on perturbed copies of the input.

    Validates ``batch_size`` (perturbed copies per forward pass) and requires the input
    batch in :meth:`channel_weights`; subclasses define :meth:`perturbed_weights` and run
    their copies through :meth:`perturbed_runner` (the fast model copy when ``accelerate``).

    Parameters
    ----------
    model, target_layers, reshape_transform, device:
        As for :class:`~shortcut_detect.cam.base.BaseCAM`.
    batch_size:
        Perturbed copies per forward pass.
    accelerate:
        Run the perturbed copies on a BatchNorm-folded copy of the model (checked against
        the original on every call). ``False`` uses the model as is.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        batch_size: int = 16,
        accelerate: bool = True,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, device=device, **kwargs)
        self.batch_size = positive_int("batch_size", batch_size)
        self.accelerate = bool(accelerate)
        self._inference_copy = _InferenceCopy()

    def channel_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        *,
        capture: Capture,
        score_index: int = 0,
        layer_index: int = 0,
        inputs: torch.Tensor | None = None,
        **context: Any,
    ) -> torch.Tensor:
        if inputs is None:
            raise ValueError(
                f"{type(self).__name__} needs the input batch: call layer_maps(..., inputs=batch)"
            )
        score_fn = capture.score_fns[score_index]
        return self.perturbed_weights(activations, inputs, capture, score_fn, layer_index)

    def perturbed_weights(
        self,
        activations: torch.Tensor,
        inputs: torch.Tensor,
        capture: Capture,
        score_fn: Any,
        layer_index: int,
    ) -> torch.Tensor:
        """``(B, C)`` weights from the scores of perturbed copies of ``inputs``.

        ``score_fn`` scores outputs for the call's targets (with ``for_sample``);
        ``layer_index`` is the target layer ``activations`` come from.
        """
        raise NotImplementedError

    def perturbed_runner(
        self, capture: Capture, inputs: torch.Tensor, score_fn: Callable[[Any], torch.Tensor]
    ) -> Callable[[torch.Tensor], Any]:
        """Forward function for the perturbed copies: the fast copy's when it may be used."""
        if self.accelerate:
            return self._inference_copy.runner(self.engine, capture, inputs, score_fn)
        return self.engine.run


class ScoreCAM(PerturbationCAM):
    """Score-CAM (Wang et al. 2020): each channel weighted by the score of the image it masks.

    The weight of channel ``k`` is the softmax, over channels, of the target score of the
    input multiplied by channel ``k``'s activation, upsampled (bilinear, corners aligned)
    and min-max scaled to [0, 1], as in pytorch-grad-cam.

    Parameters
    ----------
    model, target_layers, reshape_transform, device:
        As for :class:`~shortcut_detect.cam.base.BaseCAM`.
    batch_size:
        Masked images per forward pass (pytorch-grad-cam's default, 16).
    accelerate:
        Run the masked passes on a BatchNorm-folded copy of the model (convolutions on
        oneDNN tensors on CPU, else channels-last memory; checked against the original on
        every call). ``False`` uses the model as is.
    """

    def perturbed_weights(
        self,
        activations: torch.Tensor,
        inputs: torch.Tensor,
        capture: Capture,
        score_fn: Any,
        layer_index: int,
    ) -> torch.Tensor:
        run = self.perturbed_runner(capture, inputs, score_fn)
        zero_output: list[Any] = []
        weights = [
            torch.softmax(
                self._sample_scores(
                    activations[b], inputs[b : b + 1], b, run, score_fn, zero_output
                ),
                dim=0,
            )
            for b in range(activations.shape[0])
        ]
        return torch.stack(weights).to(activations.device, activations.dtype)

    def _sample_scores(
        self,
        activations: torch.Tensor,
        sample: torch.Tensor,
        index: int,
        run: Callable[[torch.Tensor], Any],
        score_fn: Any,
        zero_output: list[Any],
    ) -> torch.Tensor:
        """Target score of sample ``index`` masked by each channel: ``(C,)`` float32."""
        channels = activations.shape[0]
        acts = activations.detach().float()
        flat = acts.reshape(channels, -1)
        low, high = flat.min(dim=1).values, flat.max(dim=1).values
        varying = high > low
        scores = torch.empty(channels, dtype=torch.float32)
        if not bool(varying.all()):
            # A constant channel gives an all-zero mask: one pass of a zero image serves all.
            if not zero_output:
                zero_output.append(run(torch.zeros_like(sample)))
            scores[~varying.cpu()] = score_fn.for_sample(zero_output[0], index).float().cpu()
        kept = varying.nonzero().squeeze(1)
        if kept.numel() == 0:
            return scores
        # Channels with the same normalised map mask the image identically.
        shapes = (flat[kept] - low[kept, None]) / (high - low)[kept, None]
        _, inverse = torch.unique(shapes, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), channels, dtype=torch.long)
        first = first.scatter_reduce(0, inverse.cpu(), kept.cpu(), reduce="amin")
        size = tuple(sample.shape[2:])
        mode = _UPSAMPLE_MODES[len(size)]
        unique_scores = []
        for chunk in first.split(self.batch_size):
            upsampled = F.interpolate(
                acts[chunk.to(acts.device)].unsqueeze(0), size=size, mode=mode, align_corners=True
            )[0]
            spread = upsampled.reshape(len(chunk), -1)
            chunk_low = spread.min(dim=1).values.reshape(-1, *([1] * len(size)))
            chunk_high = spread.max(dim=1).values.reshape(-1, *([1] * len(size)))
            masks = (upsampled - chunk_low) / (chunk_high - chunk_low + 1e-8)
            masked = sample * masks.unsqueeze(1).to(sample.dtype)
            unique_scores.append(score_fn.for_sample(run(masked), index).float().cpu())
        scores[kept.cpu()] = torch.cat(unique_scores)[inverse.cpu()]
        return scores


def channel_layout(
    raw_shape: Sequence[int], reshape_transform: ReshapeTransform | None
) -> tuple[int, torch.Tensor]:
    """Which axis of a layer's raw output holds channel ``k`` of the reshaped activation.

    Returns ``(axis, coordinates)``: channel ``k`` of ``reshape_transform(output)`` is
    ``output.select(axis, coordinates[k])``. Found by passing element indices through the
    transform, so any transform that only rearranges (and drops) elements works.
    """
    raw_shape = tuple(int(s) for s in raw_shape)
    if reshape_transform is None:
        return 1, torch.arange(raw_shape[1])
    numel = math.prod(raw_shape[1:])
    index = torch.arange(numel, dtype=torch.float64).reshape(1, *raw_shape[1:])
    problem = (
        "AblationCAM ablates channels in the layer's own output, so it must know which axis "
        "of that output holds the channels; "
    )
    try:
        mapped = reshape_transform(index)
    except Exception as error:
        raise ValueError(
            f"{problem}the reshape_transform failed on a probe of shape {raw_shape}: {error}"
        ) from error
    if (
        not isinstance(mapped, torch.Tensor)
        or mapped.ndim < 3
        or not torch.equal(mapped, mapped.round())
        or bool((mapped < 0).any())
        or bool((mapped >= numel).any())
    ):
        raise ValueError(
            f"{problem}the reshape_transform does more than rearrange elements (it interpolates "
            "or combines them). Use a transform that only reshapes/permutes, or another method."
        )
    channels = mapped.shape[1]
    positions = mapped[0].reshape(channels, -1).long().numpy()
    for axis, coords in enumerate(np.unravel_index(positions, raw_shape[1:])):
        constant = (coords == coords[:, :1]).all()
        if constant and len(np.unique(coords[:, 0])) == channels:
            return axis + 1, torch.from_numpy(np.ascontiguousarray(coords[:, 0]))
    raise ValueError(
        f"{problem}after the reshape_transform no single axis of the output {raw_shape} holds "
        "each channel. Use a transform that keeps the channel axis intact."
    )


class AblationCAM(PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): weight = relative score drop when a channel is zeroed.

    ``w_k = (y - y_k) / y`` where ``y`` is the target score and ``y_k`` the score with
    channel ``k`` of the layer's output set to zero (``(y - y_k)`` when ``y == 0``). For a
    score close to 0 the weights are dominated by rounding: explain a class the model
    scores clearly.

    pytorch-grad-cam sets the channel to zero only when the activation's minimum is 0
    (e.g. after a ReLU), and otherwise to a large negative value that also grows with the
    channel's position in its batch; we always use zero, as in the paper. The maps are
    the same for layers after a ReLU.

    Parameters
    ----------
    model, target_layers, reshape_transform, device:
        As for :class:`~shortcut_detect.cam.base.BaseCAM`.
    ablation_layer:
        Accepted for compatibility and ignored: channels are zeroed in the layer's own
        output (for token layers too, via ``reshape_transform``).
    batch_size:
        Ablated copies per forward pass.
    ratio_channels_to_ablate:
        Fraction in (0, 1]: below 1, only the channels with the most and the least overlap
        with the EigenCAM mask are ablated (pytorch-grad-cam's experimental speed-up); the
        others get weight 0.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        ablation_layer: Any = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        # The ablated copies are made inside the model (run_replacing), not on a fast copy.
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            batch_size=batch_size,
            accelerate=False,
            device=device,
            **kwargs,
        )
        if ablation_layer is not None:
            warnings.warn(
                "AblationCAM ignores ablation_layer: channels are set to zero in the target "
                "layer's output (reshape_transform tells which axis holds them).",
                UserWarning,
                stacklevel=2,
            )
        if not 0 < ratio_channels_to_ablate <= 1:
            raise ValueError(
                f"ratio_channels_to_ablate must be in (0, 1], got {ratio_channels_to_ablate}"
            )
        self.ratio_channels_to_ablate = float(ratio_channels_to_ablate)
        self._layouts: dict[tuple[int, ...], tuple[int, torch.Tensor]] = {}
        self._rows_independent: dict[int, bool] = {}

    def _layout(self, raw_shape: Sequence[int]) -> tuple[int, torch.Tensor]:
        key = tuple(raw_shape[1:])
        if key not in self._layouts:
            self._layouts[key] = channel_layout((1, *key), self.reshape_transform)
        return self._layouts[key]

    def channels_to_ablate(self, activations: torch.Tensor) -> torch.Tensor:
        """Channel indices to ablate for one sample's ``(C, *spatial)`` activation."""
        channels = activations.shape[0]
        if self.ratio_channels_to_ablate >= 1:
            return torch.arange(channels)
        projection = eigen_projection(activations[None].float())[0].abs()
        projection = projection - projection.min()
        mask = (projection / projection.max().clamp_min(1e-30)) > 0.01
        flat = activations.float().abs().reshape(channels, -1)
        flat = flat - flat.min(dim=1, keepdim=True).values
        flat = flat / flat.max(dim=1, keepdim=True).values.clamp_min(1e-30)
        overlap = (flat * mask.reshape(1, -1)).sum(dim=1) / flat.sum(dim=1).clamp_min(1e-30)
        order = torch.argsort(overlap.cpu())
        count = int(channels * self.ratio_channels_to_ablate)
        chosen = torch.cat([order.flip(0)[:count], order[:count]])
        return torch.unique(chosen)

    def perturbed_weights(
        self,
        activations: torch.Tensor,
        inputs: torch.Tensor,
        capture: Capture,
        score_fn: Any,
        layer_index: int,
    ) -> torch.Tensor:
        original = score_fn(capture.outputs).detach().float().cpu().reshape(-1)
        batch, channels = activations.shape[:2]
        weights = torch.zeros(batch, channels)
        for b in range(batch):
            chosen = self.channels_to_ablate(activations[b])
            ablated = torch.full((channels,), float(original[b]))
            ablated[chosen] = self._ablated_scores(
                inputs[b : b + 1], b, layer_index, chosen, score_fn, original[b]
            )
            drop = original[b] - ablated
            weights[b] = drop / original[b] if original[b] != 0 else drop
        return weights.to(activations.device, activations.dtype)

    def _ablated_scores(
        self,
        sample: torch.Tensor,
        index: int,
        layer_index: int,
        channels: torch.Tensor,
        score_fn: Any,
        reference: torch.Tensor,
    ) -> torch.Tensor:
        scores = []
        for chunk in channels.split(self.batch_size):
            rows = chunk
            independent = self._rows_independent.get(layer_index)
            check = independent is None
            if independent is not False:
                if check:  # an unablated row first: the expanded run must reproduce `reference`
                    rows = torch.cat([torch.tensor([-1]), chunk])
                try:
                    result = score_fn.for_sample(self._run_rows(sample, layer_index, rows), index)
                    valid = result.shape[0] == rows.shape[0] and (
                        not check or _scores_match(result[:1], reference.reshape(1))
                    )
                except Exception:
                    valid = False
                if check:
                    self._rows_independent[layer_index] = valid
                if valid:
                    scores.append(result[1:] if check else result)
                    continue
                rows = chunk
            repeated = sample.expand(rows.shape[0], *sample.shape[1:])
            scores.append(score_fn.for_sample(self._run_rows(repeated, layer_index, rows), index))
        return torch.cat([s.detach().float().cpu() for s in scores])

    def _run_rows(self, inputs: torch.Tensor, layer_index: int, rows: torch.Tensor) -> Any:
        """Forward with row ``i`` of the layer output ablated at channel ``rows[i]`` (-1: none)."""
        count = rows.shape[0]

        def replace(output: torch.Tensor) -> torch.Tensor:
            axis, coordinates = self._layout(output.shape)
            if output.shape[0] == count:
                ablated = output.clone()
            elif output.shape[0] == 1:
                ablated = output.expand(count, *output.shape[1:]).clone()
            else:
                raise RuntimeError(
                    f"layer output has {output.shape[0]} rows, expected 1 or {count}"
                )
            selected = rows >= 0
            targets = coordinates[rows[selected]].to(ablated.device)
            row_index = torch.arange(count, device=ablated.device)[selected.to(ablated.device)]
            ablated.movedim(axis, 1)[row_index, targets] = 0
            return ablated

        return self.engine.run_replacing(inputs, layer_index, replace)
