"""A fast path for plain 8-bit PNG files that are already at the model's input size.

Most audit sets of small images are plain 8-bit grayscale or RGB PNGs. For those, libpng
through :func:`torchvision.io.decode_png` gives the same pixels as Pillow at about half the
cost, which matters when decoding costs as much as explaining. Anything else (palette, alpha,
16-bit, colour-management chunks, transparency, a corrupt file) returns ``None`` and takes the
Pillow path, so errors and conversions stay where they are defined. So does every file when
torchvision has no PNG decoder (it deprecated its image decoders in 0.29).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["PlainPng", "read_plain_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that change how pixels are meant to be read (palette, transparency, gamma, colour
# profiles, significant bits): Pillow and libpng may treat them differently, so they go the
# Pillow way.
_PIXEL_CHUNKS = {b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP"}
_GRAY, _RGB = 0, 2


@dataclass(frozen=True)
class PlainPng:
    """The decoded pixels of a plain PNG: ``pixels`` is uint8 ``(C, H, W)``, C = 1 or 3."""

    pixels: torch.Tensor
    size: tuple[int, int]  # (width, height), as PIL reports it


@functools.cache
def _png_decoder() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchvision's libpng decoder (encoded bytes -> uint8 ``(C, H, W)``), or ``None``.

    The registered operator, not ``torchvision.io.decode_png``: the wrapper's per-call
    deprecation warning and usage logging cost a third of decoding a small image.
    """
    try:
        from torchvision.io import ImageReadMode

        operator = torch.ops.image.decode_png
        unchanged = ImageReadMode.UNCHANGED.value
    except (ImportError, AttributeError, RuntimeError):
        return None

    def decode(data: torch.Tensor) -> torch.Tensor:
        return operator(data, unchanged, False)

    return decode


def _plain_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, colour type)`` of a plain 8-bit gray/RGB PNG, else ``None``."""
    if len(data) < 33 or not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or colour not in (_GRAY, _RGB) or width == 0 or height == 0:
        return None
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind in _PIXEL_CHUNKS:
            return None
        if kind == b"IDAT":
            return width, height, colour
        position += 12 + length
    return None


def read_plain_png(
    path: str | Path, *, size: tuple[int, int], max_pixels: int, channels: int
) -> PlainPng | None:
    """Decode ``path`` with libpng if it is a plain 8-bit PNG of ``size``; else ``None``.

    ``None`` means "use Pillow". ``size`` is the ``(width, height)`` the file must have (the
    model's input, so no resizing is needed); ``channels`` is what the model takes. An RGB
    file for a 1-channel model returns ``None`` (Pillow's luma conversion is the reference);
    a gray file for a 3-channel model is repeated over the channels, as Pillow's
    ``convert("RGB")`` does.
    """
    decode = _png_decoder()
    if decode is None:
        return None
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    header = _plain_header(data)
    if header is None:
        return None
    width, height, colour = header
    if (width, height) != tuple(size) or width * height > max_pixels:
        return None
    if colour == _RGB and channels == 1:
        return None
    try:
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        pixels = decode(encoded)
    except RuntimeError:  # truncated or corrupt: Pillow's path words the error
        return None
    if pixels.shape != (1 if colour == _GRAY else 3, height, width):
        return None
    if pixels.shape[0] != channels:
        pixels = pixels.expand(channels, height, width).contiguous()
    return PlainPng(pixels=pixels, size=(width, height))
