"""Loading a model from a command-line spec, with its classes and preprocessing.

Accepted specs (:data:`MODEL_SPEC_FORMS`):

* ``demo``, ``demo:shortcut``, ``demo:clean``: the built-in demo models (trained once, cached).
* ``torchvision:NAME`` (``torchvision:resnet50``) with ``weights="DEFAULT"`` (or a weights
  name such as ``IMAGENET1K_V2``; needs the internet once) or a local weights file.
* ``timm:NAME`` when timm is installed, same weights options.
* ``monai:NAME`` (``monai:DenseNet121``) when MONAI is installed: a network of
  ``monai.networks.nets`` built with ``spatial_dims``, ``in_channels`` and ``num_classes``;
  trained weights as a file. 3-D networks (and torchvision's video models such as
  ``torchvision:r3d_18``) take volumes ``(B, C, D, H, W)``.
* ``package.module:factory``: a function of the user's code that returns the model; pass
  the trained weights as a file.
* ``path/to/model.pt``: a TorchScript file, or a fully pickled model (only with
  ``trust_pickle=True``, because unpickling runs code from the file).

Weights files are state dicts loaded with ``torch.load(weights_only=True)`` or safetensors.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pickle
import re
import socket
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shortcut_detect.cam.layers import default_layer
from shortcut_detect.common.device import resolve_device
from shortcut_detect.data.transforms import (
    InputSizeError,
    Preprocessing,
    preprocessing_from_options,
)

__all__ = [
    "MODEL_SPEC_FORMS",
    "PREDICTED_CLASS",
    "LoadedModel",
    "ModelLoadError",
    "ModelOptions",
    "UnknownClassError",
    "UnknownInputSizeError",
    "build_model",
    "class_index",
    "load_model",
    "load_state_dict_file",
    "read_class_names",
]

MODEL_SPEC_FORMS = (
    "demo | demo:shortcut | demo:clean (built-in demo models)",
    "torchvision:NAME, e.g. torchvision:resnet50 with weights=DEFAULT or weights=FILE",
    "timm:NAME, e.g. timm:resnet18 with weights=DEFAULT or weights=FILE",
    "monai:NAME, e.g. monai:DenseNet121 with spatial_dims=3, in_channels=1, num_classes=2 "
    "and weights=FILE (3-D: torchvision video models too, e.g. torchvision:r3d_18)",
    "package.module:factory (your code returns the model; run from its folder or set "
    "PYTHONPATH) with weights=FILE",
    "path/to/model.pt: a pickled full model (needs trust_pickle=True); a TorchScript file "
    "loads for predictions only (no heatmaps: it cannot take layer hooks)",
)

_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".pkl", ".bin")


class ModelLoadError(ValueError):
    """The model could not be loaded as specified; the message says what to do."""


class UnknownInputSizeError(ModelLoadError):
    """The model's input size is not known (no recipe, no ``resize``, no ``image_size``)."""


