"""Data: the built-in synthetic shortcut data, and (later) image folders and manifests."""

from shortcut_detect.data.synthetic import (
    ShortcutDataset,
    SmallCNN,
    evaluate_accuracy,
    make_shortcut_dataset,
    train_shortcut_model,
)

__all__ = [
    "ShortcutDataset",
    "SmallCNN",
    "evaluate_accuracy",
    "make_shortcut_dataset",
    "train_shortcut_model",
]
