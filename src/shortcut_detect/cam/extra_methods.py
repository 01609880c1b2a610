"""Newer CAM methods from pytorch-grad-cam 1.5.7 and torchcam 0.5, on the shared engine.

From pytorch-grad-cam: ShapleyCAM, FEM, RandomCAM, KPCA_CAM, SegEigenCAM, FinerCAM,
RefineCAM. From torchcam: CAM (final linear layer's weights), SmoothGradCAMpp and
:func:`fuse_cams`. Formulas (and epsilons) follow the defining library, so normalised maps
agree with it; where that library does something surprising the docstring says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.base import (
    BaseCAM,
    GradCAM,
    centred_positions,
    eigen_projection,
    principal_direction,
    require_gradients,
    spatial_mean,
)
from shortcut_detect.cam.engine import (
    Capture,
    ReshapeTransform,
    ScoreFn,
    TargetScores,
    minmax_normalize,
    upsample,
)
from shortcut_detect.cam.layers import LayerSpec, resolve_layer
from shortcut_detect.cam.methods import GradCAMPlusPlus
from shortcut_detect.cam.targets import ClassifierOutputTarget, FinerWeightedTarget
from shortcut_detect.common.validation import positive_int, positive_number

__all__ = [
    "CAM",
    "FEM",
    "KPCA_CAM",
    "FinerCAM",
    "RandomCAM",
    "RefineCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMpp",
    "fuse_cams",
]


def _spatial_axes(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, tensor.ndim))


def _broadcast(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return weights.reshape(*weights.shape, *([1] * (like.ndim - weights.ndim)))


def _categories(capture: Capture, score_index: int, method: str) -> list[int]:
    """Class index of each sample's target (methods that index weights by class)."""
    score_fn = capture.score_fns[score_index]
    targets = getattr(score_fn, "targets", None)
    if targets is None or not all(isinstance(t, ClassifierOutputTarget) for t in targets):
        raise ValueError(
            f"{method} weights channels by class, so targets must be ClassifierOutputTarget "
            "(or None for the predicted class)."
        )
    return [t.category for t in targets]


class ShapleyCAM(BaseCAM):
    """ShapleyCAM (Cai 2025): channel weight = mean of ``g - H a / 2``.

    ``g`` is the gradient of the score w.r.t. the activation ``a`` and ``H a`` the
    Hessian-vector product, both from one forward pass (a double backward to the layer
    only). With a piecewise-linear head (ReLU, pooling, linear) and a logit target, ``H a``
    is 0 and the map is Grad-CAM's; use :class:`ClassifierOutputReST` (the paper's choice)
    for a curved score.
    """

    capture_options = {"hessian_vector": True}  # noqa: RUF012

    def channel_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        *,
        capture: Capture,
        layer_index: int = 0,
        score_index: int = 0,
        **context: Any,
    ) -> torch.Tensor:
        grads = require_gradients(self, gradients)
        hessian_vector = capture.hessian_vector_products[score_index][layer_index]
        return spatial_mean(grads - 0.5 * hessian_vector)


class FEM(BaseCAM):
    """Feature Explanation Method (Fuad et al. 2020): gradient-free channel weights.

    The weight of a channel is the fraction of its positions above ``mean + k * std`` of
    that channel (population std); no target is used.

    Parameters
    ----------
    k:
        How many standard deviations above the mean count as a strong response.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        k: float = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.k = float(k)

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        axes = _spatial_axes(activations)
        mean = activations.mean(dim=axes, keepdim=True)
        std = activations.std(dim=axes, keepdim=True, correction=0)
        return (activations > mean + self.k * std).to(activations.dtype).mean(dim=axes)


class RandomCAM(BaseCAM):
    """Sanity baseline: channel weights drawn uniformly from [-1, 1].

    A method whose maps resemble RandomCAM's explains nothing. Needs no backward pass.

    Parameters
    ----------
    random_state:
        Seed or ``numpy.random.Generator``; ``None`` draws from numpy's global generator,
        as pytorch-grad-cam does (so ``np.random.seed`` gives the same maps as it).
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        random_state: int | np.random.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.random_state = random_state
        self._generator = None if random_state is None else np.random.default_rng(random_state)

    def channel_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, **context: Any
    ) -> torch.Tensor:
        size = tuple(activations.shape[:2])
        draw = np.random.uniform if self._generator is None else self._generator.uniform
        weights = draw(-1, 1, size=size)
        return torch.as_tensor(weights, dtype=activations.dtype, device=activations.device)


