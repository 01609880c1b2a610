"""The app on a 3-D audit: a plane selector and slice slider over each volume and its heatmap."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("gradio")

from shortcut_detect.app import build_app
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.app.volume_panel import VolumeSlicer
from shortcut_detect.audit.pipeline import AuditOptions, run_audit
from shortcut_detect.data.medical.synthetic import write_synthetic_nifti_set


@pytest.fixture(scope="module")
def volume_audit(tmp_path_factory, bright_voxel_model_file):
    root = tmp_path_factory.mktemp("app3d")
    data = write_synthetic_nifti_set(root / "data", 6, shape=(16, 16, 16), agreement=1.0, seed=4)
    run_audit(
        AuditOptions(
            model=str(bright_voxel_model_file),
            trust_pickle=True,
            resize=[16],
            data=str(data.root),
            out=str(root / "audit"),
            window="250,700",
            num_workers=0,
            n_permutations=20,
            embedding_samples=0,
            progress=False,
        )
    )
    marked = next(p for p, m in zip(data.paths, data.marker) if m)
    return root / "audit", marked.relative_to(data.root).as_posix()


def test_the_slicer_opens_each_plane_at_the_heatmap_peak(volume_audit):
    directory, sample_id = volume_audit
    assert VolumeSlicer.is_volume_audit(directory)
    slicer = VolumeSlicer(directory)
    axial = slicer.view(sample_id, "axial")
    # The cube fills file voxels 1..3 (side 3 at 16 voxels); the file's x axis is flipped
    # (LAS), so in the canonical RAS order it sits at x = 15 - (1..3) = 12..14, y, z = 1..3.
    assert axial.count == 16 and 1 <= axial.index <= 3
    assert axial.caption.endswith("(heatmap peak)")
    assert axial.image.shape == axial.overlay.shape == (256, 256, 3)
    sagittal = slicer.view(sample_id, "sagittal")
    assert 12 <= sagittal.index <= 14
    moved = slicer.view(sample_id, "axial", 12)
    assert moved.index == 12 and "slice 13 of 16" in moved.caption
    assert not moved.caption.endswith("(heatmap peak)")
    assert not np.array_equal(moved.overlay, axial.overlay)
    assert slicer.view(sample_id, "axial", 99).index == 15  # the slider's end, not an error
    with pytest.raises(ExplorerInputError, match="plane must be one of"):
        slicer.view(sample_id, "oblique")
    with pytest.raises(ExplorerInputError, match="No volume with a heatmap"):
        slicer.view("nope", "axial")


def test_the_app_on_a_3d_audit_shows_the_volume_panel_and_no_explorer_button(volume_audit):
    directory, _ = volume_audit
    blocks = build_app(audit=str(directory), trust_pickle=True)
    ids = {getattr(block, "elem_id", None): block for block in blocks.blocks.values()}
    assert {"volume-plane", "volume-slice", "volume-image", "volume-overlay"} <= set(ids)
    assert ids["audit-open"].visible is False
