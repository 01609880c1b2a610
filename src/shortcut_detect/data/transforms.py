"""Preprocessing: PIL image -> the float tensor a model expects, with masks kept aligned.

One :class:`Preprocessing` object describes the whole recipe (resize, centre crop, channel
count, mean/std), so the same geometry can be applied to an image, to its region mask, and to
a display copy without normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "InputSizeError",
    "Preprocessing",
    "preprocessing_from_options",
    "volume_preprocessing",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, dict[str, Any]] = {
    # The torchvision evaluation recipe for ImageNet classifiers.
    "imagenet": {"resize": 256, "crop": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    # Pixels scaled to [0, 1], nothing else (give the size with --resize).
    "none": {"resize": None, "crop": None, "mean": None, "std": None},
}


@functools.lru_cache(maxsize=16)
def _channel_statistics(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as ``(C, 1, 1)`` float tensors (read only, shared)."""
    if any(value == 0 for value in std):
        raise ValueError(f"std {std} has a zero: dividing by it makes the input infinite")
    shape = (-1, 1, 1)
    return torch.tensor(mean).reshape(shape), torch.tensor(std).reshape(shape)


def _pair(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    values = [int(v) for v in value]
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise ValueError(f"A size is one number or (height, width), got {value!r}")
    return (values[0], values[1])


class InputSizeError(ValueError):
    """The model's input size is not known, so a model input cannot be made yet."""


@dataclass
class Preprocessing:
    """How an image becomes a model input.

    Parameters
    ----------
    size:
        ``(height, width)`` of the model input.
    resize:
        With ``crop=True``, the shorter side is resized to ``resize[0]`` and the centre
        ``size`` is cropped (the torchvision evaluation recipe). With ``crop=False`` the image
        is resized to exactly ``size`` and ``resize`` is ignored.
    crop:
        Whether to centre-crop after resizing the shorter side.
    mean, std:
        Per-channel normalisation after scaling pixels to [0, 1]; ``None`` skips it.
    channels:
        Channels of the model input: 1 (grayscale) or 3 (RGB); images are converted.
    interpolation:
        ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    source:
        Where the recipe came from (shown in reports).
    native:
        Images are fed at their own size, without resizing; ``size`` is the size they all
        share, and an image of another size is refused (never silently resized).
    window:
        Intensity window applied when DICOM, NIfTI and 16-bit files are read (``"auto"``,
        ``"full"`` or ``"CENTER,WIDTH"``, see
        :func:`~shortcut_detect.data.images.load_image`); ``None``: ``"auto"`` for medical
        files, the fixed 16-bit scaling for others.
    depth:
        For 3-D models (MONAI networks, video models): the first spatial size of the input,
        which is then ``(C, depth, *size)``; volumes are resized (trilinear) to it, never
        cropped. ``None`` for 2-D models.
    """

    size: tuple[int, int]
    resize: tuple[int, int] | None = None
    crop: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int = 3
    interpolation: str = "bilinear"
    source: str = ""
    notes: list[str] = field(default_factory=list)
    native: bool = False
    window: str | None = None
    depth: int | None = None

    def __post_init__(self) -> None:
        self.size = _pair(self.size)  # type: ignore[assignment]
        if self.depth is not None:
            self.depth = int(self.depth)
            if self.depth < 1 or min(self.size) < 1:
                raise ValueError(f"A 3-D input size must be positive, got {self.input_shape}")
            if self.crop or self.native:
                raise ValueError(
                    "3-D inputs are resized to depth x height x width; centre crops and "
                    "native sizes are for 2-D images only"
                )
        if self.window is not None:
            self.window = window_text(self.window)
        self.resize = _pair(self.resize)
        if self.channels not in (1, 3):
            raise ValueError(f"Models with {self.channels} input channels are not supported")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ValueError(f"Unknown interpolation {self.interpolation!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is None:
                continue
            values = tuple(float(v) for v in values)
            if len(values) == 1:
                values = values * self.channels
            elif len(values) != self.channels:
                if self.channels == 1 and len(values) == 3:
                    # An RGB recipe on a grayscale model: the channel average is the honest
                    # single-channel equivalent.
                    values = (float(np.mean(values)),)
                    self.notes.append(f"{name} averaged over RGB for a 1-channel model")
                else:
                    raise ValueError(
                        f"{name}= has {len(values)} values for a model with "
                        f"{self.channels} input channels"
                    )
            setattr(self, name, values)
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"std= values must be positive, got {self.std}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Spatial size of the model input: ``(height, width)``, or ``(depth, height, width)``
        for a 3-D model."""
        return tuple(self.size) if self.depth is None else (self.depth, *self.size)

    @property
    def is_3d(self) -> bool:
        """Whether the model takes volumes ``(C, D, H, W)``."""
        return self.depth is not None

    # -- volumes -----------------------------------------------------------------------------
    def volume(self, array: np.ndarray) -> torch.Tensor:
        """A volume in [0, 1], ``(D, H, W)`` or ``(D, H, W, 3)``, -> float ``(C, D, H, W)``
        resized (trilinear) to :attr:`input_shape` and normalised."""
        volume = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)
        if volume.ndim == 4:  # RGB voxels
            volume = volume.permute(3, 0, 1, 2)
            if self.channels == 1:
                volume = volume.mean(dim=0, keepdim=True)
        elif volume.ndim == 3:
            volume = volume.unsqueeze(0)
        else:
            raise ValueError(f"a volume needs 3 spatial axes, got shape {tuple(array.shape)}")
        if tuple(volume.shape[1:]) != self.input_shape:
            volume = torch.nn.functional.interpolate(
                volume.unsqueeze(0), size=self.input_shape, mode="trilinear", align_corners=False
            )[0]
        if volume.shape[0] != self.channels:
            volume = volume.expand(self.channels, *volume.shape[1:]).clone()
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean).view(-1, 1, 1, 1)
            std = torch.tensor(self.std).view(-1, 1, 1, 1)
            volume = (volume - mean) / std
        return volume

    def volume_mask(self, mask: np.ndarray) -> np.ndarray:
        """A boolean ``(D, H, W)`` mask in the volume's voxels -> bool :attr:`input_shape`
        (nearest neighbour, like the image it goes with)."""
        tensor = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        if tuple(tensor.shape) != self.input_shape:
            tensor = torch.nn.functional.interpolate(
                tensor[None, None], size=self.input_shape, mode="nearest"
            )[0, 0]
        return tensor.numpy() > 0.5

    # -- geometry --------------------------------------------------------------------------
    def _interpolation(self, name: str | None = None) -> Any:
        from torchvision.transforms import InterpolationMode

        return {
            "bilinear": InterpolationMode.BILINEAR,
            "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST,
        }[name or self.interpolation]

    def unchanged_size(self) -> tuple[int, int] | None:
        """The ``(width, height)`` an image must have for :meth:`geometry` to leave it as is.

        ``None`` when every image is resized (a centre crop after resizing the shorter side
        to something other than the input's shorter side).
        """
        height, width = self.size
        if self.crop and not self.native:
            shorter = self.resize[0] if self.resize else min(self.size)
            if shorter != min(height, width):
                return None
        return width, height

    def geometry(self, image: Any, *, nearest: bool = False) -> Any:
        """Resize (and crop) a PIL image to the model input size."""
        from torchvision.transforms import functional as TF

        mode = self._interpolation("nearest" if nearest else None)
        if tuple(image.size) == self.unchanged_size():
            return image  # resizing to the same size is a copy in Pillow
        if self.native:
            height, width = self.size
            if tuple(image.size) != (width, height):
                raise ValueError(
                    f"the image is {image.size[0]}x{image.size[1]} but images are fed at their "
                    f"own size, {width}x{height} like the others; pass resize= to resize them all"
                )
            return image
        if self.crop:
            shorter = self.resize[0] if self.resize else min(self.size)
            image = TF.resize(image, [shorter], interpolation=mode)
            return TF.center_crop(image, list(self.size))
        return TF.resize(image, list(self.size), interpolation=mode)

    def to_channels(self, image: Any) -> Any:
        """Convert a PIL image to the model's channel count (grayscale <-> RGB)."""
        wanted = "L" if self.channels == 1 else "RGB"
        return image if image.mode == wanted else image.convert(wanted)

    # -- the transforms --------------------------------------------------------------------
    def __call__(self, image: Any) -> torch.Tensor:
        """PIL image -> float tensor ``(C, H, W)`` ready for the model."""
        from torchvision.transforms import functional as TF

        return self.from_pixels(TF.pil_to_tensor(self.geometry(self.to_channels(image))))

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``(C, H, W)`` already at the input geometry -> the model's input."""
        tensor = pixels.float().div_(255.0)
        if self.mean is not None and self.std is not None:
            # torchvision's normalize, without its per-call checks and copy.
            mean, std = _channel_statistics(tuple(self.mean), tuple(self.std))
            tensor.sub_(mean).div_(std)
        return tensor

    def display(self, image: Any) -> np.ndarray:
        """PIL image -> float32 RGB ``(H, W, 3)`` in [0, 1] at the model's geometry."""
        resized = self.geometry(image.convert("RGB"))
        return np.asarray(resized, dtype=np.float32) / 255.0

    def mask(self, mask_image: Any, original_size: tuple[int, int]) -> np.ndarray:
        """A binary mask (PIL, any size) -> bool ``(H, W)`` aligned with the model input.

        ``original_size`` is the source image's ``(width, height)``; a mask of another size is
        first stretched to it, so the same resize/crop applies to both.
        """
        mask_image = mask_image.convert("L")
        if mask_image.size != tuple(original_size):
            from PIL import Image

            mask_image = mask_image.resize(tuple(original_size), Image.Resampling.NEAREST)
        return np.asarray(self.geometry(mask_image, nearest=True)) > 127

    def box_mask(self, box: Sequence[float], original_size: tuple[int, int]) -> np.ndarray:
        """A box ``(x0, y0, x1, y1)`` in source pixels -> bool ``(H, W)`` at the input geometry."""
        from PIL import Image, ImageDraw

        if len(box) != 4:
            raise ValueError(
                f"box {','.join(f'{v:g}' for v in box)} has 3-D corners; a 2-D image's box is "
                "x0,y0,x1,y1"
            )
        width, height = original_size
        x0, y0, x1, y1 = (float(v) for v in box)
        if (int(width), int(height)) == self.unchanged_size() and all(
            v.is_integer() for v in (x0, y0, x1, y1)
        ):
            # Whole pixels on an image kept as is: the same pixels as the drawing below.
            mask = np.zeros((int(height), int(width)), dtype=bool)
            mask[max(int(y0), 0) : max(int(y1), 0), max(int(x0), 0) : max(int(x1), 0)] = True
            return mask
        canvas = Image.new("L", (int(width), int(height)), 0)
        if x1 > x0 and y1 > y0:
            # x1/y1 are exclusive; PIL's rectangle includes its far corner (and refuses a
            # far corner before the near one, which a box under a pixel wide would give).
            corners = [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]
            ImageDraw.Draw(canvas).rectangle(corners, fill=255)
        return np.asarray(self.geometry(canvas, nearest=True)) > 127

    def warm_up(self) -> None:
        """Run the recipe once on a tiny image, so the imports it needs happen here.

        DataLoader workers are forked from the calling process: importing torchvision's
        transforms and Pillow's plugins once before they start saves each worker seconds.
        """
        from PIL import Image

        Image.init()
        if self.is_3d:
            self.volume(np.zeros((2, 2, 2), dtype=np.float32))
            return
        probe = Image.new("RGB", (8, 8))
        self(probe)
        self.box_mask((0, 0, 4, 4), (8, 8))

    # -- description -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (round-trips through :meth:`from_dict`)."""
        data = asdict(self)
        for key in ("size", "resize", "mean", "std"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        notes = data.pop("notes", [])
        made = cls(**data)
        made.notes = list(notes)
        return made

    def describe(self) -> str:
        """One line, e.g. ``resize 256, centre-crop 224x224, ImageNet mean/std, RGB``."""
        height, width = self.size
        if self.is_3d:
            geometry = f"volumes resized to {self.depth}x{height}x{width} (trilinear)"
        elif self.native:
            geometry = f"each image at its own size ({width}x{height}, no resizing)"
        elif self.crop:
            shorter = self.resize[0] if self.resize else min(self.size)
            geometry = f"resize shorter side to {shorter}, centre-crop {height}x{width}"
        else:
            geometry = f"resize to {height}x{width}"
        if self.mean is None:
            norm = "pixels in [0, 1], no normalisation"
        elif tuple(self.mean) == IMAGENET_MEAN and tuple(self.std or ()) == IMAGENET_STD:
            norm = "ImageNet mean/std"
        else:
            mean = ", ".join(f"{v:g}" for v in self.mean)
            std = ", ".join(f"{v:g}" for v in self.std or ())
            norm = f"mean ({mean}), std ({std})"
        colour = "grayscale" if self.channels == 1 else "RGB"
        window = f", intensity window {self.window}" if self.window else ""
        return f"{geometry}, {norm}, {colour}{window} ({self.source or 'custom'})"


def window_text(spec: str) -> str:
    """A ``--window`` value checked and written one way: ``auto``, ``full`` or
    ``CENTER,WIDTH`` (``ValueError`` naming the accepted forms otherwise)."""
    # Imported here: the medical package imports data.images, which imports this module.
    from shortcut_detect.data.medical.window import parse_window

    parsed = parse_window(str(spec))
    if isinstance(parsed, str):
        return parsed
    return f"{parsed.center:g},{parsed.width:g}"


def preprocessing_from_options(
    *,
    base: Preprocessing | None,
    channels: int,
    preset: str | None = None,
    resize: Sequence[int] | int | None = None,
    crop: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: tuple[int, int] | Callable[[], tuple[int, int]] | None = None,
    spatial_dims: int = 2,
) -> Preprocessing:
    """Combine a model's known recipe (``base``) with user options (which win).

    For a 3-D model (``spatial_dims=3``) the size is ``resize`` as ``(depth, height,
    width)`` or one number for a cube (else the base recipe's); volumes are resized to it,
    never cropped (see :func:`volume_preprocessing`).

    When neither ``base``, ``preset="imagenet"``, ``resize`` nor ``crop`` gives an input
    size but the normalisation is given (``mean``/``std``, or ``preset="none"``), images are
    fed at their own size (:attr:`Preprocessing.native`); ``image_size`` is then their
    ``(height, width)``, or a function returning it (called only in that case, so a data set
    is scanned only when needed).

    Raises
    ------
    InputSizeError
        When no input size can be determined, naming the options that give one.
    ValueError
        For inconsistent options (only one of ``mean`` and ``std``, an unknown preset).
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if spatial_dims == 3:
        return volume_preprocessing(
            base=base,
            channels=channels,
            preset=preset,
            resize=resize,
            crop=crop,
            mean=mean,
            std=std,
        )
    recipe: dict[str, Any] = {}
    source = ""
    if base is not None:
        recipe = {
            "size": base.size,
            "resize": base.resize,
            "crop": base.crop,
            "mean": base.mean,
            "std": base.std,
            "interpolation": base.interpolation,
        }
        source = base.source
    if preset is not None:
        values = PRESETS[preset]
        recipe["mean"], recipe["std"] = values["mean"], values["std"]
        if values["crop"] is not None:
            recipe.update(size=values["crop"], resize=values["resize"], crop=True)
        source = f"preset {preset}"
    user = []
    if resize is not None:
        recipe.update(size=resize, resize=resize, crop=False)
        user.append("resize")
    if crop is not None:
        recipe.update(size=crop, crop=True)
        if resize is None:
            recipe.setdefault("resize", None)
        user.append("crop")
    if mean is not None:
        recipe["mean"] = tuple(mean)
        user.append("mean")
    if std is not None:
        recipe["std"] = tuple(std)
        user.append("std")
    if (recipe.get("mean") is None) != (recipe.get("std") is None):
        raise ValueError("Give both mean= and std= (or neither)")
    native = False
    if recipe.get("size") is None:
        if preset is None and mean is None:
            raise InputSizeError(
                "The model's input size and normalisation are not known. Pass "
                'preset="imagenet" (resize 256, crop 224, ImageNet mean/std), or mean= and '
                "std= as the model was trained (images are then fed at their own size; add "
                'resize=N to resize them), or preset="none" for pixels in [0, 1].'
            )
        if image_size is None:
            raise InputSizeError(
                "Images are fed at their own size (no resize= given), so the input size is "
                "the images' size; pass image_size=(height, width), or resize=N."
            )
        recipe["size"] = image_size() if callable(image_size) else image_size
        native = True
    if user:
        source = f"{source} + --{'/--'.join(user)}" if source else "command-line options"
    return Preprocessing(
        size=recipe["size"],
        resize=recipe.get("resize"),
        crop=bool(recipe.get("crop", False)),
        mean=recipe.get("mean"),
        std=recipe.get("std"),
        channels=channels,
        interpolation=recipe.get("interpolation", "bilinear"),
        source=source,
        native=native,
    )


def volume_preprocessing(
    *,
    base: Preprocessing | None,
    channels: int,
    preset: str | None = None,
    resize: Sequence[int] | int | None = None,
    crop: Sequence[int] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The recipe of a 3-D model: a ``(depth, height, width)`` resize and a normalisation.

    Raises
    ------
    InputSizeError
        Neither ``resize`` nor the base recipe gives the 3-D size.
    ValueError
        ``crop`` (3-D inputs are resized, not cropped), ``preset="imagenet"``, a ``resize``
        of two numbers without a known depth, only one of ``mean`` and ``std``.
    """
    if crop is not None:
        raise ValueError(
            "crop= is for 2-D images; a 3-D model's volumes are resized to resize=D,H,W"
        )
    if preset == "imagenet":
        raise ValueError('preset="imagenet" is a 2-D recipe; give resize=D,H,W and mean=/std=')
    notes: list[str] = list(base.notes) if base is not None else []
    depth = base.depth if base is not None else None
    size = tuple(base.size) if base is not None else None
    normalisation = (base.mean, base.std) if base is not None else (None, None)
    source = base.source if base is not None else ""
    if base is not None and base.crop:
        notes.append(
            f"the recipe's resize + centre crop is replaced by a resize to "
            f"{depth}x{size[0]}x{size[1]} (volumes are resized in 3-D, not cropped)"
        )
    if resize is not None:
        values = [int(resize)] if isinstance(resize, int) else [int(v) for v in resize]
        if len(values) == 1:
            values = values * 3
        elif len(values) == 2:
            if depth is None:
                raise ValueError(
                    f"resize={','.join(map(str, values))} gives height and width only; a 3-D "
                    "model needs resize=D,H,W (or one number for a cube)"
                )
            values = [depth, *values]
        elif len(values) != 3:
            raise ValueError(f"resize= takes 1 or 3 numbers for a 3-D model, got {values}")
        depth, size = values[0], (values[1], values[2])
        source = f"{source} + --resize" if source else "command-line options"
    if depth is None or size is None:
        raise InputSizeError(
            "The 3-D model's input size is not known: pass resize=D,H,W (depth, height, "
            "width of the volumes it was trained on) or resize=N for an N-cube."
        )
    if preset == "none":
        normalisation = (None, None)
    if mean is not None or std is not None:
        normalisation = (mean, std)
    if (normalisation[0] is None) != (normalisation[1] is None):
        raise ValueError("Give both mean= and std= (or neither)")
    made = Preprocessing(
        size=size,
        mean=None if normalisation[0] is None else tuple(normalisation[0]),
        std=None if normalisation[1] is None else tuple(normalisation[1]),
        channels=channels,
        source=source,
        depth=depth,
    )
    made.notes.extend(notes)
    return made
