"""Reading image sets safely: image modes, bad files, folders, manifests, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shortcut_detect.data.images import (
    ImageLoadError,
    ImageRecordDataset,
    ManifestError,
    common_image_size,
    load_image,
    read_image_set,
)
from shortcut_detect.data.transforms import (
    InputSizeError,
    Preprocessing,
    preprocessing_from_options,
)


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


# -- load_image -------------------------------------------------------------------------------


def test_load_image_keeps_rgb_and_grayscale(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    gray = np.arange(600, dtype=np.uint8).reshape(20, 30)
    a = load_image(_save(tmp_path / "a.png", rgb))
    b = load_image(_save(tmp_path / "b.png", gray))
    assert a.mode == "RGB" and np.array_equal(np.asarray(a), rgb)
    assert b.mode == "L" and np.array_equal(np.asarray(b), gray)


def test_load_image_scales_16_bit_over_the_full_range(tmp_path):
    values = np.array([[0, 257 * 10, 65535]], dtype=np.uint16)
    path = tmp_path / "x.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.mode == "L"
    assert np.asarray(loaded).tolist() == [[0, 10, 255]]


def test_load_image_handles_palette_with_transparency_and_rgba(tmp_path):
    palette = Image.new("P", (8, 8))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 0  # fully transparent: colour kept, alpha dropped (torchvision loader)
    _save(tmp_path / "a.png", rgba)
    assert load_image(tmp_path / "p.png").mode == "RGB"
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB" and np.asarray(loaded)[0, 0].tolist() == [0, 200, 0]


def test_load_image_rejects_bad_files_with_the_reason(tmp_path):
    good = tmp_path / "good.png"
    _save(good, np.zeros((64, 64, 3), dtype=np.uint8) + 50)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(text)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="above the limit"):
        load_image(good, max_pixels=1000)


# -- folders and manifests -----------------------------------------------------------------------


def test_image_folder_labels_follow_sorted_class_folders(tmp_path):
    for name in ("zebra", "ant"):
        (tmp_path / name).mkdir()
        for i in range(2):
            _save(tmp_path / name / f"{i}.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "ant" / "readme.txt").write_text("not an image")
    image_set = read_image_set(tmp_path)
    assert image_set.label_names == ["ant", "zebra"]
    assert [r.sample_id for r in image_set.records] == [
        "ant/0.png",
        "ant/1.png",
        "zebra/0.png",
        "zebra/1.png",
    ]
    assert [r.label for r in image_set.records] == [0, 0, 1, 1]
    # The model's class names decide the indices when given.
    named = read_image_set(tmp_path, class_names=["zebra", "ant"])
    assert [r.label for r in named.records] == [1, 1, 0, 0]


def test_manifest_with_groups_boxes_and_mask_files(tmp_path):
    _save(tmp_path / "a.png", np.zeros((10, 10), dtype=np.uint8))
    _save(tmp_path / "m.png", np.zeros((10, 10), dtype=np.uint8))
    (tmp_path / "list.csv").write_text(
        'path,label,site,roi\na.png,cat,A,"1,2,5,6"\na.png,dog,B,m.png\na.png,cat,B,\n'
    )
    image_set = read_image_set(tmp_path / "list.csv", group_column="site", mask_column="roi")
    first, second, third = image_set.records
    assert (first.label, second.label) == (0, 1)
    assert first.mask == ("box", (1.0, 2.0, 5.0, 6.0))
    assert second.mask == ("file", str(tmp_path / "m.png"))
    assert third.mask is None
    assert [r.group for r in image_set.records] == ["A", "B", "B"]
    assert [r.sample_id for r in image_set.records] == ["a.png", "a.png#2", "a.png#3"]
    assert image_set.notes and "sorted order" in image_set.notes[0]


def test_parquet_manifest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _save(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    pq.write_table(pa.table({"path": ["a.png", "a.png"], "label": [1, 0]}), tmp_path / "m.parquet")
    image_set = read_image_set(tmp_path / "m.parquet")
    assert [r.label for r in image_set.records] == [1, 0]


def test_manifest_errors_name_the_problem(tmp_path):
    (tmp_path / "a.csv").write_text("file,label\nx.png,1\n")
    with pytest.raises(
        ManifestError, match=r"no column 'path'.*columns: file, label.*--path-column"
    ):
        read_image_set(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("path,label\nx.png,\ny.png,1\n")
    with pytest.raises(ManifestError, match="empty label in row 2"):
        read_image_set(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text('path,label,box\nx.png,1,"5,5,2,2"\n')
    with pytest.raises(ManifestError, match="x1 > x0"):
        read_image_set(tmp_path / "c.csv", mask_column="box")
    (tmp_path / "d.csv").write_text("path,label\nx.png,horse\n")
    with pytest.raises(ManifestError, match="not among the model's class names"):
        read_image_set(tmp_path / "d.csv", class_names=["cat", "dog"])
    with pytest.raises(ManifestError, match="--group-column"):
        read_image_set(tmp_path / "d.csv", group_column="site")
    with pytest.raises(ManifestError, match="no such file"):
        read_image_set(tmp_path / "nope.csv")


# -- preprocessing and the dataset -------------------------------------------------------------


def test_box_masks_follow_resize_and_crop(tmp_path):
    """A bright square drawn at a box must land where the transformed box mask is."""
    image = np.zeros((80, 120, 3), dtype=np.uint8)
    box = (60, 20, 80, 40)  # x0, y0, x1, y1
    image[box[1] : box[3], box[0] : box[2]] = 255
    recipe = Preprocessing(size=(32, 32), resize=(40, 40), crop=True, channels=3)
    tensor = recipe(Image.fromarray(image))
    mask = recipe.box_mask(box, (120, 80))
    bright = tensor[0].numpy() > 0.5
    assert mask.sum() > 10
    agreement = (bright == mask).mean()
    assert agreement > 0.97


def test_grayscale_and_rgb_adapt_to_the_model_channels():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    rgb_model = Preprocessing(size=(8, 8), channels=3)
    out = rgb_model(gray)
    assert out.shape == (3, 8, 8)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    colour = Image.fromarray(np.full((8, 8, 3), (255, 0, 0), dtype=np.uint8))
    gray_model = preprocessing_from_options(base=None, channels=1, preset="imagenet")
    assert gray_model(colour).shape == (1, 224, 224)
    assert gray_model.mean == (pytest.approx(np.mean([0.485, 0.456, 0.406])),)


def test_preprocessing_needs_a_size():
    with pytest.raises(InputSizeError, match='preset="imagenet"'):
        preprocessing_from_options(base=None, channels=3)
    with pytest.raises(ValueError, match="both mean= and std="):
        preprocessing_from_options(base=None, channels=3, resize=[32], mean=[0.5])
    # Normalisation but no size: each image at its own size, which must then be given.
    with pytest.raises(InputSizeError, match=r"pass image_size=\(height, width\), or resize=N"):
        preprocessing_from_options(base=None, channels=3, mean=[0.5], std=[0.5])


def test_native_size_feeds_images_unresized_and_refuses_other_sizes():
    native = preprocessing_from_options(
        base=None, channels=3, preset="none", image_size=lambda: (30, 40)
    )
    assert native.native and native.size == (30, 40)
    image = Image.fromarray(np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3))
    tensor = native(image)
    assert tensor.shape == (3, 30, 40)
    np.testing.assert_array_equal(
        tensor.permute(1, 2, 0).numpy(), np.asarray(image, dtype=np.float32) / 255.0
    )
    assert "each image at its own size (40x30" in native.describe()
    assert Preprocessing.from_dict(native.to_dict()).native
    with pytest.raises(ValueError, match="the image is 41x30 but images are fed at their own"):
        native(Image.new("RGB", (41, 30)))
    # The size function is only called when it is needed.
    sized = preprocessing_from_options(
        base=None, channels=3, preset="none", resize=[16], image_size=lambda: 1 / 0
    )
    assert sized.size == (16, 16) and not sized.native


def test_common_image_size_reads_headers_and_names_two_sizes(tmp_path):
    for name, size in (("a.png", (40, 30)), ("b.png", (40, 30)), ("c.png", (50, 20))):
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    same = [tmp_path / "a.png", tmp_path / "broken.png", tmp_path / "b.png"]
    assert common_image_size(same) == (30, 40)
    mixed = [*same, tmp_path / "c.png"]
    with pytest.raises(ImageLoadError, match=r"a.png is 40x30, .*c.png is 50x20.*resize=N"):
        common_image_size(mixed)
    with pytest.raises(ImageLoadError, match="None of the images could be read"):
        common_image_size([tmp_path / "broken.png"])


def test_dataset_turns_bad_files_into_counted_failures(tmp_path):
    _save(tmp_path / "ok.png", np.full((10, 10, 3), 128, dtype=np.uint8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    _save(tmp_path / "mask.png", (np.eye(10) * 255).astype(np.uint8))
    (tmp_path / "m.csv").write_text("path,label,roi\nok.png,0,mask.png\nbad.png,1,\n")
    image_set = read_image_set(tmp_path / "m.csv", mask_column="roi")
    dataset = ImageRecordDataset(image_set.records, Preprocessing(size=(10, 10)))
    good, bad = dataset[0], dataset[1]
    assert good["ok"] and good["has_mask"] and good["size"] == (10, 10)
    assert np.array_equal(good["mask"].numpy(), np.eye(10, dtype=bool))
    assert not bad["ok"] and "bad.png" in bad["error"]
    assert bad["image"].shape == (3, 10, 10)
