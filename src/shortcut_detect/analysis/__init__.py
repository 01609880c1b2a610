"""Visual shortcut analysis on heatmaps: groups, regions, head overlap, map statistics.

Names are imported lazily, so ``import shortcut_detect.analysis`` costs nothing until a
function is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "compare_groups": "groups",
    "permutation_max_test": "groups",
    "RegionAttention": "regions",
    "attention_in_region": "regions",
    "region_coverage": "regions",
    "head_overlap_over_dataset": "heads",
    "heatmaps_from_images": "batches",
    "area_resize": "maps",
    "concentration_area": "maps",
    "entropy": "maps",
    "mass_normalize": "maps",
    "mass_overlap": "maps",
    "overlap_per_sample": "maps",
    "peak_locations": "maps",
    "EmbeddingMap": "embedding_map",
    "MapDescription": "embedding_map",
    "describe_embedding_map": "embedding_map",
    # the function embedding_map is not listed: its module has the same name and, once
    # imported, shadows it here; use shortcut_detect.embedding_map
    "ActivationGrid": "activations",
    "activation_grid": "activations",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
