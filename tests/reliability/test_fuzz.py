"""Property-based fuzzing of everything a data set or a model controls.

Each generated case must end in a clear per-row error or a clear refusal (an exception of the
documented type, whose message names the culprit), never in a crash and never in a wrong row.
Seeded (``derandomize=True``): CI sees the same cases every time. CI runs about 10,600 cases;
``SHORTCUT_DETECT_FUZZ_SCALE=10`` runs ten times as many. The count is printed (``-s``) and
checked by the last test.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from shortcut_detect.audit.pipeline import AuditError, _batch_rows
from shortcut_detect.data.images import (
    ImageRecord,
    ImageRecordDataset,
    ManifestError,
    collate_samples,
    load_image,
    parse_box,
    read_image_set,
)
from shortcut_detect.data.transforms import Preprocessing
from shortcut_detect.gradcam import GradCAMHeatmapGenerator

pytestmark = [
    # What Pillow says about the broken files it is fed, and about saving the test images.
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
    pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning"),
    pytest.mark.filterwarnings("ignore:Saving I mode images as PNG:DeprecationWarning"),
]

SCALE = float(os.environ.get("SHORTCUT_DETECT_FUZZ_SCALE", "1"))
CASES = {"count": 0}
MINIMUM_CASES = int(10_000 * SCALE)


def _settings(examples: int) -> settings:
    return settings(
        max_examples=int(examples * SCALE),
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _case() -> None:
    CASES["count"] += 1


PREPROCESSING = Preprocessing(size=(16, 16))
TMP = Path(tempfile.mkdtemp(prefix="fuzz-"))

# -- the manifest ----------------------------------------------------------------------------

_PATH_CHARS = st.sampled_from([*list("ab,\"' é中/.\\-_#;:\t"), "..", "NA", "None", "nan", "\u200b"])
cell_paths = st.one_of(
    st.lists(_PATH_CHARS, min_size=0, max_size=8).map("".join),
    st.sampled_from(["../up.png", "/abs/x.png", "~/h.png", "a/../b.png", "  ", "x.png"]),
)
labels = st.one_of(
    st.text(max_size=6),
    st.integers(-3, 12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "NaN", "NA", "None", "null", " cat ", "1.0", "01"]),
)
boxes = st.one_of(
    st.lists(st.floats(-1e3, 1e3) | st.sampled_from([math.nan, math.inf]), min_size=4, max_size=4)
    .map(lambda v: ",".join(repr(x) for x in v)),
    st.text(alphabet="0123456789.,;- eE+", max_size=12),
    st.sampled_from(["", "masks/m.png", "1,2,3", "1,2,3,4,5", "5,5,1,1", "0,0,0,0"]),
)  # fmt: skip


@_settings(1500)
@given(
    rows=st.lists(st.tuples(cell_paths, labels, labels, boxes), min_size=1, max_size=6),
    class_names=st.sampled_from([None, ["cat", "dog"], ["0", "1", "2"]]),
)
def test_manifest_reader_gives_faithful_records_or_a_clear_refusal(rows, class_names):
    _case()
    folder = Path(tempfile.mkdtemp(dir=TMP))
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "mask"])
        writer.writerows(rows)
    try:
        image_set = read_image_set(
            manifest, class_names=class_names, group_column="group", mask_column="mask"
        )
    except ManifestError as error:
        assert str(manifest) in str(error) or "manifest" in str(error).lower()
        return
    assert len(image_set) == len(rows)
    ids = [record.sample_id for record in image_set.records]
    assert len(set(ids)) == len(ids)
    for record, (path, label, group, mask) in zip(image_set.records, rows):
        expected = Path(path.strip()).expanduser()
        expected = expected if expected.is_absolute() else folder / expected
        assert record.path == str(expected)
        assert record.label_name == label.strip() and label.strip()
        if class_names is not None:
            assert 0 <= record.label < len(class_names)
        assert record.group == (group.strip() if group != "" else None)
        if not mask.strip():
            assert record.mask is None
        elif record.mask[0] == "box":
            x0, y0, x1, y1 = record.mask[1]
            assert all(map(math.isfinite, record.mask[1])) and x1 > x0 and y1 > y0


def test_a_huge_manifest_is_read_whole():
    _case()
    folder = Path(tempfile.mkdtemp(dir=TMP))
    lines = ["path,label"] + [f"img/{i:06d}, x.png,{i % 7}" for i in range(200_000)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match="Expected 2 columns"):
        read_image_set(folder / "m.csv")  # an unquoted comma in a path: refused, not misread
    lines = ["path,label"] + [f'"img/{i:06d}, x.png",{i % 7}' for i in range(200_000)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    image_set = read_image_set(folder / "m.csv")
    assert len(image_set) == 200_000
    assert image_set.records[-1].path == str(folder / "img/199999, x.png")
    assert image_set.records[-1].label == 199_999 % 7


# -- boxes and masks -------------------------------------------------------------------------


@_settings(5000)
@given(text=st.one_of(st.text(max_size=30), boxes))
def test_box_text_parses_to_a_valid_box_or_a_value_error(text):
    _case()
    try:
        box = parse_box(text)
    except ValueError as error:
        assert repr(text) in str(error)
        return
    half = len(box) // 2
    assert half in (2, 3) and all(map(math.isfinite, box))
    assert all(box[half + axis] > box[axis] for axis in range(half))  # far corner beyond near


def _record(path: Path, mask=None) -> ImageRecord:
    return ImageRecord(
        sample_id=path.name, index=0, path=str(path), label=0, label_name="a", mask=mask
    )


_IMAGE = TMP / "plain.png"
Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(_IMAGE)


@_settings(1500)
@given(box=st.tuples(*[st.floats(-100, 100, allow_subnormal=False)] * 4))
def test_a_box_gives_a_mask_of_the_input_size_or_a_row_error(box):
    _case()
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):  # such boxes never leave parse_box
        return
    item = ImageRecordDataset([_record(_IMAGE, ("box", box))], PREPROCESSING)[0]
    outside = x0 >= 40 or y0 >= 30 or x1 <= 0 or y1 <= 0
    if outside:
        assert not item["ok"] and "lies outside the 40x30 image" in item["error"]
        return
    assert item["ok"], item["error"]
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.bool
    # the mask never covers what the box does not: its columns/rows lie within the box's
    columns = np.flatnonzero(item["mask"].numpy().any(axis=0))
    if len(columns):
        assert columns[0] >= math.floor(max(x0, 0) * 16 / 40) - 1
        assert columns[-1] <= math.ceil(min(x1, 40) * 16 / 40) + 1


@_settings(400)
@given(width=st.integers(1, 90), height=st.integers(1, 90), value=st.integers(0, 255))
def test_a_mask_file_of_another_size_is_stretched_or_refused(width, height, value):
    _case()
    mask = TMP / f"mask-{width}-{height}-{value}.png"
    Image.fromarray(np.full((height, width), value, np.uint8)).save(mask)
    item = ImageRecordDataset([_record(_IMAGE, ("file", str(mask)))], PREPROCESSING)[0]
    same_shape = abs(width * 30 - height * 40) <= 0.02 * 40 * height
    if not same_shape:
        assert not item["ok"] and "another aspect ratio" in item["error"]
        return
    assert item["ok"], item["error"]
    assert bool(item["mask"].all()) == (value > 127) and bool(item["mask"].any()) == (value > 127)


# -- image decoding --------------------------------------------------------------------------

MODES = ["RGB", "L", "P", "CMYK", "RGBA", "LA", "1", "I;16", "I", "F"]
FORMATS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "GIF": ".gif",
    "TIFF": ".tif",
    "BMP": ".bmp",
    "WEBP": ".webp",
}
LOSSLESS = ("PNG", "TIFF", "BMP")


def _encode(mode: str, fmt: str, width: int, height: int, frames: int, seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode in ("I", "F"):
        image = base.convert("L").convert(mode)
    elif mode == "P":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        image = base.convert(mode)
    buffer = io.BytesIO()
    try:
        if frames > 1 and fmt in ("GIF", "PNG", "WEBP", "TIFF"):
            others = [Image.fromarray(255 - np.asarray(base)).convert(image.mode)] * (frames - 1)
            image.save(buffer, format=fmt, save_all=True, append_images=others)
        else:
            image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return None  # this format cannot store this mode
    return buffer.getvalue()


@_settings(1400)
@given(
    mode=st.sampled_from(MODES),
    fmt=st.sampled_from(list(FORMATS)),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    frames=st.integers(1, 3),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    extension=st.sampled_from([None, ".png", ".jpg", ".txt", ""]),
    max_pixels=st.sampled_from([10**9, 100, 1000]),
    seed=st.integers(0, 3),
)
def test_any_image_file_decodes_correctly_or_gives_a_row_error(
    mode, fmt, width, height, frames, cut, extension, max_pixels, seed
):
    _case()
    data = _encode(mode, fmt, width, height, frames, seed)
    if data is None:
        return
    intact = data
    if cut is not None:
        data = data[: int(len(data) * cut)]
    suffix = FORMATS[fmt] if extension is None else extension
    path = Path(tempfile.mkdtemp(dir=TMP)) / f"image{suffix}"
    path.write_bytes(data)
    item = ImageRecordDataset([_record(path)], PREPROCESSING, max_pixels=max_pixels)[0]
    if width * height > max_pixels:
        assert not item["ok"], "an image above --max-pixels was decoded"
        assert data != intact or "--max-pixels" in item["error"], item["error"]
    if not item["ok"]:
        assert str(path) in item["error"]
        assert data != intact or width * height > max_pixels, item["error"]
        return
    image = item["image"]
    assert image.shape == (3, 16, 16) and torch.isfinite(image).all()
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert tuple(item["size"]) == (width, height)
    if fmt in LOSSLESS and data != intact:  # a cut file that still decodes must be right
        original = path.with_name("intact" + FORMATS[fmt])
        original.write_bytes(intact)
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(original)))


def test_a_zero_size_file_and_a_decompression_bomb_are_row_errors():
    _case()
    empty = TMP / "empty.png"
    empty.write_bytes(b"")
    bomb = TMP / "bomb.png"
    Image.new("L", (6000, 6000)).save(bomb)  # 36 Mpixel, compresses to a few kB
    items = ImageRecordDataset([_record(empty), _record(bomb)], PREPROCESSING, max_pixels=10**6)
    assert not items[0]["ok"] and "not an image file" in items[0]["error"]
    assert not items[1]["ok"] and "above the limit of 1,000,000" in items[1]["error"]


# -- model outputs ---------------------------------------------------------------------------

FAULTS = {"ok": 0.1, "nan": 0.3, "inf": 0.5, "raise": 0.7}


class _FaultyNet(nn.Module):
    """Each image's first pixel says what the model does with it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.shape = "ok"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = x[:, 0, 0, 0].detach()
        if bool((code - FAULTS["raise"]).abs().lt(0.01).any()):
            raise RuntimeError("cannot handle this input")
        out = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        nan = (code - FAULTS["nan"]).abs().lt(0.01)[:, None]
        inf = (code - FAULTS["inf"]).abs().lt(0.01)[:, None]
        # masked_fill, not torch.where: where's gradient turns the other rows NaN too
        out = out.masked_fill(nan, float("nan")).masked_fill(inf, float("inf"))
        if self.shape == "3d":
            return out[:, :, None].expand(-1, -1, 2)
        if self.shape == "short":
            return out[:-1]
        return out


