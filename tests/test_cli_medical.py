"""``shortcut-detect explain`` on DICOM and NIfTI files: windows, slices, NIfTI export."""

from __future__ import annotations

import json

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from shortcut_detect.cli import _join_number_lists, main  # noqa: E402
from shortcut_detect.data.medical import read_medical  # noqa: E402
from shortcut_detect.data.medical.synthetic import (  # noqa: E402
    write_synthetic_dicom_set,
    write_synthetic_nifti_set,
)


def test_number_options_become_one_token_so_negative_values_parse():
    assert _join_number_lists(["audit", "--window", "-600,1500", "--mean", "-0.5", "0.5"]) == [
        "audit",
        "--window=-600,1500",
        "--mean=-0.5,0.5",
    ]
    assert _join_number_lists(["--window", "auto", "a.dcm"]) == ["--window", "auto", "a.dcm"]


def test_explain_exports_volume_heatmaps_aligned_with_the_source(tmp_path, capsys):
    volumes = write_synthetic_nifti_set(
        tmp_path / "nii", 2, shape=(20, 18, 12), seed=7, marker="rod"
    )
    dicoms = write_synthetic_dicom_set(tmp_path / "dcm", 2, size=40, seed=8)
    volume_path, dicom_path = volumes.paths[0], dicoms.paths[0]
    out = tmp_path / "explained"
    status = main(
        [
            "explain",
            str(volume_path),
            str(dicom_path),
            "--model",
            "demo:shortcut",
            "--slices",
            "axial",
            "--window",
            "-100,400",
            "--export-nifti",
            "--out",
            str(out),
        ]
    )
    assert status == 0, capsys.readouterr().err
    listing = json.loads((out / "explanations.json").read_text())
    assert listing["slices"] == "axial" and listing["window"]["spec"] == "-100,400"
    volume = read_medical(volume_path)
    rows = [row for row in listing["images"] if row["image"].startswith(f"{volume_path}#")]
    assert [row["image"] for row in rows] == [f"{volume_path}#axial={i}" for i in range(12)]
    exported = nibabel.load(rows[0]["nifti"])
    assert exported.shape == (20, 18, 12)
    np.testing.assert_allclose(exported.affine, nibabel.load(volume_path).affine)
    np.testing.assert_allclose(exported.affine, volume.affine)
    data = np.asarray(exported.dataobj)
    assert np.isfinite(data).all() and data.max() > 0
    # One overlay per slice next to the 3-D map.
    stem = volume_path.name[: -len(".nii.gz")]
    assert sorted(p.name for p in out.glob(f"{stem}_axial*_overlay.png")) == [
        f"{stem}_axial{i:03d}_overlay.png" for i in range(12)
    ]
    dicom_row = next(row for row in listing["images"] if row["image"] == str(dicom_path))
    dicom_image = read_medical(dicom_path)
    assert dicom_row["pixel_spacing_mm"] == list(dicom_image.spacing)
    if dicom_image.affine is None:
        assert dicom_row["nifti"] is None
    else:
        flat = nibabel.load(dicom_row["nifti"])
        assert flat.shape == (40, 40, 1)
        np.testing.assert_allclose(flat.affine, dicom_image.affine)


def test_explain_refuses_a_bad_window(tmp_path, capsys):
    dicom = write_synthetic_dicom_set(tmp_path / "dcm", 1, size=40).paths[0]
    status = main(["explain", str(dicom), "--model", "demo", "--window", "wide"])
    assert status != 0
    assert "'auto', 'full' or 'CENTER,WIDTH'" in capsys.readouterr().err
