"""Rendering a :class:`~shortcut_detect.detectors.ShortcutDetector` result as HTML, Markdown
or JSON. The HTML is one self-contained file (inline CSS, no scripts, no external assets),
rendered from ``audit/templates/detector_report.html`` by the package's one Jinja environment
(:mod:`shortcut_detect.audit.html`), with auto-escaping on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shortcut_detect.audit.html import format_inline, is_table, render
from shortcut_detect.common.serialization import to_jsonable as _to_jsonable

__all__ = ["REPORT_FORMATS", "render_report", "report_format", "to_jsonable"]

REPORT_FORMATS = {
    "html": "html",
    "htm": "html",
    "md": "md",
    "markdown": "md",
    "json": "json",
}

# Arrays larger than this are summarised (shape, dtype, range) rather than written out.
MAX_ARRAY_VALUES = 10_000


def report_format(path: str | Path, format: str | None) -> str:
    """``"html"``, ``"md"`` or ``"json"`` from ``format`` or else the file suffix."""
    if format is not None:
        key = str(format).lower().lstrip(".")
        if key not in REPORT_FORMATS:
            raise ValueError(f"format must be one of html, md, json; got {format!r}")
        return REPORT_FORMATS[key]
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in REPORT_FORMATS:
        raise ValueError(
            f"cannot tell the report format from {str(path)!r}; use a .html, .md or .json "
            "file name or pass format='html' / 'md' / 'json'"
        )
    return REPORT_FORMATS[suffix]


def to_jsonable(value: Any, max_array_values: int = MAX_ARRAY_VALUES) -> Any:
    """Plain JSON types (see :func:`shortcut_detect.common.to_jsonable`); arrays with more
    than ``max_array_values`` values become a short description."""
    return _to_jsonable(value, max_array_values)


def _render_html(payload: dict[str, Any]) -> str:
    return render("detector_report.html", **payload)


def _md_cell(value: Any) -> str:
    return format_inline(value).replace("|", "\\|").replace("\n", " ")


def _render_markdown(payload: dict[str, Any]) -> str:
    lines = [
        f"# {payload['title']}",
        "",
        f"Generated {payload['generated']} by shortcut_detect {payload['version']}",
        "",
        f"**Overall risk: {payload['overall_risk']}**",
        "",
    ]
    lines += [f"- {reason}" for reason in payload["reasons"]]
    lines += ["", "## Data", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {_md_cell(value)} |" for key, value in payload["inputs"].items()]
    lines += ["", "## Methods", "", "| Method | Risk | Finding |", "|---|---|---|"]
    for method in payload["methods"]:
        lines.append(f"| {method['method']} | {method['risk']} | {_md_cell(method['finding'])} |")
    for method in payload["methods"]:
        lines += ["", f"## {method['method']}: {method['risk']}", ""]
        if not method["success"]:
            lines.append(f"Could not run: {method.get('error', '')}")
            continue
        lines += [f"_{method['finding']}_", "", "| Metric | Value |", "|---|---|"]
        lines += [f"| {key} | {_md_cell(value)} |" for key, value in method["metrics"].items()]
        for key, value in method.get("details", {}).items():
            if is_table(value):
                columns = list(value[0].keys())
                lines += ["", f"**{key}**", ""]
                lines.append("| " + " | ".join(columns) + " |")
                lines.append("|" + "---|" * len(columns))
                lines += [
                    "| " + " | ".join(_md_cell(row.get(column)) for column in columns) + " |"
                    for row in value
                ]
            else:
                lines += ["", f"**{key}**: {_md_cell(value)}"]
    lines += ["", "## How to read the risk", ""]
    lines += [f"- {rule}" for rule in payload["risk_rules"]]
    return "\n".join(lines) + "\n"


def render_report(payload: dict[str, Any], format: str) -> str:
    """Render a report payload (see ``ShortcutDetector.report_payload``) to text."""
    payload = to_jsonable(payload)
    if format == "json":
        return json.dumps(payload, indent=2, allow_nan=False) + "\n"
    if format == "md":
        return _render_markdown(payload)
    if format == "html":
        return _render_html(payload)
    raise ValueError(f"format must be one of html, md, json; got {format!r}")
