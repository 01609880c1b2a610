"""Safe access to files for the explorer: paths confined to a root, images read with guards.

Nothing here imports Gradio, so the checks are testable (and reusable) on their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from shortcut_detect.data.images import load_image

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "IMAGE_SUFFIXES",
    "ExplorerInputError",
    "read_image",
    "resolve_inside",
]

DEFAULT_MAX_PIXELS = 40_000_000  # about 6300 x 6300; larger is refused before decoding
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


class ExplorerInputError(ValueError):
    """Input the explorer refuses; the message is written for the person using the page."""


def resolve_inside(root: str | Path, name: str | Path) -> Path:
    """The file ``name`` (relative to ``root``) as an absolute path, only if it is inside ``root``.

    Symbolic links are followed before the check, so neither ``../`` segments, absolute
    paths nor links pointing outside the root can reach other files.

    Raises
    ------
    ExplorerInputError
        If the path leaves ``root`` or does not name an existing file.
    """
    base = Path(root).resolve()
    text = str(name)
    if not text or "\x00" in text:
        raise ExplorerInputError(f"Invalid file name {text!r}.")
    candidate = (base / text).resolve()
    if candidate != base and base not in candidate.parents:
        raise ExplorerInputError(
            f"Refusing to open {text!r}: it is outside the allowed directory {base}."
        )
    if not candidate.is_file():
        raise ExplorerInputError(f"No file {text!r} in {base}.")
    return candidate


def _check_size(path: Path, max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    size = path.stat().st_size
    if size > max_bytes:
        raise ExplorerInputError(
            f"{path.name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB. "
            "Downscale the image before uploading it."
        )


def read_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_UPLOAD_BYTES,
) -> Image.Image:
    """Open an image file for the explorer: RGB (or ``L`` for one channel), fully decoded.

    Uses :func:`shortcut_detect.data.images.load_image` (alpha, palette and 16-bit images
    are converted; the pixel count is checked before decoding), after a file-size check.

    Raises
    ------
    ExplorerInputError
        For a missing file, a file over ``max_bytes``, more than ``max_pixels`` pixels, or
        anything that is not a readable image. The message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise ExplorerInputError(f"No file at {path}.")
    _check_size(path, max_bytes)
    try:
        return load_image(path, max_pixels=max_pixels)
    except (OSError, ValueError) as error:
        # The loader names the full temporary path; the person knows the file by its name.
        message = str(error).replace(str(path), path.name)
        raise ExplorerInputError(f"Could not use this image: {message}") from error


def display_name(path: str | Path) -> str:
    """The file name a person recognises (Gradio uploads keep it as the last component)."""
    return os.path.basename(str(path)) or str(path)
