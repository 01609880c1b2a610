"""DICOM and NIfTI files through the image pipeline: load_image, image sets, slices, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

from PIL import Image  # noqa: E402

from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit  # noqa: E402
from shortcut_detect.data.images import (  # noqa: E402
    MEDICAL_EXTENSIONS,
    ImageLoadError,
    ImageRecordDataset,
    ManifestError,
    common_image_size,
    load_image,
    read_image_set,
    slice_reference,
)
from shortcut_detect.data.medical import (  # noqa: E402
    MEDICAL_SUFFIXES,
    describe_window_spec,
    nifti_slices,
    read_medical,
)
from shortcut_detect.data.medical.synthetic import (  # noqa: E402
    write_synthetic_dicom_set,
    write_synthetic_nifti_set,
)
from shortcut_detect.data.transforms import Preprocessing  # noqa: E402


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory):
    return write_synthetic_dicom_set(tmp_path_factory.mktemp("dicom"), 6, size=40, seed=3)


@pytest.fixture(scope="module")
def nifti_set(tmp_path_factory):
    return write_synthetic_nifti_set(
        tmp_path_factory.mktemp("nifti"), 4, shape=(16, 14, 12), agreement=1.0, seed=4, marker="rod"
    )


def test_medical_suffixes_agree_with_the_medical_package():
    assert MEDICAL_EXTENSIONS == MEDICAL_SUFFIXES


def test_load_image_reads_dicom_with_the_medical_reader_and_its_window(dicom_set):
    path = dicom_set.paths[0]
    image = load_image(path)
    expected = read_medical(path).to_pil()
    assert image.mode == "L" and image.size == (40, 40)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    # The files' own window is C=40 W=400 (auto); a lung window shows the lung, not black.
    lung = np.asarray(load_image(path, window="-600,1500"))
    soft = np.asarray(image)
    medical = read_medical(path)
    lung_pixels = (medical.array > -900) & (medical.array < -800)
    assert soft[lung_pixels].max() == 0
    assert lung[lung_pixels].min() > 20


def test_dicom_without_suffix_is_recognised_by_its_marker(dicom_set, tmp_path):
    plain = tmp_path / "IM0001"
    plain.write_bytes(dicom_set.paths[1].read_bytes())
    np.testing.assert_array_equal(
        np.asarray(load_image(plain)), np.asarray(load_image(dicom_set.paths[1]))
    )


def test_16_bit_png_keeps_the_fixed_scaling_by_default_and_takes_a_window(tmp_path):
    values = np.array([[1000, 1500], [2500, 3000]], dtype=np.uint16)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(
        np.asarray(load_image(path)), np.rint(values / 257.0).astype(np.uint8)
    )
    windowed = np.asarray(load_image(path, window="2000,1000"))
    np.testing.assert_array_equal(windowed, [[0, 0], [255, 255]])
    full = np.asarray(load_image(path, window="full"))
    assert full[0, 0] == 0 and full[1, 1] == 255


def test_image_folder_lists_dicom_files(dicom_set):
    image_set = read_image_set(dicom_set.root)
    assert len(image_set) == 6
    assert {r.label_name for r in image_set.records} == set(dicom_set.class_names)
    assert common_image_size(r.path for r in image_set.records) == (40, 40)


def test_volume_without_slices_is_an_error_naming_the_option(nifti_set):
    with pytest.raises(ImageLoadError, match=r"--slices axial\|coronal\|sagittal"):
        load_image(nifti_set.paths[0])
    dataset = ImageRecordDataset(
        read_image_set(nifti_set.root).records, Preprocessing(size=16, channels=1)
    )
    item = dataset[0]
    assert item["ok"] is False and "--slices" in item["error"]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_slices_expand_volumes_into_one_record_per_slice(nifti_set, plane):
    image_set = read_image_set(nifti_set.root, slices=plane)
    volume = read_medical(nifti_set.paths[0])
    slices = nifti_slices(volume, plane)
    assert len(image_set) == 4 * len(slices)
    assert any(f"{plane} slices" in note for note in image_set.notes)
    first = str(nifti_set.paths[0])
    mine = [r for r in image_set.records if r.path.startswith(first + "#")]
    assert [r.path for r in mine] == [f"{first}#{plane}={i}" for i in range(len(slices))]
    assert [r.index for r in image_set.records] == list(range(len(image_set)))
    label_name = nifti_set.class_names[nifti_set.labels[0]]
    assert {r.label_name for r in mine} == {label_name}
    for index in (0, len(slices) - 1):
        np.testing.assert_array_equal(
            np.asarray(load_image(f"{first}#{plane}={index}")),
            np.asarray(slices.image(index).to_pil()),
        )


def test_axial_slices_of_a_rod_volume_all_show_the_marker(nifti_set):
    marked = nifti_set.paths[nifti_set.marker.index(True)]
    for index in range(12):
        pixels = np.asarray(load_image(f"{marked}#axial={index}"))
        assert pixels.max() == 255 and (pixels == 255).sum() >= 4


def test_slice_reference_rules(nifti_set, tmp_path):
    path = str(nifti_set.paths[0])
    assert slice_reference(f"{path}#coronal=3") == (path, "coronal", 3)
    assert slice_reference(f"{path}#oblique=3") is None
    real = tmp_path / "scan#axial=1.png"
    Image.new("L", (4, 4)).save(real)
    assert slice_reference(real) is None
    assert load_image(real).size == (4, 4)
    with pytest.raises(ImageLoadError, match="no axial slice 99"):
        load_image(f"{path}#axial=99")


def test_unknown_slice_plane_is_refused(nifti_set):
    with pytest.raises(ManifestError, match="--slices takes axial, coronal, sagittal"):
        read_image_set(nifti_set.root, slices="oblique")


def test_the_dataset_applies_the_preprocessing_window(dicom_set):
    records = read_image_set(dicom_set.root).records[:2]
    soft = ImageRecordDataset(records, Preprocessing(size=40, channels=1, window="40,400"))
    lung = ImageRecordDataset(records, Preprocessing(size=40, channels=1, window="-600,1500"))
    expected = torch.from_numpy(
        np.asarray(load_image(records[0].path, window="-600,1500"), dtype=np.float32) / 255.0
    )
    assert soft[0]["ok"] and lung[0]["ok"]
    torch.testing.assert_close(lung[0]["image"][0], expected)
    assert not torch.equal(soft[0]["image"], lung[0]["image"])


def test_preprocessing_window_is_normalised_checked_and_round_trips():
    prep = Preprocessing(size=8, window=" 40 , 400 ")
    assert prep.window == "40,400"
    assert Preprocessing.from_dict(prep.to_dict()).window == "40,400"
    assert "intensity window 40,400" in prep.describe()
    assert Preprocessing(size=8, window="AUTO").window == "auto"
    with pytest.raises(ValueError, match="'auto', 'full' or 'CENTER,WIDTH'"):
        Preprocessing(size=8, window="bright")


def test_window_spec_descriptions():
    assert describe_window_spec(None)["spec"] == "default"
    assert "percentiles 0.5-99.5" in describe_window_spec("auto")["text"]
    described = describe_window_spec("40,400")
    assert (described["low"], described["high"]) == (-160.0, 240.0)
    assert "C=40 W=400" in described["text"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window": "40"}, r"window= takes 'auto', 'full' or 'CENTER,WIDTH'"),
        ({"slices": "oblique"}, r"slices= must be one of axial, coronal, sagittal"),
    ],
)
def test_audit_refuses_bad_medical_options_up_front(tmp_path, changes, message):
    options = AuditOptions(model="demo", data=str(tmp_path), out=str(tmp_path / "out"), **changes)
    with pytest.raises(AuditError, match=message):
        run_audit(options)
