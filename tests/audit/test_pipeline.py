"""The audit run in-process: numbers equal the engine's, bad images, shards, reruns."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit
from shortcut_detect.audit.store import AuditStore
from shortcut_detect.data.images import load_image
from shortcut_detect.gradcam import GradCAMHeatmapGenerator
from shortcut_detect.models import load_model


def _options(manifest, out, **extra):
    values = {
        "model": "demo:shortcut",
        "data": str(manifest),
        "out": str(out),
        "group_column": "group",
        "mask_column": "mask",
        "batch_size": 16,
        "num_workers": 0,
        "n_permutations": 100,
        "embedding_samples": 0,
        "intervention_samples": 0,  # tested in test_interventions_audit.py
        "progress": False,
    }
    values.update(extra)
    return AuditOptions(**values)


def test_rows_and_heatmaps_equal_the_engine(shortcut_audit, demo_manifest, shortcut_model):
    store = shortcut_audit.store
    table = store.table()
    assert table.num_rows == 120
    assert len(set(table.column("sample_id").to_pylist())) == 120
    rows = table.slice(0, 10).to_pylist()
    loaded = load_model("demo:shortcut")
    images = torch.stack([loaded.transform(load_image(row["path"])) for row in rows])
    with GradCAMHeatmapGenerator(shortcut_model, "features") as generator:
        reference = generator.explain(images, [("logits", None)])[0]
    stored = store.heatmaps([row["sample_id"] for row in rows])
    cam_max = np.array([row["cam_max"] for row in rows])
    np.testing.assert_allclose(
        stored * cam_max[:, None, None],
        reference.raw_heatmaps,
        rtol=2e-3,
        atol=1e-3 * cam_max.max(),
    )
    assert [row["prediction"] for row in rows] == reference.predictions.tolist()
    np.testing.assert_allclose(
        [row["confidence"] for row in rows], reference.confidences, rtol=1e-5
    )
    # Attention in the marker box, by hand: the 6x6 box at (3..9) covers CAM cells (4 px
    # each) 0..2 with weights 1/4, 1, 1/4 along each axis.
    weights = np.zeros(12)
    weights[:3] = [0.25, 1.0, 0.25]
    coverage = np.outer(weights, weights)
    for row, raw in zip(rows, reference.raw_heatmaps):
        if row["has_mask"]:
            expected = (raw * coverage).sum() / raw.sum()
            assert row["mask_attention"] == pytest.approx(expected, rel=1e-3)
        else:
            assert row["mask_attention"] is None


def test_shortcut_model_summary_and_report(shortcut_audit):
    summary = shortcut_audit.summary
    verdict = summary["verdict"]
    assert verdict["shortcut_suspected"] is True and verdict["risk"] == "HIGH"
    assert verdict["location"] == "top-left"
    assert any("top-left" in reason for reason in verdict["reasons"])
    on_disk = json.loads((shortcut_audit.store.root / "summary.json").read_text())
    assert next(iter(on_disk)) == "verdict" and on_disk["verdict"]["risk"] == "HIGH"
    names = {signal["name"]: signal for signal in summary["signals"]}
    assert names["mask_attention"]["risk"] == "HIGH"
    assert names["group_attention"]["metrics"]["p_value"] < 0.05
    assert summary["accuracy"]["per_group_class"]["marker"]["disk"]["accuracy"] < 0.2
    html = shortcut_audit.report_path.read_text()
    assert "A shortcut is likely" in html and "top-left" in html
    assert "http://" not in html and "https://" not in html  # self-contained


def test_clean_model_is_not_flagged(demo_manifest, tmp_path):
    run = run_audit(_options(demo_manifest, tmp_path / "clean", model="demo:clean"))
    verdict = run.summary["verdict"]
    assert verdict["shortcut_suspected"] is False and verdict["risk"] == "LOW"


def test_unreadable_images_are_skipped_counted_and_listed(demo_manifest, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_manifest.parent, root)
    good = (root / "images" / "00000.png").read_bytes()
    (root / "images" / "truncated.png").write_bytes(good[: len(good) // 3])
    (root / "images" / "text.png").write_text("not a picture")
    lines = (root / "manifest.csv").read_text().splitlines()[:21]
    lines += [
        "images/truncated.png,disk,marker,",
        "images/text.png,cross,no_marker,",
        "images/gone.png,disk,marker,",
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    run = run_audit(_options(root / "manifest.csv", tmp_path / "out"))
    assert run.failed == 3 and run.processed == 23
    table = run.store.table()
    errors = {r["sample_id"]: r["error"] for r in table.to_pylist() if r["status"] == "error"}
    assert set(errors) == {"images/truncated.png", "images/text.png", "images/gone.png"}
    assert (
        "truncated" in errors["images/truncated.png"]
        and "no such file" in errors["images/gone.png"]
    )
    assert run.summary["audit"]["samples_failed"] == 3
    assert len(run.summary["failed_images"]) == 3
    html = run.report_path.read_text()
    assert "images/text.png" in html and "3 image(s) could not be read" in html


def test_shards_give_the_same_rows_as_one_run(shortcut_audit, demo_manifest, tmp_path):
    out = tmp_path / "sharded"
    first = run_audit(_options(demo_manifest, out, num_shards=2, shard_index=0))
    assert not first.all_complete and first.summary is None
    assert "shortcut-detect report" in first.notes[0]
    second = run_audit(_options(demo_manifest, out, num_shards=2, shard_index=1))
    assert second.all_complete and second.summary is not None
    merged = AuditStore(out).table()
    single = shortcut_audit.store.table()
    assert merged.column("sample_id").to_pylist() == single.column("sample_id").to_pylist()
    assert merged.column("prediction").to_pylist() == single.column("prediction").to_pylist()
    assert set(merged.column("shard").to_pylist()) == {0, 1}


def test_rerun_continues_and_refuses_a_different_run(demo_manifest, tmp_path):
    out = tmp_path / "again"
    options = _options(demo_manifest, out, report=False)
    run_audit(options)
    again = run_audit(options)
    assert again.processed == 0 and again.already_done == 120
    assert AuditStore(out).table().num_rows == 120
    with pytest.raises(AuditError, match=r"different run \(layer.*overwrite=True"):
        run_audit(_options(demo_manifest, out, layer="features.6", report=False))
    replaced = run_audit(
        _options(demo_manifest, out, layer="features.6", overwrite=True, report=False)
    )
    assert replaced.processed == 120


def test_grayscale_images_feed_an_rgb_model(demo_manifest, tmp_path):
    from PIL import Image

    root = tmp_path / "gray"
    (root / "disk").mkdir(parents=True)
    (root / "cross").mkdir()
    lines = demo_manifest.read_text().splitlines()[1:13]
    for line in lines:
        path, label = line.split(",")[:2]
        gray = Image.open(demo_manifest.parent / path).convert("L")
        gray.save(root / label / path.split("/")[-1])
    run = run_audit(_options(root, tmp_path / "out", group_column=None, mask_column=None))
    table = run.store.table().to_pylist()
    assert run.failed == 0 and len(table) == 12
    loaded = load_model("demo")
    row = table[0]
    image = loaded.transform(load_image(row["path"]))
    assert torch.equal(image[0], image[2])
    with torch.no_grad():
        expected = int(loaded.model(image[None]).argmax())
    assert row["prediction"] == expected
    # Folder labels follow the model's class names (disk=0, cross=1), not folder order.
    assert {r["label_name"]: r["label"] for r in table} == {"disk": 0, "cross": 1}


@pytest.mark.parametrize("target", ["predicted", "label"])
def test_single_logit_binary_model(demo_manifest, tmp_path, target):
    """One output = a sigmoid classifier: class 1 when the logit is positive.

    Class 1 is explained by the logit and class 0 by its negation, also when the class
    explained (the label) is not the predicted one.
    """
    from shortcut_detect.data.synthetic import SmallCNN
    from shortcut_detect.data.transforms import Preprocessing

    torch.manual_seed(0)
    model = SmallCNN(num_classes=1).eval()
    first = [line.split(",")[0] for line in demo_manifest.read_text().splitlines()[1:17]]
    recipe = Preprocessing(size=(48, 48))
    batch = torch.stack([recipe(load_image(demo_manifest.parent / p)) for p in first])
    with torch.no_grad():  # centre the logits so that both classes are predicted
        model.classifier.bias -= model(batch)[:, 0].median()
    weights = tmp_path / "binary.pt"
    torch.save(model.state_dict(), weights)
    (tmp_path / "binary_net.py").write_text(
        "from shortcut_detect.data.synthetic import SmallCNN\n\n"
        "def build(num_classes=1):\n    return SmallCNN(num_classes=num_classes)\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        loaded = load_model(
            "binary_net:build",
            weights=weights,
            num_classes=1,
            classes=["disk", "cross"],
            preset="none",
            resize=[48],
        )
    finally:
        sys.path.remove(str(tmp_path))
    assert loaded.num_classes == 1 and loaded.class_names == ["disk", "cross"]
    run = run_audit(
        _options(demo_manifest, tmp_path / "out", report=False, target=target),
        loaded=loaded,
    )
    rows = run.store.table().slice(0, 16).to_pylist()
    images = torch.stack([loaded.transform(load_image(r["path"])) for r in rows])
    with torch.no_grad():
        logits = model(images)[:, 0].numpy().astype(np.float64)
    predicted = (logits > 0).astype(np.int64)
    labels = np.array([r["label"] for r in rows])
    explained = labels if target == "label" else predicted
    assert (predicted == 1).any() and (predicted == 0).any()
    if target == "label":
        assert (labels != predicted).any()  # some samples explain the class not predicted
    # Oracle: the same logit as a two-class head [-logit, logit], through the K-class path.
    two_class = {"two_class": lambda outputs: torch.cat([-outputs, outputs], dim=1)}
    with GradCAMHeatmapGenerator(model, "features", head_mappings=two_class) as generator:
        reference = generator.explain(images, [("two_class", explained)])[0]
    stored = run.store.heatmaps([r["sample_id"] for r in rows])
    cam_max = np.array([r["cam_max"] for r in rows])[:, None, None]
    np.testing.assert_allclose(
        stored * cam_max, reference.raw_heatmaps, rtol=2e-3, atol=1e-3 * cam_max.max()
    )
    positive = 1 / (1 + np.exp(-logits))
    for row, logit, p, cls in zip(rows, logits, positive, explained):
        assert row["prediction"] == int(logit > 0)
        assert row["prediction_name"] == ["disk", "cross"][int(logit > 0)]
        assert row["target"] == cls
        # the explained score: the logit for class 1, the negated logit for class 0
        assert row["target_score"] == pytest.approx(logit if cls == 1 else -logit, rel=1e-4)
        assert row["confidence"] == pytest.approx(max(p, 1 - p), rel=1e-5)
        expected = p if row["label"] == 1 else 1 - p
        assert row["label_probability"] == pytest.approx(expected, rel=1e-4)
