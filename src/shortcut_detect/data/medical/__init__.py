"""Medical images: DICOM files and series, NIfTI volumes, intensity windows, heatmap export.

Needs the ``medical`` extra (pydicom, nibabel, pylibjpeg with its OpenJPEG and libjpeg
plugins): ``pip install 'shortcut-detect[medical]'``; the packages are imported only when a
medical file is read, and a missing one raises :class:`MedicalDependencyError` naming the
extra.

>>> image = read_medical("scan.dcm")               # doctest: +SKIP
>>> image.array                                    # float32, Hounsfield units for CT
>>> image.to_pil()                                 # 8-bit, the file's window applied
>>> image.window.describe()                        # what went into summary.json
"""

from shortcut_detect.data.medical.dicom import (
    DICOM_SUFFIXES,
    SAFE_DICOM_KEYWORDS,
    is_dicom_file,
    read_dicom,
    read_dicom_series,
    safe_dicom_metadata,
)
from shortcut_detect.data.medical.image import (
    MEDICAL_EXTRA,
    MedicalDependencyError,
    MedicalImage,
    require,
)
from shortcut_detect.data.medical.nifti import (
    NIFTI_SUFFIXES,
    PLANES,
    VolumeSlices,
    nifti_slices,
    read_nifti,
    resample_map,
    save_heatmap_nifti,
)
from shortcut_detect.data.medical.reader import MEDICAL_SUFFIXES, is_medical_path, read_medical
from shortcut_detect.data.medical.window import (
    AUTO_PERCENTILES,
    Window,
    WindowSpec,
    apply_window,
    auto_window,
    describe_window_spec,
    parse_window,
    percentile_window,
    resolve_window,
    to_8bit,
    window_from_dicom,
)

__all__ = [
    "AUTO_PERCENTILES",
    "DICOM_SUFFIXES",
    "MEDICAL_EXTRA",
    "MEDICAL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PLANES",
    "SAFE_DICOM_KEYWORDS",
    "MedicalDependencyError",
    "MedicalImage",
    "VolumeSlices",
    "Window",
    "WindowSpec",
    "apply_window",
    "auto_window",
    "describe_window_spec",
    "is_dicom_file",
    "is_medical_path",
    "nifti_slices",
    "parse_window",
    "percentile_window",
    "read_dicom",
    "read_dicom_series",
    "read_medical",
    "read_nifti",
    "require",
    "resample_map",
    "resolve_window",
    "safe_dicom_metadata",
    "save_heatmap_nifti",
    "to_8bit",
    "window_from_dicom",
]
