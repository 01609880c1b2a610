"""Switching a model to eval mode and back, module by module.

``model.train(was_training)`` sets every submodule to the top-level flag, so a frozen
BatchNorm inside a model in training mode would come back in training mode. These helpers
save and restore each module's own flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode", "restore_modes", "saved_modes"]


def saved_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module of ``model`` with its ``training`` flag."""
    return [(module, module.training) for module in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Put back the flags saved by :func:`saved_modes`."""
    for module, training in modes:
        if module.training != training:
            module.training = training


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode; every module's own mode is restored after,
    also when the block raises."""
    modes = saved_modes(model)
    try:
        if any(training for _, training in modes):
            model.eval()
        yield model
    finally:
        restore_modes(modes)
