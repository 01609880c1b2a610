"""Interventions: prove that a model relies on a region (not only looks at it), and find
candidate shortcuts without metadata."""

from shortcut_detect.interventions.core import (
    READINGS,
    AttentionShare,
    FillResult,
    InterventionResult,
    TransplantResult,
    intervene,
)
from shortcut_detect.interventions.discovery import (
    Candidate,
    CandidateTest,
    DiscoveryResult,
    confirm_candidates,
    discover_candidates,
    find_shortcuts,
    pattern_consistency,
    pattern_separation,
)
from shortcut_detect.interventions.image_statistics import (
    GLOBAL_STATISTICS,
    GlobalTestResult,
    find_global_shortcuts,
    intervene_global,
)
from shortcut_detect.interventions.stats import Estimate, bootstrap_interval, sign_flip_p_value

__all__ = [
    "GLOBAL_STATISTICS",
    "READINGS",
    "AttentionShare",
    "Candidate",
    "CandidateTest",
    "DiscoveryResult",
    "Estimate",
    "FillResult",
    "GlobalTestResult",
    "InterventionResult",
    "TransplantResult",
    "bootstrap_interval",
    "confirm_candidates",
    "discover_candidates",
    "find_global_shortcuts",
    "find_shortcuts",
    "intervene",
    "intervene_global",
    "pattern_consistency",
    "pattern_separation",
    "sign_flip_p_value",
]
