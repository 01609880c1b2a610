"""Image components whose result files are written atomically.

Gradio saves an image a callback returns under a name derived from its content, writing the
file in place; when several sessions get the same picture at once, one rewrites the file
while another's response is streaming it ("Too little data for declared Content-Length").
:func:`with_atomic_files` makes an image or gallery component write each picture once, to a
temporary name renamed into place, and hand Gradio the finished file.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

__all__ = ["with_atomic_files", "write_image_file"]

_FOLDER = "shortcut_detect_results"
_Component = TypeVar("_Component")


def write_image_file(image: np.ndarray | Image.Image, folder: str | os.PathLike[str]) -> str:
    """Save ``image`` as PNG in ``folder`` under a name derived from its content; return the path.

    The file is written to a temporary name unique to this thread and renamed into place,
    so a reader sees a whole file or none; a file already there (same content) is not
    touched.
    """
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha256(data).hexdigest()}.png"
    if path.is_file():
        return str(path)
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return str(path)


def _as_file(item: Any, folder: Path) -> Any:
    """A gallery or image value with its pictures replaced by written files."""
    if isinstance(item, (np.ndarray, Image.Image)):
        return write_image_file(item, folder)
    if isinstance(item, tuple):  # a gallery's (picture, caption)
        picture, *rest = item
        return (_as_file(picture, folder), *rest)
    if isinstance(item, list):  # a gallery's items
        return [_as_file(entry, folder) for entry in item]
    return item


def with_atomic_files(component: _Component) -> _Component:
    """``component`` (a ``gradio.Image`` or ``gradio.Gallery``), its pictures now written by
    :func:`write_image_file` before Gradio sees them; returns it.

    The instance's ``postprocess`` is wrapped (a subclass would make Gradio write a ``.pyi``
    stub next to this module).
    """
    original = component.postprocess  # type: ignore[attr-defined]
    folder = Path(component.GRADIO_CACHE) / _FOLDER  # type: ignore[attr-defined]

    def postprocess(value: Any) -> Any:
        return original(_as_file(value, folder))

    component.postprocess = postprocess  # type: ignore[attr-defined]
    return component
