"""Kill anywhere: an audit SIGKILLed again and again, rerun each time, ends as an uninterrupted one.

The same ``shortcut-detect audit`` command (240 demo images plus two unreadable files, chunks of
8 rows, so 31 commits, then the intervention stage, the merge and the report) is killed at
named points (``SHORTCUT_DETECT_FAULT``, see :mod:`shortcut_detect.common.faults`: inside an
atomic write, between a chunk's heatmaps and its rows, after a commit, before the shard is
marked finished, between the merged heatmaps and rows, before the analysis, between
``summary.json`` and ``report.html``) and at random moments, and rerun after every kill until
it finishes. Then: every sample stored exactly once, rows and heatmaps equal to an
uninterrupted run's (1e-6), the same ``summary.json`` (but its ``audit.directory``) and an
equal report.

CI runs at least ``KILL_POINTS`` = 30 kills; more with ``SHORTCUT_DETECT_KILL_POINTS=300``
(the data grows with it). Commands run in children forked from one server process that
imported torch once (``fork_runner.py``), so a run costs its work, not its start-up.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shortcut_detect.audit.store import AuditStore

KILL_POINTS = int(os.environ.get("SHORTCUT_DETECT_KILL_POINTS", "30"))
N_SAMPLES = max(240, 8 * KILL_POINTS)
FLUSH_ROWS = 8
RUNNER = Path(__file__).with_name("fork_runner.py")
SHARD = "shards/shard-00000-of-00001"

# Points reached while samples are being explained (cycled until the shard is finished);
# "random" is a kill after a random delay.
EXPLAIN_POINTS = (
    "write:1",  # the run configuration's first write, before anything is explained
    "commit.heatmaps:2",  # the second chunk's heatmaps in place, its rows not
    "random",
    "commit.rows:3",
    "write:6",  # inside an atomic write: a chunk's file synced, not renamed
    "commit.rows:2",
    "random",
    "commit.heatmaps:1",
    "write:4",
    "commit.rows:1",
)
# Points after the shard is finished: the merge, the analysis and the report.
FINISH_POINTS = (
    "merge.heatmaps:1",
    "merge.rows:1",
    "random",
    "report.analysis:1",
    "report.summary:1",
    "random",
)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks its runs")


class _Runner:
    """The fork server: one command at a time, optionally killed after a delay."""

    def __init__(self, cwd: Path, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.process = subprocess.Popen(
            [sys.executable, str(RUNNER)],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.log = log
        assert json.loads(self._line(300)) == {"ready": True}

    def _line(self, timeout: float | None) -> str | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        assert line, f"the fork server died; see {self.log}"
        return line

    def run(self, argv: list[str], fault: str | None = None, kill_after: float | None = None):
        """Exit code of one run (-9: killed)."""
        request = {"argv": argv, "log": str(self.log), "env": {}}
        if fault:
            request["env"]["SHORTCUT_DETECT_FAULT"] = fault
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = json.loads(self._line(60))["pid"]
        line = self._line(kill_after)
        if line is None:  # still running after the delay: kill it now
            os.kill(pid, signal.SIGKILL)
            line = self._line(120)
        return json.loads(line)["exit"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, demo_models):
    from shortcut_detect.data.demo import make_demo_test_set
    from shortcut_detect.data.demo_files import write_image_dataset

    root = tmp_path_factory.mktemp("kill_data")
    path = write_image_dataset(make_demo_test_set(N_SAMPLES, seed=7), root)
    # Two unreadable files: their error rows must survive the kills too.
    (root / "images" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "images" / "empty.png").write_bytes(b"")
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("images/truncated.png,disk,marker,\nimages/empty.png,cross,no_marker,\n")
    return path


def _command(manifest: Path, out: Path) -> list[str]:
    return [
        "audit",
        "--model", "demo:shortcut", "--data", str(manifest),
        "--group-column", "group", "--mask-column", "mask",
        "--out", str(out),
        "--batch-size", "4", "--flush-rows", str(FLUSH_ROWS), "--num-workers", "0",
        "--no-progress", "--permutations", "50", "--embedding-samples", "40",
        "--intervention-samples", "16", "--max-analysis-samples", "200",
    ]  # fmt: skip


def _comparable_summary(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary["audit"].pop("directory")
    return summary


def _kill_until_done(runner: _Runner, command: list[str], out: Path) -> list[str]:
    """Run ``command`` with a kill at each point in turn until a run finishes after the
    last finishing point; returns the points at which a run was killed."""
    rng = np.random.default_rng(16)
    killed: list[str] = []
    tried: set[str] = set()
    explain_turn = finish_turn = 0
    shard_done = False  # once finished, a rerun killed early can remove DONE.json again
    for _ in range(40 * KILL_POINTS):  # a bound, never reached when the audit progresses
        done = (out / SHARD / "DONE.json").is_file() or "shard.done:1" in killed
        shard_done = shard_done or done
        if not shard_done:
            point = EXPLAIN_POINTS[explain_turn % len(EXPLAIN_POINTS)]
            explain_turn += 1
            chunks = len(list((out / SHARD).glob("part-*.parquet")))
            if (chunks + 2) * FLUSH_ROWS >= N_SAMPLES + 2 and "shard.done:1" not in tried:
                point = "shard.done:1"  # nearly done: kill after the last commit
            tried.add(point)
            delay = rng.uniform(0.3, 1.5)
        else:
            if finish_turn >= len(FINISH_POINTS) and len(killed) >= KILL_POINTS:
                break
            point = FINISH_POINTS[finish_turn % len(FINISH_POINTS)]
            finish_turn += 1
            if point.startswith("merge.") and (out / "merged").is_dir():
                # Merged already (a random kill came after the merge on a fast run): drop the
                # merged copy, a cache the store rebuilds, so the merge runs and is killed.
                shutil.rmtree(out / "merged")
            delay = rng.uniform(0.5, 5.0)
        if point == "random":
            code = runner.run(command, kill_after=delay)
        else:
            code = runner.run(command, fault=point)
        assert code in (0, -signal.SIGKILL), f"run at {point} exited with {code}; see {runner.log}"
        chunks = len(list((out / SHARD).glob("part-*.parquet")))
        sys.stderr.write(f"kill-anywhere: {point} -> {code} ({chunks} chunks)\n")
        if code == -signal.SIGKILL:
            killed.append(point)
    else:
        raise AssertionError(f"the audit did not finish within the bound; see {runner.log}")
    assert runner.run(command) == 0, f"the final run failed; see {runner.log}"
    return killed


def test_an_audit_killed_anywhere_ends_as_an_uninterrupted_one(tmp_path, manifest):
    import pyarrow.parquet as pq

    runner = _Runner(tmp_path, tmp_path / "runs.log")
    try:
        reference = tmp_path / "reference"
        assert runner.run(_command(manifest, reference)) == 0, (tmp_path / "runs.log").read_text()
        out = tmp_path / "killed"
        killed = _kill_until_done(runner, _command(manifest, out), out)
    finally:
        runner.close()
    sys.stderr.write(f"kill-anywhere: {len(killed)} kills survived: {', '.join(killed)}\n")
    assert len(killed) >= KILL_POINTS
    for stage in ("commit.", "merge.", "report.", "write", "random"):
        assert any(point.startswith(stage) for point in killed), stage

    store, expected = AuditStore(out), AuditStore(reference)
    # Every sample committed exactly once (not only deduplicated when read).
    stored = [pq.read_table(p, columns=["sample_id"]).column(0) for p in store.part_files()]
    ids = [sid for column in stored for sid in column.to_pylist()]
    assert len(ids) == len(set(ids)) == N_SAMPLES + 2

    rows, reference_rows = store.table().to_pylist(), expected.table().to_pylist()
    assert len(rows) == len(reference_rows)
    for row, reference_row in zip(rows, reference_rows):
        for name, value in reference_row.items():
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
            elif name not in ("heatmap_file", "heatmap_row", "shard"):
                assert row[name] == value, (name, row["sample_id"])
    assert sum(row["status"] == "error" for row in rows) == 2
    ok = [row["sample_id"] for row in reference_rows if row["status"] == "ok"]
    np.testing.assert_allclose(store.heatmaps(ok), expected.heatmaps(ok), atol=1e-6, rtol=0)
    merged = np.load(out / "merged" / "heatmaps.npy")
    np.testing.assert_allclose(merged, np.load(reference / "merged" / "heatmaps.npy"), atol=1e-6)

    assert _comparable_summary(out) == _comparable_summary(reference)
    assert (out / "report.html").stat().st_size > 10_000
    leftovers = [p.name for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_a_malformed_fault_spec_is_refused(monkeypatch):
    from shortcut_detect.common.faults import fault_point

    monkeypatch.setenv("SHORTCUT_DETECT_FAULT", "commit.rows")
    with pytest.raises(ValueError, match="expected STAGE:N"):
        fault_point("commit.rows")


def test_a_folder_left_by_a_run_killed_in_its_first_write_starts_afresh(tmp_path):
    from shortcut_detect.audit.store import _HOST, clear_unstarted_run

    dead = 2**22 + 12345  # above the default pid_max: no such process
    partial = tmp_path / f"audit.copy.json.tmp-{_HOST}-{dead}"
    partial.write_text('{"store_ver')
    assert clear_unstarted_run(tmp_path) is True and list(tmp_path.iterdir()) == []
    partial.write_text('{"store_ver')
    (tmp_path / "notes.txt").write_text("a user's file")
    assert clear_unstarted_run(tmp_path) is False  # anything else: not ours to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([partial.name, "notes.txt"])
