"""Synthetic DICOM and NIfTI data with a planted shortcut, for tests, demos and benchmarks.

* :func:`write_synthetic_dicom_set`: 2-D chest-radiograph-like images in 12-bit CT-like
  values (Hounsfield units after the rescale), a faint nodule in the positive class, and a
  bright corner tag (a lead marker) that agrees with the label with probability
  ``agreement``: the shortcut. Every patient-identifying attribute is filled with fake,
  distinctive values, returned so that a test can check none of them leaks.
* :func:`write_synthetic_dicom_series`: one small oblique CT series, slices shuffled on
  disk, with the volume and affine a reader must recover.
* :func:`write_synthetic_nifti_set`: small 3-D volumes with a marker cube as the shortcut.

Sets use the image-folder layout ``root/<class>/<file>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.data.medical.image import require

__all__ = [
    "SyntheticMedicalSet",
    "SyntheticSeries",
    "fake_identity",
    "write_synthetic_dicom_series",
    "write_synthetic_dicom_set",
    "write_synthetic_nifti_set",
]

_HU_OFFSET = 1024  # stored = HU + 1024 (RescaleIntercept -1024), 12 bits: -1024..3071 HU
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SyntheticMedicalSet:
    """What a synthetic writer produced.

    Attributes
    ----------
    root:
        The folder (one sub-folder per class).
    paths, labels, marker:
        Per file: its path, its class index and whether the shortcut marker is present.
    class_names:
        Sub-folder names in class-index order.
    identifying:
        Per file, the fake patient-identifying values written into it (DICOM only): none
        of them may appear in anything the package shows.
    """

    root: Path
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    marker: tuple[bool, ...]
    class_names: tuple[str, ...]
    identifying: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class SyntheticSeries:
    """A written DICOM series and the ground truth a reader must recover."""

    folder: Path
    paths: tuple[Path, ...]
    volume: np.ndarray  # (slices, rows, columns) in HU, sorted along the slice normal
    affine: np.ndarray  # RAS+ affine of (slice, row, column)
    identifying: dict[str, str]


def _labels_and_markers(
    n: int, agreement: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"agreement is a probability in [0, 1], got {agreement}")
    labels = rng.permutation(np.arange(n) % 2)
    agrees = rng.random(n) < agreement
    marker = np.where(agrees, labels == 1, labels == 0)
    return labels, marker


def _written_set(
    root: Path,
    paths: list[Path],
    labels: np.ndarray,
    marker: np.ndarray,
    class_names: tuple[str, str],
    identities: list[dict[str, str]] | None = None,
) -> SyntheticMedicalSet:
    return SyntheticMedicalSet(
        root=root,
        paths=tuple(paths),
        labels=tuple(int(v) for v in labels),
        marker=tuple(bool(v) for v in marker),
        class_names=tuple(class_names),
        identifying=tuple(identities or ()),
    )


def fake_identity(index: int, rng_seed: int = 0) -> dict[str, str]:
    """Fake values for the attributes of the DICOM basic de-identification profile that a
    viewer would show (distinctive strings, so a leak is easy to find)."""
    tag = f"{rng_seed:02d}{index:05d}"
    return {
        "PatientName": f"Fakename^Patient{tag}^Q",
        "PatientID": f"SYNPID{tag}X",
        "PatientBirthDate": f"19{50 + index % 40:02d}{1 + index % 12:02d}{1 + index % 28:02d}",
        "PatientAddress": f"{index + 1} Nowhere Lane, Faketown {tag}",
        "OtherPatientIDs": f"SYNOTHER{tag}",
        "AccessionNumber": f"SYNACC{tag}",
        "StudyID": f"SYNSTUDY{tag}",
        "InstitutionName": "Synthetic Memorial Hospital of Faketown",
        "InstitutionAddress": "7 Imaginary Road, Faketown",
        "ReferringPhysicianName": "Fakedoc^Alice^Synthetic",
        "OperatorsName": "Faketech^Bob^Synthetic",
        "StationName": "SYNSTATION42",
        "DeviceSerialNumber": "SYNSERIAL987654",
        "StudyDate": "20010911",
        "StudyDescription": f"Fake chest study {tag}",
    }


def _dicom_dataset(
    stored: np.ndarray,
    identity: dict[str, str],
    *,
    uid_seed: str,
    photometric: str,
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    spacing: tuple[float, float] = (0.7, 0.7),
    slope: float = 1.0,
    intercept: float = -_HU_OFFSET,
    window: tuple[float, float] | None = (40.0, 400.0),
    series_uid: str | None = None,
    instance: int = 1,
) -> Any:
    pydicom = require("pydicom", "writing synthetic DICOM files")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid(entropy_srcs=[uid_seed, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[uid_seed, "study"])
    ds.SeriesInstanceUID = series_uid or generate_uid(entropy_srcs=[uid_seed, "series"])
    for keyword, value in identity.items():
        setattr(ds, keyword, value)
    ds.Modality = "CT"
    ds.Manufacturer = "shortcut-detect synthetic"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:g}" for v in window)
    ds.PixelSpacing = [f"{s:g}" for s in spacing]
    ds.SliceThickness = "1"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def _chest_template(size: int) -> tuple[np.ndarray, np.ndarray]:
    """HU image of a chest-like slab, and the mask of its lungs."""
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    body = ((xx - 0.5) / 0.44) ** 2 + ((yy - 0.55) / 0.40) ** 2 <= 1
    lungs = (((xx - 0.31) / 0.13) ** 2 + ((yy - 0.52) / 0.26) ** 2 <= 1) | (
        ((xx - 0.69) / 0.13) ** 2 + ((yy - 0.52) / 0.26) ** 2 <= 1
    )
    spine = (np.abs(xx - 0.5) < 0.04) & (yy > 0.3) & (yy < 0.92)
    image = np.full((size, size), -1000.0)
    image[body] = 40.0
    image[lungs] = -850.0
    image[spine] = 500.0
    return image, lungs


def write_synthetic_dicom_set(
    folder: str | os.PathLike[str],
    n: int,
    *,
    size: int = 256,
    agreement: float = 0.9,
    seed: int = 0,
    class_names: tuple[str, str] = ("normal", "nodule"),
    photometric: str = "MONOCHROME2",
    compress: bool = False,
    nodule_hu: float = 200.0,
    nodule_radius: float = 0.03,
) -> SyntheticMedicalSet:
    """Write ``n`` synthetic 2-D DICOM images with a label-correlated corner tag.

    Parameters
    ----------
    folder:
        Output folder; files go to ``folder/<class name>/img_XXXX.dcm``.
    n:
        Number of images (classes alternate, then are shuffled).
    size:
        Rows and columns.
    agreement:
        Probability that the corner tag (2500 HU, top-left) is present exactly when the
        label is positive; 0.5 makes it uninformative.
    seed:
        Seed of the noise, labels, nodule positions and tags.
    class_names:
        Negative and positive class folder names. The positive class has a faint nodule
        (+200 HU over lung) in one lung: the real signal.
    photometric:
        ``"MONOCHROME2"`` or ``"MONOCHROME1"`` (only the tag changes; the stored values
        are the same).
    compress:
        Store the pixels RLE Lossless (pydicom's own encoder) instead of uncompressed.
    nodule_hu, nodule_radius:
        Contrast of the nodule over the lung (HU) and its radius as a fraction of ``size``
        (at least 2 pixels): a larger, brighter nodule is a task a small model learns from
        a few hundred images. It shows only in a lung window: the files' own window
        (C=40 W=400) maps the whole lung, nodule included, to black.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    root = Path(folder)
    rng = np.random.default_rng(seed)
    labels, marker = _labels_and_markers(n, agreement, rng)
    template, lungs = _chest_template(size)
    lung_pixels = np.argwhere(lungs)
    radius = max(2.0, size * nodule_radius)
    yy, xx = np.mgrid[0:size, 0:size]
    tag = slice(int(size * 0.04), int(size * 0.12))
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    paths, identities = [], []
    for index in range(n):
        hu = template + rng.normal(0.0, 25.0, template.shape)
        if labels[index] == 1:
            cy, cx = lung_pixels[rng.integers(len(lung_pixels))]
            hu[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += nodule_hu
        if marker[index]:
            hu[tag, tag] = 2500.0
        stored = np.clip(np.rint(hu + _HU_OFFSET), 0, 4095).astype(np.uint16)
        identity = fake_identity(index, seed)
        ds = _dicom_dataset(stored, identity, uid_seed=f"{seed}-{index}", photometric=photometric)
        if compress:
            from pydicom.uid import RLELossless

            ds.compress(RLELossless)  # type: ignore[attr-defined]
        path = root / class_names[labels[index]] / f"img_{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
        paths.append(path)
        identities.append({**identity, "SOPInstanceUID": str(ds.SOPInstanceUID)})  # type: ignore[attr-defined]
    return _written_set(root, paths, labels, marker, class_names, identities)


def write_synthetic_dicom_series(
    folder: str | os.PathLike[str],
    shape: tuple[int, int, int] = (6, 24, 20),
    *,
    spacing: tuple[float, float, float] = (2.5, 0.8, 0.9),
    seed: int = 0,
) -> SyntheticSeries:
    """Write one oblique CT series, one file per slice, in shuffled order.

    File names and *Instance Number* run opposite to the slice positions, and every slice
    has its own *Rescale Slope*, so a reader must sort by position and rescale per slice.

    Returns
    -------
    SyntheticSeries
        The files and the true ``(slices, rows, columns)`` HU volume and RAS affine.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    slices, rows, columns = shape
    # An oblique plane: rotate the axial orientation by 20 degrees about the LPS x axis.
    angle = np.deg2rad(20.0)
    row_cos = np.array([1.0, 0.0, 0.0])
    col_cos = np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row_cos, col_cos)
    origin = np.array([-12.5, 30.0, -40.0])
    identity = fake_identity(0, seed)
    series_uid = require("pydicom", "writing synthetic DICOM files").uid.generate_uid(
        entropy_srcs=[str(seed), "series"]
    )
    volume = np.empty(shape, dtype=np.float32)
    paths = []
    for k, position_index in enumerate(rng.permutation(slices)):
        slope = 0.5 * (1 + position_index % 3)
        stored = rng.integers(0, 4096, (rows, columns)).astype(np.uint16)
        volume[position_index] = stored * slope - _HU_OFFSET
        position = origin + position_index * spacing[0] * normal
        ds = _dicom_dataset(
            stored,
            identity,
            uid_seed=f"{seed}-slice-{position_index}",
            photometric="MONOCHROME2",
            position=tuple(position),
            orientation=(*row_cos, *col_cos),
            spacing=(spacing[1], spacing[2]),
            slope=slope,
            series_uid=series_uid,
            instance=slices - position_index,
        )
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
        paths.append(path)
    affine = np.eye(4)
    affine[:3, 0] = normal * spacing[0]
    affine[:3, 1] = col_cos * spacing[1]
    affine[:3, 2] = row_cos * spacing[2]
    affine[:3, 3] = origin
    return SyntheticSeries(folder, tuple(paths), volume, _LPS_TO_RAS @ affine, identity)


def write_synthetic_nifti_set(
    folder: str | os.PathLike[str],
    n: int,
    *,
    shape: tuple[int, int, int] = (32, 32, 32),
    agreement: float = 0.9,
    seed: int = 0,
    class_names: tuple[str, str] = ("normal", "lesion"),
    marker: str = "cube",
    blob_contrast: float = 40.0,
) -> SyntheticMedicalSet:
    """Write ``n`` small NIfTI volumes (``.nii.gz``, int16) with a label-correlated marker
    in one corner (the shortcut) and a faint blob in the positive class (the signal).

    The affine is LAS (x flipped) with 1.5 x 1.5 x 2 mm voxels, so readers must use it.
    ``marker="cube"`` puts a cube in the first corner; ``"rod"`` runs it through every
    axial slice (like a fiducial rod), so a 2-D model fed axial slices sees it on each.
    ``blob_contrast`` is the blob's brightness over the organ (the organ is 100).
    """
    nibabel = require("nibabel", "writing synthetic NIfTI files")
    if min(shape) < 12:
        raise ValueError(f"each side must be at least 12 voxels, got {shape}")
    if marker not in ("cube", "rod"):
        raise ValueError(f"marker must be 'cube' or 'rod', got {marker!r}")
    root = Path(folder)
    rng = np.random.default_rng(seed)
    labels, marked = _labels_and_markers(n, agreement, rng)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1)
    centre = (np.asarray(shape) - 1) / 2.0
    organ = np.sum(((grid - centre) / (np.asarray(shape) * 0.35)) ** 2, axis=-1) <= 1
    affine = np.diag([-1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = (40.0, -30.0, -20.0)
    # A rod is sized by the slice it shows in (axial: the first two axes).
    side = max(3, (min(shape[:2]) if marker == "rod" else min(shape)) // 6)
    for name in class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n):
        volume = rng.normal(0.0, 10.0, shape) + np.where(organ, 100.0, 0.0)
        if labels[index] == 1:
            spot = centre + rng.uniform(-0.15, 0.15, 3) * np.asarray(shape)
            volume[np.sum((grid - spot) ** 2, axis=-1) <= (min(shape) * 0.08) ** 2] += blob_contrast
        if marked[index]:
            depth = slice(None) if marker == "rod" else slice(1, 1 + side)
            volume[1 : 1 + side, 1 : 1 + side, depth] = 600.0
        image = nibabel.Nifti1Image(np.rint(volume).astype(np.int16), affine)
        image.header.set_xyzt_units("mm")
        path = root / class_names[labels[index]] / f"vol_{index:04d}.nii.gz"
        nibabel.save(image, path)
        paths.append(path)
    return _written_set(root, paths, labels, marked, class_names)
