"""Fixtures of the audit tests: the demo test images written to disk once per session."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory, test_data):
    """120 demo test images as PNG files plus manifest.csv (path,label,group,mask)."""
    from shortcut_detect.data.demo_files import write_image_dataset

    subset = test_data.subset(np.arange(120))
    return write_image_dataset(subset, tmp_path_factory.mktemp("demo_images"))


@pytest.fixture(scope="session")
def shortcut_audit(tmp_path_factory, demo_manifest):
    """A finished audit of the shortcut demo model on the 120 images (with its report)."""
    from shortcut_detect.audit.pipeline import AuditOptions, run_audit

    out = tmp_path_factory.mktemp("audit") / "shortcut"
    options = AuditOptions(
        model="demo:shortcut",
        data=str(demo_manifest),
        out=str(out),
        group_column="group",
        mask_column="mask",
        batch_size=16,
        num_workers=0,
        n_permutations=200,
        progress=False,
    )
    return run_audit(options)
