"""Result images reach the page as whole files, however many sessions ask at once."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from shortcut_detect.app import callbacks
from shortcut_detect.app.result_files import with_atomic_files, write_image_file


def _picture(seed):
    return np.random.default_rng(seed).integers(0, 256, (48, 40, 3), dtype=np.uint8)


def test_a_file_is_written_once_and_never_rewritten_in_place(tmp_path):
    first = Path(write_image_file(_picture(0), tmp_path))
    before = first.stat()
    again = Path(write_image_file(Image.fromarray(_picture(0)), tmp_path))
    assert again == first and first.stat().st_ino == before.st_ino
    assert first.stat().st_mtime_ns == before.st_mtime_ns
    other = Path(write_image_file(_picture(1), tmp_path))
    assert other != first
    np.testing.assert_array_equal(np.asarray(Image.open(first)), _picture(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def half_then_full_disk(self, data):
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_image_file(_picture(2), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _atomic_image():
    return with_atomic_files(gr.Image(type="numpy", format="png"))


def test_components_hand_gradio_finished_files():
    image, gallery = _atomic_image(), with_atomic_files(gr.Gallery(format="png"))
    assert (image.get_block_name(), gallery.get_block_name()) == ("image", "gallery")
    served = image.postprocess(_picture(3))
    written = write_image_file(_picture(3), Path(image.GRADIO_CACHE) / "shortcut_detect_results")
    assert Path(served.path).read_bytes() == Path(written).read_bytes()
    np.testing.assert_array_equal(np.asarray(Image.open(served.path)), _picture(3))
    items = gallery.postprocess([(Image.fromarray(_picture(4)), "caption")])
    (item,) = items.root
    assert item.caption == "caption"
    np.testing.assert_array_equal(np.asarray(Image.open(item.image.path)), _picture(4))
    assert image.postprocess(None) is None


def test_concurrent_sessions_get_complete_files(explorer):
    """8 sessions ask for the same explanation at once; each reads back every file it was
    given while the others keep writing: all files decode to the expected picture."""
    component = _atomic_image()
    sample_id = explorer.sample_ids()[0]
    picked = callbacks.open_sample(explorer, sample_id)
    model = explorer.model_names[0]
    problems: list[str] = []
    reference: dict[str, np.ndarray] = {}
    start = threading.Barrier(8)

    def session(number: int) -> None:
        start.wait()
        for _ in range(10):
            view = callbacks.generate(
                explorer, picked.selection, model, None, "gradcam", callbacks.PREDICTED, 0.5
            )
            for name in ("original", "heatmap", "overlay"):
                array = getattr(view, name)
                path = component.postprocess(array).path
                try:
                    got = np.asarray(Image.open(path).convert("RGB"))
                except OSError as error:  # a truncated file
                    problems.append(f"session {number}: {name}: {error}")
                    continue
                if not np.array_equal(got, array):
                    problems.append(f"session {number}: {name} file differs")
                reference.setdefault(name, array)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    assert set(reference) == {"original", "heatmap", "overlay"}


def test_every_picture_of_the_page_is_written_atomically(explorer):
    from shortcut_detect.app.ui import create_blocks

    blocks = create_blocks(explorer)
    pictures = [b for b in blocks.blocks.values() if isinstance(b, (gr.Image, gr.Gallery))]
    assert len(pictures) >= 5
    for block in pictures:
        value = _picture(5) if isinstance(block, gr.Image) else [(_picture(5), "c")]
        served = block.postprocess(value)
        path = served.path if isinstance(block, gr.Image) else served.root[0].image.path
        assert Path(path).parent.name == "shortcut_detect_results", block.elem_id
