"""The verdict's rules, one by one, on hand-made signals."""

from __future__ import annotations

import json

import pytest

from shortcut_detect.audit.verdict import PRIMARY, Signal, decide_verdict
from shortcut_detect.common.risk import Risk


def _signal(name, risk, location=None, finding=None):
    return Signal(name, name, risk, finding or f"{name} is {risk}", location=location)


def _verdict(*signals, has_groups=True, has_masks=True):
    return decide_verdict(list(signals), has_groups=has_groups, has_masks=has_masks)


def test_risk_is_the_highest_primary_risk():
    verdict = _verdict(_signal("mask_attention", "HIGH"), _signal("group_attention", "LOW"))
    assert verdict.risk is Risk.HIGH and verdict.shortcut_suspected
    verdict = _verdict(_signal("group_attention", "MODERATE"), _signal("mask_attention", "LOW"))
    assert verdict.risk is Risk.MODERATE and not verdict.shortcut_suspected


def test_two_moderate_primary_signals_make_high():
    verdict = _verdict(
        _signal("group_attention", "MODERATE"), _signal("prediction_by_group", "MODERATE")
    )
    assert verdict.risk is Risk.HIGH and verdict.shortcut_suspected


def test_a_high_secondary_signal_raises_a_moderate_primary_one():
    verdict = _verdict(_signal("group_attention", "MODERATE"), _signal("embeddings", "HIGH"))
    assert verdict.risk is Risk.HIGH
    assert "embeddings is HIGH" in verdict.reasons


def test_secondary_signals_never_decide_on_their_own():
    verdict = _verdict(
        _signal("mask_attention", "LOW"), _signal("embeddings", "HIGH"), _signal("spray", "HIGH")
    )
    assert verdict.risk is Risk.LOW and not verdict.shortcut_suspected
    assert verdict.reasons == ["mask_attention is LOW"]  # only primary findings for LOW
    moderate_secondary = _verdict(
        _signal("mask_attention", "MODERATE"), _signal("spray", "MODERATE")
    )
    assert moderate_secondary.risk is Risk.MODERATE


def test_peak_concentration_alone_cannot_reach_high_without_a_second_signal():
    verdict = _verdict(_signal("peak_concentration", "MODERATE", location="top-left"))
    assert verdict.risk is Risk.MODERATE
    assert verdict.location == "top-left"


def test_unknown_signals_are_ignored_and_no_primary_test_is_a_limitation():
    verdict = _verdict(
        _signal("mask_attention", "UNKNOWN"),
        _signal("embeddings", "HIGH"),
        has_groups=False,
        has_masks=False,
    )
    assert verdict.risk is Risk.LOW
    assert verdict.reasons == ["No test found evidence of a shortcut."]
    assert any("No primary test could run" in item for item in verdict.limitations)
    assert any("No groups were given" in item for item in verdict.limitations)
    assert any("No masks" in item for item in verdict.limitations)


def test_reasons_and_location_come_from_the_most_specific_flagged_signal_first():
    verdict = _verdict(
        _signal("peak_concentration", "MODERATE", location="centre"),
        _signal("group_attention", "HIGH", location="bottom-right"),
        _signal("mask_attention", "HIGH", location="top-left"),
        _signal("prediction_by_group", "LOW"),
    )
    assert verdict.reasons == [
        "mask_attention is HIGH",
        "group_attention is HIGH",
        "peak_concentration is MODERATE",
    ]
    assert verdict.location == "top-left"
    assert verdict.headline == (
        "A shortcut is likely: the model relies on something in the top-left of the image "
        "that is not the object."
    )


def test_a_low_signal_never_gives_the_location():
    verdict = _verdict(
        _signal("mask_attention", "LOW", location="top-left"),
        _signal("group_attention", "HIGH"),
    )
    assert verdict.location is None
    assert "something that is not the object" in verdict.headline


def test_risk_serialises_as_its_name():
    verdict = _verdict(_signal("mask_attention", "high"))
    data = verdict.to_dict()
    assert data["risk"] == "HIGH" and type(data["risk"]) is str
    assert list(data)[:3] == ["shortcut_suspected", "risk", "reasons"]
    signal = _signal("mask_attention", Risk.MODERATE).to_dict()
    assert json.loads(json.dumps(signal))["risk"] == "MODERATE"


def test_signal_rejects_an_unknown_risk():
    with pytest.raises(ValueError, match="unknown risk level 'SEVERE'"):
        _signal("mask_attention", "SEVERE")


def test_a_new_signal_can_declare_itself_primary():
    assert "intervention" not in PRIMARY
    secondary = _signal("intervention", "HIGH")
    assert not secondary.primary
    assert _verdict(secondary).risk is Risk.LOW
    primary = Signal(
        "intervention", "Intervention", "HIGH", "Removing the tag flips it.", primary=True
    )
    verdict = _verdict(primary, _signal("mask_attention", "LOW"))
    assert verdict.risk is Risk.HIGH and verdict.reasons == ["Removing the tag flips it."]


def _interventions(risk, not_relied_on=(), location=None):
    metrics = {"not_relied_on": [dict(item) for item in not_relied_on]}
    return Signal(
        "interventions", "interventions", risk, f"interventions is {risk}", metrics, location
    )


SALIENT_MASK = {
    "source": "given mask",
    "location": "top-left",
    "reading": "salient but not relied on",
}


def test_a_confirmed_reliance_alone_makes_high_and_leads_the_reasons():
    verdict = _verdict(
        _signal("mask_attention", "LOW"),
        _signal("group_attention", "MODERATE", location="centre"),
        _interventions("HIGH", location="top-left"),
    )
    assert verdict.risk is Risk.HIGH and verdict.shortcut_suspected
    assert verdict.reasons[0] == "interventions is HIGH"
    assert verdict.location == "top-left"


def test_mask_attention_on_a_region_not_relied_on_is_capped_at_moderate():
    verdict = _verdict(
        _signal("mask_attention", "HIGH", location="top-left"),
        _interventions("LOW", [SALIENT_MASK]),
    )
    assert verdict.risk is Risk.MODERATE and not verdict.shortcut_suspected
    assert any(
        "at most as MODERATE" in r and "salient but not relied on" in r for r in verdict.reasons
    )
    # without the intervention the same attention signal decides HIGH
    assert _verdict(_signal("mask_attention", "HIGH")).risk is Risk.HIGH


def test_capped_attention_does_not_count_towards_two_moderate_signals():
    peak = {"source": "hotspot", "location": "top-left", "reading": "salient but not relied on"}
    signals = [
        _signal("peak_concentration", "MODERATE", location="top-left"),
        _signal("group_attention", "MODERATE"),
    ]
    assert _verdict(*signals).risk is Risk.HIGH
    verdict = _verdict(*signals, _interventions("LOW", [peak]))
    assert verdict.risk is Risk.MODERATE
    # a capped signal with a HIGH secondary signal does not become HIGH either
    verdict = _verdict(
        _signal("mask_attention", "HIGH"),
        _signal("embeddings", "HIGH"),
        _interventions("LOW", [SALIENT_MASK]),
    )
    assert verdict.risk is Risk.MODERATE


def test_a_region_tested_elsewhere_does_not_cap_the_peak_signal():
    other = {
        "source": "hotspot",
        "location": "bottom-right",
        "reading": "salient but not relied on",
    }
    verdict = _verdict(
        _signal("peak_concentration", "MODERATE", location="top-left"),
        _signal("group_attention", "MODERATE"),
        _interventions("LOW", [other]),
    )
    assert verdict.risk is Risk.HIGH
