"""The audit on a real (local, 2-CPU) Ray cluster: same store as the local executor, actor and
driver failures, error rows. One cluster serves the whole module (Ray starts slowly)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import shortcut_detect
from shortcut_detect.audit.pipeline import AuditOptions, run_audit
from shortcut_detect.audit.store import AuditStore
from shortcut_detect.models import load_model

pytestmark = pytest.mark.ray

HERE = Path(__file__).resolve().parent
N_IMAGES = 300
INTERVENTION_SAMPLES = 120
# Columns that name where a row's heatmap lies; they differ between runs by design.
PLACEMENT = {"heatmap_file", "heatmap_row", "shard"}


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance whose workers import this folder (the fault-injecting models)
    and this checkout's package."""
    ray = pytest.importorskip("ray")
    package_root = str(Path(shortcut_detect.__file__).resolve().parents[1])
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), package_root, *filter(None, [previous])])
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    sys.path.insert(0, str(HERE))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        sys.path.remove(str(HERE))
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, test_data):
    """300 demo images, plus one file that is not an image and one that does not exist."""
    from shortcut_detect.data.demo_files import write_image_dataset

    path = write_image_dataset(
        test_data.subset(np.arange(N_IMAGES)), tmp_path_factory.mktemp("ray_images")
    )
    (path.parent / "images" / "broken.png").write_bytes(b"not a png")
    label = path.read_text().splitlines()[1].split(",")[1]
    with path.open("a") as handle:
        handle.write(f"images/broken.png,{label},marker,\n")
        handle.write(f"images/missing.png,{label},no_marker,\n")
    return path


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
        "intervention_samples": 0,
        "progress": False,
    }
    values.update(extra)
    return AuditOptions(**values)


@pytest.fixture(scope="module")
def local_run(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "audit"
    return run_audit(
        _options(manifest, out, embedding_samples=120, intervention_samples=INTERVENTION_SAMPLES)
    )


def _rows(store: AuditStore) -> list[dict]:
    return store.table().to_pylist()


def _assert_same_rows(rows: list[dict], reference: list[dict]) -> None:
    assert [row["sample_id"] for row in rows] == [row["sample_id"] for row in reference]
    for row, expected in zip(rows, reference):
        for name, value in expected.items():
            if name in PLACEMENT:
                continue
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, abs=1e-6), (row["sample_id"], name)
            else:
                assert row[name] == value, (row["sample_id"], name)


def _ok_ids(rows: list[dict]) -> list[str]:
    return [row["sample_id"] for row in rows if row["status"] == "ok"]


def _rows_in_chunks(out: Path) -> int:
    """Rows in every committed chunk: a sample written twice would count twice."""
    return sum(pq.read_metadata(p).num_rows for p in out.glob("shards/*/part-*.parquet"))


