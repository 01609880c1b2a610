"""Sample sources: the demo test set, image folders, flat folders and manifests."""

from __future__ import annotations

import numpy as np
import pytest

from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.app.sources import DataSource, DemoSource, thumbnail, to_uint8_rgb


def test_demo_source_serves_the_synthetic_arrays(test_data):
    source = DemoSource(test_data)
    assert len(source.ids()) == 400
    sample = source.get("17")
    np.testing.assert_array_equal(sample.array, test_data.images[17])
    label = test_data.class_names[test_data.labels[17]]
    group = "marker" if test_data.groups[17] else "no marker"
    assert (sample.label, sample.group) == (label, group)
    assert sample.caption == f"#17 {label} · {group}"
    with pytest.raises(ExplorerInputError, match=r"Unknown demo sample '\.\./17'"):
        source.get("../17")


def test_thumbnails_are_enlarged_without_blurring(test_data):
    sample = DemoSource(test_data).get("0")
    picture = np.asarray(thumbnail(sample, 96))
    assert picture.shape == (96, 96, 3)
    np.testing.assert_array_equal(picture[::2, ::2], to_uint8_rgb(test_data.images[0]))


@pytest.fixture
def png_bytes(image_files):
    return image_files["rgb"].read_bytes()


def test_image_folder_labels_and_ids(tmp_path, png_bytes):
    for name in ("cross/a.png", "cross/b.png", "disk/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(png_bytes)
    source = DataSource(tmp_path)
    assert list(source.ids()) == ["cross/a.png", "cross/b.png", "disk/c.png"]
    sample = source.get("disk/c.png")
    assert sample.label == "disk" and sample.image.size == (48, 48)
    assert sample.caption == "c.png · disk"


def test_flat_folder_without_labels(tmp_path, png_bytes):
    (tmp_path / "one.png").write_bytes(png_bytes)
    (tmp_path / "notes.txt").write_text("ignored")
    source = DataSource(tmp_path)
    assert list(source.ids()) == ["one.png"]
    assert source.get("one.png").label is None


def test_manifest_with_groups(tmp_path, png_bytes):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(png_bytes)
    (tmp_path / "img" / "y.png").write_bytes(png_bytes)
    (tmp_path / "list.csv").write_text("path,label,site\nimg/x.png,disk,A\nimg/y.png,cross,B\n")
    source = DataSource(tmp_path / "list.csv", group_column="site")
    assert list(source.ids()) == ["img/x.png", "img/y.png"]
    sample = source.get("img/y.png")
    assert (sample.label, sample.group) == ("cross", "B")
    assert sample.caption == "y.png · cross · B"


def test_bad_data_is_refused_with_a_message(tmp_path):
    with pytest.raises(ExplorerInputError, match="no such file"):
        DataSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExplorerInputError, match="No image files"):
        DataSource(tmp_path / "empty")
    (tmp_path / "bad.csv").write_text("file,label\na.png,disk\n")
    with pytest.raises(ExplorerInputError, match="no column 'path'"):
        DataSource(tmp_path / "bad.csv")
