"""The intervention stage of the audit: confirmed reliance, discovery, summary, verdict, resume."""

from __future__ import annotations

import csv
import json

import pytest

from shortcut_detect.audit.interventions import INTERVENTIONS_DIR, INTERVENTIONS_FILE
from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit
from shortcut_detect.cli import build_parser
from shortcut_detect.cli import main as cli_main

ENTRY_KEYS = {"source", "description", "location", "effect", "interval", "p", "reading"}
DISCOVERED = {"hotspot", "spray", "group comparison", "embedding cluster"}


def _options(manifest, out, **extra):
    values = {
        "model": "demo:shortcut",
        "data": str(manifest),
        "out": str(out),
        "batch_size": 16,
        "num_workers": 0,
        "n_permutations": 100,
        "embedding_samples": 0,
        "progress": False,
    }
    values.update(extra)
    return AuditOptions(**values)


def _check_entry(entry):
    assert set(entry) >= ENTRY_KEYS
    low, high = entry["interval"]
    assert low <= entry["effect"] <= high
    assert 0 < entry["p"] <= 1


def test_given_mask_reliance_is_confirmed_and_cited_by_the_verdict(shortcut_audit):
    summary = shortcut_audit.summary
    entries = summary["interventions"]
    for entry in entries:
        _check_entry(entry)
    given = next(entry for entry in entries if entry["source"] == "given mask")
    # The shortcut model flips most marked images when the marker is removed (0.6 here);
    # 0.2 leaves room for a model trained on another CPU.
    assert given["confirmed"] and given["reading"] == "relied on"
    assert given["interval"][0] > 0.2 and given["p"] < 0.01
    assert given["flip_rate"] > given["control_flip_rate"] + 0.3
    verdict = summary["verdict"]
    assert verdict["risk"] == "HIGH" and verdict["location"] == "top-left"
    assert verdict["reasons"][0].startswith("The model relies on the given mask region (top-left)")
    signal = next(s for s in summary["signals"] if s["name"] == "interventions")
    assert signal["risk"] == "HIGH" and signal["primary"] is True
    html = shortcut_audit.report_path.read_text()
    assert 'id="interventions"' in html and "region removed" in html
    assert len(given["examples"]) >= 2 and any(e["flipped"] for e in given["examples"])
    root = shortcut_audit.store.root
    assert all((root / e["removed"]).is_file() for e in given["examples"])


def test_discovery_without_groups_or_masks_confirms_the_marker_and_resume_skips(
    demo_manifest, tmp_path
):
    options = _options(demo_manifest, tmp_path / "discover")
    run = run_audit(options)
    entries = run.summary["interventions"]
    assert entries and {entry["source"] for entry in entries} <= DISCOVERED
    for entry in entries:
        _check_entry(entry)
    confirmed = [entry for entry in entries if entry["confirmed"]]
    assert confirmed and confirmed[0]["location"] == "top-left"
    assert confirmed[0]["interval"][0] > 0.1
    verdict = run.summary["verdict"]
    assert verdict["risk"] == "HIGH" and verdict["location"] == "top-left"
    assert verdict["reasons"][0].startswith("The model relies on the top-left region")

    stage_file = tmp_path / "discover" / INTERVENTIONS_DIR / INTERVENTIONS_FILE
    written = stage_file.stat().st_mtime_ns
    again = run_audit(options)
    assert again.processed == 0
    assert stage_file.stat().st_mtime_ns == written
    assert again.summary["interventions"] == entries


def test_clean_model_has_no_confirmed_candidate(demo_manifest, tmp_path):
    run = run_audit(
        _options(
            demo_manifest,
            tmp_path / "clean",
            model="demo:clean",
            group_column="group",
            mask_column="mask",
        )
    )
    entries = run.summary["interventions"]
    assert any(entry["source"] == "given mask" for entry in entries)
    assert not any(entry["confirmed"] for entry in entries)
    assert run.summary["verdict"]["risk"] == "LOW"


def test_zero_intervention_samples_skip_the_stage(demo_manifest, tmp_path):
    # 24 images are enough to show the stage is skipped.
    with open(demo_manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))[:24]
    small = tmp_path / "small.csv"
    with open(small, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(row | {"path": str(demo_manifest.parent / row["path"])})
    out = tmp_path / "off"
    run = run_audit(
        _options(small, out, mask_column="mask", intervention_samples=0, n_permutations=20)
    )
    assert not (out / INTERVENTIONS_DIR).exists()
    assert run.summary["interventions"] == []
    signal = next(s for s in run.summary["signals"] if s["name"] == "interventions")
    assert signal["risk"] == "UNKNOWN" and "did not run" in signal["finding"]
    with pytest.raises(AuditError, match="intervention_samples= must be 0"):
        run_audit(_options(small, tmp_path / "bad", intervention_samples=-1))
    # `report` on the finished store runs the stage it skipped (and --no-model skips it again).
    assert cli_main(["report", str(out), "--no-model", "--permutations", "20"]) == 0
    assert json.loads((out / "summary.json").read_text())["interventions"] == []
    status = cli_main(["report", str(out), "--permutations", "20", "--intervention-samples", "24"])
    assert status == 0
    assert (out / INTERVENTIONS_DIR / INTERVENTIONS_FILE).exists()
    entries = json.loads((out / "summary.json").read_text())["interventions"]
    assert any(entry["source"] == "given mask" for entry in entries)


def test_cli_flags_set_the_intervention_samples():
    parser = build_parser()
    base = ["audit", "--model", "demo:shortcut", "--data", "d", "--out", "o"]
    assert parser.parse_args(base).intervention_samples == 200
    assert parser.parse_args([*base, "--intervention-samples", "50"]).intervention_samples == 50
    assert parser.parse_args([*base, "--no-interventions"]).intervention_samples == 0
    help_text = parser._subparsers._group_actions[0].choices["audit"].format_help()
    assert "--intervention-samples" in help_text and "--no-interventions" in help_text
