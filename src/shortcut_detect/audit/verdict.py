"""Turning the individual findings into one verdict a person (or a CI job) can act on.

Rules
-----
* Primary signals look at where the model attends and what it predicts: attention by
  group, attention in the given masks, accuracy by group within a class, and where the
  heatmaps peak (this one is only a hint, it never exceeds MODERATE).
* Secondary signals (SpRAy clusters, group information in the embeddings) support a
  primary finding but never make a verdict on their own: a clean model may well *encode*
  a visible marker without *using* it.
* Risk is the highest primary risk; a MODERATE primary risk becomes HIGH when another
  primary signal, or a secondary one at HIGH, points the same way.
* ``shortcut_suspected`` is true exactly when the risk is HIGH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRIMARY", "RISK_ORDER", "Signal", "Verdict", "decide_verdict"]

RISK_ORDER = {"UNKNOWN": -1, "LOW": 0, "MODERATE": 1, "HIGH": 2}
PRIMARY = ("mask_attention", "group_attention", "prediction_by_group", "peak_concentration")


@dataclass
class Signal:
    """One finding: a named test, its risk, one sentence, and the numbers behind it."""

    name: str
    title: str
    risk: str
    finding: str
    metrics: dict[str, Any] = field(default_factory=dict)
    location: str | None = None

    @property
    def primary(self) -> bool:
        """Whether this signal can decide the verdict on its own."""
        return self.name in PRIMARY

    @property
    def available(self) -> bool:
        """False when the test could not run."""
        return self.risk != "UNKNOWN"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "title": self.title,
            "risk": self.risk,
            "primary": self.primary,
            "finding": self.finding,
            "location": self.location,
            "metrics": self.metrics,
        }


@dataclass
class Verdict:
    """The verdict at the top of ``summary.json``."""

    shortcut_suspected: bool
    risk: str
    reasons: list[str]
    headline: str
    location: str | None = None
    limitations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the three documented keys first)."""
        return {
            "shortcut_suspected": self.shortcut_suspected,
            "risk": self.risk,
            "reasons": self.reasons,
            "headline": self.headline,
            "location": self.location,
            "limitations": self.limitations,
        }


def decide_verdict(signals: list[Signal], *, has_groups: bool, has_masks: bool) -> Verdict:
    """Combine signals into a :class:`Verdict` (rules in the module docstring)."""
    primary = [s for s in signals if s.primary and s.available]
    secondary = [s for s in signals if not s.primary and s.available]
    levels = [RISK_ORDER[s.risk] for s in primary]
    level = max(levels, default=0)
    moderate_primary = [s for s in primary if s.risk == "MODERATE"]
    high_secondary = [s for s in secondary if s.risk == "HIGH"]
    if level == 1 and (len(moderate_primary) >= 2 or high_secondary):
        level = 2
    risk = {0: "LOW", 1: "MODERATE", 2: "HIGH"}[level]

    # Most specific evidence first: a named region, then attention, then accuracy.
    ranked = sorted(primary, key=lambda s: (-RISK_ORDER[s.risk], PRIMARY.index(s.name)))
    reasons = [s.finding for s in ranked if s.risk in ("HIGH", "MODERATE")]
    if level >= 1:
        reasons += [s.finding for s in secondary if s.risk in ("HIGH", "MODERATE")]
    location = next(
        (s.location for s in ranked if s.location and s.risk in ("HIGH", "MODERATE")), None
    )
    limitations = []
    if not has_groups:
        limitations.append(
            "No groups were given, so attention and accuracy could not be compared between "
            "groups (e.g. hospitals, scanners, with/without a tag)."
        )
    if not has_masks:
        limitations.append(
            "No masks of a suspected shortcut region were given, so attention on it was not "
            "measured."
        )
    if not primary:
        limitations.append("No primary test could run; the verdict is not informative.")
    if risk == "HIGH":
        where = f" in the {location} of the image" if location else ""
        headline = (
            f"A shortcut is likely: the model relies on something{where} that is not the object."
        )
    elif risk == "MODERATE":
        headline = "Possible shortcut: some evidence, not conclusive. Look at the findings below."
    else:
        headline = "No shortcut found by these tests."
        reasons = [s.finding for s in primary] or ["No test found evidence of a shortcut."]
    return Verdict(
        shortcut_suspected=risk == "HIGH",
        risk=risk,
        reasons=reasons,
        headline=headline,
        location=location,
        limitations=limitations,
    )
