"""The explorer for 3-D models: pick or upload a volume, explain it, look at it slice by slice."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nibabel")

from shortcut_detect.app import make_explorer
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.app.volume_explorer import (
    VolumeExplorer,
    choose_volume,
    choose_volume_upload,
    explain_volume,
)
from shortcut_detect.data.images import load_volume
from shortcut_detect.data.medical.synthetic import write_synthetic_nifti_set
from shortcut_detect.gradcam import GradCAMHeatmapGenerator
from shortcut_detect.viz_volume import peak_voxel, volume_slice

WINDOW = "250,700"  # the marker (600) is white, the organ (100) at 0.64, the air at 0.14
SIDE = 16


@pytest.fixture(scope="module")
def volumes(tmp_path_factory, bright_voxel_model_file):
    root = tmp_path_factory.mktemp("explore3d")
    data = write_synthetic_nifti_set(root / "data", 4, shape=(SIDE,) * 3, agreement=1.0, seed=4)
    marked = next(p for p, m in zip(data.paths, data.marker) if m)
    return bright_voxel_model_file, data, marked


@pytest.fixture
def volume_explorer(volumes):
    model_file, data, _ = volumes
    explorer = make_explorer(
        str(model_file),
        data=str(data.root),
        trust_pickle=True,
        resize=[SIDE],
        window=WINDOW,
    )
    assert isinstance(explorer, VolumeExplorer)
    return explorer


def test_a_picked_volume_opens_at_the_heatmap_peak_with_the_slice_values(volume_explorer, volumes):
    _, data, marked = volumes
    sample_id = marked.relative_to(data.root).as_posix()
    assert sorted(volume_explorer.sample_ids()) == sorted(
        p.relative_to(data.root).as_posix() for p in data.paths
    )
    selection, status = choose_volume(volume_explorer, sample_id)
    assert selection is not None and "Press **Generate**" in status
    explained = explain_volume(volume_explorer, selection, "", "gradcam", "predicted", "axial", 0.5)
    result, shown = explained.result, explained.shown
    assert result is not None and shown is not None, explained.status
    # The same heatmap the engine gives on the audit's model input of this file.
    volume = load_volume(marked, window=WINDOW)
    model_input = volume_explorer.preprocessing.volume(volume.display())
    model = volume_explorer.get_model().model
    engine = GradCAMHeatmapGenerator(model, "0").explain(model_input[None], [("logits", None)])
    np.testing.assert_allclose(result.heatmap, engine[0].heatmaps[0], atol=1e-6)
    # The cube fills file voxels 1..3; x is flipped in the file (LAS), so canonical x is
    # 12..14 and y, z are 1..3: the peak is in it, and the axial slice shown goes through it.
    x, y, z = peak_voxel(result.heatmap)
    assert 12 <= x <= 14 and 1 <= y <= 3 and 1 <= z <= 3
    assert (shown.plane, shown.index, shown.count) == ("axial", z, SIDE)
    assert shown.caption.endswith(f"axial slice {z + 1} of {SIDE} (heatmap peak)")
    expected = np.uint8(np.clip(volume_slice(result.image, "axial", z), 0, 1) * 255 + 0.5)
    enlarged = np.kron(expected, np.ones((SIDE, SIDE), np.uint8))  # 16 -> 256 pixels
    np.testing.assert_array_equal(shown.image[..., 0], enlarged)
    # The picture is the windowed scan: the marker white, its voxel of the model input 1.0.
    np.testing.assert_allclose(result.image, model_input[0].numpy(), atol=1e-6)
    assert result.image[x, y, z] == pytest.approx(1.0)
    assert explained.top is not None and set(explained.top) == set(result.top_dict())
    assert f"peak at voxel ({x}, {y}, {z})" in explained.status


def test_the_slider_and_the_plane_move_through_the_volume(volume_explorer, volumes):
    _, data, marked = volumes
    selection, _ = choose_volume(volume_explorer, marked.relative_to(data.root).as_posix())
    explained = explain_volume(volume_explorer, selection, "", "gradcam", "predicted", "axial", 0.5)
    result = explained.result
    x, _, z = peak_voxel(result.heatmap)
    moved = volume_explorer.view(result, "axial", 12, 0.5)
    assert moved.index == 12 and moved.caption == f"Axial slice 13 of {SIDE}"
    np.testing.assert_array_equal(
        moved.image[::SIDE, ::SIDE, 0],
        np.uint8(np.clip(volume_slice(result.image, "axial", 12), 0, 1) * 255 + 0.5),
    )
    assert not np.array_equal(moved.overlay, explained.shown.overlay)
    assert volume_explorer.view(result, "axial", 99).index == SIDE - 1  # the slider's end
    sagittal = volume_explorer.view(result, "sagittal")
    assert sagittal.index == x and sagittal.caption.endswith("(heatmap peak)")
    # Opacity only re-blends: no recomputation, the image is unchanged.
    computed = volume_explorer.computations
    faint = volume_explorer.view(result, "axial", z, 0.0)
    np.testing.assert_array_equal(faint.overlay, faint.image)
    assert volume_explorer.computations == computed
    with pytest.raises(ExplorerInputError, match="plane must be one of"):
        volume_explorer.view(result, "oblique")
    with pytest.raises(ExplorerInputError, match="Opacity must be between 0 and 1"):
        volume_explorer.view(result, "axial", 0, 1.5)


def test_an_uploaded_nifti_is_the_same_volume_and_other_files_are_refused(
    volume_explorer, volumes, tmp_path
):
    _, data, marked = volumes
    picked, _ = choose_volume(volume_explorer, marked.relative_to(data.root).as_posix())
    first = volume_explorer.explain(picked)[0]
    uploaded, _ = choose_volume_upload(volume_explorer, str(marked))
    assert uploaded is not None and uploaded.caption == marked.name
    again = volume_explorer.explain(uploaded)[0]
    assert again.cached  # the same model input: the cache answers
    np.testing.assert_array_equal(again.heatmap, first.heatmap)
    text = tmp_path / "notes.png"
    text.write_bytes(b"not a volume")
    refused, message = choose_volume_upload(volume_explorer, str(text))
    assert refused is None and "notes.png is not a volume" in message
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    refused, message = choose_volume_upload(volume_explorer, str(broken))
    assert refused is None and message.startswith("**Error:** Could not use this volume")
    assert str(tmp_path) not in message  # the person knows the file by its name
    outside, message = choose_volume_upload(volume_explorer, str(marked), upload_folder=tmp_path)
    assert outside is None and "outside the allowed directory" in message
    nothing = explain_volume(volume_explorer, None, "", "gradcam", "predicted", "axial", 0.5)
    assert nothing.result is None and "Pick a volume" in nothing.status


def test_interventions_and_lime_are_refused_on_volumes_with_what_to_do(volume_explorer, volumes):
    _, data, marked = volumes
    selection, _ = choose_volume(volume_explorer, marked.relative_to(data.root).as_posix())
    with pytest.raises(ExplorerInputError, match=r"2-D images in the app.*--mask-column"):
        volume_explorer.intervene_region(selection, (0, 0, 4, 4))
    with pytest.raises(ExplorerInputError, match="LIME's superpixels are 2-D"):
        volume_explorer.explain(selection, method="lime")
    explained = explain_volume(volume_explorer, selection, "", "lime", "predicted", "axial", 0.5)
    assert explained.result is None and "LIME" in explained.status


def test_a_3d_model_without_data_serves_uploads_and_the_page_has_the_volume_panel(volumes):
    pytest.importorskip("gradio")
    from shortcut_detect.app import build_app

    model_file, _, marked = volumes
    blocks = build_app(str(model_file), trust_pickle=True, resize=[SIDE])
    explorer = blocks.explorer
    assert isinstance(explorer, VolumeExplorer) and list(explorer.sample_ids()) == []
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"volume-upload", "volume-plane", "volume-slice", "volume-image", "generate"} <= ids
    assert "box-apply" not in ids and "intervene-note" in ids
    selection, _ = choose_volume_upload(explorer, str(marked))
    assert explain_volume(explorer, selection, "", "gradcam", "1", "coronal", 0.4).shown.count == 16


def test_a_window_is_refused_where_no_volume_is_read(volumes):
    with pytest.raises(ExplorerInputError, match=r"window= .* is for the volumes of a 3-D model"):
        make_explorer(window="40,400")  # the demo's 2-D models
    model_file, _, _ = volumes
    with pytest.raises(ExplorerInputError, match="CENTER,WIDTH"):
        make_explorer(str(model_file), trust_pickle=True, resize=[SIDE], window="wide")
