"""Dataset audit: pipeline, incremental store, report.

Names are imported on first use, so ``import shortcut_detect.audit`` stays light::

    from shortcut_detect.audit import AuditOptions, run_audit, AuditStore
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AuditError",
    "AuditOptions",
    "AuditRun",
    "AuditStore",
    "ShardWriter",
    "StoreError",
    "build_report",
    "run_audit",
    "run_demo",
]

_LAZY = {
    "AuditError": "shortcut_detect.audit.pipeline",
    "AuditOptions": "shortcut_detect.audit.pipeline",
    "AuditRun": "shortcut_detect.audit.pipeline",
    "run_audit": "shortcut_detect.audit.pipeline",
    "AuditStore": "shortcut_detect.audit.store",
    "ShardWriter": "shortcut_detect.audit.store",
    "StoreError": "shortcut_detect.audit.store",
    "build_report": "shortcut_detect.audit.report",
    "run_demo": "shortcut_detect.audit.demo",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
