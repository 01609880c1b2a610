"""Deterministic crash points for the kill-anywhere tests.

``SHORTCUT_DETECT_FAULT=STAGE:N`` makes the process kill itself with SIGKILL (no clean-up, no
``finally``, as a power cut or the OOM killer would) the ``N``-th time it reaches the point
named ``STAGE``. Several points are separated by commas (``commit.rows:3,report.html:1``).
Unset, :func:`fault_point` is one dictionary lookup.

Named points (see where each is called): ``write`` (every atomic write, after the temporary
file is synced and before it is renamed into place), ``commit.heatmaps`` (a chunk's heatmaps
renamed into place, its rows not yet), ``commit.rows`` (a chunk committed, the next not
started), ``shard.done`` (all chunks committed, the shard not yet marked finished),
``merge.heatmaps`` (merged heatmaps written, merged rows not yet), ``merge.rows`` (merged rows
written, their source list not yet), ``report.analysis`` (merged, before the analysis),
``report.summary`` (``summary.json`` written, ``report.html`` not yet).
"""

from __future__ import annotations

import os
import signal

__all__ = ["FAULT_ENV", "fault_point"]

FAULT_ENV = "SHORTCUT_DETECT_FAULT"
_reached: dict[str, int] = {}


def _parse(text: str) -> dict[str, int]:
    points = {}
    for item in text.split(","):
        stage, _, count = item.strip().rpartition(":")
        if not stage or not count.isdigit() or int(count) < 1:
            raise ValueError(
                f"{FAULT_ENV}={text!r}: expected STAGE:N[,STAGE:N...] with N >= 1, got {item!r}"
            )
        points[stage] = int(count)
    return points


def fault_point(stage: str) -> None:
    """SIGKILL this process if ``SHORTCUT_DETECT_FAULT`` asks for it at this visit of ``stage``."""
    text = os.environ.get(FAULT_ENV)
    if not text:
        return
    wanted = _parse(text).get(stage)
    if wanted is None:
        return
    _reached[stage] = _reached.get(stage, 0) + 1
    if _reached[stage] == wanted:
        os.kill(os.getpid(), signal.SIGKILL)