@dataclass
class LoadedModel:
    """A model ready to explain, and how to feed it.

    Attributes
    ----------
    model:
        The module, in eval mode, on its device.
    spec:
        The spec it was loaded from (``"torchvision:resnet50"``, ...).
    class_names:
        One name per output class (``"0"``, ``"1"``, ... when unknown).
    transform:
        ``PIL.Image -> (C, H, W)`` float tensor; a :class:`Preprocessing`, which can also
        align masks and make display copies.
    input_size:
        ``(height, width)`` of the model input; ``(depth, height, width)`` for a 3-D model.
    in_channels:
        Channels the model expects (1 or 3).
    default_layer:
        Dotted name of the layer explained by default (``None`` if it cannot be found, e.g.
        TorchScript).
    num_classes:
        Number of outputs.
    weights:
        What the weights came from (``"DEFAULT"``, a file, ``None`` for the factory's own).
    class_names_known:
        False when ``class_names`` are placeholders (a data set's names may replace them).
    notes:
        Things the user should know (assumed preprocessing, inferred class count, ...).
    """

    model: nn.Module
    spec: str
    class_names: list[str]
    transform: Preprocessing
    input_size: tuple[int, int]
    in_channels: int
    default_layer: str | None
    num_classes: int = 0
    weights: str | None = None
    class_names_known: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    notes: list[str] = field(default_factory=list)

    @property
    def is_torchscript(self) -> bool:
        """True for TorchScript modules (which cannot take the hooks Grad-CAM needs)."""
        return isinstance(self.model, torch.jit.ScriptModule)

    @property
    def spatial_dims(self) -> int:
        """2 for image models, 3 for models that take volumes ``(B, C, D, H, W)``."""
        return len(self.input_size)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for reports."""
        return {
            "spec": self.spec,
            "weights": self.weights,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_size": list(self.input_size),
            "in_channels": self.in_channels,
            "default_layer": self.default_layer,
            "preprocessing": self.transform.describe(),
            "notes": list(self.notes),
        }


# -- weights files ------------------------------------------------------------------------------


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    for prefix in ("module.", "_orig_mod.", "model."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def load_state_dict_file(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> dict:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, safely.

    Checkpoint dicts (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and
    ``module.`` prefixes (DataParallel) removed. A pickled module is refused unless
    ``trust_pickle`` (then its state dict is used).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"weights={path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ModelLoadError(
                f"{path} is a safetensors file; install safetensors (pip install safetensors)"
            ) from error
        try:
            return _strip_prefixes(load_file(str(path), device="cpu"))
        except Exception as error:
            raise ModelLoadError(f"Cannot read safetensors file {path}: {error}") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
        text = str(error)
        pickled = "weights_only" in text or "Unsupported global" in text
        if isinstance(error, RuntimeError) and not pickled:
            if _is_torchscript_file(path):
                return _strip_prefixes(_jit_load(path).state_dict())
            raise ModelLoadError(
                f"Cannot read weights file {path}: {text.splitlines()[0]}"
            ) from error
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} contains pickled Python objects, not just tensors; loading it can run "
                "code from the file. If you trust the file, pass trust_pickle=True (or save a "
                "state dict: torch.save(model.state_dict(), 'weights.pt'))."
            ) from error
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(f"Cannot read weights file {path}: {error}") from error
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = loaded.get(key)
            if isinstance(inner, nn.Module):
                inner = inner.state_dict()
            if (
                isinstance(inner, Mapping)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ModelLoadError(
            f"{path} does not hold a state dict (name -> tensor); save one with "
            "torch.save(model.state_dict(), path)"
        )
    return _strip_prefixes(dict(loaded))


def _last_linear_name(model: nn.Module) -> str | None:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def _classes_in_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int | None:
    name = _last_linear_name(model)
    weight = state.get(f"{name}.weight") if name else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _apply_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    hint = "Check the architecture name and num_classes=."
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        detail = mismatches[0] if mismatches else str(error).splitlines()[0]
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise ModelLoadError(
            f"The weights in {source} do not fit the model: {detail}{more}. {hint}"
        ) from error
    problems = []
    for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)):
        if keys:
            problems.append(f"{len(keys)} {kind} key(s), e.g. {', '.join(keys[:3])}")
    if problems:
        raise ModelLoadError(
            f"The weights in {source} do not fit the model: {'; '.join(problems)}. {hint}"
        )


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file (one per line) or a JSON list / ``{index: name}`` map."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"classes={path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelLoadError(f"classes={path}: invalid JSON ({error})") from error
        if isinstance(data, dict):
            try:
                return [str(data[k]) for k in sorted(data, key=int)]
            except ValueError as error:
                raise ModelLoadError(
                    f"classes={path}: a JSON object must map class indices to names"
                ) from error
        if isinstance(data, list):
            return [str(v) for v in data]
        raise ModelLoadError(f"classes={path}: expected a JSON list of names")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelLoadError(f"classes={path}: the file is empty")
    return names


# -- the spec forms -------------------------------------------------------------------------------


@dataclass
class _Built:
    model: nn.Module
    weights: str | None = None
    base: Preprocessing | None = None
    class_names: list[str] | None = None
    default_layer: str | None = None
    notes: list[str] = field(default_factory=list)


def _needs_internet(what: str, url: str, error: BaseException, local_hint: str) -> ModelLoadError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ModelLoadError(
        f"weights=DEFAULT downloads {what} from {url}, which needs the internet ({reason}). "
        f"{local_hint}"
    )


def _build_demo(variant: str, weights: str | None) -> _Built:
    from shortcut_detect.data.demo import load_demo_models

    if variant not in ("", "shortcut", "clean"):
        raise ModelLoadError(f"Unknown demo model {variant!r}; use demo:shortcut or demo:clean")
    if weights is not None:
        raise ModelLoadError("The demo models bring their own weights; drop weights=")
    models = load_demo_models()
    clean = variant == "clean"
    model = models.clean_model if clean else models.shortcut_model
    path = models.clean_weights if clean else models.shortcut_weights
    base = Preprocessing(size=(48, 48), channels=3, source="demo model")
    return _Built(
        model=model,
        weights=str(path),
        base=base,
        class_names=["disk", "cross"],
        default_layer="features",
    )


# Frames per clip of torchvision's video classifiers (their Kinetics-400 recipe).
VIDEO_CLIP_FRAMES = 16


def _torchvision_base(weights_enum: Any, video: bool = False) -> Preprocessing | None:
    try:
        transform = weights_enum.transforms()
    except Exception:
        return None
    crop = getattr(transform, "crop_size", None)
    resize = getattr(transform, "resize_size", None)
    mean = getattr(transform, "mean", None)
    std = getattr(transform, "std", None)
    if crop is None or mean is None:
        return None
    interpolation = str(getattr(transform, "interpolation", "bilinear")).split(".")[-1].lower()
    if video:
        base = Preprocessing(
            size=tuple(crop),
            mean=tuple(mean),
            std=tuple(std),
            source=f"torchvision {weights_enum}",
            depth=VIDEO_CLIP_FRAMES,
        )
        base.notes.append(
            f"volumes are resized to {VIDEO_CLIP_FRAMES}x{crop[0]}x{crop[1]} (frames x height "
            "x width of the video recipe, no centre crop)"
        )
        return base
    return Preprocessing(
        size=tuple(crop),
        resize=tuple(resize) if resize else None,
        crop=True,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        source=f"torchvision {weights_enum}",
    )


def _build_torchvision(
    name: str, weights: str | None, num_classes: int | None, trust: bool
) -> _Built:
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        raise ModelLoadError(
            f"torchvision has no model {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + " (list them with torchvision.models.list_models())"
        )
    try:
        weights_enum_cls = torchvision.models.get_model_weights(name)
    except Exception:
        weights_enum_cls = None
    default_enum = getattr(weights_enum_cls, "DEFAULT", None) if weights_enum_cls else None
    video = name in torchvision.models.list_models(module=torchvision.models.video)
    notes: list[str] = []
    if weights is not None and not _looks_like_file(weights):
        if weights_enum_cls is None:
            raise ModelLoadError(f"torchvision:{name} has no pretrained weights; pass a file")
        try:
            chosen = weights_enum_cls[weights] if weights != "DEFAULT" else default_enum
        except KeyError as error:
            names = ", ".join(["DEFAULT", *(w.name for w in weights_enum_cls)])
            raise ModelLoadError(
                f"weights={weights}: not a weights file or a torchvision weights name for "
                f"{name} ({names})"
            ) from error
        categories = list(chosen.meta.get("categories") or [])
        if num_classes is not None and categories and num_classes != len(categories):
            raise ModelLoadError(
                f"weights={weights} has {len(categories)} classes but num_classes= is "
                f"{num_classes}; fine-tuned weights must come as a file"
            )
        try:
            model = torchvision.models.get_model(name, weights=chosen)
        except (OSError, RuntimeError) as error:
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise _needs_internet(
                f"the {chosen} weights",
                chosen.url,
                error,
                f"Download the file on a connected machine into {hub}/ (torchvision's cache) or "
                "pass it with weights=FILE.",
            ) from error
        return _Built(
            model=model,
            weights=str(chosen),
            base=_torchvision_base(chosen, video),
            class_names=categories or None,
        )
    state = load_state_dict_file(weights, trust_pickle=trust) if weights else None
    model = torchvision.models.get_model(name, weights=None, **_classes_kw(num_classes))
    if state is not None:
        inferred = _classes_in_state(model, state)
        _check_class_count(inferred, num_classes, weights)
        if _binary_logit(inferred, num_classes):
            num_classes = None
        if num_classes is None and inferred is not None and inferred != _num_outputs_guess(model):
            model = torchvision.models.get_model(name, weights=None, num_classes=inferred)
            notes.append(f"{inferred} classes, read from the weights file")
        _apply_state(model, state, str(weights))
    else:
        notes.append("no weights= given: the model has random weights")
    base = _torchvision_base(default_enum, video) if default_enum is not None else None
    if base is not None:
        base.source = f"torchvision {default_enum} recipe (assumed)"
        notes.append(
            f"preprocessing assumed to be that of {default_enum}; override with "
            "preset=, resize=, mean= and std= if the model was trained otherwise"
        )
    return _Built(model=model, weights=str(weights) if weights else None, base=base, notes=notes)


def _binary_logit(inferred: int | None, num_classes: int | None) -> bool:
    """Two class names (or classes) for weights with one output: a sigmoid classifier."""
    return inferred == 1 and num_classes == 2


def _check_class_count(inferred: int | None, num_classes: int | None, weights: str | None) -> None:
    if _binary_logit(inferred, num_classes):
        return
    if inferred is not None and num_classes is not None and inferred != num_classes:
        raise ModelLoadError(
            f"The weights file {weights} has {inferred} classes but {num_classes} were given "
            "(num_classes= or the number of classes= names)"
        )


def _num_outputs_guess(model: nn.Module) -> int | None:
    name = _last_linear_name(model)
    return model.get_submodule(name).out_features if name else None


def _classes_kw(num_classes: int | None) -> dict[str, int]:
    return {} if num_classes is None else {"num_classes": int(num_classes)}


def _online(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _build_timm(name: str, weights: str | None, num_classes: int | None, trust: bool) -> _Built:
    try:
        import timm
    except ImportError as error:
        raise ModelLoadError("timm:... models need timm (pip install timm)") from error
    if not timm.list_models(name) and name not in timm.list_models():
        base_name = name.split(".")[0]
        if base_name not in timm.list_models():
            raise ModelLoadError(
                f"timm has no model {name!r} (list them with timm.list_models('*pattern*'))"
            )
    notes: list[str] = []
    pretrained = weights == "DEFAULT"
    kwargs = _classes_kw(num_classes)
    if pretrained:
        previous = os.environ.get("HF_HUB_OFFLINE")
        if not _online("huggingface.co"):
            # Use a cached copy if there is one, without minutes of retries.
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as error:
            raise _needs_internet(
                f"the timm weights of {name}",
                "huggingface.co",
                error,
                "Download them on a connected machine (they are cached under ~/.cache/huggingface) "
                "or pass a weights file with weights=FILE.",
            ) from error
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if weights:
            state = load_state_dict_file(weights, trust_pickle=trust)
            inferred = _classes_in_state(model, state)
            _check_class_count(inferred, num_classes, weights)
            if _binary_logit(inferred, num_classes):
                num_classes = None
            if (
                num_classes is None
                and inferred is not None
                and inferred != _num_outputs_guess(model)
            ):
                model = timm.create_model(name, pretrained=False, num_classes=inferred)
                notes.append(f"{inferred} classes, read from the weights file")
            _apply_state(model, state, str(weights))
        else:
            notes.append("no weights= given: the model has random weights")
    base = None
    try:
        from timm.data import resolve_data_config

        config = resolve_data_config({}, model=model)
        _, height, width = config["input_size"]
        crop_pct = float(config.get("crop_pct") or 1.0)
        interpolation = str(config.get("interpolation", "bilinear"))
        base = Preprocessing(
            size=(height, width),
            resize=(int(height / crop_pct), int(width / crop_pct)),
            crop=True,
            mean=tuple(config["mean"]),
            std=tuple(config["std"]),
            interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
            source=f"timm {name} data config",
        )
    except Exception:  # a model without a data config: the user must give preprocessing
        base = None
    return _Built(model=model, weights=str(weights) if weights else None, base=base, notes=notes)


def _import_user_module(spec: str, module_name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # a user's own package next to where they run the command
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ModelLoadError(
                f"model={spec}: no module {module_name!r} on the Python path. Run from the "
                "folder that contains it, or add that folder to PYTHONPATH "
                "(PYTHONPATH=/path/to/project)."
            ) from error
        raise ModelLoadError(f"model={spec}: importing {module_name!r} failed: {error}") from error
    except Exception as error:  # the user's module raised while importing
        raise ModelLoadError(
            f"model={spec}: importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from error


def _accepts_num_classes(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): try the keyword
        return True
    return any(
        p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


# The keyword each MONAI network uses for the spatial dimensions, input channels and classes
# (in order of preference); the ResNet family takes them through **kwargs.
_MONAI_KEYWORDS = {
    "spatial_dims": ("spatial_dims", "dimensions"),
    "in_channels": ("in_channels", "n_input_channels"),
    "num_classes": ("out_channels", "num_classes", "classes"),
}
_MONAI_KWARGS_NAMES = {
    "spatial_dims": "spatial_dims",
    "in_channels": "n_input_channels",
    "num_classes": "num_classes",
}


def _monai_arguments(factory: Any, values: dict[str, int]) -> dict[str, int]:
    """``values`` under the keyword names ``factory`` takes."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    arguments = {}
    for option, value in values.items():
        keyword = next((k for k in _MONAI_KEYWORDS[option] if k in parameters), None)
        if keyword is None and takes_kwargs:
            keyword = _MONAI_KWARGS_NAMES[option]
        if keyword is not None:
            arguments[keyword] = value
    return arguments


