"""Turning the individual findings of an audit into one verdict a person (or a CI job) can act on.

Rules
-----
* **Primary** signals look at what the model uses, where it attends and what it predicts:
  interventions (removing a given or discovered region, against control regions: a
  confirmed reliance is HIGH on its own), attention in the given masks, attention by group,
  accuracy by group within a class, and where the heatmaps peak (this one is only a hint; it
  never exceeds MODERATE).
* **Secondary** signals (SpRAy clusters, group information in the embeddings) support a
  primary finding but never make a verdict on their own.
* The risk is the highest primary risk; a MODERATE primary risk becomes HIGH when a second
  primary signal is MODERATE too, or a secondary one is HIGH.
* An attention signal about a region the interventions tested and found *not* relied on
  ("salient but not relied on": the model looks there, but removing it barely changes
  predictions) is capped at MODERATE and does not count towards the two-MODERATE rule, so
  it cannot make the verdict HIGH by itself; the reasons say so. This covers the mask
  signal when the given masks were tested, and the peak signal when a region at the same
  place was tested (a hotspot built from the peak's ninth, or a region with at least a
  quarter of its area there). The same holds for a discovered region the model relies on
  that reads as part of the object (no fixed mark there): the object explains the attention.
* ``shortcut_suspected`` is true exactly when the risk is HIGH.

Why this combination
--------------------
A shortcut is a model *using* something that is not the object. Only the primary signals
measure use: removing the region (the most direct evidence), attention on the suspected
region, attention or accuracy that changes with the group. Attention is only indirect
evidence of use, so an intervention that shows the attended region is not used outranks it.
The secondary ones measure whether the information is *there*: a clean model may
well encode a visible marker in its embeddings, or form a SpRAy cluster around it, without
basing its decisions on it. So secondary evidence can only raise a primary MODERATE that it
agrees with, never a LOW. One strong primary signal is enough for HIGH, because each of them
already compares against a baseline (mask area, the other group, a permutation test).

How this differs from the detectors' overall risk
-------------------------------------------------
:func:`shortcut_detect.detectors.shortcut_detector.overall_risk` combines the *embedding*
methods of a :class:`~shortcut_detect.detectors.ShortcutDetector`, which all answer the same
question (is group information in the embeddings?) with different tests. There no single
test is trusted on its own: HIGH needs two methods at HIGH, and one HIGH alone gives
MODERATE. Here the signals answer *different* questions and are not interchangeable, so the
verdict weighs them by kind (primary/secondary) instead of counting agreement. The
detectors' overall risk enters this verdict as the one secondary ``embeddings`` signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from shortcut_detect.common.risk import Risk

__all__ = ["PRIMARY", "Signal", "Verdict", "decide_verdict"]

PRIMARY = (
    "interventions",
    "mask_attention",
    "group_attention",
    "prediction_by_group",
    "peak_concentration",
)


@dataclass
class Signal:
    """One finding: a named test, its risk, one sentence, and the numbers behind it.

    ``risk`` accepts a :class:`~shortcut_detect.common.Risk` or its name. ``primary`` (can
    this signal decide the verdict on its own?) defaults to whether ``name`` is in
    :data:`PRIMARY`.
    """

    name: str
    title: str
    risk: Risk
    finding: str
    metrics: dict[str, Any] = field(default_factory=dict)
    location: str | None = None
    primary: bool = None  # type: ignore[assignment]  # None: decided by the name

    def __post_init__(self) -> None:
        self.risk = Risk.parse(self.risk)
        if self.primary is None:
            self.primary = self.name in PRIMARY

    @property
    def available(self) -> bool:
        """False when the test could not run."""
        return self.risk is not Risk.UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "title": self.title,
            "risk": self.risk.value,
            "primary": self.primary,
            "finding": self.finding,
            "location": self.location,
            "metrics": self.metrics,
        }


@dataclass
class Verdict:
    """The verdict at the top of ``summary.json``."""

    shortcut_suspected: bool
    risk: Risk
    reasons: list[str]
    headline: str
    location: str | None = None
    limitations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the three documented keys first)."""
        return {
            "shortcut_suspected": self.shortcut_suspected,
            "risk": Risk.parse(self.risk).value,
            "reasons": self.reasons,
            "headline": self.headline,
            "location": self.location,
            "limitations": self.limitations,
        }