def _assert_close(value, expected, where="") -> None:
    """JSON values equal, floats within 1e-6."""
    if isinstance(expected, dict):
        assert sorted(value) == sorted(expected), where
        for key in expected:
            _assert_close(value[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(value) == len(expected), where
        for k, (item, reference) in enumerate(zip(value, expected)):
            _assert_close(item, reference, f"{where}[{k}]")
    elif isinstance(expected, float):
        assert value == pytest.approx(expected, abs=1e-6, nan_ok=True), where
    else:
        assert value == expected, where


def test_ray_run_gives_the_local_rows_heatmaps_and_verdict(
    ray_address, manifest, local_run, tmp_path
):
    from ray_models import CountingCNN, with_class

    out = tmp_path / "audit"
    loaded = with_class(load_model("demo:shortcut"), CountingCNN)
    CountingCNN.calls = 0
    options = _options(
        manifest,
        out,
        embedding_samples=120,
        intervention_samples=INTERVENTION_SAMPLES,
        executor="ray",
        ray_actors=2,
    )
    run = run_audit(options, loaded=loaded)
    # Every model pass (explain, embeddings, interventions) ran in the actors.
    assert CountingCNN.calls == 0
    assert run.processed == N_IMAGES + 2 and run.failed == 2
    reference = _rows(local_run.store)
    rows = _rows(run.store)
    _assert_same_rows(rows, reference)
    ids = _ok_ids(reference)
    np.testing.assert_allclose(
        run.store.heatmaps(ids), local_run.store.heatmaps(ids), rtol=0, atol=1e-6
    )
    summary = json.loads((out / "summary.json").read_text())
    local_summary = json.loads((local_run.store.root / "summary.json").read_text())
    assert summary["verdict"] == local_summary["verdict"]
    assert summary["verdict"]["risk"] == "HIGH"
    # The embedding pass ran in the actor pool on the same features.
    assert summary["embedding_tests"]["n_samples"] == 120
    assert summary["embedding_tests"] == local_summary["embedding_tests"]
    # The intervention stage's counterfactual forwards too, with the same statistics.
    assert summary["interventions"][0]["source"] == "given mask"
    assert summary["interventions"][0]["n_tested"] > 10
    _assert_close(summary["interventions"], local_summary["interventions"], "interventions")
    # The bad image and the missing file are error rows, not failures.
    errors = {row["sample_id"]: row for row in rows if row["status"] == "error"}
    assert set(errors) == {"images/broken.png", "images/missing.png"}
    assert all(row["heatmap_row"] == -1 and row["error"] for row in errors.values())
    assert "missing.png" in errors["images/missing.png"]["error"]
    assert _rows_in_chunks(out) == N_IMAGES + 2


def test_a_killed_actor_is_replaced_and_every_sample_is_stored_once(
    ray_address, manifest, local_run, tmp_path, monkeypatch
):
    from ray_models import CrashOnceCNN, with_class

    from shortcut_detect.audit import ray_executor

    # Separate decoding tasks, as on a cluster with GPUs (CPU-only ones decode in the actors).
    monkeypatch.setattr(ray_executor, "_decode_in_actors", lambda resources: False)

    marker = tmp_path / "crash"
    marker.touch()
    loaded = with_class(
        load_model("demo:shortcut"), CrashOnceCNN, crash_marker=str(marker), crash_after=4
    )
    out = tmp_path / "audit"
    run = run_audit(
        _options(manifest, out, executor="ray", ray_actors=2, report=False, flush_rows=32),
        loaded=loaded,
    )
    assert not marker.exists() and (tmp_path / "crash.claimed").exists(), "no actor died"
    assert run.all_complete and run.processed == N_IMAGES + 2
    _assert_same_rows(_rows(run.store), _rows(local_run.store))
    assert _rows_in_chunks(out) == N_IMAGES + 2


DRIVER = """
import sys
sys.path.insert(0, {here!r})
from ray_models import SlowCNN, with_class
from shortcut_detect.audit.pipeline import AuditOptions, run_audit
from shortcut_detect.models import load_model

loaded = with_class(load_model("demo:shortcut"), SlowCNN, delay=0.2)
options = AuditOptions(
    model="demo:shortcut", data={data!r}, out={out!r}, group_column="group",
    mask_column="mask", batch_size=16, flush_rows=16, num_workers=0, progress=False,
    report=False, intervention_samples=0, executor="ray", ray_address={address!r},
    ray_actors=2,
)
run = run_audit(options, loaded=loaded)
print("processed", run.processed, "already", run.already_done)
"""


def test_a_killed_driver_resumes_without_losing_or_repeating_samples(
    ray_address, manifest, local_run, tmp_path
):
    out = tmp_path / "audit"
    script = DRIVER.format(here=str(HERE), data=str(manifest), out=str(out), address=ray_address)
    command = [sys.executable, "-c", script]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while len(list(out.glob("shards/*/part-*.parquet"))) < 3:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the driver committed nothing in 180 s"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    assert not list(out.glob("shards/*/DONE.json")), "the run finished before it was killed"
    stored = _rows_in_chunks(out)
    assert 0 < stored < N_IMAGES

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    processed, already = (int(word) for word in rerun.stdout.split()[1::2])
    assert already >= stored and processed + already == N_IMAGES + 2
    _assert_same_rows(_rows(AuditStore(out)), _rows(local_run.store))
    assert _rows_in_chunks(out) == N_IMAGES + 2
