"""The libpng fast path gives exactly Pillow's pixels, and leaves every other file to Pillow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from shortcut_detect.data.images import ImageRecord, ImageRecordDataset
from shortcut_detect.data.png_fast import read_plain_png
from shortcut_detect.data.transforms import Preprocessing

SIZE = 24


def _record(path: Path) -> ImageRecord:
    return ImageRecord(sample_id=path.stem, index=0, path=str(path), label=0, label_name="a")


def _both(path: Path, preprocessing: Preprocessing) -> tuple[dict, dict]:
    fast = ImageRecordDataset([_record(path)], preprocessing)
    pillow = ImageRecordDataset([_record(path)], preprocessing)
    pillow._plain_png = lambda _path: None  # the reference: Pillow only
    return fast[0], pillow[0]


def _noise(mode: str, size: int = SIZE, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("interlace", [False, True])
def test_same_pixels_as_pillow(tmp_path, mode, channels, interlace):
    path = tmp_path / "x.png"
    _noise(mode).save(path, **({"interlace": 1} if interlace else {}))
    preprocessing = Preprocessing(size=SIZE, channels=channels, mean=(0.4,), std=(0.2,))
    fast, pillow = _both(path, preprocessing)
    assert fast["ok"] and pillow["ok"]
    assert torch.equal(fast["image"], pillow["image"])
    assert fast["size"] == pillow["size"] == (SIZE, SIZE)
    used = read_plain_png(path, size=(SIZE, SIZE), max_pixels=10**6, channels=channels)
    # The fast path is taken for everything but an RGB file on a 1-channel model.
    assert (used is None) == (mode == "RGB" and channels == 1)


def test_box_masks_agree(tmp_path):
    path = tmp_path / "x.png"
    _noise("RGB").save(path)
    record = dataclasses.replace(_record(path), mask=("box", (2.5, 3, 11, 9.5)))
    preprocessing = Preprocessing(size=SIZE)
    fast = ImageRecordDataset([record], preprocessing)[0]
    pillow_set = ImageRecordDataset([record], preprocessing)
    pillow_set._plain_png = lambda _path: None
    assert fast["has_mask"] and torch.equal(fast["mask"], pillow_set[0]["mask"])
    assert int(fast["mask"].sum()) > 0


def _with_chunk(tmp_path: Path, chunk: str) -> Path:
    path = tmp_path / f"{chunk}.png"
    image = _noise("RGB")
    if chunk == "tRNS":
        image.save(path, transparency=(1, 2, 3))
    elif chunk == "gAMA":
        info = PngImagePlugin.PngInfo()
        info.add(b"gAMA", (45455).to_bytes(4, "big"))
        image.save(path, pnginfo=info)
    elif chunk == "PLTE":
        image.convert("P").save(path)
    elif chunk == "RGBA":
        image.convert("RGBA").save(path)
    elif chunk == "16bit":
        Image.fromarray(np.full((SIZE, SIZE), 40000, dtype=np.uint16)).save(path)
    return path


@pytest.mark.parametrize("chunk", ["tRNS", "gAMA", "PLTE", "RGBA", "16bit"])
def test_other_pngs_go_to_pillow(tmp_path, chunk):
    path = _with_chunk(tmp_path, chunk)
    assert read_plain_png(path, size=(SIZE, SIZE), max_pixels=10**6, channels=3) is None
    fast, pillow = _both(path, Preprocessing(size=SIZE))
    assert fast["ok"] and torch.equal(fast["image"], pillow["image"])


def test_other_size_is_resized_by_pillow(tmp_path):
    path = tmp_path / "big.png"
    _noise("RGB", size=SIZE * 2).save(path)
    assert read_plain_png(path, size=(SIZE, SIZE), max_pixels=10**6, channels=3) is None
    fast, pillow = _both(path, Preprocessing(size=SIZE))
    assert fast["image"].shape == (3, SIZE, SIZE)
    assert torch.equal(fast["image"], pillow["image"]) and fast["size"] == (2 * SIZE, 2 * SIZE)


def test_truncated_file_keeps_pillows_error(tmp_path):
    path = tmp_path / "cut.png"
    _noise("RGB").save(path)
    path.write_bytes(path.read_bytes()[:60])
    assert read_plain_png(path, size=(SIZE, SIZE), max_pixels=10**6, channels=3) is None
    item = ImageRecordDataset([_record(path)], Preprocessing(size=SIZE))[0]
    assert not item["ok"] and "corrupt or truncated" in item["error"]


def test_pixel_limit_applies(tmp_path):
    path = tmp_path / "x.png"
    _noise("RGB").save(path)
    assert read_plain_png(path, size=(SIZE, SIZE), max_pixels=SIZE * SIZE - 1, channels=3) is None
    item = ImageRecordDataset([_record(path)], Preprocessing(size=SIZE), max_pixels=100)[0]
    assert not item["ok"] and "above the limit" in item["error"]


def test_crop_recipe_with_matching_shorter_side_is_unchanged():
    assert Preprocessing(size=224, resize=256, crop=True).unchanged_size() is None
    assert Preprocessing(size=224, resize=224, crop=True).unchanged_size() == (224, 224)
    assert Preprocessing(size=(32, 48)).unchanged_size() == (48, 32)


def _drawn_box(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The reference: the box drawn with Pillow (x1/y1 exclusive), as the general path does."""
    from PIL import ImageDraw

    canvas = Image.new("L", (size, size), 0)
    x0, y0, x1, y1 = box
    if x1 > x0 and y1 > y0:
        ImageDraw.Draw(canvas).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], fill=255)
    return np.asarray(canvas) > 127


@pytest.mark.parametrize(
    "box",
    [(3, 3, 9, 9), (0, 0, SIZE, SIZE), (-5, 2, 4, 60), (10, 10, 10, 12), (SIZE - 1, 0, SIZE + 5, 1),
     (12, 5, 3, 9), (-4, -4, -1, 3)],
)  # fmt: skip
def test_whole_pixel_boxes_on_unresized_images_match_the_drawn_box(box):
    # Whole-pixel boxes on images kept at their size are filled with numpy (no drawing).
    mask = Preprocessing(size=SIZE).box_mask(box, (SIZE, SIZE))
    assert mask.dtype == bool and np.array_equal(mask, _drawn_box(box, SIZE))


def test_without_torchvision_decoder_pillow_reads_every_file(tmp_path, monkeypatch):
    # torchvision deprecated its image decoders (0.29): once gone, the fast path steps aside.
    import shortcut_detect.data.png_fast as png_fast

    path = tmp_path / "x.png"
    _noise("RGB").save(path)
    preprocessing = Preprocessing(size=SIZE)
    expected = ImageRecordDataset([_record(path)], preprocessing)[0]["image"]
    monkeypatch.setattr(png_fast, "_png_decoder", lambda: None)
    assert read_plain_png(path, size=(SIZE, SIZE), max_pixels=10**6, channels=3) is None
    item = ImageRecordDataset([_record(path)], preprocessing)[0]
    assert item["ok"], item["error"]
    assert torch.equal(item["image"], expected)


def test_fast_path_raises_no_deprecation_warning(tmp_path):
    import warnings

    path = tmp_path / "x.png"
    _noise("L").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = read_plain_png(path, size=(SIZE, SIZE), max_pixels=10**6, channels=1)
    assert decoded is not None and decoded.pixels.shape == (1, SIZE, SIZE)
