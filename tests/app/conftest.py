"""Fixtures for the explorer: one Explorer over the demo models, images written to disk."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def demo_explorer_models(demo_models):
    """The demo's shortcut and clean models as the explorer serves them."""
    from shortcut_detect.app.models import demo_explorer_models

    del demo_models  # trained (or loaded from the cache) once by the session fixture
    return demo_explorer_models()


@pytest.fixture(scope="session")
def demo_source(test_data):
    from shortcut_detect.app.sources import DemoSource

    return DemoSource(test_data)


@pytest.fixture
def explorer(demo_explorer_models, demo_source):
    """A fresh explorer (empty cache) over the shared, already loaded demo models."""
    from shortcut_detect.app.explorer import Explorer

    return Explorer(demo_explorer_models, demo_source, cache_size=32)


@pytest.fixture(scope="session")
def image_files(tmp_path_factory, test_data):
    """Uploads of every awkward kind: RGB, RGBA, grayscale, 16-bit, a non-image, a bomb."""
    root = tmp_path_factory.mktemp("uploads")
    rgb = np.uint8(np.clip(test_data.images[3].transpose(1, 2, 0), 0, 1) * 255)
    files = {}
    files["rgb"] = root / "sample.png"
    Image.fromarray(rgb).save(files["rgb"])
    files["rgba"] = root / "with_alpha.png"
    alpha = np.full((*rgb.shape[:2], 1), 128, dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(files["rgba"])
    files["gray"] = root / "gray.png"
    Image.fromarray(rgb.mean(axis=2).astype(np.uint8)).save(files["gray"])
    files["gray16"] = root / "gray16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(files["gray16"])
    files["big"] = root / "big.jpg"
    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(files["big"])
    files["text"] = root / "notes.txt"
    files["text"].write_text("this is not an image\n")
    files["fake_png"] = root / "fake.png"
    files["fake_png"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    files["truncated"] = root / "truncated.png"
    whole = files["rgb"].read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) * 3 // 5])
    # 12000 x 12000 pixels in a few hundred kilobytes: decoding it would take 432 MB.
    files["bomb"] = root / "bomb.png"
    Image.new("L", (12000, 12000), 0).save(files["bomb"], optimize=True)
    return files


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory, demo_models):
    """A real audit of 40 demo images (manifest with groups and marker boxes)."""
    from shortcut_detect.audit.pipeline import AuditOptions, run_audit
    from shortcut_detect.data.demo import make_demo_test_set

    del demo_models  # the audit loads the cached demo model
    root = tmp_path_factory.mktemp("audit")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    dataset = make_demo_test_set(40, seed=7)
    x0, y0, x1, y1 = dataset.marker_box
    lines = ["path,label,group,mask"]
    for index in range(len(dataset)):
        name = f"images/img_{index:03d}.png"
        pixels = np.uint8(dataset.images[index].transpose(1, 2, 0) * 255 + 0.5)
        Image.fromarray(pixels).save(data / name)
        label = dataset.class_names[dataset.labels[index]]
        group = "marker" if dataset.groups[index] else "none"
        lines.append(f'{name},{label},{group},"{x0},{y0},{x1},{y1}"')
    (data / "broken.png").write_text("not an image")
    lines.append("broken.png,disk,none,")
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    (root / "secret.png").write_bytes((data / "images" / "img_000.png").read_bytes())
    options = AuditOptions(
        model="demo",
        data=str(data / "manifest.csv"),
        out=str(root / "audit"),
        group_column="group",
        mask_column="mask",
        num_workers=0,
        report=False,
        progress=False,
    )
    run_audit(options)
    return root / "audit"
