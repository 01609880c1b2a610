"""3-D models audited end to end on volumes: a planted marker cube is flagged by the region
and group tests, a model that looks at the lesion is not; NIfTI export lands on the source's
voxels; the report shows 3-D views.

The two models are built by hand (1x1x1 convolutions that pick intensity bands, so no
training and no luck): the shortcut model's evidence for "lesion" is the marker's intensity,
the clean model's is the lesion blob's. Both see the organ as evidence for "normal".
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

nibabel = pytest.importorskip("nibabel")
pytest.importorskip("pydicom")

from shortcut_detect.audit.nifti_export import export_audit_nifti  # noqa: E402
from shortcut_detect.audit.pipeline import AuditOptions, run_audit  # noqa: E402
from shortcut_detect.cli import main  # noqa: E402
from shortcut_detect.data.medical.synthetic import (  # noqa: E402
    write_synthetic_dicom_series,
    write_synthetic_nifti_set,
)

SIDE = 24
WINDOW = "250,700"  # -100..600: background 0.14, organ 0.29, lesion 0.5, marker 1.0
CUBE = "1,1,1,5,5,5"  # write_synthetic_nifti_set's cube at 24 voxels: voxels 1..4


def _band_model(evidence: str) -> nn.Module:
    """Channels after the first layer: relu(x - 0.22), relu(x - 0.42), relu(x - 0.6).
    Then "organ" = the 0.22-0.42 band and the evidence channel: the marker (> 0.6) or the
    lesion band (0.42-0.6). Logits: normal = organ mass, lesion = evidence mass - offset."""
    bands = nn.Conv3d(1, 3, 1)
    features = nn.Conv3d(3, 2, 1)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        bands.weight.fill_(1.0)
        bands.bias.copy_(torch.tensor([-0.22, -0.42, -0.6]))
        features.bias.zero_()
        features.weight.zero_()
        features.weight[0, :, 0, 0, 0] = torch.tensor([1.0, -3.0, 0.0])  # organ band
        if evidence == "marker":
            features.weight[1, :, 0, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
            scale = 1000.0
        else:
            features.weight[1, :, 0, 0, 0] = torch.tensor([0.0, 1.0, -3.0])
            scale = 10000.0
        head.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, scale]]))
        head.bias.copy_(torch.tensor([0.0, -0.9]))
    return nn.Sequential(
        bands, nn.ReLU(), features, nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), head
    ).eval()


def _manifest(test, path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "mask"])
        for file, label, marked in zip(test.paths, test.labels, test.marker):
            writer.writerow(
                [
                    file.relative_to(test.root).as_posix(),
                    test.class_names[label],
                    "cube" if marked else "none",
                    CUBE,
                ]
            )
    return path


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("volumes3d")
    test = write_synthetic_nifti_set(
        root / "test", 40, shape=(SIDE,) * 3, agreement=0.5, seed=3, blob_contrast=150.0
    )
    models = {}
    for name, evidence in (("shortcut", "marker"), ("clean", "lesion")):
        models[name] = root / f"{name}.pt"
        torch.save(_band_model(evidence), models[name])
    return SimpleNamespace(
        root=root, test=test, models=models, manifest=_manifest(test, test.root / "m.csv")
    )


def _audit(volumes, name: str, out: Path):
    return run_audit(
        AuditOptions(
            model=str(volumes.models[name]),
            trust_pickle=True,
            classes=list(volumes.test.class_names),
            resize=[SIDE],
            data=str(volumes.manifest),
            out=str(out),
            group_column="group",
            mask_column="mask",
            window=WINDOW,
            num_workers=0,
            n_permutations=200,
            embedding_samples=0,
            progress=False,
        )
    )


def _signals(run) -> dict[str, dict]:
    return {signal["name"]: signal for signal in run.summary["signals"]}


def test_the_hand_built_models_predict_from_their_evidence(volumes):
    from shortcut_detect.data.images import load_volume
    from shortcut_detect.data.transforms import Preprocessing

    preprocessing = Preprocessing(size=(SIDE, SIDE), depth=SIDE, channels=1)
    batch = torch.stack(
        [preprocessing.volume(load_volume(p, window=WINDOW).display()) for p in volumes.test.paths]
    )
    with torch.no_grad():
        shortcut = torch.load(volumes.models["shortcut"], weights_only=False)(batch).argmax(1)
        clean = torch.load(volumes.models["clean"], weights_only=False)(batch).argmax(1)
    np.testing.assert_array_equal(shortcut.numpy(), np.array(volumes.test.marker, dtype=int))
    assert (clean.numpy() == np.array(volumes.test.labels)).mean() >= 0.9


def test_a_marker_cube_shortcut_is_flagged_by_the_region_and_group_tests(volumes, tmp_path):
    run = _audit(volumes, "shortcut", tmp_path / "shortcut")
    assert run.processed == 40 and run.failed == 0
    store_config = json.loads((tmp_path / "shortcut" / "audit.json").read_text())
    assert store_config["input_size"] == [SIDE, SIDE, SIDE]
    assert store_config["cam_size"] == [SIDE, SIDE, SIDE]
    signals = _signals(run)
    assert signals["mask_attention"]["risk"] == "HIGH"
    assert signals["group_attention"]["risk"] == "HIGH"
    assert run.summary["verdict"]["shortcut_suspected"] is True
    # Removing the cube (the model's only evidence for "lesion") changes the predictions.
    given = run.summary["interventions"][0]
    assert given["source"] == "given mask" and given["confirmed"] is True
    assert signals["interventions"]["risk"] == "HIGH"
    examples = given["examples"]
    assert examples and all((tmp_path / "shortcut" / e["removed"]).is_file() for e in examples)
    # The report shows each volume as orthogonal slices and a montage, image and overlay.
    html = (tmp_path / "shortcut" / "report.html").read_text()
    sizes = [_png_size(data) for data in re.findall(r"data:image/png;base64,([\w+/=]+)", html)]
    # 24-voxel volumes: sagittal, coronal, axial (24 each, 2-pixel gaps) over two rows of an
    # 8-slice axial montage: 4 * 24 + 3 * 2 = 102 wide, 24 + 2 + 2 * 24 + 2 = 76 high.
    panel = (102, 76)
    assert sizes.count(panel) >= 8 and sizes.count(panel) % 2 == 0  # image + overlay


def _png_size(data: str) -> tuple[int, int]:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data))).size


def test_a_model_that_reads_the_lesion_is_not_flagged_by_those_tests(volumes, tmp_path):
    run = _audit(volumes, "clean", tmp_path / "clean")
    signals = _signals(run)
    assert signals["mask_attention"]["risk"] == "LOW"
    assert signals["group_attention"]["risk"] == "LOW"
    given = run.summary["interventions"][0]
    assert given["source"] == "given mask" and given["confirmed"] is False
    assert signals["interventions"]["risk"] == "LOW"


def test_audit_export_nifti_puts_each_heatmap_on_its_source_voxels(volumes, tmp_path, capsys):
    out = tmp_path / "cli"
    status = main(
        [
            "audit",
            "--model",
            str(volumes.models["shortcut"]),
            "--trust-pickle",
            "--classes",
            str(_classes_file(volumes, tmp_path)),
            "--resize",
            str(SIDE),
            "--data",
            str(volumes.manifest),
            "--group-column",
            "group",
            "--mask-column",
            "mask",
            "--window",
            WINDOW,
            "--num-workers",
            "0",
            "--permutations",
            "100",
            "--embedding-samples",
            "0",
            "--no-progress",
            "--export-nifti",
            "--out",
            str(out),
        ]
    )
    assert status in (0, 3), capsys.readouterr().err
    exports = json.loads((out / "nifti" / "index.json").read_text())["exports"]
    assert len(exports) == 40
    marked = next(e for e, m in zip(exports, volumes.test.marker) if m)
    source = nibabel.load(marked["path"])
    exported = nibabel.load(marked["nifti"])
    assert exported.shape == source.shape
    np.testing.assert_allclose(exported.affine, source.affine)
    heat = np.asarray(exported.dataobj)
    # The shortcut model's map sits on the cube, in the file's own voxel order.
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert all(1 <= v <= 4 for v in peak)
    assert marked["pixel_spacing_mm"] == [1.5, 1.5, 2.0]


def _classes_file(volumes, tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(volumes.test.class_names))
    return path


def test_a_dicom_series_is_one_volume_sample_exported_in_the_series_geometry(tmp_path):
    from shortcut_detect.data.images import read_image_set
    from shortcut_detect.data.medical import read_dicom_series

    series = [
        write_synthetic_dicom_series(tmp_path / "data" / cls / f"s{i}", (12, 16, 14), seed=i)
        for i, cls in enumerate(["a", "b", "a", "b"])
    ]
    image_set = read_image_set(tmp_path / "data", volumes=True)
    assert sorted(r.sample_id for r in image_set.records) == ["a/s0", "a/s2", "b/s1", "b/s3"]
    torch.save(_band_model("marker"), tmp_path / "m.pt")
    run = run_audit(
        AuditOptions(
            model=str(tmp_path / "m.pt"),
            trust_pickle=True,
            resize=[12, 16, 16],
            data=str(tmp_path / "data"),
            out=str(tmp_path / "audit"),
            window="full",
            num_workers=0,
            n_permutations=50,
            embedding_samples=0,
            progress=False,
        )
    )
    assert run.processed == 4 and run.failed == 0
    exports = json.loads(export_audit_nifti(tmp_path / "audit").read_text())["exports"]
    by_id = {e["sample_id"]: e for e in exports}
    first = read_dicom_series(series[0].folder)
    exported = nibabel.load(by_id["a/s0"]["nifti"])
    assert exported.shape == (12, 16, 14)
    np.testing.assert_allclose(exported.affine, first.affine, atol=1e-6)
    np.testing.assert_allclose(first.affine, series[0].affine, atol=1e-6)
    assert re.search(r"a_s0_heatmap\.nii\.gz$", by_id["a/s0"]["nifti"])