class KPCA_CAM(BaseCAM):
    """KPCA-CAM (Karmani et al. 2024): first kernel principal component of the activations.

    Per sample, the centred channel vectors at each position go through scikit-learn's
    ``KernelPCA(n_components=1)``; the sign is scikit-learn's deterministic choice (as in
    pytorch-grad-cam, so the maps agree with it). Needs scikit-learn (``analysis`` extra).

    Parameters
    ----------
    kernel, gamma:
        Passed to ``sklearn.decomposition.KernelPCA``.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.kernel = kernel
        self.gamma = gamma

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        try:
            from sklearn.decomposition import KernelPCA
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError(
                "KPCA_CAM needs scikit-learn: pip install 'shortcut-detect[analysis]'"
            ) from error
        batch, channels = activations.shape[:2]
        values = torch.nan_to_num(activations.detach().float(), nan=0.0).cpu().numpy()
        projections = []
        for sample in values.reshape(batch, channels, -1):
            points = sample.T - sample.T.mean(axis=0)
            kpca = KernelPCA(n_components=1, kernel=self.kernel, gamma=self.gamma)
            projections.append(kpca.fit_transform(points)[:, 0])
        result = torch.from_numpy(np.stack(projections).astype(np.float32))
        return result.reshape(batch, *activations.shape[2:]).to(activations.device)


class SegEigenCAM(BaseCAM):
    """Seg-Eigen-CAM (Chung & Ying 2025): principal component of ``|gradient| * activation``.

    The sign of the component is chosen so the larger-magnitude extreme is positive
    (``-p`` when ``|min p| > |max p|``), as in the paper and pytorch-grad-cam.
    """

    def cam_image(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        eigen_smooth: bool = False,
        **context: Any,
    ) -> torch.Tensor:
        weighted = require_gradients(self, gradients).abs() * activations
        centred = centred_positions(weighted)
        projection = (centred @ principal_direction(centred).unsqueeze(-1)).squeeze(-1)
        flip = projection.min(dim=1).values.abs() > projection.max(dim=1).values.abs()
        projection = torch.where(flip[:, None], -projection, projection)
        return projection.to(activations.dtype).reshape(
            activations.shape[0], *activations.shape[2:]
        )


class CAM(BaseCAM):
    """CAM (Zhou et al. 2016): activations weighted by the final linear layer's class weights.

    No backward pass (runs under ``torch.inference_mode``). As in torchcam, the map is not
    clipped at 0 before min-max scaling (the original CAM has no ReLU). Targets must be
    :class:`ClassifierOutputTarget` (or ``None`` for the predicted class).

    Parameters
    ----------
    model, target_layers, reshape_transform:
        As for :class:`BaseCAM`; the layer is the one global pooling reads.
    fc_layer:
        The final ``nn.Linear`` (module or dotted path). ``None`` finds the model's only
        ``nn.Linear`` (an error if there are several).
    """

    uses_gradients = False
    relu_maps = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        fc_layer: LayerSpec | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if fc_layer is None:
            linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            if len(linear) != 1:
                found = ", ".join(linear) if linear else "none"
                raise ValueError(
                    f"CAM needs the final linear layer; found {len(linear)} nn.Linear "
                    f"modules ({found}). Pass fc_layer=..."
                )
            fc_layer = linear[0]
        _, module = resolve_layer(model, fc_layer)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"fc_layer must have a weight matrix, got {type(module).__name__}")
        self.fc_layer = module

    def channel_weights(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor | None,
        *,
        capture: Capture,
        score_index: int = 0,
        **context: Any,
    ) -> torch.Tensor:
        weight = self.fc_layer.weight.detach()
        weight = weight.reshape(weight.shape[0], -1)  # a 1x1 convolution head works too
        if weight.shape[1] != activations.shape[1]:
            raise ValueError(
                f"The fc layer takes {weight.shape[1]} features but the target layer has "
                f"{activations.shape[1]} channels; target the layer the global pooling reads."
            )
        classes = _categories(capture, score_index, "CAM")
        return weight[classes].to(activations.device, activations.dtype)


class SmoothGradCAMpp(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al. 2019) in torchcam's formulation.

    ``num_samples`` noisy copies of the input (Gaussian noise of std ``std``) run as one
    batch. With ``g`` the gradients of the noisy copies, ``alpha = mean(g^2) / (2 mean(g^2)
    + sum(mean(g^3) * A) + 1e-8)`` (``A``: clean activation) and ``w = sum(alpha * relu(g_N))``.
    As in torchcam, ``g_N`` and the activation the map is drawn on are those of the *last*
    noisy copy. Noise comes from torch's global generator in torchcam's order, so
    ``torch.manual_seed`` reproduces torchcam's maps.

    Parameters
    ----------
    num_samples:
        Noisy copies (torchcam's default 4).
    std:
        Standard deviation of the noise, in input units (torchcam's default 0.3).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        num_samples: int = 4,
        std: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.num_samples = positive_int("num_samples", num_samples)
        self.std = positive_number("std", std)

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        inputs, clean = self.capture_for(input_tensor, targets, need_gradients=False)
        clean_scores = clean.score_fns[0]
        sample_targets = clean_scores.targets
        scale = torch.full(inputs.shape, self.std)
        noise = torch.cat(
            [torch.normal(torch.zeros_like(scale), scale) for _ in range(self.num_samples)]
        )
        noisy = inputs.repeat(self.num_samples, *([1] * (inputs.ndim - 1))) + noise.to(inputs)
        capture = self.engine.capture(
            noisy,
            [TargetScores(sample_targets * self.num_samples, clean_scores.select)],
            need_gradients=True,
        )
        batch = inputs.shape[0]
        maps = []
        for layer_index, clean_activation in enumerate(clean.activations):
            grads = capture.gradients[0][layer_index]
            grads = grads.reshape(self.num_samples, batch, *grads.shape[1:])
            last_activation = capture.activations[layer_index][-batch:]
            grads_2 = grads.pow(2).mean(dim=0)
            grads_3 = grads.pow(3).mean(dim=0)
            denominator = 2 * grads_2 + _broadcast(
                (grads_3 * clean_activation).flatten(2).sum(-1), grads_2
            )
            alpha = grads_2 / (denominator + 1e-8)
            weights = (alpha * torch.relu(grads[-1])).flatten(2).sum(-1)
            weighted = _broadcast(weights, last_activation) * last_activation
            cam = weighted.nansum(dim=1) if not eigen_smooth else eigen_projection(weighted)
            maps.append(torch.relu(cam.float()))
        return self.combine(maps, clean.input_size).cpu().numpy().astype(np.float32)


def fuse_cams(
    cams: Sequence[torch.Tensor], target_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Fuse maps of several layers (torchcam's ``fuse_cams``): resize, then element-wise max.

    Parameters
    ----------
    cams:
        ``(N, *spatial)`` tensors, one per layer, for the same inputs.
    target_shape:
        Spatial size of the result; ``None`` uses the largest size in each axis.

    Returns
    -------
    torch.Tensor
        ``(N, *target_shape)``; a single map is returned unchanged.
    """
    cams = list(cams)
    if not cams:
        raise ValueError("fuse_cams needs at least one map")
    if not all(isinstance(cam, torch.Tensor) for cam in cams):
        raise TypeError("fuse_cams takes a list of torch tensors (N, *spatial)")
    if len({cam.ndim for cam in cams}) != 1 or len({cam.shape[0] for cam in cams}) != 1:
        raise ValueError(
            f"maps to fuse must share batch size and rank, got {[tuple(c.shape) for c in cams]}"
        )
    if len(cams) == 1:
        return cams[0]
    if target_shape is None:
        target_shape = tuple(max(sizes) for sizes in zip(*(cam.shape[1:] for cam in cams)))
    fused = upsample(cams[0], target_shape)
    for cam in cams[1:]:
        fused = torch.maximum(fused, upsample(cam, target_shape))
    return fused


