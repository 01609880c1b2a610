"""The built-in demo: a shortcut model and a clean model on the synthetic data, cached."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shortcut_detect.data.synthetic import (
    ShortcutDataset,
    SmallCNN,
    make_shortcut_dataset,
    train_shortcut_model,
)

__all__ = ["DemoModels", "demo_cache_dir", "load_demo_models", "make_demo_test_set"]

DEMO_VERSION = 1
SHORTCUT_STRENGTH = 0.95
CLEAN_STRENGTH = 0.5


def demo_cache_dir() -> Path:
    """Where demo models are kept: ``$SHORTCUT_DETECT_CACHE`` or ``~/.cache/shortcut_detect``."""
    root = os.environ.get("SHORTCUT_DETECT_CACHE") or Path.home() / ".cache" / "shortcut_detect"
    return Path(root) / f"demo-v{DEMO_VERSION}"


@dataclass
class DemoModels:
    """The two demo models (eval mode) and where their weights are stored."""

    shortcut_model: SmallCNN
    clean_model: SmallCNN
    shortcut_weights: Path
    clean_weights: Path
    trained: bool  # False when both came from the cache


def _load_or_train(path: Path, strength: float, seed: int) -> tuple[SmallCNN, bool]:
    if path.exists():
        model = SmallCNN()
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval(), False
        except (RuntimeError, OSError, EOFError):
            path.unlink(missing_ok=True)  # a corrupt cache entry: retrain
    model, _ = train_shortcut_model(shortcut_strength=strength, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(model.state_dict(), partial)
    partial.replace(path)
    return model, True


def load_demo_models(cache_dir: str | Path | None = None, seed: int = 0) -> DemoModels:
    """Train (about 10 s each on 2 CPU cores) or load from the cache the two demo models.

    The shortcut model is trained where the marker agrees with the label 95% of the time;
    the clean model where it carries no information.
    """
    root = Path(cache_dir) if cache_dir is not None else demo_cache_dir()
    shortcut_path = root / f"shortcut_model_seed{seed}.pt"
    clean_path = root / f"clean_model_seed{seed}.pt"
    shortcut, trained_a = _load_or_train(shortcut_path, SHORTCUT_STRENGTH, seed)
    clean, trained_b = _load_or_train(clean_path, CLEAN_STRENGTH, seed)
    return DemoModels(shortcut, clean, shortcut_path, clean_path, trained_a or trained_b)


def make_demo_test_set(n_samples: int = 400, seed: int = 1234) -> ShortcutDataset:
    """Held-out images where the marker is independent of the label (strength 0.5), so
    marker-present and marker-absent groups can be compared fairly."""
    return make_shortcut_dataset(n_samples, shortcut_strength=0.5, seed=seed)
