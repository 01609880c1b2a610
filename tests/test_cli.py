"""The ``shortcut-detect`` command: end to end through subprocesses, kill-and-resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shortcut_detect.cli import EXIT_SHORTCUT, main

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env.setdefault("SHORTCUT_DETECT_CACHE", str(REPO / ".cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args, cwd=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "shortcut_detect", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_models):
    """``shortcut-detect demo`` in a subprocess (models come from the test cache)."""
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    result = _cli("demo", "--out", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    return out, result


def test_demo_flags_the_shortcut_model_only(demo_run):
    out, result = demo_run
    shortcut = json.loads((out / "shortcut_model" / "summary.json").read_text())["verdict"]
    clean = json.loads((out / "clean_model" / "summary.json").read_text())["verdict"]
    assert shortcut["shortcut_suspected"] is True and shortcut["risk"] == "HIGH"
    assert shortcut["location"] == "top-left"
    assert any("top-left" in reason for reason in shortcut["reasons"])
    assert clean["shortcut_suspected"] is False
    assert "[shortcut model] Verdict: HIGH risk, SHORTCUT SUSPECTED" in result.stdout
    assert "[clean model] Verdict: LOW risk, no shortcut suspected" in result.stdout
    assert str(out / "shortcut_model" / "report.html") in result.stdout
    # The demo goes through files on disk, like a user's data.
    assert (out / "data" / "manifest.csv").read_text().startswith("path,label,group,mask")


def test_fail_on_shortcut_gates_a_release(demo_run, capsys):
    out, _ = demo_run
    status = main(["report", str(out / "shortcut_model"), "--no-model", "--fail-on-shortcut"])
    assert status == EXIT_SHORTCUT
    assert "SHORTCUT SUSPECTED" in capsys.readouterr().out
    assert main(["report", str(out / "clean_model"), "--no-model", "--fail-on-shortcut"]) == 0


SLOW_MODEL = textwrap.dedent(
    """
    import time

    from shortcut_detect.data.synthetic import SmallCNN


    class SlowCNN(SmallCNN):
        def forward(self, x):
            time.sleep(0.04)  # slow enough to be killed mid-run
            return super().forward(x)


    def build(num_classes=2):
        return SlowCNN(num_classes=num_classes)
    """
)


def test_killed_audit_resumes_without_lost_or_duplicated_rows(tmp_path, test_data, demo_models):
    import pyarrow.parquet as pq

    from shortcut_detect.audit.store import AuditStore
    from shortcut_detect.data.demo_files import write_image_dataset

    manifest = write_image_dataset(test_data.subset(np.arange(300)), tmp_path / "data")
    (tmp_path / "slow_model.py").write_text(SLOW_MODEL)
    out = tmp_path / "audit"
    command = [
        sys.executable,
        "-m",
        "shortcut_detect",
        "audit",
        "--model",
        "slow_model:build",
        "--weights",
        str(demo_models.shortcut_weights),
        "--preset",
        "none",
        "--resize",
        "48",
        "--data",
        str(manifest),
        "--group-column",
        "group",
        "--mask-column",
        "mask",
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--flush-rows",
        "8",
        "--num-workers",
        "1",
        "--no-progress",
        "--no-report",
    ]
    # No pipes: the killed run's decoding worker may outlive it for a moment.
    process = subprocess.Popen(
        command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    shard = out / "shards" / "shard-00000-of-00001"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(shard.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the audit finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    partial = AuditStore(out).table().num_rows
    assert 24 <= partial < 300
    # An interrupted audit can already be reported on; the summary says it is partial.
    assert main(["report", str(out), "--no-model", "--permutations", "0"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["audit"]["complete"] is False
    assert summary["audit"]["samples_stored"] == partial

    rerun = subprocess.run(
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "done by an earlier run" in rerun.stdout
    assert "Continuing:" in rerun.stderr
    store = AuditStore(out)
    ids = store.table().column("sample_id").to_pylist()
    assert len(ids) == 300 and len(set(ids)) == 300
    # Not only deduplicated on read: the committed chunks hold each sample exactly once.
    raw = sum(pq.read_metadata(p).num_rows for p in store.part_files())
    assert raw == 300
    assert (out / "shards" / "shard-00000-of-00001" / "DONE.json").exists()
    assert not (out / "summary.json").exists()  # the partial report was stale, so removed


def test_unknown_model_spec_is_one_clear_error(tmp_path):
    result = _cli("audit", "--model", "resnet-please", "--data", tmp_path, "--out", tmp_path / "o")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: Unknown model spec 'resnet-please'")
    assert "torchvision:NAME" in result.stderr and "package.module:factory" in result.stderr


def test_manifest_missing_columns_is_one_clear_error(tmp_path):
    (tmp_path / "m.csv").write_text("file,diagnosis\na.png,1\n")
    result = _cli("audit", "--model", "demo", "--data", tmp_path / "m.csv", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: Manifest") and "no column 'path', 'label'" in lines[0]
    assert lines[-1].startswith("hint:")
    from shortcut_detect.data.images import ManifestError

    with pytest.raises(ManifestError):  # --debug lets the exception (and its traceback) through
        main(
            [
                "audit",
                "--model",
                "demo",
                "--data",
                str(tmp_path / "m.csv"),
                "--out",
                str(tmp_path / "o"),
                "--debug",
            ]
        )


@pytest.mark.parametrize("command", ["audit", "explain", "layers", "report", "demo", "app"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_explain_writes_overlays_and_top_predictions(demo_run, tmp_path, capsys, shortcut_model):
    import torch

    from shortcut_detect.data.images import load_image
    from shortcut_detect.gradcam import GradCAMHeatmapGenerator
    from shortcut_detect.models import load_model

    out, _ = demo_run
    images = [out / "data" / "images" / "00000.png", out / "data" / "images" / "00001.png"]
    status = main(["explain", *map(str, images), "--model", "demo", "--out", str(tmp_path / "x")])
    assert status == 0
    report = json.loads((tmp_path / "x" / "explanations.json").read_text())
    loaded = load_model("demo")
    batch = torch.stack([loaded.transform(load_image(p)) for p in images])
    with GradCAMHeatmapGenerator(shortcut_model, "features") as generator:
        reference = generator.explain(batch, [("logits", None)])[0]
    for i, item in enumerate(report["images"]):
        top = item["top_predictions"]
        assert top[0]["class_idx"] == int(reference.predictions[i])
        assert top[0]["confidence"] == pytest.approx(float(reference.confidences[i]), rel=1e-5)
        assert Path(item["overlay"]).exists()
        raw = np.load(Path(item["heatmap"]).with_suffix(".npy"))
        np.testing.assert_allclose(raw, reference.raw_heatmaps[i], rtol=1e-5, atol=1e-7)
    assert "1. " in capsys.readouterr().out


def test_explain_target_by_name_and_bad_target(demo_run, tmp_path, capsys):
    out, _ = demo_run
    image = str(out / "data" / "images" / "00000.png")
    assert (
        main(["explain", image, "--model", "demo", "--target", "disk", "--out", str(tmp_path)]) == 0
    )
    report = json.loads((tmp_path / "explanations.json").read_text())
    assert report["images"][0]["explained_class"] == "disk"
    assert (
        main(["explain", image, "--model", "demo", "--target", "horse", "--out", str(tmp_path)])
        == 1
    )
    assert "not a class name or index" in capsys.readouterr().err


def test_layers_lists_candidates_and_marks_the_default(capsys):
    assert main(["layers", "--model", "demo"]) == 0
    lines = capsys.readouterr().out.splitlines()
    default = [line for line in lines if line.startswith(" * ")]
    assert len(default) == 1 and "features" in default[0] and "64x12x12" in default[0]


def test_app_command_hands_over_to_the_web_app(monkeypatch, tmp_path):
    import shortcut_detect.app as app_module

    calls = {}
    monkeypatch.setattr(app_module, "run_app", lambda **kwargs: calls.update(kwargs))
    assert main(["app", "--audit", str(tmp_path), "--port", "7999"]) == 0
    assert calls["audit"] == str(tmp_path) and calls["port"] == 7999
    assert calls["host"] == "127.0.0.1" and calls["model"] is None


def test_explain_a_single_logit_model(demo_run, tmp_path, monkeypatch):
    import torch

    from shortcut_detect.data.synthetic import SmallCNN

    out, _ = demo_run
    torch.manual_seed(1)
    torch.save(SmallCNN(num_classes=1).state_dict(), tmp_path / "w.pt")
    (tmp_path / "one_logit.py").write_text(
        "from shortcut_detect.data.synthetic import SmallCNN\n\n"
        "def build(num_classes=1):\n    return SmallCNN(num_classes=num_classes)\n"
    )
    monkeypatch.chdir(tmp_path)  # a user's own module next to where they run the command
    image = str(out / "data" / "images" / "00003.png")
    status = main(
        [
            "explain", image, "--model", "one_logit:build", "--weights", "w.pt",
            "--num-classes", "1", "--preset", "none", "--resize", "48", "--out", "x",
        ]
    )  # fmt: skip
    assert status == 0
    top = json.loads((tmp_path / "x" / "explanations.json").read_text())["images"][0]
    predictions = top["top_predictions"]
    assert len(predictions) == 2
    assert sum(p["confidence"] for p in predictions) == pytest.approx(1.0)
    assert top["explained_class"] == predictions[0]["class_name"]
