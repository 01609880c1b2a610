"""One progress bar for every long loop (embeddings, audits, interventions).

A rich bar on stderr when stderr is a terminal and rich is installed; otherwise silent (the
counts still go to the ``shortcut_detect`` logger at DEBUG level).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["ProgressBar"]

_LOG = logging.getLogger("shortcut_detect.progress")
T = TypeVar("T")


class ProgressBar:
    """A progress bar that counts items.

    Parameters
    ----------
    total:
        Items still to do (``None``: unknown).
    label:
        What is counted, shown before the bar.
    enabled:
        ``None`` decides: shown when stderr is a terminal.
    done:
        Items already done before this run (a resumed audit), shown as completed.
    unit:
        Unit of the rate column, e.g. ``"img"``.
    """

    def __init__(
        self,
        total: int | None,
        label: str,
        enabled: bool | None = None,
        done: int = 0,
        unit: str = "img",
    ) -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self._progress: Any = None
        self._task: Any = None
        self._started = time.perf_counter()
        self.count = 0
        if self.enabled and importlib.util.find_spec("rich") is not None and total != 0:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            full = None if total is None else total + done
            self._task = self._progress.add_task(label, total=full, completed=done, rate="")

    def advance(self, count: int = 1) -> None:
        """Count ``count`` more items."""
        self.count += count
        rate = self.count / max(time.perf_counter() - self._started, 1e-9)
        if self._progress is not None:
            self._progress.update(self._task, advance=count, rate=f"{rate:.1f} {self.unit}/s")
        else:
            _LOG.debug("%s: %d done (%.1f %s/s)", self.label, self.count, rate, self.unit)

    def close(self) -> None:
        """Stop drawing (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def track(self, items: Iterable[T], size: Any = None) -> Iterator[T]:
        """Yield ``items``, advancing by ``size(item)`` (default 1) after each."""
        try:
            for item in items:
                yield item
                self.advance(1 if size is None else int(size(item)))
        finally:
            self.close()