class _WrappedCAM:
    """A method built on another CAM object (``base_cam``): construction, hooks and context
    management. ``base_method=None`` takes the subclass's ``default_base_method``; extra
    keyword arguments go to the base method."""

    default_base_method: type[BaseCAM] = GradCAM

    def __init__(
        self,
        model: nn.Module,
        target_layers: LayerSpec | Sequence[LayerSpec],
        reshape_transform: ReshapeTransform | None = None,
        base_method: type[BaseCAM] | None = None,
        **kwargs: Any,
    ) -> None:
        method = self.default_base_method if base_method is None else base_method
        self.base_cam = method(model, target_layers, reshape_transform, **kwargs)
        self.uses_gradients = self.base_cam.uses_gradients

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        self.base_cam.close()

    def __enter__(self) -> _WrappedCAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _TargetChooser:
    """Resolves FinerCAM's default targets from the outputs of the one forward pass."""

    def __init__(
        self,
        alpha: float,
        comparison_categories: Sequence[int] | None,
        target_idx: int | None,
    ) -> None:
        self.alpha = alpha
        self.comparison_categories = comparison_categories
        self.target_idx = target_idx

    def __call__(self, outputs: Any) -> list[ScoreFn]:
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
            raise TypeError("FinerCAM's default targets need a model returning (B, K) scores")
        scores = outputs.float().cpu().numpy()
        classes = scores.shape[-1]
        if self.comparison_categories is None:
            ranks = [1, 2, 3][: max(classes - 1, 0)]
        else:
            ranks = [int(c) for c in self.comparison_categories if c < classes]
        if not ranks:
            raise ValueError("FinerCAM needs at least one comparison class; the model has one")
        reference = scores.max(axis=-1) if self.target_idx is None else scores[:, self.target_idx]
        # Classes ordered by how close their score is to the reference (closest first).
        order = np.argsort(np.abs(scores - reference[:, None]), axis=-1)
        chosen = [
            FinerWeightedTarget(int(row[0]), [int(row[r]) for r in ranks], self.alpha)
            for row in order
        ]
        return [TargetScores(chosen)]


