"""One Jinja environment for every HTML report of the package.

Templates live in ``shortcut_detect/audit/templates``: ``report.html`` (the audit report),
``detector_report.html`` (:meth:`ShortcutDetector.generate_report`) and the partial
``_risk.css`` both include for their risk badges. Auto-escaping is on.
"""

from __future__ import annotations

import functools
import math
from typing import Any

__all__ = ["format_inline", "format_number", "format_percent", "is_table", "render"]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def format_percent(value: Any, digits: int = 0) -> str:
    """``0.153`` -> ``"15%"`` (``"n/a"`` for None and NaN)."""
    if _missing(value):
        return "n/a"
    return f"{100 * float(value):.{digits}f}%"


def format_number(value: Any, digits: int = 2) -> str:
    """Integers with thousands separators; small floats in ``g`` format, others fixed."""
    if _missing(value):
        return "n/a"
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return f"{int(value):,}"
    value = float(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def _scalar(value: Any) -> str:
    """A short human-readable form of a scalar."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3g}"
    return str(value)


def _short(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 6
        and all(not isinstance(v, (dict, list)) for v in value.values())
    )


def is_table(value: Any) -> bool:
    """A non-empty list of flat dicts (drawn as a table)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) for item in value)
        and all(
            not isinstance(v, (dict, list)) or _short(v) for item in value for v in item.values()
        )
    )


def format_inline(value: Any) -> str:
    """One-line text for a scalar, a short dict, or a list."""
    if isinstance(value, dict):
        return ", ".join(f"{key}: {format_inline(item)}" for key, item in value.items())
    if isinstance(value, list):
        shown = ", ".join(format_inline(item) for item in value[:12])
        more = f", … ({len(value)} items)" if len(value) > 12 else ""
        return f"[{shown}{more}]"
    return _scalar(value)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("shortcut_detect.audit", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(percent=format_percent, number=format_number, inline=format_inline)
    environment.tests["table"] = is_table
    return environment


def render(template: str, **context: Any) -> str:
    """Render one of the package's HTML templates."""
    return _environment().get_template(template).render(**context)
