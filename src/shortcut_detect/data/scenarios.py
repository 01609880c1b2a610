"""Planted-shortcut scenarios for measuring shortcut detection: markers of several kinds and a
global artefact, on synthetic shapes and on scikit-learn's handwritten digits (real scans).

Each scenario trains a small CNN (seconds, cached) on data where the shortcut follows the
label as the scenario says (in the scenarios with a shortcut, 10% of the training labels
disagree with the image content, so the shortcut is the more predictive cue), and gives a
held-out test set where the marker is independent of the label, with its per-image masks and
which images carry it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shortcut_detect.data.synthetic import (
    SmallCNN,
    evaluate_accuracy,
    make_shortcut_dataset,
    train_classifier,
)

__all__ = ["BASES", "KINDS", "Scenario", "load_scenario", "scenario_cache_dir"]

SCENARIO_VERSION = 4

#: Share of training labels that disagree with the image content in the scenarios with a
#: shortcut: the marker (95% agreement) is then the more predictive cue, as in real shortcut
#: data, so the trained model relies on it instead of merely having seen it.
LABEL_NOISE = 0.1
#: Scenario kinds: how the marker (or artefact) relates to the label in the training data.
KINDS = {
    "fixed_marker": "a marker at a fixed place (top-left), on 95% of class 1 and 5% of class 0",
    "random_corner": "a marker in a random corner per image, on 95% of class 1 and 5% of class 0",
    "salient_unused": "a bright marker (top-left) on half the images, independent of the label",
    "one_class_marker": "a marker (top-left) on 60% of class 1 only; never on class 0",
    "global_brightness": "class 1 images brighter overall (95% agreement); no marker",
    "clean": "no marker in training or test (half the test images get the marker's mask, "
    "with nothing drawn there: a null)",
}
#: Base images: synthetic shapes (32x32 RGB) and scikit-learn digits (upsampled to 20x20 and
#: centred on a 32x32 blank image, so markers in the corners sit on the border).
BASES = ("shapes", "digits")
LOCALISED = ("fixed_marker", "random_corner", "one_class_marker")
IMAGE_SIZE = 32
DIGIT_SIZE = 20  # the SmallCNN's receptive field must see most of a digit to learn ">= 5"
MARKER = 4
OFFSET = 2
BRIGHTNESS = 0.15
#: Per base: shape contrast (shapes only), training images, epochs, learning rate. Chosen so
#: that clean models learn the task (test accuracy about 0.97 on shapes, 0.9 on digits) in
#: seconds; a model that has not learned its task is moved by anything, which makes every
#: false-alarm rate meaningless.
TRAINING = {
    "shapes": {"shape_contrast": 0.5, "n_train": 1600, "epochs": 12, "lr": 1e-3},
    "digits": {"shape_contrast": None, "n_train": 1600, "epochs": 12, "lr": 1e-3},
}


#: A training run that ends this close to always predicting the majority class learned
#: nothing (a collapsed run); it is restarted from a fresh initialisation, at most
#: ``TRAINING_ATTEMPTS`` times in all.
LEARNED_MARGIN = 0.1
TRAINING_ATTEMPTS = 3


def _train_scenario_model(
    channels: int, images: np.ndarray, labels: np.ndarray, epochs: int, lr: float, seed: int
) -> SmallCNN:
    """Train a scenario's model; restart a run that collapsed to (nearly) one class.

    A model that learned nothing is no test subject: it neither uses the planted shortcut nor
    the content, so it would count as a miss in a shortcut scenario and say nothing in a clean
    one. The first attempt uses ``seed`` itself, so runs that learn are unchanged.
    """
    majority = np.bincount(labels).max() / len(labels)
    for attempt in range(TRAINING_ATTEMPTS):
        run_seed = seed + 1_000_000 * attempt
        torch.manual_seed(run_seed)
        model = SmallCNN(in_channels=channels, width=8)
        train_classifier(
            model,
            torch.from_numpy(images),
            torch.from_numpy(labels),
            epochs=epochs,
            lr=lr,
            seed=run_seed,
        )
        if evaluate_accuracy(model, images, labels) >= majority + LEARNED_MARGIN:
            break
    return model


@dataclass
class Scenario:
    """A trained model and its held-out test set.

    Attributes
    ----------
    model:
        The trained :class:`~shortcut_detect.data.synthetic.SmallCNN` (eval mode).
    images, labels:
        Test images ``(N, C, 32, 32)`` float32 and labels.
    masks:
        ``(N, 32, 32)`` bool: where the marker is drawn (empty where absent; all empty for
        the global artefact).
    carriers:
        ``(N,)`` bool: the image carries the marker (or, for the global artefact, is
        brightened).
    uses_shortcut:
        Whether the training data makes the marker (or artefact) predictive.
    """

    base: str
    kind: str
    seed: int
    model: torch.nn.Module
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    carriers: np.ndarray
    uses_shortcut: bool
    accuracy: float
    clean_images: np.ndarray | None = None

    def oracle_flip_rate(self) -> float:
        """Share of marker carriers whose prediction changes when the marker is removed exactly.

        The ground truth of reliance: each carrier against the same test image drawn without
        the marker (or brightening), which no detector gets to see.
        """
        if self.clean_images is None or not self.carriers.any():
            return float("nan")
        with torch.inference_mode():
            planted = self.model(torch.from_numpy(self.images[self.carriers])).argmax(dim=1)
            clean = self.model(torch.from_numpy(self.clean_images[self.carriers])).argmax(dim=1)
        return float((planted != clean).float().mean())

    def oracle_probability_drop(self) -> float:
        """Mean drop, over marker carriers, of the predicted class's probability when the
        marker is removed exactly (the same ground truth as :meth:`oracle_flip_rate`, on the
        scale of the intervention test's ``min_effect``)."""
        if self.clean_images is None or not self.carriers.any():
            return float("nan")
        with torch.inference_mode():
            planted = torch.softmax(self.model(torch.from_numpy(self.images[self.carriers])), 1)
            clean = torch.softmax(self.model(torch.from_numpy(self.clean_images[self.carriers])), 1)
        rows = torch.arange(len(planted))
        predicted = planted.argmax(dim=1)
        return float((planted[rows, predicted] - clean[rows, predicted]).mean())

    @property
    def marker_zone(self) -> np.ndarray:
        """``(32, 32)`` bool: every place a marker can be drawn in this scenario."""
        zone = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
        for corner in range(4) if self.kind == "random_corner" else [0]:
            zone |= _corner_mask(corner)
        return zone


def scenario_cache_dir() -> Path:
    """``$SHORTCUT_DETECT_CACHE/scenarios-vN`` (or under ``~/.cache/shortcut_detect``)."""
    root = os.environ.get("SHORTCUT_DETECT_CACHE") or Path.home() / ".cache" / "shortcut_detect"
    return Path(root) / f"scenarios-v{SCENARIO_VERSION}"


def _corner_mask(corner: int) -> np.ndarray:
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    low, high = OFFSET, IMAGE_SIZE - OFFSET - MARKER
    y, x = [(low, low), (low, high), (high, low), (high, high)][corner]
    mask[y : y + MARKER, x : x + MARKER] = True
    return mask


DIGITS_TEST_POOL = 300  # digits kept out of every training set (a fixed split of the 1797)


def _base_images(
    base: str, n_samples: int, seed: int, test: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Marker-free images and binary labels (digits: from the held-out pool if ``test``)."""
    rng = np.random.default_rng(seed)
    if base == "shapes":
        # Keep only images drawn without the demo marker (group 0): no marker anywhere.
        data = make_shortcut_dataset(
            2 * n_samples + 64,
            shortcut_strength=0.5,
            shape_contrast=TRAINING["shapes"]["shape_contrast"],
            image_size=IMAGE_SIZE,
            marker_size=MARKER,
            marker_offset=OFFSET,
            seed=seed,
        )
        keep = np.flatnonzero(data.groups == 0)[:n_samples]
        return data.images[keep], data.labels[keep]
    if base == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        split = np.random.default_rng(0).permutation(len(digits.target))
        pool = split[-DIGITS_TEST_POOL:] if test else split[:-DIGITS_TEST_POOL]
        index = rng.choice(pool, n_samples, replace=n_samples > len(pool))
        small = torch.from_numpy(digits.images[index].astype(np.float32) / 16.0)[:, None]
        images = torch.nn.functional.interpolate(
            small, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear"
        )
        pad = (IMAGE_SIZE - DIGIT_SIZE) // 2
        images = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        images = (
            images * 0.8
            + 0.1
            + 0.05 * torch.from_numpy(rng.normal(size=images.shape).astype(np.float32))
        )
        return images.clamp(0, 1).numpy(), (digits.target[index] >= 5).astype(np.int64)
    raise ValueError(f"unknown base {base!r}; choose one of {BASES}")


def _plant(
    images: np.ndarray, labels: np.ndarray, kind: str, train: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw the scenario's marker (or artefact); returns images, masks, carriers."""
    n_samples = len(labels)
    images = images.copy()
    masks = np.zeros((n_samples, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    if not train or kind in ("salient_unused", "clean"):
        chance = np.full(n_samples, 0.0 if (train and kind == "clean") else 0.5)
    elif kind == "one_class_marker":
        chance = np.where(labels == 1, 0.6, 0.0)
    else:
        chance = np.where(labels == 1, 0.95, 0.05)
    carriers = rng.random(n_samples) < chance
    if kind == "global_brightness":
        images[carriers] = np.clip(images[carriers] + BRIGHTNESS, 0, 1)
        return images, masks, carriers
    corners = rng.integers(0, 4, n_samples) if kind == "random_corner" else np.zeros(n_samples, int)
    for index in np.flatnonzero(carriers):
        masks[index] = _corner_mask(int(corners[index]))
    if kind == "clean":
        # The place a user might suspect, with nothing drawn there: a null for the tests.
        return images, masks, carriers
    colour = np.array([1.0, 1.0, 0.0] if images.shape[1] == 3 else [1.0], dtype=np.float32)
    for channel, value in enumerate(colour):
        images[:, channel][masks] = value
    return images, masks, carriers


def load_scenario(
    base: str,
    kind: str,
    seed: int,
    *,
    n_train: int | None = None,
    n_test: int = 200,
    epochs: int | None = None,
) -> Scenario:
    """Train (or load from the cache) the model of one scenario and make its test set.

    ``n_train`` and ``epochs`` default to the base's :data:`TRAINING` settings.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown scenario kind {kind!r}; choose one of {sorted(KINDS)}")
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {BASES}")
    n_train = int(TRAINING[base]["n_train"] if n_train is None else n_train)
    epochs = int(TRAINING[base]["epochs"] if epochs is None else epochs)
    rng = np.random.default_rng([seed, BASES.index(base), list(KINDS).index(kind)])
    train_images, train_labels = _base_images(base, n_train, seed)
    test_images, test_labels = _base_images(base, n_test, seed + 10_000, test=True)
    uses_shortcut = kind in (*LOCALISED, "global_brightness")
    if uses_shortcut:
        noisy = rng.random(len(train_labels)) < LABEL_NOISE
        train_labels = np.where(noisy, 1 - train_labels, train_labels)
    train_images, _, _ = _plant(train_images, train_labels, kind, True, rng)
    clean_test_images = test_images
    test_images, masks, carriers = _plant(test_images, test_labels, kind, False, rng)
    channels = train_images.shape[1]
    lr = float(TRAINING[base]["lr"])
    noise = f"-noise{LABEL_NOISE:g}" if uses_shortcut else ""
    name = f"{base}-{kind}-n{n_train}-e{epochs}-lr{lr:g}{noise}-seed{seed}.pt"
    path = scenario_cache_dir() / name
    model = SmallCNN(in_channels=channels, width=8)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
    else:
        model = _train_scenario_model(channels, train_images, train_labels, epochs, lr, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        torch.save(model.state_dict(), partial)
        partial.replace(path)
    with torch.inference_mode():
        predicted = model(torch.from_numpy(test_images)).argmax(dim=1).numpy()
    return Scenario(
        base=base,
        kind=kind,
        seed=seed,
        model=model,
        images=test_images,
        labels=test_labels,
        masks=masks,
        carriers=carriers,
        uses_shortcut=uses_shortcut,
        accuracy=float((predicted == test_labels).mean()),
        clean_images=clean_test_images,
    )
