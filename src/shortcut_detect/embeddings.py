"""From a model to embeddings: pooled features of one layer, batched, in inference mode.

The bridge between a trained model and :class:`~shortcut_detect.detectors.ShortcutDetector`:
embeddings and Grad-CAM heatmaps come from the same model in one script.

By default the embedding is the *input of the final classifier*: the input of the last
``nn.Linear`` that runs during the forward pass (the penultimate features of a ResNet, VGG,
ViT head or :class:`~shortcut_detect.data.synthetic.SmallCNN`). A named layer gives its
output, pooled over the spatial axes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.engine import prepare_inputs
from shortcut_detect.cam.layers import LayerSpec, resolve_layer
from shortcut_detect.common.device import resolve_device
from shortcut_detect.common.modes import eval_mode
from shortcut_detect.common.progress import ProgressBar
from shortcut_detect.common.validation import positive_int

__all__ = ["POOLING_MODES", "EmbeddingExtractor", "extract_embeddings", "pool_features"]

PoolSpec = str | Callable[[Any], torch.Tensor]
POOLING_MODES = ("avg", "max", "flatten", "tokens", "cls")

# Batches longer than this many batches get a progress bar (on a terminal only).
PROGRESS_MIN_BATCHES = 10

_IMAGE_KEYS = ("image", "images", "pixel_values", "input", "inputs", "x")


class _StopForward(Exception):
    """Raised from a hook once the wanted activation is captured, to skip later layers."""


def pool_features(features: Any, pool: PoolSpec = "avg") -> torch.Tensor:
    """Reduce a layer's output to one ``(B, D)`` vector per sample.

    Parameters
    ----------
    features:
        The captured tensor: ``(B, D)`` is returned as it is; ``(B, C, *spatial)`` for
        convolutional layers; ``(B, T, D)`` token sequences for transformer layers.
    pool:
        ``"avg"`` / ``"max"``: mean / max over the spatial axes of ``(B, C, H, W)`` (or
        ``(B, C, D, H, W)``) maps. ``"flatten"``: every value of the sample.
        ``"tokens"``: mean over the tokens of ``(B, T, D)``. ``"cls"``: the first token of
        ``(B, T, D)``. A callable gets the raw output and returns ``(B, D)``.

    Raises
    ------
    ValueError
        For a 3-D ``(B, ?, ?)`` output with ``"avg"``/``"max"`` (it is ambiguous whether it is
        a 1-D feature map or a token sequence), or an unknown mode.
    """
    if callable(pool):
        pooled = pool(features)
        if not isinstance(pooled, torch.Tensor) or pooled.ndim != 2:
            shape = tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled)
            raise ValueError(f"the pool callable must return a (B, D) tensor, got {shape}")
        return pooled
    if pool not in POOLING_MODES:
        raise ValueError(f"pool must be one of {POOLING_MODES} or a callable, got {pool!r}")
    if not isinstance(features, torch.Tensor):
        raise TypeError(
            f"the layer returned {type(features).__name__}, not a tensor; pass "
            "pool=callable(output) -> (B, D) tensor to choose what to keep"
        )
    if features.ndim < 2:
        raise ValueError(f"the layer output has shape {tuple(features.shape)}; need (B, D) or more")
    if features.ndim == 2:
        return features
    if pool == "flatten":
        return features.flatten(1)
    if pool in ("tokens", "cls"):
        if features.ndim != 3:
            raise ValueError(
                f"pool={pool!r} expects a (B, T, D) token sequence, got {tuple(features.shape)}"
            )
        return features.mean(dim=1) if pool == "tokens" else features[:, 0]
    if features.ndim == 3:
        raise ValueError(
            f"the layer output {tuple(features.shape)} is 3-D: use pool='tokens' (mean over "
            "axis 1 of a (B, T, D) token sequence), pool='cls' (first token), or "
            "pool='flatten'; 'avg'/'max' are for (B, C, H, W) feature maps"
        )
    spatial = tuple(range(2, features.ndim))
    if pool == "avg":
        return features.mean(dim=spatial)
    return features.amax(dim=spatial)


def _batch_images(batch: Any) -> Any:
    """The image tensor of one loader batch: the batch, its first item, or a known dict key."""
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return batch
    if isinstance(batch, Mapping):
        for key in _IMAGE_KEYS:
            if key in batch:
                return batch[key]
        raise ValueError(
            f"a dict batch needs one of the keys {_IMAGE_KEYS} for the images; got "
            f"{sorted(map(str, batch))}"
        )
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(
        f"cannot find images in a batch of type {type(batch).__name__}; yield tensors, "
        "(images, ...) tuples or dicts with an 'image' key"
    )


def _as_batch_tensor(images: Any, device: torch.device) -> torch.Tensor:
    """Validate one batch: images go through the engine's checks, vectors are allowed too."""
    if isinstance(images, np.ndarray) or (isinstance(images, torch.Tensor) and images.ndim >= 3):
        return prepare_inputs(images, device)
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"a batch must be a torch.Tensor or numpy array, got {type(images).__name__}"
        )
    if images.ndim != 2 or images.shape[0] == 0:
        raise ValueError(
            f"a batch must be (B, C, H, W) images or (B, D) vectors, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError("the inputs contain NaN or Inf values; clean them first")
    return images.to(device)


class EmbeddingExtractor:
    """Hooks one layer of a model and returns its pooled features for each batch.

    Parameters
    ----------
    model:
        The model. It runs in eval mode (its mode is restored afterwards) under
        ``torch.inference_mode()``; nothing about it is changed.
    layer:
        ``None`` (default): the input of the final classifier, i.e. of the last
        ``nn.Linear`` that runs in the forward pass (found on the first batch). Otherwise a
        module or dotted path (``"features"``, ``"layer4"``) whose *output* is pooled.
    pool:
        How a feature map becomes a vector, see :func:`pool_features`.
    device:
        ``None`` uses the model's device; asking for CUDA or MPS where there is none raises
        :class:`~shortcut_detect.common.device.DeviceUnavailableError`.

    Attributes
    ----------
    layer_name:
        Dotted name of the hooked layer (for ``layer=None``, known after the first batch).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | None = None,
        *,
        pool: PoolSpec = "avg",
        device: str | torch.device | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(pool) and pool not in POOLING_MODES:
            raise ValueError(f"pool must be one of {POOLING_MODES} or a callable, got {pool!r}")
        self.model = model
        self.pool = pool
        self.device = resolve_device(device, model)
        self.layer_name: str | None = None
        self._module: nn.Module | None = None
        self._use_input = layer is None  # default: the *input* of the final linear layer
        if layer is not None:
            self.layer_name, self._module = resolve_layer(model, layer)

    def _capture_final_linear_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """First batch with ``layer=None``: pre-hooks on every nn.Linear; the last one that
        runs is the final classifier, and its input is the embedding."""
        last: list[Any] = []

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            last[:] = [module, args[0] if args else None]

        handles = [
            module.register_forward_pre_hook(pre_hook)
            for module in self.model.modules()
            if isinstance(module, nn.Linear)
        ]
        try:
            self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        if not last:
            raise ValueError(
                f"No nn.Linear runs in {type(self.model).__name__}.forward, so there is no final "
                "classifier input to use; pass layer='<name>' (e.g. the last feature block) "
                "to pool that layer's output instead"
            )
        self._module = last[0]
        names = {id(module): name for name, module in self.model.named_modules()}
        self.layer_name = names.get(id(self._module), type(self._module).__name__)
        return pool_features(last[1], self.pool)

    def _capture(self, inputs: torch.Tensor) -> torch.Tensor:
        assert self._module is not None
        captured: list[Any] = []
        if self._use_input:
            # Keep the input of the module's last call, as on the first batch.
            def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
                captured[:] = [args[0] if args else None]

            handle = self._module.register_forward_pre_hook(pre_hook)
        else:
            # A named layer: keep its first output and skip the rest of the forward pass.
            def hook(_module: nn.Module, _args: object, output: Any) -> None:
                captured.append(output)
                raise _StopForward

            handle = self._module.register_forward_hook(hook)
        try:
            self.model(inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"layer {self.layer_name!r} did not run during the forward pass; choose a layer "
                "that the model's forward uses"
            )
        return pool_features(captured[0], self.pool)

    def __call__(self, images: Any) -> np.ndarray:
        """Embeddings ``(B, D)`` float32 of one batch (tensor or array)."""
        inputs = _as_batch_tensor(images, self.device)
        with eval_mode(self.model), torch.inference_mode():
            if self._module is None:
                features = self._capture_final_linear_input(inputs)
            else:
                features = self._capture(inputs)
        return features.detach().float().reshape(features.shape[0], -1).cpu().numpy()


def _iter_batches(images_or_loader: Any, batch_size: int) -> tuple[Iterator[Any], int | None]:
    """Batches of images and how many there are (``None`` if unknown)."""
    if isinstance(images_or_loader, (torch.Tensor, np.ndarray)):
        data = images_or_loader
        if data.ndim == 3:  # one (C, H, W) image
            data = data[None]
        if len(data) == 0:
            raise ValueError("no images: the input is empty")
        starts = range(0, len(data), batch_size)
        return (data[start : start + batch_size] for start in starts), len(starts)
    if isinstance(images_or_loader, (str, bytes, Mapping)) or not isinstance(
        images_or_loader, Iterable
    ):
        raise TypeError(
            "images_or_loader must be a tensor/array of images or an iterable of batches "
            f"(e.g. a DataLoader), got {type(images_or_loader).__name__}"
        )
    try:
        total: int | None = len(images_or_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return (_batch_images(batch) for batch in images_or_loader), total


def _progress(batches: Iterator[Any], total: int | None, enabled: bool | None) -> Iterator[Any]:
    """The batches, counted by a progress bar; ``enabled=None`` shows it for long inputs
    (at least :data:`PROGRESS_MIN_BATCHES` batches, or of unknown length) on a terminal."""
    if enabled is None and total is not None and total < PROGRESS_MIN_BATCHES:
        enabled = False
    return ProgressBar(total, "Embeddings", enabled=enabled, unit="batch").track(batches)


def extract_embeddings(
    model: nn.Module,
    layer: LayerSpec | None = None,
    images_or_loader: Any = None,
    batch_size: int = 64,
    *,
    pool: PoolSpec = "avg",
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Pooled features of one layer for every image, as a ``(N, D)`` float32 array.

    Parameters
    ----------
    model:
        A PyTorch model; run in eval mode under ``torch.inference_mode()`` (its mode is
        restored afterwards).
    layer:
        ``None``: the input of the final classifier (the last ``nn.Linear`` that runs), i.e.
        the penultimate embedding. Otherwise a module or dotted path whose output is pooled
        (see ``pool``).
    images_or_loader:
        A ``(N, C, H, W)`` tensor or float array (the first axis is always the sample axis;
        a single ``(C, H, W)`` image is one sample), or an iterable of batches such as a
        ``DataLoader`` yielding tensors, ``(images, ...)`` tuples or dicts with an
        ``"image"`` / ``"images"`` / ``"pixel_values"`` key.
    batch_size:
        Batch size for tensor/array input (a loader keeps its own batches).
    pool:
        ``"avg"`` (default), ``"max"``, ``"flatten"``, ``"tokens"``, ``"cls"`` or a callable,
        see :func:`pool_features`.
    device:
        ``None`` uses the model's device; asking for CUDA or MPS where there is none raises
        :class:`~shortcut_detect.common.device.DeviceUnavailableError`.
    progress:
        ``None`` shows a progress bar only for inputs of at least 10 batches (or of unknown
        length) when stderr is a terminal; ``True`` / ``False`` force it on / off.

    Returns
    -------
    numpy.ndarray
        ``(N, D)`` float32, rows in input order.

    Examples
    --------
    >>> emb = extract_embeddings(model, None, images, batch_size=64)      # doctest: +SKIP
    >>> ShortcutDetector(methods=["probe"]).fit(emb, group_labels)        # doctest: +SKIP
    """
    if images_or_loader is None:
        raise ValueError("images_or_loader is required: a (N, C, H, W) tensor/array or a loader")
    batch_size = positive_int("batch_size", batch_size)
    extractor = EmbeddingExtractor(model, layer, pool=pool, device=device)
    batches, total = _iter_batches(images_or_loader, batch_size)
    chunks = [extractor(images) for images in _progress(batches, total, progress)]
    if not chunks:
        raise ValueError("the loader yielded no batches")
    widths = {chunk.shape[1] for chunk in chunks}
    if len(widths) > 1:
        raise ValueError(
            f"layer {extractor.layer_name!r} gave features of different sizes {sorted(widths)} "
            "for different batches (images of different sizes?); use pool='avg' or equal sizes"
        )
    return np.concatenate(chunks, axis=0)
