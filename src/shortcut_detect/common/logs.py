"""Progress messages go through :mod:`logging`; this adapter serves callers that pass a callable."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["forward_log"]


class _CallbackHandler(logging.Handler):
    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record.getMessage())


@contextmanager
def forward_log(
    callback: Callable[[str], None] | None,
    logger: str = "shortcut_detect.audit",
    *,
    deprecated: str | None = None,
) -> Iterator[None]:
    """Within the block, also pass INFO (and higher) messages of ``logger`` to ``callback``.

    Nothing happens for ``callback=None``. With ``deprecated`` (the parameter's owner, e.g.
    ``"run_audit(log=...)"``) a :class:`DeprecationWarning` points the caller to logging.
    """
    if callback is None:
        yield
        return
    if deprecated:
        warnings.warn(
            f"{deprecated} is deprecated; attach a handler to the {logger!r} logger instead",
            DeprecationWarning,
            stacklevel=4,
        )
    target = logging.getLogger(logger)
    handler = _CallbackHandler(callback)
    level = target.level
    if target.getEffectiveLevel() > logging.INFO:
        target.setLevel(logging.INFO)
    target.addHandler(handler)
    try:
        yield
    finally:
        target.removeHandler(handler)
        target.setLevel(level)