class FinerCAM(_WrappedCAM):
    """Finer-CAM (Zhang et al. 2025): what tells a class apart from the most similar ones.

    The base method explains :class:`FinerWeightedTarget` (main class minus ``alpha`` times
    the classes whose scores are closest), all from one forward pass. With ``targets=None``
    the main class is the predicted one (or ``target_idx``) and the comparison classes are
    the ones ranked ``comparison_categories`` (default 1, 2, 3) by closeness of score.

    Parameters
    ----------
    model, target_layers, reshape_transform:
        As for :class:`BaseCAM`.
    base_method:
        The CAM class that explains the weighted target (default Grad-CAM).
    """

    default_base_method = GradCAM

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
        alpha: float = 1,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
    ) -> np.ndarray:
        """``(B, *spatial)`` maps; explicit ``targets`` are used as given."""
        base = self.base_cam
        if targets is not None:
            return base.forward(input_tensor, targets, eigen_smooth)
        chooser = _TargetChooser(float(alpha), comparison_categories, target_idx)
        inputs, capture = base.capture_for(input_tensor, score_from_outputs=chooser)
        maps = base.layer_maps(capture, 0, eigen_smooth, inputs=inputs)
        return base.combine(maps, capture.input_size).cpu().numpy().astype(np.float32)

    __call__ = forward


class RefineCAM(_WrappedCAM):
    """RefineCAM: product of a base method's maps over several layers, re-normalised.

    Each layer's map is the base method's full map (normalised, at input resolution);
    deep layers localise coarsely and early layers finely but noisily, and the product
    keeps what they agree on. All layers come from one forward pass (pytorch-grad-cam
    runs one per layer).

    Parameters
    ----------
    model, target_layers, reshape_transform:
        As for :class:`BaseCAM`; ``target_layers`` are the layers to multiply.
    base_method:
        Default Grad-CAM++, as in pytorch-grad-cam. Extra keyword arguments go to it.
    """

    default_base_method = GradCAMPlusPlus

    def forward(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Any] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        base = self.base_cam
        inputs, capture = base.capture_for(input_tensor, targets)
        layer_maps = base.layer_maps(capture, 0, eigen_smooth, inputs=inputs)
        product = torch.stack([base.combine([m], capture.input_size) for m in layer_maps])
        return minmax_normalize(product.prod(dim=0)).cpu().numpy().astype(np.float32)

    __call__ = forward
