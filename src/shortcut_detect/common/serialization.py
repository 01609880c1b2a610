"""Plain-JSON conversion used by every report, store and summary of the package."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_ARRAY_VALUES", "json_default", "nan_to_none", "to_jsonable"]

#: Arrays with more values than this are summarised (shape, dtype, range) instead of listed.
MAX_ARRAY_VALUES = 4096


def nan_to_none(value: Any) -> float | None:
    """``float(value)``, or ``None`` for ``None``, NaN and infinities (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def to_jsonable(value: Any, max_array_values: int = MAX_ARRAY_VALUES) -> Any:
    """Recursively turn ``value`` into plain JSON types.

    Numpy scalars and arrays, torch tensors, tuples, sets, paths, enums and dataclasses are
    converted; NaN and infinities become ``None``; arrays with more than
    ``max_array_values`` values become a short description (shape, dtype, min, max).
    """
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item, max_array_values) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return to_jsonable(value.to_dict(), max_array_values)
        return to_jsonable(dataclasses.asdict(value), max_array_values)
    if hasattr(value, "detach") and hasattr(value, "cpu") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size > max_array_values:
            summary: dict[str, Any] = {
                "omitted": "array too large to list",
                "shape": list(value.shape),
                "dtype": str(value.dtype),
            }
            if np.issubdtype(value.dtype, np.number) and value.size:
                summary["min"] = nan_to_none(np.nanmin(value))
                summary["max"] = nan_to_none(np.nanmax(value))
            return summary
        return [to_jsonable(item, max_array_values) for item in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item, max_array_values) for item in value]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, max_array_values)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


def json_default(value: Any) -> Any:
    """``default=`` for :func:`json.dumps`: numpy values, arrays, paths and enums."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