def _specificity(name: str) -> int:
    """Position of a primary signal in :data:`PRIMARY` (other primary signals come last)."""
    return PRIMARY.index(name) if name in PRIMARY else len(PRIMARY)


def _risk(primary: list[Signal], secondary: list[Signal], capped: list[Signal]) -> Risk:
    """The verdict's risk; ``capped`` signals count at their (capped) level but never escalate."""
    level = max((s.risk for s in primary), key=lambda risk: risk.rank, default=Risk.LOW)
    moderate_primary = sum(s.risk is Risk.MODERATE for s in primary)
    high_secondary = any(s.risk is Risk.HIGH for s in secondary)
    if level is Risk.MODERATE and (moderate_primary >= 2 or high_secondary):
        return Risk.HIGH
    capped_level = max((s.risk for s in capped), key=lambda risk: risk.rank, default=Risk.LOW)
    return max(level, capped_level, key=lambda risk: risk.rank)


def _limitations(has_groups: bool, has_masks: bool, any_primary: bool) -> list[str]:
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
    if not any_primary:
        limitations.append("No primary test could run; the verdict is not informative.")
    return limitations


def _not_relied_on(signal: Signal, interventions: Signal | None) -> dict[str, Any] | None:
    """The intervention test that found ``signal``'s region not relied on (or relied on as
    part of the object), if any."""
    if interventions is None or signal.name not in ("mask_attention", "peak_concentration"):
        return None
    metrics = interventions.metrics
    for test in metrics.get("not_relied_on", []) + metrics.get("object_like", []):
        if signal.name == "mask_attention" and test.get("source") == "given mask":
            return test
        if (
            signal.name == "peak_concentration"
            and signal.location
            and signal.location in (test.get("location"), *test.get("ninths", []))
        ):
            return test
    return None


def _cap_unused_attention(
    primary: list[Signal],
) -> tuple[list[Signal], list[Signal], list[str]]:
    """Split off attention signals whose region an intervention found not relied on."""
    interventions = next((s for s in primary if s.name == "interventions"), None)
    kept, capped, notes = [], [], []
    for signal in primary:
        test = _not_relied_on(signal, interventions)
        if test is None:
            kept.append(signal)
            continue
        if signal.risk is Risk.HIGH:
            signal = replace(signal, risk=Risk.MODERATE)
        capped.append(signal)
        if signal.risk is Risk.MODERATE:
            why = (
                "the model relies on it, but it holds no fixed mark"
                if test.get("reading") == "part of the object"
                else "removing it does not change predictions more than removing a control region"
            )
            notes.append(
                f"{signal.title}: counted at most as MODERATE, because the intervention on the "
                f"{test.get('location')} region reads '{test.get('reading')}' ({why})."
            )
    return kept, capped, notes


def decide_verdict(signals: list[Signal], *, has_groups: bool, has_masks: bool) -> Verdict:
    """Combine signals into a :class:`Verdict` (rules in the module docstring)."""
    available = [s for s in signals if s.primary and s.available]
    secondary = [s for s in signals if not s.primary and s.available]
    uncapped, capped, cap_notes = _cap_unused_attention(available)
    risk = _risk(uncapped, secondary, capped)
    primary = uncapped + capped
    flagged = (Risk.HIGH, Risk.MODERATE)

    # Most specific evidence first: a named region, then attention, then accuracy.
    ranked = sorted(primary, key=lambda s: (-s.risk.rank, _specificity(s.name)))
    reasons = [s.finding for s in ranked if s.risk in flagged]
    if risk in flagged:
        reasons += [s.finding for s in secondary if s.risk in flagged]
        reasons += cap_notes
    location = next((s.location for s in ranked if s.location and s.risk in flagged), None)
    if risk is Risk.HIGH:
        where = f" in the {location} of the image" if location else ""
        headline = (
            f"A shortcut is likely: the model relies on something{where} that is not the object."
        )
    elif risk is Risk.MODERATE:
        headline = "Possible shortcut: some evidence, not conclusive. Look at the findings below."
    else:
        headline = "No shortcut found by these tests."
        reasons = [s.finding for s in available] or ["No test found evidence of a shortcut."]
    return Verdict(
        shortcut_suspected=risk is Risk.HIGH,
        risk=risk,
        reasons=reasons,
        headline=headline,
        location=location,
        limitations=_limitations(has_groups, has_masks, bool(primary)),
    )
