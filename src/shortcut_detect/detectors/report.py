"""Rendering a :class:`~shortcut_detect.detectors.ShortcutDetector` result as HTML, Markdown
or JSON. The HTML is one self-contained file (inline CSS, no scripts, no external assets)
rendered with Jinja2 with auto-escaping on."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

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
    """Plain JSON types: numpy scalars and arrays, tuples, paths and dataclasses converted;
    NaN and Inf become ``None``; large arrays become a short description."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item, max_array_values) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), max_array_values)
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size > max_array_values:
            summary: dict[str, Any] = {
                "omitted": "array too large for the report",
                "shape": list(value.shape),
                "dtype": str(value.dtype),
            }
            if np.issubdtype(value.dtype, np.number) and value.size:
                summary["min"] = to_jsonable(np.nanmin(value))
                summary["max"] = to_jsonable(np.nanmax(value))
            return summary
        return [to_jsonable(item, max_array_values) for item in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item, max_array_values) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _fmt(value: Any) -> str:
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


def _is_table(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) for item in value)
        and all(
            not isinstance(v, (dict, list)) or _short(v) for item in value for v in item.values()
        )
    )


def _short(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= 6
        and all(not isinstance(v, (dict, list)) for v in value.values())
    )


def _inline(value: Any) -> str:
    """One-line text for a scalar, a short dict, or a list."""
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_inline(item)}" for key, item in value.items())
    if isinstance(value, list):
        shown = ", ".join(_inline(item) for item in value[:12])
        more = f", … ({len(value)} items)" if len(value) > 12 else ""
        return f"[{shown}{more}]"
    return _fmt(value)


_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
  max-width: 60rem; padding: 0 1rem; color: #1d2329; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #dde1e6; }
.meta { color: #5f6b77; font-size: .9rem; }
.risk { display: inline-block; padding: .15rem .6rem; border-radius: .3rem; font-weight: 600;
  color: #fff; font-size: .9rem; }
.risk-HIGH { background: #c0392b; } .risk-MODERATE { background: #d68910; }
.risk-LOW { background: #1e8449; } .risk-UNKNOWN { background: #7f8c8d; }
.overall { font-size: 1.25rem; margin: 1rem 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #dde1e6; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.finding { font-style: italic; }
.error { color: #c0392b; }
details { margin: .5rem 0; } summary { cursor: pointer; color: #34495e; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<div class="meta">Generated {{ generated }} by shortcut_detect {{ version }}</div>

<div class="overall">Overall risk:
  <span class="risk risk-{{ overall_risk }}">{{ overall_risk }}</span></div>
<ul>
{% for reason in reasons %}  <li>{{ reason }}</li>
{% endfor %}</ul>

<h2>Data</h2>
<table>
{% for key, value in inputs.items() %}  <tr><th>{{ key }}</th><td>{{ value | inline }}</td></tr>
{% endfor %}</table>

<h2>Methods</h2>
<table>
  <tr><th>Method</th><th>Risk</th><th>Finding</th></tr>
{% for m in methods %}  <tr><td><a href="#{{ m.method }}">{{ m.method }}</a></td>
    <td><span class="risk risk-{{ m.risk }}">{{ m.risk }}</span></td><td>{{ m.finding }}</td></tr>
{% endfor %}</table>

{% for m in methods %}
<h2 id="{{ m.method }}">{{ m.method }} <span class="risk risk-{{ m.risk }}">{{ m.risk }}</span></h2>
{% if m.success %}
<p class="finding">{{ m.finding }}</p>
<table>
{% for key, value in m.metrics.items() %}
  <tr><th>{{ key }}</th><td class="num">{{ value | inline }}</td></tr>
{% endfor %}</table>
{% if m.details %}
<details><summary>Details</summary>
{% for key, value in m.details.items() %}
{% if value is table %}
<h4>{{ key }}</h4>
<table>
  <tr>{% for column in value[0].keys() %}<th>{{ column }}</th>{% endfor %}</tr>
{% for row in value %}
  <tr>{% for column in value[0].keys() %}<td>{{ row.get(column) | inline }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}
<p><b>{{ key }}</b>: {{ value | inline }}</p>
{% endif %}
{% endfor %}
</details>
{% endif %}
{% else %}
<p class="error">Could not run: {{ m.error }}</p>
{% endif %}
{% endfor %}

<h2>How to read the risk</h2>
<ul>
{% for rule in risk_rules %}  <li>{{ rule }}</li>
{% endfor %}</ul>
</body>
</html>
"""


def _render_html(payload: dict[str, Any]) -> str:
    from jinja2 import Environment

    environment = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["inline"] = _inline
    environment.tests["table"] = _is_table
    return environment.from_string(_HTML_TEMPLATE).render(**payload)


def _md_cell(value: Any) -> str:
    return _inline(value).replace("|", "\\|").replace("\n", " ")


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
            if _is_table(value):
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