def _build_monai(
    name: str,
    weights: str | None,
    num_classes: int | None,
    trust: bool,
    spatial_dims: int | None,
    in_channels: int | None,
) -> _Built:
    try:
        # Imported here: MONAI is an optional, heavy package (seconds to import).
        import monai.networks.nets as nets
    except ImportError as error:
        raise ModelLoadError(
            "monai:... models need MONAI: pip install 'shortcut-detect[monai]'"
        ) from error
    factory = getattr(nets, name, None)
    if not callable(factory) or name.startswith("_"):
        import difflib

        available = [n for n in dir(nets) if not n.startswith("_") and callable(getattr(nets, n))]
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        raise ModelLoadError(
            f"MONAI has no network {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + " (they are listed in monai.networks.nets)"
        )
    if weights == "DEFAULT":
        raise ModelLoadError(
            "monai:... networks take their trained weights as a file (weights=FILE); MONAI's "
            "own pretrained downloads are not supported"
        )
    notes: list[str] = []
    if spatial_dims is None:
        spatial_dims = 3
        notes.append("spatial_dims=3 assumed (a 3-D network); pass spatial_dims=2 for 2-D")
    if spatial_dims not in (2, 3):
        raise ModelLoadError(f"spatial_dims= must be 2 or 3, got {spatial_dims}")
    if in_channels is None:
        in_channels = 1
        notes.append("in_channels=1 assumed (grayscale scans)")
    state = load_state_dict_file(weights, trust_pickle=trust) if weights else None

    def make(classes: int) -> nn.Module:
        values = {"spatial_dims": spatial_dims, "in_channels": in_channels, "num_classes": classes}
        try:
            return factory(**_monai_arguments(factory, values))
        except Exception as error:
            raise ModelLoadError(
                f"monai.networks.nets.{name} with {spatial_dims} spatial dims, {in_channels} "
                f"input channel(s) and {classes} classes failed: {str(error).splitlines()[0]}. "
                "Networks that "
                "need more arguments can be built by your own factory "
                "(model=package.module:factory)"
            ) from error

    model = make(num_classes or 2)
    if state is not None:
        inferred = _classes_in_state(model, state)
        _check_class_count(inferred, num_classes, weights)
        if num_classes is None and inferred is not None and inferred != 2:
            model = make(inferred)
            notes.append(f"{inferred} classes, read from the weights file")
        _apply_state(model, state, str(weights))
    else:
        notes.append("no weights= given: the model has random weights")
        if num_classes is None:
            notes.append("num_classes=2 assumed")
    return _Built(model=model, weights=str(weights) if weights else None, notes=notes)


