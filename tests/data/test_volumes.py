"""Volumes for 3-D models: one sample per NIfTI file or DICOM series, boxes and NIfTI masks in
the source's voxels, the canonical layout, clear errors; the 3-D views of the report."""

from __future__ import annotations

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from shortcut_detect.data.images import (  # noqa: E402
    ImageLoadError,
    ImageRecord,
    ImageRecordDataset,
    ManifestError,
    collate_samples,
    load_volume,
    parse_box,
    read_image_set,
    volume_region,
)
from shortcut_detect.data.medical import read_medical  # noqa: E402
from shortcut_detect.data.medical.synthetic import (  # noqa: E402
    write_synthetic_dicom_series,
    write_synthetic_dicom_set,
    write_synthetic_nifti_set,
)
from shortcut_detect.data.transforms import Preprocessing  # noqa: E402
from shortcut_detect.viz_volume import (  # noqa: E402
    orthogonal_views,
    peak_voxel,
    volume_panel,
    volume_slice,
)


def _nifti(path, array, affine):
    nibabel.save(nibabel.Nifti1Image(array, affine), path)
    return path


def test_boxes_take_four_or_six_numbers():
    assert parse_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    assert parse_box("1,2,3,4,5,6") == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    with pytest.raises(ValueError, match="needs x1 > x0, y1 > y0 and z1 > z0"):
        parse_box("1,2,3,4,5,3")
    with pytest.raises(ValueError, match="x0,y0,z0,x1,y1,z1"):
        parse_box("1,2,3,4,5")
    with pytest.raises(ValueError, match="has 3-D corners"):
        Preprocessing(size=8).box_mask((0, 0, 0, 2, 2, 2), (8, 8))


