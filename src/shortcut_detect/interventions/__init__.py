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
)
from shortcut_detect.interventions.stats import Estimate, bootstrap_interval, sign_flip_p_value

__all__ = [
    "READINGS",
    "AttentionShare",
    "Candidate",
    "CandidateTest",
    "DiscoveryResult",
    "Estimate",
    "FillResult",
    "InterventionResult",
    "TransplantResult",
    "bootstrap_interval",
    "confirm_candidates",
    "discover_candidates",
    "find_shortcuts",
    "intervene",
    "sign_flip_p_value",
]
