"""Planted-shortcut image data: a base task plus a marker that agrees with the label.

Each image shows a noisy, low-contrast shape (class 0: a disk, class 1: a cross) at a random
place, and maybe a small bright marker in the top-left corner (the "hospital tag"). The
marker is present with probability ``shortcut_strength`` for class 1 and
``1 - shortcut_strength`` for class 0, so at 1.0 it always agrees with the label and at 0.5
it carries no information. A model trained at high strength learns the marker; one trained
at 0.5 must learn the shapes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "ShortcutDataset",
    "SmallCNN",
    "evaluate_accuracy",
    "make_shortcut_dataset",
    "train_classifier",
    "train_shortcut_model",
]

CLASS_NAMES = ("disk", "cross")


@dataclass
class ShortcutDataset:
    """Images with a planted shortcut.

    Attributes
    ----------
    images:
        ``(N, 3, H, W)`` float32 in [0, 1].
    labels:
        ``(N,)`` int64 class of the shape (0 disk, 1 cross).
    groups:
        ``(N,)`` int64, 1 where the marker is present.
    masks:
        ``(N, H, W)`` bool, the exact marker pixels (all False where absent).
    marker_box:
        ``(x0, y0, x1, y1)`` of the marker, pixel coordinates, ``x1``/``y1`` exclusive.
    shortcut_strength:
        Probability that marker presence agrees with the label.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    masks: np.ndarray
    marker_box: tuple[int, int, int, int]
    shortcut_strength: float
    class_names: tuple[str, ...] = CLASS_NAMES
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def aligned(self) -> np.ndarray:
        """Bool ``(N,)``: the marker agrees with the label (present for class 1 only)."""
        return self.groups == self.labels

    @property
    def marker_mask(self) -> np.ndarray:
        """``(H, W)`` bool mask of the marker's place (whether or not it is drawn)."""
        mask = np.zeros(self.images.shape[2:], dtype=bool)
        x0, y0, x1, y1 = self.marker_box
        mask[y0:y1, x0:x1] = True
        return mask

    @property
    def marker_area_fraction(self) -> float:
        """Share of the image the marker covers."""
        return float(self.marker_mask.mean())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` as torch tensors."""
        return torch.from_numpy(self.images), torch.from_numpy(self.labels)

    def subset(self, index: np.ndarray) -> ShortcutDataset:
        """The samples at ``index`` (bool mask or integer indices)."""
        return ShortcutDataset(
            images=self.images[index],
            labels=self.labels[index],
            groups=self.groups[index],
            masks=self.masks[index],
            marker_box=self.marker_box,
            shortcut_strength=self.shortcut_strength,
            class_names=self.class_names,
            meta=dict(self.meta),
        )


def _shape_mask(kind: int, size: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    arm = max(1.5, radius * 0.35)
    horizontal = (np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= radius)
    vertical = (np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= radius)
    return horizontal | vertical


def make_shortcut_dataset(
    n_samples: int = 1000,
    *,
    shortcut_strength: float = 0.95,
    image_size: int = 48,
    marker_size: int = 6,
    marker_offset: int = 3,
    shape_contrast: float = 0.25,
    noise: float = 0.12,
    seed: int = 0,
) -> ShortcutDataset:
    """Make a labelled image set with a planted shortcut.

    Parameters
    ----------
    n_samples:
        Number of images; classes are balanced (alternating, then shuffled).
    shortcut_strength:
        Probability in [0, 1] that marker presence agrees with the label.
        1.0: marker exactly on class 1; 0.5: marker independent of the label.
    image_size:
        Side of the square RGB images, at least 24.
    marker_size, marker_offset:
        Side of the square marker and its distance from the top-left corner, in pixels.
    shape_contrast:
        Brightness of the shape above the background (lower is harder).
    noise:
        Standard deviation of the Gaussian pixel noise.
    seed:
        Everything is drawn from ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 <= shortcut_strength <= 1.0:
        raise ValueError(f"shortcut_strength must be in [0, 1], got {shortcut_strength}")
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples}")
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24, got {image_size}")
    if not 1 <= marker_size <= image_size // 4:
        raise ValueError(f"marker_size must be in 1..{image_size // 4}, got {marker_size}")
    rng = np.random.default_rng(seed)
    size = image_size
    labels = rng.permutation(np.arange(n_samples) % 2).astype(np.int64)
    agree = rng.random(n_samples) < shortcut_strength
    groups = np.where(agree, labels, 1 - labels).astype(np.int64)

    background = rng.uniform(0.3, 0.5, size=(n_samples, 3, 1, 1)).astype(np.float32)
    images = np.broadcast_to(background, (n_samples, 3, size, size)).copy()
    images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)

    x0 = y0 = marker_offset
    x1 = y1 = marker_offset + marker_size
    keep_out = x1 + 4  # shapes stay clear of the marker's corner
    # The largest shape that still fits beside or below that corner (small images, big markers).
    fitting_radius = min(size * 0.22, (size - 1 - keep_out) / 2 - 0.01)
    if fitting_radius < size * 0.12:
        raise ValueError(
            f"A marker of {marker_size} px at offset {marker_offset} leaves no room for the "
            f"shapes in {size}x{size} images; use a smaller marker_size or marker_offset, or "
            "larger images"
        )
    for index in range(n_samples):
        radius = rng.uniform(size * 0.12, fitting_radius)
        low = radius + 1
        high = size - radius - 1
        while True:
            cy, cx = rng.uniform(low, high, size=2)
            if cy - radius > keep_out or cx - radius > keep_out:
                break
        mask = _shape_mask(int(labels[index]), size, cy, cx, radius)
        colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32) * shape_contrast
        images[index][:, mask] += colour[:, None]

    masks = np.zeros((n_samples, size, size), dtype=bool)
    present = groups == 1
    masks[present, y0:y1, x0:x1] = True
    images[present, 0, y0:y1, x0:x1] = 1.0
    images[present, 1, y0:y1, x0:x1] = 1.0
    images[present, 2, y0:y1, x0:x1] = 0.0
    np.clip(images, 0.0, 1.0, out=images)
    return ShortcutDataset(
        images=images.astype(np.float32),
        labels=labels,
        groups=groups,
        masks=masks,
        marker_box=(x0, y0, x1, y1),
        shortcut_strength=float(shortcut_strength),
        meta={"seed": seed, "image_size": size, "marker_size": marker_size},
    )


class SmallCNN(nn.Module):
    """A small CNN for the synthetic data; ``features`` ends at a 12x12 map for 48x48 input.

    ``spatial_dims=3`` makes the same network with 3-D layers, for volumes ``(B, C, D, H,
    W)`` (the map is then a quarter of the volume along each axis). Uses in-place ReLUs on
    purpose, like torchvision models.
    """

    def __init__(
        self, num_classes: int = 2, in_channels: int = 3, width: int = 16, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv, norm, pool, average = (
            (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
            if spatial_dims == 2
            else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)
        )
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1),
            norm(width),
            nn.ReLU(inplace=True),
            pool(2),
            conv(width, 2 * width, 3, padding=1),
            norm(2 * width),
            nn.ReLU(inplace=True),
            pool(2),
            conv(2 * width, 4 * width, 3, padding=1),
            norm(4 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = average(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` with Adam and cross-entropy, deterministically from ``seed``.

    Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(images[index]), labels[index])
            loss.backward()
            optimiser.step()
    model.eval()
    for param in model.parameters():
        param.grad = None
    return model