def test_load_volume_gives_the_same_canonical_layout_for_any_voxel_order(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    flipped = ras.copy()
    flipped[0, 0] = -2.0
    flipped[0, 3] = 10.0  # voxel i=5 of the flipped file is where i=0 of the other is
    first = load_volume(_nifti(tmp_path / "a.nii.gz", data, ras), window="full")
    second = load_volume(_nifti(tmp_path / "b.nii.gz", data[::-1].copy(), flipped), window="full")
    np.testing.assert_allclose(first.array, second.array)
    np.testing.assert_allclose(first.affine, second.affine)
    with pytest.raises(ImageLoadError, match="is not a 3-D volume"):
        load_volume(write_synthetic_dicom_set(tmp_path / "dcm", 1, size=32).paths[0])


def test_a_volume_box_follows_the_file_voxels_through_the_reorientation(tmp_path):
    data = np.zeros((10, 12, 14), dtype=np.float32)
    data[1:3, 2:5, 3:7] = 1.0
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: the canonical order flips x
    path = _nifti(tmp_path / "v.nii.gz", data, affine)
    region = volume_region(("box", (1, 2, 3, 3, 5, 7)), str(path))
    np.testing.assert_array_equal(region, load_volume(path, window="full").array > 0.5)
    mask = _nifti(tmp_path / "mask.nii.gz", (data > 0).astype(np.uint8), affine)
    np.testing.assert_array_equal(volume_region(("file", str(mask)), str(path)), region)
    small = _nifti(tmp_path / "small.nii.gz", np.zeros((5, 5, 5), np.uint8), affine)
    with pytest.raises(ImageLoadError, match=r"differs from the volume's \(10, 12, 14\)"):
        volume_region(("file", str(small)), str(path))
    with pytest.raises(ImageLoadError, match="has 2-D corners"):
        volume_region(("box", (1, 2, 3, 4)), str(path))


def test_a_dicom_series_box_counts_x_as_column_y_as_row_z_as_slice(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "s", (6, 10, 8))
    volume = read_medical(series.folder)
    region = volume_region(("box", (2, 3, 1, 4, 6, 2)), str(series.folder))
    expected = np.zeros((6, 10, 8), dtype=np.float32)
    expected[1:2, 3:6, 2:4] = 1.0  # (slice, row, column)
    from dataclasses import replace

    canonical = replace(volume, array=expected).canonical().array > 0.5
    np.testing.assert_array_equal(region, canonical)
    assert region.sum() == 1 * 3 * 2


def test_a_folder_of_series_and_volumes_gives_one_sample_each(tmp_path):
    write_synthetic_dicom_series(tmp_path / "data" / "a" / "patient1", (6, 10, 8), seed=1)
    write_synthetic_dicom_series(tmp_path / "data" / "b" / "patient2", (6, 10, 8), seed=2)
    write_synthetic_nifti_set(tmp_path / "nii", 1, shape=(12, 12, 12), seed=3)
    nifti = next((tmp_path / "nii").rglob("*.nii.gz"))
    nifti.rename(tmp_path / "data" / "a" / "vol.nii.gz")
    image_set = read_image_set(tmp_path / "data", volumes=True)
    assert [(r.sample_id, r.label_name) for r in image_set.records] == [
        ("a/vol.nii.gz", "a"),
        ("a/patient1", "a"),
        ("b/patient2", "b"),
    ]
    assert [r.index for r in image_set.records] == [0, 1, 2]
    assert image_set.records[1].path == str(tmp_path / "data" / "a" / "patient1")
    assert any("2 DICOM series" in note for note in image_set.notes)
    # 2-D models keep one sample per file.
    assert len(read_image_set(tmp_path / "data")) == 6 + 1 + 6
    with pytest.raises(ManifestError, match="drop --slices"):
        read_image_set(tmp_path / "data", volumes=True, slices="axial")


def test_the_dataset_gives_volumes_masks_and_error_rows(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "s", (6, 10, 8))
    flat = write_synthetic_dicom_set(tmp_path / "flat", 1, size=32).paths[0]
    records = [
        ImageRecord("s", 0, str(series.folder), 0, "a", mask=("box", (0, 0, 0, 4, 5, 3))),
        ImageRecord("flat", 1, str(flat), 0, "a"),
        ImageRecord("bad-box", 2, str(series.folder), 0, "a", mask=("box", (0, 0, 1, 1))),
    ]
    preprocessing = Preprocessing(size=(5, 4), depth=3, channels=1)
    batch = collate_samples([ImageRecordDataset(records, preprocessing)[i] for i in range(3)])
    assert batch["image"].shape == (3, 1, 3, 5, 4)
    assert batch["ok"].tolist() == [True, False, False]
    assert "is not a 3-D volume" in batch["error"][1]
    assert "mask of bad-box" in batch["error"][2] and "2-D corners" in batch["error"][2]
    assert batch["has_mask"].tolist() == [True, False, False]
    assert batch["mask"][0].any() and not batch["mask"][0].all()
    values = batch["image"][0]
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def test_volume_views_go_through_the_peak_in_viewer_orientation():
    volume = np.zeros((6, 7, 8), dtype=np.float32)
    heat = np.zeros_like(volume)
    heat[4, 1, 6] = 1.0
    volume[4, 1, 6] = 1.0
    assert peak_voxel(heat) == (4, 1, 6)
    # Radiological orientation: rows anterior (axial) or superior first, columns from the
    # patient's right (x high) or, sagittal, from anterior (y high).
    axial = volume_slice(volume, "axial", 6)
    assert axial.shape == (7, 6) and axial[7 - 1 - 1, 6 - 1 - 4] == 1.0
    coronal = volume_slice(volume, "coronal", 1)
    assert coronal.shape == (8, 6) and coronal[8 - 1 - 6, 6 - 1 - 4] == 1.0
    sagittal = volume_slice(volume, "sagittal", 4)
    assert sagittal.shape == (8, 7) and sagittal[8 - 1 - 6, 7 - 1 - 1] == 1.0
    views = orthogonal_views(volume, heat)
    assert views.point == (4, 1, 6)
    assert views.image.shape == (8, 7 + 6 + 6 + 2 * 2, 3)
    panel = volume_panel(volume, heat, montage=4)
    assert panel.image.shape == panel.overlay.shape
    assert panel.image.shape[0] > views.image.shape[0]
    with pytest.raises(ValueError, match="plane must be one of"):
        volume_slice(volume, "oblique", 0)
