"""Files the explorer may open: confined to a root, read with size and bomb guards."""

from __future__ import annotations

import os

import numpy as np
import pytest

from shortcut_detect.app.inputs import ExplorerInputError, read_image, resolve_inside


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def test_resolve_inside_accepts_files_in_the_root(data_root):
    assert resolve_inside(data_root, "cats/a.png") == (data_root / "cats" / "a.png").resolve()
    # A detour that comes back inside is still inside.
    assert resolve_inside(data_root, "cats/../cats/a.png").name == "a.png"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../secret.txt", "outside the allowed directory"),
        ("../../etc/passwd", "outside the allowed directory"),
        ("cats/../../secret.txt", "outside the allowed directory"),
        ("/etc/passwd", "outside the allowed directory"),
        ("..", "outside the allowed directory"),
        ("", "Invalid file name ''"),
    ],
)
def test_resolve_inside_refuses_paths_that_leave_the_root(data_root, name, message):
    with pytest.raises(ExplorerInputError, match=message):
        resolve_inside(data_root, name)


def test_resolve_inside_refuses_symlinks_out_of_the_root(data_root, tmp_path):
    os.symlink(tmp_path / "secret.txt", data_root / "link.png")
    with pytest.raises(ExplorerInputError, match="outside the allowed directory"):
        resolve_inside(data_root, "link.png")


def test_resolve_inside_reports_missing_files(data_root):
    with pytest.raises(ExplorerInputError, match=r"No file 'cats/b\.png'"):
        resolve_inside(data_root, "cats/b.png")


def test_read_image_converts_alpha_grayscale_and_16_bit(image_files):
    rgb = read_image(image_files["rgb"])
    assert rgb.mode == "RGB" and rgb.size == (48, 48)
    rgba = read_image(image_files["rgba"])
    assert rgba.mode == "RGB"
    assert np.array_equal(np.asarray(rgba), np.asarray(rgb))  # alpha dropped, colours kept
    gray = read_image(image_files["gray"])
    assert gray.mode == "L"
    gray16 = read_image(image_files["gray16"])
    assert gray16.mode == "L"
    assert np.abs(np.asarray(gray16, float) - np.asarray(rgb)[..., 0]).max() <= 1


@pytest.mark.parametrize("kind", ["text", "fake_png"])
def test_read_image_refuses_non_images_with_the_file_name(image_files, kind):
    path = image_files[kind]
    with pytest.raises(ExplorerInputError, match="not an image file Pillow can read") as info:
        read_image(path)
    message = str(info.value)
    assert path.name in message
    assert str(path.parent) not in message  # the temporary folder means nothing to the user


def test_read_image_refuses_decompression_bombs_before_decoding(image_files):
    with pytest.raises(ExplorerInputError, match="above the limit"):
        read_image(image_files["bomb"], max_pixels=40_000_000)


def test_read_image_enforces_the_file_size_limit(image_files):
    with pytest.raises(ExplorerInputError, match="the limit is"):
        read_image(image_files["big"], max_bytes=100)
    assert read_image(image_files["big"], max_bytes=None).size == (400, 300)