def _build_factory(spec: str, weights: str | None, num_classes: int | None, trust: bool) -> _Built:
    module_name, _, attribute = spec.partition(":")
    module = _import_user_module(spec, module_name)
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"model={spec}: {module_name} has no callable {attribute!r}")
    # A factory without num_classes builds its own head; load_model checks its outputs
    # against the class count.
    kwargs = _classes_kw(num_classes) if _accepts_num_classes(factory) else {}
    try:
        model = factory(**kwargs)
    except TypeError as error:
        call = f"{attribute}({'num_classes=...' if kwargs else ''})"
        raise ModelLoadError(f"model={spec}: calling {call} failed: {error}") from error
    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"model={spec}: {attribute}() returned {type(model).__name__}, not a torch.nn.Module"
        )
    notes = []
    if weights:
        _apply_state(model, load_state_dict_file(weights, trust_pickle=trust), str(weights))
    else:
        notes.append(f"no weights= given: using the weights {attribute}() returned")
    return _Built(model=model, weights=str(weights) if weights else None, notes=notes)


def _is_torchscript_file(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                name.endswith(("constants.pkl", "code/__torch__.py")) or "/code/" in name
                for name in archive.namelist()
            )
    except (zipfile.BadZipFile, OSError):
        return False


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _build_file(path: Path, weights: str | None, trust: bool) -> _Built:
    if weights:
        raise ModelLoadError(
            f"model={path} is a model file with its own weights; drop weights= (or give "
            "the architecture as model=torchvision:NAME / package.module:factory)"
        )
    if _is_torchscript_file(path):
        try:
            model = _jit_load(path)
        except RuntimeError as error:
            raise ModelLoadError(f"Cannot load TorchScript file {path}: {error}") from error
        return _Built(
            model=model,
            weights=str(path),
            notes=[
                "TorchScript: predictions only. Grad-CAM needs layer hooks, which TorchScript "
                "does not support; load the architecture from Python with its state dict "
                "(torch.jit.load(f).state_dict()) for heatmaps"
            ],
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
        if not trust:
            raise ModelLoadError(
                f"{path} is a pickled model object; loading it runs code from the file. If you "
                "trust the file, pass trust_pickle=True; otherwise give the architecture "
                "(model=torchvision:NAME or package.module:factory) and a state dict as "
                "weights=FILE."
            ) from error
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as inner:
            raise ModelLoadError(
                f"Cannot unpickle {path}: {inner}. The model's class must be importable "
                "(run from its project folder)."
            ) from inner
    except (EOFError, zipfile.BadZipFile, OSError) as error:
        raise ModelLoadError(f"Cannot read model file {path}: {error}") from error
    if isinstance(loaded, nn.Module):
        return _Built(model=loaded, weights=str(path))
    raise ModelLoadError(
        f"{path} holds {'a state dict' if isinstance(loaded, Mapping) else type(loaded).__name__}"
        ", not a model. Give the architecture with model=torchvision:NAME or "
        f"package.module:factory and pass this file as weights={path}."
    )


def _looks_like_file(value: str) -> bool:
    return (
        "/" in value
        or "\\" in value
        or Path(value).suffix.lower() in (*_MODEL_FILE_SUFFIXES, ".safetensors", ".ckpt")
        or Path(value).expanduser().exists()
    )


def _unknown_spec(spec: str) -> ModelLoadError:
    forms = "\n  ".join(MODEL_SPEC_FORMS)
    return ModelLoadError(f"Unknown model spec {spec!r}. Accepted forms:\n  {forms}")


def _build(
    spec: str,
    weights: str | os.PathLike[str] | None,
    num_classes: int | None,
    trust: bool,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
) -> _Built:
    weights = None if weights is None else str(weights)
    text = spec.strip()
    if text.startswith("monai:"):
        return _build_monai(
            text.split(":", 1)[1], weights, num_classes, trust, spatial_dims, in_channels
        )
    if spatial_dims is not None or in_channels is not None:
        raise ModelLoadError(
            "spatial_dims= and in_channels= build monai:NAME networks; other models bring "
            "their own (drop these options)"
        )
    if text == "demo" or text.startswith("demo:"):
        return _build_demo(text.partition(":")[2], weights)
    if text.startswith("torchvision:"):
        return _build_torchvision(text.split(":", 1)[1], weights, num_classes, trust)
    if text.startswith("timm:"):
        return _build_timm(text.split(":", 1)[1], weights, num_classes, trust)
    path = Path(text).expanduser()
    if path.is_file():
        return _build_file(path, weights, trust)
    if _FACTORY_SPEC.match(text):
        return _build_factory(text, weights, num_classes, trust)
    if _looks_like_file(text):
        raise ModelLoadError(f"model={text}: no such file")
    raise _unknown_spec(text)


# -- probing --------------------------------------------------------------------------------------


def _first_conv(model: nn.Module) -> nn.Module | None:
    return next(
        (m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None
    )


def _in_channels(model: nn.Module) -> int:
    conv = _first_conv(model)
    if conv is not None:
        return int(conv.in_channels)
    for tensor in model.parameters():
        if tensor.ndim == 4:
            return int(tensor.shape[1])
    return 3


def _model_spatial_dims(model: nn.Module) -> int:
    """3 when the model's first convolution is 3-D (it takes volumes), else 2."""
    return 3 if isinstance(_first_conv(model), nn.Conv3d) else 2


def _count_outputs(model: nn.Module, example: torch.Tensor) -> int:
    with torch.inference_mode():
        output = model(example)
    if isinstance(output, Mapping):
        output = next(iter(output.values()))
    if isinstance(output, (list, tuple)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ModelLoadError(f"The model returns {type(output).__name__}, not a tensor of logits")
    return int(output.reshape(output.shape[0], -1).shape[1])


def _class_names_option(
    classes: str | os.PathLike[str] | Sequence[str] | None, num_classes: int | None
) -> tuple[list[str] | None, int | None]:
    """The class names given (read from a file if needed) and the class count they imply."""
    if classes is None:
        names = None
    else:
        names = read_class_names(classes) if isinstance(classes, (str, os.PathLike)) else classes
        names = [str(n) for n in names]
        binary = num_classes == 1 and len(names) == 2
        if num_classes is not None and num_classes != len(names) and not binary:
            raise ModelLoadError(
                f"classes= lists {len(names)} names but num_classes= is {num_classes}"
            )
        num_classes = num_classes or len(names)
    if num_classes is not None and num_classes < 1:
        raise ModelLoadError(f"num_classes= must be at least 1, got {num_classes}")
    return names, num_classes


def _check_outputs(outputs: int, names: list[str] | None, num_classes: int | None) -> None:
    """The model's output count against the class names or count that were given."""
    # A single output is a sigmoid classifier with two classes (logit > 0: class 1).
    wanted = 2 if outputs == 1 else outputs
    if names is not None and len(names) != wanted:
        raise ModelLoadError(
            f"classes= lists {len(names)} names but the model has {outputs} output(s)"
            + (" (one logit: give two names, negative then positive)" if outputs == 1 else "")
        )
    if names is None and num_classes is not None and num_classes not in (outputs, wanted):
        raise ModelLoadError(f"num_classes= is {num_classes} but the model has {outputs} outputs")


def build_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """Only the module of a spec, in eval mode on the CPU: no preprocessing, no probing.

    For what needs no input (listing a model's modules); :func:`load_model` gives a model
    ready to explain. Parameters and errors are those of :func:`load_model`.
    """
    built = _build(spec, weights, num_classes, trust_pickle, spatial_dims, in_channels)
    return built.model.eval()


def load_model(
    spec: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    classes: str | os.PathLike[str] | Sequence[str] | None = None,
    trust_pickle: bool = False,
    device: str | torch.device | None = None,
    preset: str | None = None,
    resize: int | Sequence[int] | None = None,
    crop: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: tuple[int, int] | Callable[[], tuple[int, int]] | None = None,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
) -> LoadedModel:
    """Load a model from a spec (see :data:`MODEL_SPEC_FORMS`) with its preprocessing.

    Parameters
    ----------
    spec:
        ``demo[:shortcut|:clean]``, ``torchvision:NAME``, ``timm:NAME``, ``monai:NAME``,
        ``package.module:factory`` or a model file.
    weights:
        ``"DEFAULT"`` (or a torchvision weights name) for the published weights, or a state
        dict file (``.pt``/``.pth``/``.safetensors``).
    num_classes:
        Number of outputs; read from the weights file (or ``classes``) when not given. A
        ``package.module:factory`` whose factory takes no ``num_classes`` is called without
        it, and its output count is checked against this.
    classes:
        Class names in output order, or a file with them (one per line, or JSON).
    trust_pickle:
        Allow unpickling a full model object (runs code from the file).
    device:
        ``"cpu"``, ``"cuda"``, ...; ``None`` picks CUDA when available (see
        :func:`~shortcut_detect.common.device.resolve_device`).
    preset, resize, crop, mean, std:
        Preprocessing overrides, see
        :func:`~shortcut_detect.data.transforms.preprocessing_from_options`. With the
        normalisation but no size (``mean``/``std`` or ``preset="none"``, no ``resize``, and
        a model without a known recipe) each image is fed at its own size.
    image_size:
        ``(height, width)`` of the images, or a function returning it: the model's input
        size when images are fed at their own size (only then is it used or called).

    Raises
    ------
    ModelLoadError
        Unknown spec (the message lists the accepted forms), weights that do not fit, a
        pickled model without ``trust_pickle``, published weights without internet, a class
        list that does not match the outputs. :class:`UnknownInputSizeError` (a
        ``ModelLoadError``) when the input size is not known.
    DeviceUnavailableError
        ``device`` names a device this machine does not have.
    """
    resolved = resolve_device(device)
    names, num_classes = _class_names_option(classes, num_classes)
    built = _build(spec, weights, num_classes, trust_pickle, spatial_dims, in_channels)
    model = built.model.eval()
    model.to(resolved)
    channels = _in_channels(model)
    dims = spatial_dims or _model_spatial_dims(model)
    try:
        transform = preprocessing_from_options(
            base=built.base,
            channels=channels if channels in (1, 3) else 3,
            preset=preset,
            resize=resize,
            crop=crop,
            mean=mean,
            std=std,
            image_size=image_size,
            spatial_dims=dims,
        )
    except InputSizeError as error:
        raise UnknownInputSizeError(str(error)) from error
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    example = torch.zeros(1, transform.channels, *transform.input_shape, device=resolved)
    try:
        outputs = _count_outputs(model, example)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(
            f"The model failed on a {tuple(example.shape)} input: {str(error).splitlines()[0]}. "
            "Check resize= or preset= and the model's input channels."
        ) from error
    _check_outputs(outputs, names, num_classes)
    wanted = 2 if outputs == 1 else outputs
    known = names is not None or bool(built.class_names)
    class_names = names or built.class_names or [str(i) for i in range(wanted)]
    if len(class_names) != wanted:
        class_names, known = [str(i) for i in range(wanted)], False
    layer = built.default_layer
    if layer is None and not isinstance(model, torch.jit.ScriptModule):
        try:
            layer = default_layer(model, example).name
        except (ValueError, RuntimeError):
            layer = None
    return LoadedModel(
        model=model,
        spec=spec,
        class_names=list(class_names),
        transform=transform,
        input_size=tuple(transform.input_shape),
        in_channels=transform.channels,
        default_layer=layer,
        num_classes=outputs,
        weights=built.weights,
        class_names_known=known,
        device=resolved,
        notes=built.notes + transform.notes,
    )


# -- options and classes ------------------------------------------------------------------------


@dataclass
class ModelOptions:
    """How to load a model: a spec and the options of :func:`load_model`, built once.

    ``shortcut-detect`` builds one from its command line (:meth:`from_args`); the audit
    records :meth:`load_kwargs` so a report can reload the same model.
    """

    spec: str
    weights: str | None = None
    num_classes: int | None = None
    classes: str | Sequence[str] | None = None
    trust_pickle: bool = False
    device: str | None = None
    preset: str | None = None
    resize: list[int] | None = None
    crop: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    spatial_dims: int | None = None
    in_channels: int | None = None

    @classmethod
    def from_args(cls, args: Any) -> ModelOptions:
        """From an ``argparse.Namespace`` with ``model`` and attributes named like the fields."""
        values = {name: getattr(args, name, None) for name in _LOAD_OPTION_NAMES}
        values["trust_pickle"] = bool(values["trust_pickle"])
        return cls(spec=args.model, **values)

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`load_model` (everything but the spec)."""
        return {name: getattr(self, name) for name in _LOAD_OPTION_NAMES}

    def given(self) -> dict[str, Any]:
        """The options that were set (``None``/``False`` left out)."""
        return {name: value for name, value in self.load_kwargs().items() if value}

    def load(
        self, *, image_size: tuple[int, int] | Callable[[], tuple[int, int]] | None = None
    ) -> LoadedModel:
        """:func:`load_model` with these options."""
        return load_model(self.spec, image_size=image_size, **self.load_kwargs())

    def build(self) -> nn.Module:
        """:func:`build_model` with these options (the module only)."""
        return build_model(
            self.spec,
            weights=self.weights,
            num_classes=self.num_classes,
            trust_pickle=self.trust_pickle,
            spatial_dims=self.spatial_dims,
            in_channels=self.in_channels,
        )


_LOAD_OPTION_NAMES = tuple(name for name in ModelOptions.__dataclass_fields__ if name != "spec")


class UnknownClassError(ValueError):
    """A class given by name or index that the model does not have."""


PREDICTED_CLASS = "predicted"


def class_index(target: object, class_names: Sequence[str]) -> int | None:
    """The class index a target means: ``None`` for each image's predicted class.

    Parameters
    ----------
    target:
        ``None``, ``""`` or ``"predicted"`` (the predicted class), a class index (int or
        digit string) or a class name.
    class_names:
        The model's class names in output order.

    Raises
    ------
    UnknownClassError
        An unknown name or an index out of range; the message lists the classes.
    """
    if target is None or (isinstance(target, str) and target.strip() in ("", PREDICTED_CLASS)):
        return None
    names = list(class_names)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        index = int(target)
    else:
        text = str(target).strip()
        if text in names:
            return names.index(text)
        if not text.lstrip("-").isdigit():
            listed = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise UnknownClassError(
                f"Unknown class {text!r}: not a class name or index; choose one of: {listed}"
            )
        index = int(text)
    if not 0 <= index < len(names):
        raise UnknownClassError(
            f"Class index {index} is out of range 0..{len(names) - 1}: the model has "
            f"{len(names)} classes"
        )
    return index
