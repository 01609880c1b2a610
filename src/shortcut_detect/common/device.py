"""One rule for choosing the device, used by the library, the CLI and the app."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeviceUnavailableError", "place_model", "resolve_device"]


class DeviceUnavailableError(RuntimeError):
    """An explicitly requested device does not exist on this machine."""


def resolve_device(
    device: str | torch.device | None = None, model: nn.Module | None = None
) -> torch.device:
    """The device to run on.

    - ``device`` given: that device; asking for CUDA or MPS where there is none is an error
      (:class:`DeviceUnavailableError`), never a silent fallback.
    - ``device=None`` and a ``model``: the device of the model's first parameter or buffer
      (CPU for a model without any).
    - ``device=None`` and no model: CUDA if available, else the CPU.
    """
    if device is None:
        if model is not None:
            for tensor in model.parameters():
                return tensor.device
            for tensor in model.buffers():
                return tensor.device
            return torch.device("cpu")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceUnavailableError(
            f"unknown device {str(device)!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {str(device)!r} was asked for but CUDA is not available on this machine; "
            "use 'cpu' or leave the device unset"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(
            "device 'mps' was asked for but MPS is not available on this machine; "
            "use 'cpu' or leave the device unset"
        )
    return resolved


def place_model(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """:func:`resolve_device` for ``model``, moving the model there when ``device`` is given.

    With ``device=None`` the model stays where it is and its device is returned.
    """
    resolved = resolve_device(device, model)
    if device is not None:
        model.to(resolved)
    return resolved