def train_shortcut_model(
    dataset: ShortcutDataset | None = None,
    *,
    shortcut_strength: float = 0.95,
    n_samples: int = 2000,
    epochs: int = 6,
    seed: int = 0,
) -> tuple[SmallCNN, ShortcutDataset]:
    """Train a :class:`SmallCNN` on planted-shortcut data (a few seconds on 2 CPU cores).

    Returns ``(model, training_data)``; the model is in eval mode.
    """
    if dataset is None:
        dataset = make_shortcut_dataset(n_samples, shortcut_strength=shortcut_strength, seed=seed)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=len(dataset.class_names))
    images, labels = dataset.tensors()
    started = time.perf_counter()
    train_classifier(model, images, labels, epochs=epochs, seed=seed)
    dataset.meta["train_seconds"] = time.perf_counter() - started
    return model, dataset


@torch.inference_mode()
def evaluate_accuracy(
    model: nn.Module, images: np.ndarray | torch.Tensor, labels: np.ndarray
) -> float:
    """Accuracy of ``model`` on ``images`` (batched, inference mode)."""
    tensor = torch.as_tensor(images)
    predictions = []
    for start in range(0, len(tensor), 256):
        predictions.append(model(tensor[start : start + 256]).argmax(dim=1))
    predicted = torch.cat(predictions).numpy()
    return float((predicted == np.asarray(labels)).mean())
