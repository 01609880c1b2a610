"""Demo models with injected faults for the Ray executor's tests.

Ray's workers import this module by name (the tests put its folder on ``PYTHONPATH`` before
the cluster starts), so its classes travel inside pickled models.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from typing import Any

from shortcut_detect.data.synthetic import SmallCNN


class CrashOnceCNN(SmallCNN):
    """Kills its own process (a Ray actor) at its ``crash_after``-th forward pass; only the
    first process to claim ``crash_marker`` (a file, renamed away atomically) does."""

    crash_marker = ""
    crash_after = 3

    def forward(self, x: Any) -> Any:
        self.calls = getattr(self, "calls", 0) + 1
        if self.crash_marker and self.calls >= self.crash_after:
            try:
                os.rename(self.crash_marker, self.crash_marker + ".claimed")
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return super().forward(x)


class SlowCNN(SmallCNN):
    """Sleeps ``delay`` seconds per forward pass, so a run lasts long enough to be killed."""

    delay = 0.25

    def forward(self, x: Any) -> Any:
        time.sleep(self.delay)
        return super().forward(x)


class CountingCNN(SmallCNN):
    """Counts its forward passes in this process (class-wide), to tell where they ran."""

    calls = 0

    def forward(self, x: Any) -> Any:
        CountingCNN.calls += 1
        return super().forward(x)


def with_class(loaded: Any, cls: type, **attributes: Any) -> Any:
    """A copy of the demo ``loaded`` model whose module is of class ``cls`` (same weights)."""
    model = copy.deepcopy(loaded.model)
    model.__class__ = cls
    for name, value in attributes.items():
        setattr(model, name, value)
    return replace(loaded, model=model)
