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
from shortcut_detect.data.demo_files import write_image_dataset

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env.setdefault("SHORTCUT_DETECT_CACHE", str(REPO / ".cache"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args, cwd=None, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "shortcut_detect", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=timeout,
    )


@pytest.fixture(scope="session")
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
        command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900
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

    # --debug lets the exception (and its traceback) through
    with pytest.raises(ManifestError, match="no column 'path', 'label'"):
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
    with pytest.raises(SystemExit, match=r"^0$") as exit_info:
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


def test_explain_writes_the_layers_strongest_channels(demo_run, tmp_path, capsys, shortcut_model):
    from PIL import Image

    from shortcut_detect.analysis.activations import activation_grid
    from shortcut_detect.data.images import load_image
    from shortcut_detect.models import load_model

    out, _ = demo_run
    image = out / "data" / "images" / "00003.png"
    args = ["explain", str(image), "--model", "demo", "--out", str(tmp_path / "a")]
    assert main([*args, "--activations", "4"]) == 0
    item = json.loads((tmp_path / "a" / "explanations.json").read_text())["images"][0]
    loaded = load_model("demo")
    expected = activation_grid(shortcut_model, loaded.transform(load_image(image)), "features", 4)
    assert item["activations"]["channels"] == expected.channels.tolist()
    assert item["activations"]["layer"] == "features"
    figure = np.asarray(Image.open(item["activations"]["figure"]).convert("L"), dtype=float)
    assert figure.std() > 10  # a drawn figure, not a blank page
    assert main([*args, "--activations", "-1"]) == 1
    assert "--activations must be 0 (off) or more, got -1" in capsys.readouterr().err


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
    assert "--target: Unknown class 'horse': not a class name or index" in capsys.readouterr().err


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


def _app_parser():
    import argparse

    from shortcut_detect.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["app"]


def test_app_help_documents_every_option(capsys):
    import inspect

    from shortcut_detect.app import make_explorer, run_app
    from shortcut_detect.app.inputs import DEFAULT_MAX_PIXELS, DEFAULT_MAX_UPLOAD_BYTES

    with pytest.raises(SystemExit, match=r"^0$"):  # --help exits with status 0
        main(["app", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    accepted = set(inspect.signature(run_app).parameters) | set(
        inspect.signature(make_explorer).parameters
    )
    accepted |= {"preset", "resize", "crop", "mean", "std", "max_upload_mb"}
    accepted |= {"spatial_dims", "in_channels"}  # load_model options, like the preprocessing
    options = [a for a in _app_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 20
    for action in options:
        assert action.help, f"{action.option_strings[0]} has no help text"
        assert " ".join(action.help.split()) in text
        assert action.dest in accepted | {"debug"}, action.dest
    # The defaults the help states are the ones the explorer uses.
    cache_size = inspect.signature(make_explorer).parameters["cache_size"].default
    assert f"heatmaps kept in memory (default {cache_size})" in text
    assert f"(default {DEFAULT_MAX_PIXELS:,})" in text
    assert f"uploaded files (default {DEFAULT_MAX_UPLOAD_BYTES // 2**20})" in text


def test_app_options_reach_run_app(monkeypatch, tmp_path):
    from PIL import Image

    import shortcut_detect.app as app_module
    from shortcut_detect.app import make_explorer

    for index in range(2):
        Image.new("RGB", (40, 30), (60 * index, 90, 120)).save(tmp_path / f"{index}.png")
    (tmp_path / "data.csv").write_text("path,label,hospital\n0.png,cat,site A\n1.png,dog,site B\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\neel\n")
    calls = {}
    monkeypatch.setattr(app_module, "run_app", lambda **kwargs: calls.update(kwargs))
    status = main(
        ["app", "--model", "torchvision:resnet18", "--num-classes", "3",
         "--classes", str(tmp_path / "classes.txt"), "--trust-pickle", "--device", "cpu",
         "--preset", "none", "--resize", "64", "--crop", "56", "--mean", "0.5,0.4,0.3",
         "--std", "0.2,0.2,0.2", "--data", str(tmp_path / "data.csv"),
         "--group-column", "hospital", "--max-pixels", "5000", "--layer", "layer3",
         "--cache-size", "8", "--max-upload-mb", "1.5", "--host", "0.0.0.0", "--port", "7001"]
    )  # fmt: skip
    assert status == 0
    assert calls == {
        "model": "torchvision:resnet18",
        "data": str(tmp_path / "data.csv"),
        "audit": None,
        "host": "0.0.0.0",
        "port": 7001,
        "layer": "layer3",
        "classes": str(tmp_path / "classes.txt"),
        "num_classes": 3,
        "trust_pickle": True,
        "device": "cpu",
        "preset": "none",
        "resize": [64],
        "crop": [56],
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.2, 0.2],
        "group_column": "hospital",
        "max_pixels": 5000,
        "cache_size": 8,
        "max_upload_bytes": int(1.5 * 2**20),
    }
    # run_app hands everything but host and port to make_explorer: they take effect there.
    served = {key: value for key, value in calls.items() if key not in ("host", "port")}
    explorer = make_explorer(**served)
    model = explorer.get_model()
    assert model.class_names == ("cat", "dog", "eel") and model.input_size == (56, 56)
    assert model.mean == pytest.approx((0.5, 0.4, 0.3)) and model.default_layer == "layer3"
    assert explorer.max_pixels == 5000 and explorer.max_upload_bytes == int(1.5 * 2**20)
    assert explorer.select_sample("1.png").group == "site B"
    # Options not given are left out, so an audit's recorded preprocessing still applies.
    calls.clear()
    assert main(["app", "--audit", str(tmp_path)]) == 0
    recorded = {"weights", "classes", "num_classes", "preset", "resize", "crop", "mean", "std"}
    assert calls["audit"] == str(tmp_path) and not recorded & set(calls)


def test_explain_a_single_logit_model(demo_run, tmp_path, monkeypatch):
    """One output: probabilities [1 - sigmoid, sigmoid]; class 0 explains the negated logit."""
    import torch

    from shortcut_detect.data.images import load_image
    from shortcut_detect.data.synthetic import SmallCNN
    from shortcut_detect.gradcam import GradCAMHeatmapGenerator
    from shortcut_detect.models import load_model

    out, _ = demo_run
    torch.manual_seed(1)
    net = SmallCNN(num_classes=1).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    (tmp_path / "one_logit.py").write_text(
        "from shortcut_detect.data.synthetic import SmallCNN\n\n"
        "def build(num_classes=1):\n    return SmallCNN(num_classes=num_classes)\n"
    )
    monkeypatch.chdir(tmp_path)  # a user's own module next to where they run the command
    image = out / "data" / "images" / "00003.png"
    loaded = load_model(
        "one_logit:build", weights="w.pt", num_classes=1, preset="none", resize=[48]
    )
    batch = loaded.transform(load_image(image))[None]
    with torch.no_grad():
        logit = float(net(batch)[0, 0])
    positive = 1 / (1 + np.exp(-logit))
    predicted = int(logit > 0)
    # Oracle: the logit as a two-class head [-logit, logit], through the K-class path.
    two_class = {"two_class": lambda outputs: torch.cat([-outputs, outputs], dim=1)}
    with GradCAMHeatmapGenerator(net, "features", head_mappings=two_class) as generator:
        reference = generator.explain(batch, [("two_class", 0), ("two_class", 1)])
    assert not np.allclose(reference[0].raw_heatmaps, reference[1].raw_heatmaps)
    model = ["--model", "one_logit:build", "--weights", "w.pt", "--num-classes", "1"]
    for target in (None, 1 - predicted):  # the predicted class, then the other one
        chosen = [] if target is None else ["--target", str(target)]
        status = main(
            ["explain", str(image), *model, "--preset", "none", "--resize", "48", *chosen,
             "--out", f"x{target}"]
        )  # fmt: skip
        assert status == 0
        item = json.loads((tmp_path / f"x{target}" / "explanations.json").read_text())["images"][0]
        explained = predicted if target is None else target
        assert item["explained_class"] == loaded.class_names[explained]
        top = item["top_predictions"]
        assert [p["class_idx"] for p in top] == [predicted, 1 - predicted]
        assert top[0]["confidence"] == pytest.approx(max(positive, 1 - positive), rel=1e-5)
        assert top[1]["confidence"] == pytest.approx(min(positive, 1 - positive), rel=1e-4)
        raw = np.load(Path(item["heatmap"]).with_suffix(".npy"))
        np.testing.assert_allclose(raw, reference[explained].raw_heatmaps[0], rtol=1e-5, atol=1e-7)


# -- issue #10: what a new user trips over --------------------------------------------------------

USER_NET = textwrap.dedent(
    """
    from shortcut_detect.data.synthetic import SmallCNN


    def net():  # builds its own two-class head: no num_classes argument
        return SmallCNN(num_classes=2)
    """
)


@pytest.fixture
def user_project(tmp_path, monkeypatch, test_data, demo_models):
    """A user's folder: mypkg/models.py with a factory, its weights, 48x48 PNGs."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(USER_NET)
    (tmp_path / "w.pt").write_bytes(demo_models.shortcut_weights.read_bytes())
    manifest = write_image_dataset(test_data.subset(np.arange(12)), tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    _forget_package("mypkg")
    yield tmp_path, manifest
    _forget_package("mypkg")  # another test's mypkg must not find this one


def _forget_package(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]


def test_app_without_arguments_serves_the_demo(monkeypatch):
    import shortcut_detect.app as app_module
    from shortcut_detect.app import make_explorer
    from shortcut_detect.app.sources import DemoSource

    calls = {}
    monkeypatch.setattr(app_module, "run_app", lambda **kwargs: calls.update(kwargs))
    assert main(["app"]) == 0
    assert calls["model"] is None and calls["audit"] is None and calls["data"] is None
    served = {key: value for key, value in calls.items() if key not in ("host", "port")}
    explorer = make_explorer(**served)
    assert explorer.model_names == ["demo: shortcut model", "demo: clean model"]
    assert isinstance(explorer.source, DemoSource)


def test_layers_of_a_user_model_need_no_preprocessing(user_project, capsys):
    assert main(["layers", "--model", "mypkg.models:net"]) == 0
    out = capsys.readouterr().out
    assert "input size unknown, so no output shapes" in out
    listed = [line.split() for line in out.splitlines() if line.startswith("   ")]
    assert ["features", "Sequential"] in listed and ["features.0", "Conv2d"] in listed
    assert "add --resize N" in out


def test_audit_feeds_images_at_their_own_size(user_project, capsys):
    from shortcut_detect.audit.store import AuditStore

    folder, manifest = user_project
    model = ["--model", "mypkg.models:net", "--weights", "w.pt", "--classes", "classes.txt"]
    (folder / "classes.txt").write_text("disk\ncross\n")
    run = ["--data", str(manifest), "--no-report", "--num-workers", "0", "--no-progress"]
    status = main(["audit", *model, "--mean", "0", "0", "0", "--std", "1,1,1", *run, "--out", "a"])
    assert status == 0, capsys.readouterr().err
    resized = ["--preset", "none", "--resize", "48", *run, "--out", "b"]
    assert main(["audit", *model, *resized]) == 0
    native, reference = AuditStore(folder / "a"), AuditStore(folder / "b")
    assert native.config["preprocessing"]["native"] is True
    assert native.table().num_rows == 12
    # 48x48 images at their own size are exactly what resizing to 48 gives.
    np.testing.assert_allclose(
        native.table().column("target_score").to_numpy(),
        reference.table().column("target_score").to_numpy(),
        rtol=1e-5,
    )
    from PIL import Image

    Image.new("RGB", (64, 40)).save(folder / "data" / "images" / "00005.png")
    capsys.readouterr()
    assert main(["audit", *model, "--preset", "none", *run, "--out", "c"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "is 48x48" in err[0] and "00005.png is 64x40" in err[0] and "--resize N" in err[0]
    assert not (folder / "c").exists()  # stopped before the run started


def test_number_lists_take_commas_or_spaces(demo_run, tmp_path):
    out, _ = demo_run
    image = str(out / "data" / "images" / "00000.png")
    spaced = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", image]
    comma = [image, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    heatmaps = []
    for name, options in (("spaced", spaced), ("comma", comma), ("plain", [image])):
        target = tmp_path / name
        assert main(["explain", "--model", "demo", *options, "--out", str(target)]) == 0
        heatmaps.append(np.load(target / "00000_heatmap.npy"))
    np.testing.assert_array_equal(heatmaps[0], heatmaps[1])
    assert not np.allclose(heatmaps[0], heatmaps[2])  # the normalisation did take effect


def test_factory_without_num_classes_uses_the_class_file(user_project, capsys):
    folder, _ = user_project
    (folder / "three.txt").write_text("disk\ncross\nring\n")
    image = str(folder / "data" / "images" / "00000.png")
    model = ["--model", "mypkg.models:net", "--weights", "w.pt", "--preset", "none"]
    assert main(["explain", image, *model, "--classes", "three.txt", "--out", "x"]) == 1
    assert "--classes lists 3 names but the model has 2 output(s)" in capsys.readouterr().err
    (folder / "two.txt").write_text("disk\ncross\n")
    assert main(["explain", image, *model, "--classes", "two.txt", "--out", "x"]) == 0
    item = json.loads((folder / "x" / "explanations.json").read_text())["images"][0]
    assert item["explained_class"] in ("disk", "cross")


def test_audit_help_examples_run_as_written(tmp_path, test_data, monkeypatch):
    import shlex

    import torch
    import torchvision
    from PIL import Image

    from shortcut_detect.cli import AUDIT_EXAMPLES

    text = AUDIT_EXAMPLES.replace("\\\n", " ")
    commands = [
        shlex.split(line)[1:]
        for line in text.splitlines()
        if line.strip().startswith("shortcut-detect audit") and "..." not in line
    ]
    assert len(commands) == 2
    # The files the examples name.
    write_image_dataset(test_data.subset(np.arange(40)), tmp_path / "demo_output" / "data")
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), tmp_path / "model.pt")
    (tmp_path / "classes.txt").write_text("normal\npneumonia\n")
    for index in range(6):
        folder = tmp_path / "xrays" / ("normal", "pneumonia")[index % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (90, 80), 40 * index).save(folder / f"{index}.png")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        out = tmp_path / command[command.index("--out") + 1]
        assert main(command) in (0, EXIT_SHORTCUT)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["audit"]["samples_stored"] == (40 if "demo" in command else 6)
        assert (out / "report.html").is_file()


def test_an_unavailable_device_is_one_line_and_status_2(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["layers", "--model", "demo", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]


def test_help_says_where_torchscript_and_user_modules_work(capsys):
    with pytest.raises(SystemExit, match=r"^0$"):  # --help exits with status 0
        main(["audit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "TorchScript files cannot be explained" in text
    assert "run from its folder or set PYTHONPATH" in text
    assert "TorchScript/pickled model file" not in text


def test_hints_point_at_the_command_used(tmp_path, capsys, demo_run):
    out, _ = demo_run
    image = str(out / "data" / "images" / "00000.png")
    missing = str(tmp_path / "missing.pt")
    assert main(["explain", image, "--model", "torchvision:resnet18", "--weights", missing]) == 1
    err = capsys.readouterr().err
    assert f"error: --weights {missing}: no such file" in err
    assert "hint: see `shortcut-detect explain --help`" in err
    assert (
        main(["explain", image, "--model", "demo", "--method", "foo", "--out", str(tmp_path)]) == 1
    )
    err = capsys.readouterr().err
    assert "Unknown CAM method 'foo'; choose one of: gradcam" in err
    assert "layers" not in err


def test_progress_messages_print_once_and_unfinished_shards_read_as_a_sentence(
    user_project, capsys
):
    import logging

    _, manifest = user_project
    audit = ["audit", "--model", "demo", "--data", str(manifest), "--out", "sharded"]
    shard = ["--num-shards", "2", "--shard-index", "0", "--num-workers", "0", "--no-progress"]
    assert main([*audit, *shard]) == 0
    assert "Shard 0 of 2 is done; shard 1 is not finished." in capsys.readouterr().out
    # A program that configured logging itself (a root handler) must not see each line twice.
    root_handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root_handler)
    try:
        assert main([*audit, *shard]) == 0
        err = capsys.readouterr().err
        assert err.count("Continuing: 6 of 6 samples of this shard are already done.") == 1
        assert main(["report", "sharded", "--no-model", "--permutations", "0"]) == 0
        err = capsys.readouterr().err
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert "note: shard 1 of 2 is not finished; the report covers the samples stored so far" in err
    assert logging.getLogger("shortcut_detect").handlers == []  # the CLI's handler is removed


def test_library_errors_name_parameters_and_the_cli_names_flags(user_project, capsys):
    from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit

    _, manifest = user_project
    with pytest.raises(AuditError, match=r"^num_shards= must be at least 1, got 0$"):
        run_audit(AuditOptions(model="demo", data=str(manifest), out="o", num_shards=0))
    audit = ["audit", "--model", "demo", "--data", str(manifest), "--out", "o"]
    assert main([*audit, "--num-shards", "0"]) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: --num-shards must be at least 1, got 0"
    )
    assert main([*audit, "--num-shards", "2", "--shard-index", "2"]) == 1
    assert "error: --shard-index must be in 0..1, got 2" in capsys.readouterr().err


def _serve_explorer_only(monkeypatch):
    """``run_app`` replaced by building its explorer (no server); returns what was built."""
    import shortcut_detect.app as app_module

    built = {}

    def run_app(host, port, **kwargs):
        built["explorer"] = app_module.make_explorer(**kwargs)

    monkeypatch.setattr(app_module, "run_app", run_app)
    return built


def test_app_on_an_own_size_model_takes_the_size_from_the_audit(user_project, monkeypatch, capsys):
    folder, manifest = user_project
    (folder / "classes.txt").write_text("disk\ncross\n")
    model = ["--model", "mypkg.models:net", "--weights", "w.pt", "--classes", "classes.txt"]
    own_size = ["--mean", "0", "0", "0", "--std", "1,1,1"]
    run = ["--data", str(manifest), "--no-report", "--num-workers", "0", "--no-progress"]
    assert main(["audit", *model, *own_size, *run, "--out", "a"]) == 0
    built = _serve_explorer_only(monkeypatch)
    assert main(["app", "--audit", "a"]) == 0, capsys.readouterr().err
    (served,) = built["explorer"].models.values()
    assert served.input_size == (48, 48)
    # A model given without --data has no images to learn its input size from.
    capsys.readouterr()
    assert main(["app", *model, *own_size]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "error: --model mypkg.models:net is fed images at their own size, but with no --data "
        "there are no images to take the size from"
    )
    assert err[1].startswith("hint: add --resize N") and "--data D" in err[1]
    assert main(["app", *model, *own_size, "--data", str(manifest)]) == 0
    assert built["explorer"].get_model().input_size == (48, 48)
