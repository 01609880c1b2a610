"""The demo test set as files on disk: PNG images and a CSV manifest.

The demo audits these files with the same code path a user's data takes (manifest reading,
decoding in workers, box masks), instead of feeding arrays to the engine directly.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from shortcut_detect.data.demo import make_demo_test_set
from shortcut_detect.data.synthetic import ShortcutDataset

__all__ = ["GROUP_NAMES", "write_demo_dataset", "write_image_dataset"]

GROUP_NAMES = ("no_marker", "marker")


def write_image_dataset(dataset: ShortcutDataset, directory: str | os.PathLike[str]) -> Path:
    """Write a :class:`ShortcutDataset` as ``images/*.png`` plus ``manifest.csv``.

    The manifest has columns ``path,label,group,mask``: ``label`` is the class name,
    ``group`` is ``marker``/``no_marker``, ``mask`` the marker's box ``x0,y0,x1,y1`` where
    the marker is drawn (empty otherwise). Returns the manifest path.
    """
    from PIL import Image

    root = Path(directory)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    x0, y0, x1, y1 = dataset.marker_box
    rows = []
    for index in range(len(dataset)):
        name = f"images/{index:05d}.png"
        pixels = np.uint8(np.clip(dataset.images[index].transpose(1, 2, 0), 0, 1) * 255 + 0.5)
        path = root / name
        partial = path.with_name(path.name + ".tmp.png")
        Image.fromarray(pixels).save(partial)
        partial.replace(path)
        group = int(dataset.groups[index])
        rows.append(
            {
                "path": name,
                "label": dataset.class_names[int(dataset.labels[index])],
                "group": GROUP_NAMES[group],
                "mask": f"{x0},{y0},{x1},{y1}" if group == 1 else "",
            }
        )
    manifest = root / "manifest.csv"
    partial = manifest.with_name("manifest.csv.tmp")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(manifest)
    return manifest


def write_demo_dataset(
    directory: str | os.PathLike[str], n_samples: int = 400, seed: int = 1234
) -> Path:
    """Write the demo's held-out test set (marker independent of the label) to ``directory``."""
    return write_image_dataset(make_demo_test_set(n_samples, seed=seed), directory)
