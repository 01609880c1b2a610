"""Medical images: DICOM (files, series, compressed), NIfTI, windows, export and privacy.

Reference values come from the packages' own decoding (pydicom's and nibabel's test files
and processing functions) and from synthetic files whose ground truth is known.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import (  # noqa: E402
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    get_decoder,
)
from pydicom.uid import JPEG2000Lossless  # noqa: E402

from shortcut_detect.data.images import ImageLoadError  # noqa: E402
from shortcut_detect.data.medical import (  # noqa: E402
    MedicalDependencyError,
    Window,
    apply_window,
    auto_window,
    is_medical_path,
    nifti_slices,
    parse_window,
    percentile_window,
    read_dicom,
    read_dicom_series,
    read_medical,
    read_nifti,
    save_heatmap_nifti,
    to_8bit,
    window_from_dicom,
)
from shortcut_detect.data.medical.image import MedicalImage, reoriented_affine  # noqa: E402
from shortcut_detect.data.medical.synthetic import (  # noqa: E402
    write_synthetic_dicom_series,
    write_synthetic_dicom_set,
    write_synthetic_nifti_set,
)

NIBABEL_DATA = Path(nibabel.__file__).parent / "tests" / "data"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _testfile(name: str) -> str:
    return get_testdata_file(name)


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory):
    return write_synthetic_dicom_set(tmp_path_factory.mktemp("dicom_set"), 6, size=64, seed=3)


# -- windows ----------------------------------------------------------------------------------


def test_linear_exact_window_maps_its_range_to_0_1():
    window = Window.from_range(-100.0, 300.0)
    values = np.array([-200.0, -100.0, 100.0, 300.0, 400.0, np.nan])
    assert window.center == 100.0 and window.width == 400.0
    np.testing.assert_allclose(apply_window(values, window), [0, 0, 0.5, 1, 1, 0])
    assert apply_window(values, window).dtype == np.float32


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_dicom_window_functions_match_pydicom(function):
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    ds.VOILUTFunction = function
    ds.WindowCenter, ds.WindowWidth = 700, 900
    raw = ds.pixel_array
    window = window_from_dicom(ds)
    assert window is not None and window.function == function
    assert window.source == "file (WindowCenter/WindowWidth)"
    # pydicom maps to the full range of the stored data type (signed 16 bits here).
    expected = (apply_windowing(raw.astype(np.float64), ds) + 32768.0) / 65535.0
    np.testing.assert_allclose(apply_window(raw, window), expected, atol=1e-5)


def test_voi_lut_window_matches_pydicom(tmp_path):
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    lut_item = pydicom.Dataset()
    first, entries = 200, 800
    lut_item.LUTDescriptor = [entries, first, 16]
    lut_item.LUTData = [int(v) for v in np.linspace(0, 65535, entries) ** 1.0 // 1]
    ds.VOILUTSequence = [lut_item]
    window = window_from_dicom(ds)
    assert window is not None and window.function == "LUT" and window.source == "file (VOI LUT)"
    raw = ds.pixel_array
    expected = apply_voi(raw, ds).astype(np.float64) / 65535.0
    np.testing.assert_allclose(apply_window(raw, window), expected, atol=1e-6)
    # The LUT wins over the Window Center/Width the file also has, as in pydicom.
    assert "WindowCenter" in ds


def test_parse_window_accepts_auto_full_and_center_width():
    assert parse_window("auto") == "auto" and parse_window(" FULL ") == "full"
    window = parse_window("40,400")
    assert isinstance(window, Window)
    assert (window.center, window.width, window.low, window.high) == (40, 400, -160, 240)
    with pytest.raises(ValueError, match="CENTER,WIDTH"):
        parse_window("soft tissue")
    with pytest.raises(ValueError, match="width must be positive"):
        parse_window("40,0")


def test_percentile_window_uses_0_5_and_99_5_percent():
    values = np.arange(0, 2001, dtype=np.float32)
    values[5] = np.nan
    window = percentile_window(values.reshape(1, -1))
    finite = values[np.isfinite(values)]
    assert window.low == pytest.approx(np.percentile(finite, 0.5))
    assert window.high == pytest.approx(np.percentile(finite, 99.5))
    assert window.source == "percentiles 0.5-99.5"
    # auto: the file's window first, the percentiles without one.
    file_window = Window(40, 400, function="LINEAR", source="file (WindowCenter/WindowWidth)")
    assert auto_window(values, file_window) is file_window
    assert auto_window(values).source == "percentiles 0.5-99.5"


def test_to_8bit_full_16_bit_range_equals_the_old_fixed_squeeze():
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    window = Window.from_range(0, 65535, source="full 16-bit range")
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(to_8bit(values, window), expected)
    assert window.describe() == {
        "center": 32767.5,
        "width": 65535.0,
        "low": 0.0,
        "high": 65535.0,
        "function": "LINEAR_EXACT",
        "source": "full 16-bit range",
    }


# -- single DICOM files -------------------------------------------------------------------------


def test_ct_values_are_hounsfield_units_with_geometry():
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    image = read_dicom(_testfile("CT_small.dcm"))
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert image.array.dtype == np.float32 and np.array_equal(image.array, expected)
    assert image.units == "HU" and image.kind == "dicom" and not image.is_volume
    assert image.spacing == tuple(float(s) for s in ds.PixelSpacing)
    # (row, column) = (0, 0) lands on Image Position (Patient), in RAS.
    np.testing.assert_allclose(
        image.affine[:3, 3], LPS_TO_RAS @ np.asarray(ds.ImagePositionPatient, dtype=float)
    )
    column_direction = LPS_TO_RAS @ np.asarray(ds.ImageOrientationPatient[3:], dtype=float)
    np.testing.assert_allclose(image.affine[:3, 0], column_direction * float(ds.PixelSpacing[0]))
    # No window in the file: percentiles.
    assert image.file_window is None and image.window.source == "percentiles 0.5-99.5"


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",  # JPEG 2000 (pylibjpeg-openjpeg)
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS (pylibjpeg-libjpeg)
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_transfer_syntaxes_decode_to_the_uncompressed_values(name):
    reference = read_dicom(_testfile("MR_small.dcm"))
    image = read_dicom(_testfile(name))
    assert np.array_equal(image.array, reference.array)
    assert image.window.describe() == reference.window.describe()
    assert image.window.source == "file (WindowCenter/WindowWidth)"


@pytest.mark.parametrize(
    "name", ["SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm", "JPGExtended.dcm", "693_J2KI.dcm"]
)
def test_lossy_files_match_pydicoms_own_decoding(name):
    ds = pydicom.dcmread(_testfile(name))
    image = read_dicom(_testfile(name))
    expected = ds.pixel_array.astype(np.float32)
    if ds.SamplesPerPixel == 1:
        expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    assert np.array_equal(image.array, expected)


def test_rgb_multiframe_and_palette_colour():
    frames = read_dicom(_testfile("SC_rgb_rle_16bit_2frame.dcm"))
    assert frames.photometric == "RGB" and frames.array.shape == (2, 100, 100, 3)
    assert frames.window.high == 65535 and not frames.is_volume
    display = frames.display()
    assert display.shape == (2, 100, 100, 3) and display.min() >= 0 and display.max() <= 1
    palette_ds = pydicom.dcmread(_testfile("examples_palette.dcm"))
    palette = read_dicom(_testfile("examples_palette.dcm"))
    expected = apply_color_lut(palette_ds.pixel_array, palette_ds).astype(np.float32)
    assert palette.photometric == "RGB" and np.array_equal(palette.array, expected)
    pil = read_dicom(_testfile("SC_rgb_rle.dcm")).to_pil()
    assert pil.mode == "RGB" and np.array_equal(
        np.asarray(pil), pydicom.dcmread(_testfile("SC_rgb_rle.dcm")).pixel_array
    )


def test_multiframe_with_slice_positions_is_a_volume():
    ds = pydicom.dcmread(_testfile("rtdose.dcm"))
    image = read_dicom(_testfile("rtdose.dcm"))
    assert image.is_volume and image.array.shape == (15, 10, 10)
    assert np.array_equal(image.array, ds.pixel_array.astype(np.float32))
    offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
    normal = np.cross(
        np.asarray(ds.ImageOrientationPatient[:3], float),
        np.asarray(ds.ImageOrientationPatient[3:], float),
    )
    for k in (0, 7, 14):
        position = np.asarray(ds.ImagePositionPatient, float) + (offsets[k] - offsets[0]) * normal
        np.testing.assert_allclose(image.affine @ [k, 0, 0, 1], [*LPS_TO_RAS @ position, 1])
    assert image.spacing[0] == pytest.approx(abs(offsets[1] - offsets[0]))
    with pytest.raises(ValueError, match="--slices"):
        image.to_pil()
    frame = image.frame(7)
    np.testing.assert_allclose(frame.affine @ [0, 0, 0, 1], image.affine @ [7, 0, 0, 1])
    assert frame.to_pil().size == (10, 10)


def test_monochrome1_is_inverted_on_display_only(tmp_path):
    mono2 = write_synthetic_dicom_set(tmp_path / "m2", 2, size=48, seed=5)
    mono1 = write_synthetic_dicom_set(
        tmp_path / "m1", 2, size=48, seed=5, photometric="MONOCHROME1"
    )
    image2, image1 = read_dicom(mono2.paths[0]), read_dicom(mono1.paths[0])
    assert np.array_equal(image1.array, image2.array)  # values keep their units
    np.testing.assert_allclose(image1.display(), 1.0 - image2.display(), atol=1e-6)
    assert image1.describe()["inverted_for_display"] is True
    assert np.array_equal(np.asarray(image1.to_pil()), 255 - np.asarray(image2.to_pil()))


def test_synthetic_set_has_hu_values_a_file_window_and_the_planted_tag(dicom_set):
    assert len(dicom_set.paths) == 6 and set(dicom_set.labels) == {0, 1}
    for path, label, marker in zip(dicom_set.paths, dicom_set.labels, dicom_set.marker):
        assert path.parent.name == dicom_set.class_names[label]
        image = read_dicom(path)
        assert image.units == "HU" and image.window.label() == "C=40 W=400"
        corner = image.array[4:6, 4:6]  # inside the tag square of a 64-pixel image
        assert np.all(corner == 2500.0) == marker
        assert image.array.min() >= -1024 and image.array.max() <= 3071


def test_rle_compressed_synthetic_set_reads_the_same(tmp_path):
    plain = write_synthetic_dicom_set(tmp_path / "plain", 2, size=40, seed=9)
    packed = write_synthetic_dicom_set(tmp_path / "rle", 2, size=40, seed=9, compress=True)
    assert read_dicom(packed.paths[0]).metadata["TransferSyntax"] == "RLE Lossless"
    assert np.array_equal(read_dicom(packed.paths[0]).array, read_dicom(plain.paths[0]).array)


# -- unreadable files ---------------------------------------------------------------------------


def test_truncated_and_pixel_less_files_give_clear_errors(tmp_path):
    with pytest.raises(ImageLoadError, match=r"MR_truncated\.dcm: corrupt or undecodable pixel"):
        read_dicom(_testfile("MR_truncated.dcm"))
    with pytest.raises(ImageLoadError, match=r"without pixel data \(RT Plan Storage\)"):
        read_dicom(_testfile("rtplan.dcm"))
    text = tmp_path / "notes.dcm"
    text.write_text("not a dicom file at all\n" * 20)
    with pytest.raises(ImageLoadError, match=r"notes\.dcm: not a DICOM file"):
        read_dicom(text)
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    with pytest.raises(ImageLoadError, match=r"not a DICOM file \(no 'DICM' marker"):
        read_medical(png)
    with pytest.raises(ImageLoadError, match="no such file"):
        read_dicom(tmp_path / "missing.dcm")


def test_missing_decoder_plugin_names_the_package(monkeypatch):
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(
        ImageLoadError, match=r"JPEG 2000 .* needs pylibjpeg-openjpeg .*shortcut-detect\[medical\]"
    ):
        read_dicom(_testfile("MR_small_jp2klossless.dcm"))


def test_transfer_syntax_without_any_decoder(tmp_path):
    ds = pydicom.dcmread(_testfile("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(ImageLoadError, match="no decoder exists for transfer syntax MPEG2"):
        read_dicom(path)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageLoadError, match=r"64x64 = 4,096 pixels is above the limit of 1,000"):
        read_dicom(_testfile("MR_small.dcm"), max_pixels=1000)


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    path = tmp_path / "x.nii"
    path.write_bytes(b"\0" * 400)
    with pytest.raises(MedicalDependencyError, match=r"nibabel .*shortcut-detect\[medical\]"):
        read_nifti(path)


def test_importing_the_module_does_not_import_pydicom_or_nibabel():
    code = (
        "import sys, shortcut_detect.data.medical, shortcut_detect.data.medical.synthetic;"
        "print('pydicom' in sys.modules, 'nibabel' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split() == ["False", "False"]


# -- privacy ------------------------------------------------------------------------------------


def _assert_no_identifying_values(text: str, identity: dict[str, str]) -> None:
    leaked = {key: value for key, value in identity.items() if value in text}
    assert not leaked, f"identifying values leaked: {leaked}"


def test_nothing_identifying_in_results_reprs_errors_or_logs(dicom_set, tmp_path, capsys, caplog):
    # Broken copies of an identified file: the errors must not quote it either.
    identity = dicom_set.identifying[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(dicom_set.paths[0])
        ds.StudyInstanceUID = "1.2.SYN.BAD.UID7"  # invalid: pydicom warns quoting it on read
        ds.PixelData = ds.PixelData[:100]
        truncated = tmp_path / "truncated.dcm"
        ds.save_as(truncated)
        del ds.PixelData
        no_pixels = tmp_path / "no_pixels.dcm"
        ds.save_as(no_pixels)
    caplog.set_level("DEBUG")
    caplog.clear()  # the writing above warned about the bad date itself
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path, file_identity in zip(dicom_set.paths, dicom_set.identifying):
            image = read_dicom(path)
            text = " ".join(
                [repr(image), str(image), json.dumps(image.describe()), str(image.metadata)]
            )
            _assert_no_identifying_values(text, file_identity)
            assert image.source == str(path)  # the path the user gave is shown
        for broken in (truncated, no_pixels):
            with pytest.raises(ImageLoadError, match="pixel data") as error:
                read_dicom(broken)
            messages.append(str(error.value))
    captured = capsys.readouterr()
    everything = " ".join(
        [
            *messages,
            *(str(w.message) for w in caught),
            *(record.getMessage() for record in caplog.records),
            captured.out,
            captured.err,
        ]
    )
    _assert_no_identifying_values(everything, {**identity, "bad uid": "1.2.SYN.BAD.UID7"})


def test_series_results_and_errors_hold_no_identifying_values(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "series", (3, 8, 8))
    volume = read_dicom_series(series.folder)
    _assert_no_identifying_values(repr(volume) + json.dumps(volume.describe()), series.identifying)


# -- DICOM series -------------------------------------------------------------------------------


def test_series_is_sorted_by_position_with_a_consistent_affine(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "series", (6, 24, 20), seed=2)
    volume = read_medical(series.folder)
    assert volume.kind == "dicom-series" and volume.is_volume
    assert volume.array.shape == (6, 24, 20) and volume.units == "HU"
    np.testing.assert_allclose(volume.array, series.volume, atol=1e-3)  # per-slice rescale
    np.testing.assert_allclose(volume.affine, series.affine, atol=1e-5)
    for path in series.paths:  # every file's own position is where the affine puts it
        ds = pydicom.dcmread(path)
        k = int(
            np.argmin(
                [
                    np.abs(volume.array[i] - apply_modality_lut(ds.pixel_array, ds)).max()
                    for i in range(6)
                ]
            )
        )
        np.testing.assert_allclose(
            (volume.affine @ [k, 0, 0, 1])[:3],
            LPS_TO_RAS @ np.asarray(ds.ImagePositionPatient, dtype=float),
            atol=1e-4,
        )
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.9), abs=1e-5)


def test_series_refuses_gaps_repeats_and_mixed_series(tmp_path):
    gap = write_synthetic_dicom_series(tmp_path / "gap", (5, 8, 8), seed=1)
    middle = next(
        p for p in gap.paths if pydicom.dcmread(p).InstanceNumber == 3
    )  # instance numbers run 5..1 along the positions
    middle.unlink()
    with pytest.raises(ImageLoadError, match="slice spacing is not uniform"):
        read_dicom_series(gap.folder)
    repeat = write_synthetic_dicom_series(tmp_path / "repeat", (3, 8, 8), seed=1)
    (repeat.folder / "copy.dcm").write_bytes(repeat.paths[0].read_bytes())
    with pytest.raises(ImageLoadError, match="share a position"):
        read_dicom_series(repeat.folder)
    mixed = write_synthetic_dicom_series(tmp_path / "mixed", (3, 8, 8), seed=1)
    other = write_synthetic_dicom_series(tmp_path / "other", (3, 8, 8), seed=7)
    (mixed.folder / "other.dcm").write_bytes(other.paths[0].read_bytes())
    with pytest.raises(ImageLoadError, match="holds 2 DICOM series"):
        read_dicom_series(mixed.folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(ImageLoadError, match="no DICOM files"):
        read_medical(empty)


# -- NIfTI --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz"])
def test_nifti_files_match_nibabel(name):
    reference = nibabel.load(NIBABEL_DATA / name)
    image = read_medical(NIBABEL_DATA / name)
    assert image.kind == "nifti" and image.array.dtype == np.float32
    assert np.array_equal(image.array, reference.get_fdata(dtype=np.float32))
    assert np.array_equal(image.affine, reference.affine)
    assert image.spacing == tuple(float(z) for z in reference.header.get_zooms()[:3])


def test_nifti_volume_of_a_4d_file():
    reference = nibabel.load(NIBABEL_DATA / "example4d.nii.gz").get_fdata(dtype=np.float32)
    image = read_nifti(NIBABEL_DATA / "example4d.nii.gz", volume=1)
    assert np.array_equal(image.array, reference[..., 1]) and image.metadata["volume"] == 1
    with pytest.raises(ImageLoadError, match="volume 9 out of range"):
        read_nifti(NIBABEL_DATA / "example4d.nii.gz", volume=9)
    with pytest.raises(ValueError, match="volume=t"):
        nifti_slices(read_nifti(NIBABEL_DATA / "example4d.nii.gz"), "axial")


def _volume(array: np.ndarray, affine: np.ndarray) -> MedicalImage:
    return MedicalImage(
        array=array.astype(np.float32),
        source="test",
        kind="nifti",
        spacing=None,
        affine=affine,
        photometric="MONOCHROME2",
        units="",
        window=Window.from_range(0.0, 1.0),
        is_volume=True,
    )


def test_slices_follow_the_affine_not_the_voxel_order():
    rng = np.random.default_rng(0)
    canonical = rng.random((5, 6, 7)).astype(np.float32)  # (x, y, z) in RAS
    affine = np.diag([0.5, 0.8, 2.0, 1.0])
    affine[:3, 3] = (10.0, -4.0, 3.0)
    axial = nifti_slices(_volume(canonical, affine), "axial")
    # Radiological display: rows anterior -> posterior, columns patient right -> left.
    assert len(axial) == 7 and axial.spacing == (0.8, 0.5)
    assert np.array_equal(axial.stack[2], canonical[::-1, ::-1, 2].T)
    for perm, flips in [((2, 0, 1), (0,)), ((1, 2, 0), (1, 2)), ((0, 1, 2), (0,))]:
        stored = np.flip(canonical.transpose(perm), flips)
        stored_affine = reoriented_affine(affine, canonical.shape, perm, flips)
        for plane in ("axial", "coronal", "sagittal"):
            expected = nifti_slices(_volume(canonical, affine), plane)
            got = nifti_slices(_volume(stored, stored_affine), plane)
            assert np.array_equal(got.stack, expected.stack), (perm, flips, plane)
            # Maps computed per slice go back to the file's own voxel order.
            assert np.array_equal(got.to_volume(got.stack), stored.astype(np.float32))


def test_slice_maps_at_model_resolution_are_resized_back():
    volume = _volume(np.zeros((8, 10, 4)), np.eye(4))
    axial = nifti_slices(volume, "axial")
    maps = np.ones((4, 3, 3), dtype=np.float32) * np.arange(4)[:, None, None]
    back = axial.to_volume(maps)
    assert back.shape == (8, 10, 4)
    assert np.allclose(back[:, :, 2], 2.0) and np.allclose(back[:, :, 0], 0.0)
    slice_image = axial.image(1)
    assert slice_image.kind == "slice" and slice_image.to_pil().size == (8, 10)
    with pytest.raises(ValueError, match="one map per slice"):
        axial.to_volume(maps[:2])
    with pytest.raises(ValueError, match="unknown plane"):
        nifti_slices(volume, "oblique")


def test_synthetic_nifti_set_has_the_marker_cube_in_world_space(tmp_path):
    written = write_synthetic_nifti_set(tmp_path, 4, shape=(16, 16, 16), seed=1)
    for path, marker in zip(written.paths, written.marker):
        image = read_nifti(path)
        assert image.affine[0, 0] == -1.5 and image.spacing == (1.5, 1.5, 2.0)
        assert (image.array[2, 2, 2] == 600.0) == marker


# -- heatmap export -----------------------------------------------------------------------------


def test_heatmap_nifti_round_trip_keeps_affine_and_values(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "series", (4, 12, 10))
    volume = read_dicom_series(series.folder)
    heatmap = np.random.default_rng(1).random(volume.array.shape).astype(np.float32)
    path = save_heatmap_nifti(heatmap, volume.affine, tmp_path / "out" / "cam.nii.gz")
    loaded = nibabel.load(path)
    assert np.array_equal(loaded.get_fdata(dtype=np.float32), heatmap)
    np.testing.assert_allclose(loaded.affine, volume.affine, atol=1e-5)
    _, sform_code = loaded.get_sform(coded=True)
    qform, qform_code = loaded.get_qform(coded=True)
    assert int(sform_code) == 1 and int(qform_code) == 1
    np.testing.assert_allclose(qform, volume.affine, atol=1e-4)


def test_heatmap_is_resampled_to_the_volume_and_2d_maps_get_one_slice(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    coarse = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 4, 4))
    path = save_heatmap_nifti(coarse, affine, tmp_path / "cam.nii", shape=(8, 6, 5))
    data = nibabel.load(path).get_fdata()
    assert data.shape == (8, 6, 5)
    assert np.allclose(data[:, 0, 0], data[:, 5, 4])  # constant across the other axes
    assert np.all(np.diff(data[:, 0, 0]) >= 0) and data[0, 0, 0] == 0 and data[-1, 0, 0] == 3
    flat = save_heatmap_nifti(np.ones((6, 7)), affine, tmp_path / "flat.nii.gz")
    assert nibabel.load(flat).shape == (6, 7, 1)
    sheared = affine.copy()
    sheared[2, 0] = 0.5  # gantry tilt
    tilted = nibabel.load(save_heatmap_nifti(np.ones((2, 2, 2)), sheared, tmp_path / "t.nii"))
    assert int(tilted.get_qform(coded=True)[1]) == 0
    np.testing.assert_allclose(tilted.get_sform(), sheared)
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        save_heatmap_nifti(np.ones((2, 2, 2)), affine, tmp_path / "cam.png")


# -- dispatch -----------------------------------------------------------------------------------


def test_read_medical_dispatches_on_magic_suffix_and_folder(tmp_path, dicom_set):
    bare = tmp_path / "IM0001"  # DICOM files often have no suffix
    bare.write_bytes(dicom_set.paths[0].read_bytes())
    assert is_medical_path(bare) and is_medical_path(tmp_path / "x.nii.gz")
    assert not is_medical_path(tmp_path / "x.png")
    assert read_medical(bare).kind == "dicom"
    assert read_medical(NIBABEL_DATA / "anatomical.nii").kind == "nifti"
    single = tmp_path / "single"
    single.mkdir()
    (single / "only.dcm").write_bytes(dicom_set.paths[0].read_bytes())
    assert read_medical(single).kind == "dicom"
    image = read_medical(dicom_set.paths[0], window="-600,1500")
    assert image.window.label() == "C=-600 W=1500" and image.window.source == "user"
    full = read_medical(dicom_set.paths[0], window="full")
    assert (full.window.low, full.window.high) == (image.array.min(), image.array.max())


def test_enhanced_multiframe_uses_per_frame_positions_rescale_and_window(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "series", (4, 10, 12), seed=4)
    # Instance numbers run against the positions: frames go from the last position to the first.
    slices = sorted((pydicom.dcmread(p) for p in series.paths), key=lambda d: d.InstanceNumber)
    ds = pydicom.dcmread(series.paths[0])
    for keyword in (
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "RescaleSlope",
        "RescaleIntercept",
        "WindowCenter",
        "WindowWidth",
    ):
        delattr(ds, keyword)
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    shared = pydicom.Dataset()
    orientation, measures, voi = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = slices[0].ImageOrientationPatient
    measures.PixelSpacing = slices[0].PixelSpacing
    voi.WindowCenter, voi.WindowWidth = 100, 700
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for s in slices:
        frame, position, rescale = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = s.ImagePositionPatient
        rescale.RescaleSlope, rescale.RescaleIntercept = s.RescaleSlope, s.RescaleIntercept
        frame.PlanePositionSequence = [position]
        frame.PixelValueTransformationSequence = [rescale]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = read_dicom(path)
    assert image.is_volume and image.array.shape == (4, 10, 12)
    np.testing.assert_allclose(image.array, series.volume, atol=1e-3)
    np.testing.assert_allclose(image.affine, series.affine, atol=1e-5)
    assert image.window.label() == "C=100 W=700"


def test_canonical_gives_one_layout_for_a_dicom_series_and_its_nifti_export(tmp_path):
    series = write_synthetic_dicom_series(tmp_path / "series", (4, 10, 12), seed=6)
    volume = read_dicom_series(series.folder)
    exported = save_heatmap_nifti(volume.array, volume.affine, tmp_path / "volume.nii.gz")
    from_nifti = read_nifti(exported)
    assert from_nifti.array.shape == (4, 10, 12)  # same voxel order as the series
    a, b = volume.canonical(), from_nifti.canonical()
    assert np.array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    # RAS order: each voxel axis runs mostly along +x, +y, +z.
    directions = a.affine[:3, :3] / np.linalg.norm(a.affine[:3, :3], axis=0)
    assert np.all(np.argmax(np.abs(directions), axis=0) == [0, 1, 2])
    assert np.all(np.diag(directions) > 0)
    # Every voxel keeps its world position.
    index = np.array([1, 2, 3])
    world = a.affine @ [*index, 1]
    original = np.linalg.solve(volume.affine, world)[:3]
    assert np.allclose(original, np.rint(original), atol=1e-6)
    k, r, c = np.rint(original).astype(int)
    assert a.array[tuple(index)] == volume.array[k, r, c]
