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


def test_explain_on_a_volume_writes_the_slices_through_the_peak_and_the_nifti(
    tmp_path, capsys, bright_voxel_model_file
):
    from PIL import Image

    from shortcut_detect.data.images import load_volume
    from shortcut_detect.viz_volume import grey_volume, volume_slice

    data = write_synthetic_nifti_set(tmp_path / "nii", 4, shape=(16, 16, 16), agreement=1.0)
    marked = next(p for p, m in zip(data.paths, data.marker) if m)
    out = tmp_path / "explained"
    arguments = ["explain", str(marked), "--model", str(bright_voxel_model_file), "--trust-pickle"]
    arguments += ["--resize", "16", "--window", "250,700", "--export-nifti", "--out", str(out)]
    assert main(arguments) == 0, capsys.readouterr().err
    row = json.loads((out / "explanations.json").read_text())["volumes"][0]
    # The cube fills file voxels 1..3 of a LAS file: canonical x 12..14, y and z 1..3.
    x, y, z = row["peak_voxel"]
    assert 12 <= x <= 14 and 1 <= y <= 3 and 1 <= z <= 3
    assert row["explained_class"] == "1" and row["input_shape"] == [16, 16, 16]  # class 1: marker
    stem = marked.name[: -len(".nii.gz")]
    assert row["slices"] == {
        p: str(out / f"{stem}_{p}.png") for p in ("sagittal", "coronal", "axial")
    }
    # The axial picture is the slice through the peak: the image half holds its values.
    axial = np.asarray(Image.open(row["slices"]["axial"]))
    volume = grey_volume(load_volume(marked, window="250,700").display(), (16, 16, 16))
    expected = np.uint8(np.clip(volume_slice(volume, "axial", z), 0, 1) * 255 + 0.5)
    np.testing.assert_array_equal(axial[:256:16, :256:16, 0], expected)
    # The NIfTI heatmap lies on the file's voxels and affine, its peak in the file's cube.
    exported = nibabel.load(row["nifti"])
    np.testing.assert_allclose(exported.affine, nibabel.load(marked).affine)
    heat = np.asarray(exported.dataobj)
    assert heat.shape == (16, 16, 16)
    assert all(1 <= v <= 3 for v in np.unravel_index(np.argmax(heat), heat.shape))
    # The peak in scanner millimetres is the file's voxel at that place.
    file_voxel = np.linalg.inv(exported.affine) @ np.append(row["peak_mm"], 1.0)
    assert np.allclose(file_voxel[:3], (15 - x, y, z), atol=1e-6)
    assert np.load(row["heatmap"]).ndim == 3


def test_explain_on_a_volume_refuses_2d_only_options(tmp_path, capsys, bright_voxel_model_file):
    data = write_synthetic_nifti_set(tmp_path / "nii", 2, shape=(12, 12, 12))
    arguments = ["explain", str(data.paths[0]), "--model", str(bright_voxel_model_file)]
    arguments += ["--trust-pickle", "--resize", "12", "--method", "lime"]
    assert main(arguments) != 0
    assert "--method lime (superpixels are 2-D) is for 2-D models" in capsys.readouterr().err