NET = _FaultyNet().eval()
GENERATOR = GradCAMHeatmapGenerator(NET, "conv")


@_settings(800)
@given(
    faults=st.lists(st.sampled_from(list(FAULTS)), min_size=1, max_size=5),
    unreadable=st.lists(st.booleans(), min_size=5, max_size=5),
    # "3d": (batch, classes, 2) logits, which the generator reduces to (batch, classes)
    shape=st.sampled_from(["ok"] * 8 + ["3d", "short"]),
)
def test_model_failures_become_row_errors_or_a_refusal(faults, unreadable, shape):
    _case()
    count = len(faults)
    images = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(count))
    images[:, 0, 0, 0] = torch.tensor([FAULTS[f] for f in faults])
    records = [ImageRecord(f"s{i}", i, f"/data/s{i}.png", i % 3, str(i % 3)) for i in range(count)]
    items = [
        {"position": i, "image": images[i], "mask": torch.zeros(8, 8, dtype=torch.bool),
         "has_mask": False, "size": (8, 8), "ok": not unreadable[i],
         "error": "unreadable" if unreadable[i] else ""}
        for i in range(count)
    ]  # fmt: skip
    NET.shape = shape
    try:
        rows, maps, failed = _batch_rows(
            collate_samples(items), records, GENERATOR, ["a", "b", "c"], "predicted"
        )
    except AuditError as error:
        readable = [f for f, bad in zip(faults, unreadable) if not bad]
        assert shape == "short" or "ok" not in readable, error
        assert "model" in str(error)
        return
    finally:
        NET.shape = "ok"
    if shape == "short":  # refused above, or (mixed with other failures) only error rows
        assert all(row["status"] == "error" for row in rows) and maps is None
        return
    assert [row["sample_id"] for row in rows] == [r.sample_id for r in records]
    expected_ok = [f == "ok" and not bad for f, bad in zip(faults, unreadable)]
    assert [row["status"] == "ok" for row in rows] == expected_ok
    assert failed == count - sum(expected_ok)
    assert (0 if maps is None else len(maps)) == sum(expected_ok)
    for row, _fault, bad in zip(rows, faults, unreadable):
        if row["status"] == "ok":
            assert math.isfinite(row["confidence"]) and 0 <= row["confidence"] <= 1
            assert math.isfinite(row["cam_max"]) and row["heatmap_row"] >= 0
        elif bad:
            assert row["error"] == "unreadable"
        else:
            assert "the model failed on this image" in row["error"]
    if maps is not None:
        assert np.isfinite(maps.astype(np.float32)).all()


def test_the_fuzz_suites_ran_enough_cases(request):
    ran = CASES["count"]
    sys.stderr.write(f"fuzz: {ran} generated cases\n")
    suites = [item for item in request.session.items if item.module is request.module]
    if len(suites) < 9:
        pytest.skip("only part of the fuzz suites ran")
    assert ran >= MINIMUM_CASES
