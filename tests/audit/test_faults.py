"""Faults in the audit store: torn files, a second run, a full disk.

What a power cut, a SIGKILL or a full disk leaves behind must be detected by the next run,
which redoes only what was lost and says so in one line (never a traceback).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shortcut_detect.audit.store import AuditStore, ShardWriter, StoreError, write_json

SHARD = "shards/shard-00000-of-00001"


def _config(root, num_shards=1):
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        root / "audit.json",
        {"input_size": [16, 16], "cam_size": [4, 4], "num_shards": num_shards, "n_samples": 10},
    )


def _rows(ids):
    return [
        {"sample_id": sid, "index": int(sid[1:]), "path": f"/{sid}.png", "status": "ok",
         "label": 0, "heatmap_row": i}
        for i, sid in enumerate(ids)
    ]  # fmt: skip


def _three_chunks(root):
    """Chunks s0 s1 | s2 s3 | s4 s5 of one shard, and their maps."""
    _config(root)
    maps = np.random.default_rng(0).random((6, 4, 4)).astype(np.float32)
    with ShardWriter(root, 0, 1, flush_rows=2) as writer:
        for start in (0, 2, 4):
            writer.add(_rows([f"s{start}", f"s{start + 1}"]), maps[start : start + 2])
        writer.finish()
    return maps


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_damaged_chunks_are_removed_and_their_samples_redone(tmp_path, caplog):
    maps = _three_chunks(tmp_path)
    shard = tmp_path / SHARD
    _truncate(shard / "part-000001.parquet")
    (shard / "part-000002.npy").write_bytes(b"")
    with caplog.at_level(logging.INFO, "shortcut_detect"), ShardWriter(tmp_path, 0, 1) as writer:
        assert writer.done_ids() == {"s0", "s1"}  # the damaged chunks count as not done
        writer.add(_rows(["s2", "s3", "s4", "s5"]), maps[2:])
        writer.finish()
    (line,) = _warnings(caplog)
    assert "2 damaged chunk(s)" in line and "part-000001.parquet (unreadable rows)" in line
    assert "part-000002.parquet (unreadable heatmaps)" in line
    store = AuditStore(tmp_path)
    assert store.table().column("sample_id").to_pylist() == [f"s{i}" for i in range(6)]
    np.testing.assert_allclose(store.heatmaps([f"s{i}" for i in range(6)]), maps, atol=1e-3)


def test_a_reader_names_the_damaged_chunk_and_the_repair(tmp_path):
    _three_chunks(tmp_path)
    (tmp_path / SHARD / "part-000001.parquet").write_bytes(b"")
    with pytest.raises(StoreError, match=r"part-000001.parquet is damaged .*run the audit"):
        AuditStore(tmp_path).table()
    _three_chunks(tmp_path / "b")
    _truncate(tmp_path / "b" / SHARD / "part-000000.npy", keep=0.4)
    with pytest.raises(StoreError, match=r"part-000000.npy is damaged .*run the audit"):
        AuditStore(tmp_path / "b").heatmaps(["s0"])


@pytest.mark.parametrize("content", [b"", b'{"finished": "2026-'])
def test_a_torn_done_marker_counts_as_unfinished(tmp_path, caplog, content):
    _three_chunks(tmp_path)
    (tmp_path / SHARD / "DONE.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, "shortcut_detect"):
        assert AuditStore(tmp_path).shard_status()["unfinished"] == [0]
    (line,) = _warnings(caplog)
    assert "DONE.json is damaged" in line and "shard 0 counts as not finished" in line


def test_a_torn_interventions_file_counts_as_not_run(tmp_path, caplog):
    from shortcut_detect.audit.store import load_interventions

    _three_chunks(tmp_path)
    (tmp_path / "interventions").mkdir()
    (tmp_path / "interventions" / "interventions.json").write_bytes(b'{"entries": [')
    with caplog.at_level(logging.WARNING, "shortcut_detect"):
        assert load_interventions(AuditStore(tmp_path)) is None
    assert "intervention stage counts as not run" in _warnings(caplog)[0]


def test_a_torn_audit_json_is_restored_from_its_copy(tmp_path, caplog):
    from shortcut_detect.audit.store import write_config

    _three_chunks(tmp_path)
    config = {"input_size": [16, 16], "cam_size": [4, 4], "num_shards": 1, "model": "m"}
    write_config(tmp_path, config)
    (tmp_path / "audit.json").write_bytes(b'{"input_size": [1')
    with caplog.at_level(logging.WARNING, "shortcut_detect"):
        assert AuditStore(tmp_path).config == config
    assert json.loads((tmp_path / "audit.json").read_text()) == config
    assert any("Restored" in line for line in _warnings(caplog))
    (tmp_path / "audit.json").write_bytes(b"")
    (tmp_path / "audit.copy.json").write_bytes(b"")
    with pytest.raises(StoreError, match=r"damaged and has no readable copy.*overwrite=True"):
        AuditStore(tmp_path).config  # noqa: B018


def test_damaged_merged_files_are_merged_again(tmp_path, caplog):
    maps = _three_chunks(tmp_path)
    AuditStore(tmp_path).merge()
    _truncate(tmp_path / "merged" / "heatmaps.npy", keep=0.3)
    ids = [f"s{i}" for i in range(6)]
    with caplog.at_level(logging.WARNING, "shortcut_detect"):
        store = AuditStore(tmp_path)
        np.testing.assert_allclose(store.heatmaps(ids), maps, atol=1e-3)  # from the chunks
        store.merge()
    assert "merged again" in _warnings(caplog)[0]
    np.testing.assert_allclose(np.load(tmp_path / "merged" / "heatmaps.npy"), maps, atol=1e-3)


def test_temporary_files_of_dead_writers_are_removed(tmp_path):
    from shortcut_detect.audit.store import remove_stray_temp_files

    _three_chunks(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stray = [
        tmp_path / f"summary.json.tmp-{host}-{dead.pid}",
        tmp_path / f"audit.json.tmp-{dead.pid}",  # the older naming, without a host
    ]
    kept = [
        tmp_path / f"report.html.tmp-{host}-{os.getpid()}",  # a live writer's
        tmp_path / f"summary.json.tmp-another-node-{dead.pid}",  # may be alive elsewhere
    ]
    (tmp_path / "merged").mkdir()
    stray.append(tmp_path / "merged" / f"results.parquet.tmp-{host}-{dead.pid}")
    for path in stray + kept:
        path.write_bytes(b"partial")
    assert remove_stray_temp_files(tmp_path) == 3
    assert not [p.name for p in stray if p.exists()]
    assert [p.name for p in kept if p.exists()] == [p.name for p in kept]


# -- two runs on one folder ------------------------------------------------------------------


def _hold_lock(root):
    """A process that holds shard 0's lock until killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from shortcut_detect.audit.store import ShardWriter
        writer = ShardWriter({str(root)!r}, 0, 1)
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    assert holder.stdout.readline().strip() == b"ready"
    return holder


def test_a_second_run_names_the_first_and_a_killed_run_leaves_no_lock(tmp_path):
    from shortcut_detect.audit.store import running_writers

    _config(tmp_path)
    holder = _hold_lock(tmp_path)
    try:
        host = socket.gethostname()
        with pytest.raises(
            StoreError, match=rf"Another process .*\(process {holder.pid} on {host}, started 20"
        ):
            ShardWriter(tmp_path, 0, 1)
        (running,) = running_writers(tmp_path)
        assert running.startswith("shard-00000-of-00001 (process") and str(holder.pid) in running
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ShardWriter(tmp_path, 0, 1).close()  # the killed run's lock went with it
    assert running_writers(tmp_path) == []


# -- disk full --------------------------------------------------------------------------------


def _fail_after(monkeypatch, calls_before_failing):
    """Make the store's Parquet write hit ENOSPC halfway, after some successful writes."""
    import pyarrow.parquet as pq

    real = pq.write_table
    count = {"calls": 0}

    def write_table(table, where, **kwargs):
        count["calls"] += 1
        if count["calls"] > calls_before_failing:
            where.write(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", write_table)


def test_a_full_disk_stops_the_writer_with_a_clear_error_and_keeps_committed_rows(
    tmp_path, monkeypatch
):
    from shortcut_detect.audit.store import DiskFullError

    _config(tmp_path)
    maps = np.zeros((4, 4, 4), dtype=np.float32)
    _fail_after(monkeypatch, 1)
    with ShardWriter(tmp_path, 0, 1, flush_rows=2) as writer:
        writer.add(_rows(["s0", "s1"]), maps[:2])
        with pytest.raises(DiskFullError, match=r"No space left .*committed so far is kept"):
            writer.add(_rows(["s2", "s3"]), maps[2:])
    assert not [p.name for p in (tmp_path / SHARD).iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    with ShardWriter(tmp_path, 0, 1) as writer:
        assert writer.done_ids() == {"s0", "s1"}


# -- whole runs -------------------------------------------------------------------------------


def _options(manifest, out):
    """A small, quick audit of the demo model: chunks of 32 rows, no report."""
    from shortcut_detect.audit.pipeline import AuditOptions

    return AuditOptions(
        model="demo:shortcut", data=str(manifest), out=str(out), batch_size=16, flush_rows=32,
        num_workers=0, intervention_samples=0, report=False, progress=False,
    )  # fmt: skip


def _rows_by_id(out):
    table = AuditStore(out).table(["sample_id", "prediction", "peak_y", "cam_max"]).to_pylist()
    return {row["sample_id"]: row for row in table}


def test_a_rerun_after_torn_files_redoes_only_the_lost_chunk(demo_manifest, tmp_path, caplog):
    from shortcut_detect.audit.pipeline import run_audit

    out = tmp_path / "torn"
    run_audit(_options(demo_manifest, out))
    before = _rows_by_id(out)
    shard = out / SHARD
    lost = AuditStore(out).table(["sample_id"]).num_rows  # 120 rows in chunks of 32
    _truncate(shard / "part-000001.parquet")  # 32 rows lost
    (shard / "DONE.json").write_bytes(b"")
    (out / "audit.json").write_bytes(b'{"store_version": ')
    (out / f"summary.json.tmp-{socket.gethostname()}-999999999").write_bytes(b"{")
    with caplog.at_level(logging.INFO, "shortcut_detect"):
        again = run_audit(_options(demo_manifest, out))
    assert lost == 120 and again.processed == 32 and again.already_done == 88
    assert _rows_by_id(out).keys() == before.keys()
    for sid, row in _rows_by_id(out).items():
        assert row["prediction"] == before[sid]["prediction"]
        assert row["cam_max"] == pytest.approx(before[sid]["cam_max"], rel=1e-4, abs=1e-6)
    warnings = _warnings(caplog)
    assert any("damaged chunk(s)" in line and "part-000001" in line for line in warnings)
    assert any("Restored" in line for line in warnings)
    assert any("temporary file" in line for line in warnings)
    assert not (out / f"summary.json.tmp-{socket.gethostname()}-999999999").exists()
    assert AuditStore(out).shard_status()["unfinished"] == []


def test_a_full_disk_stops_the_run_and_a_rerun_resumes(demo_manifest, tmp_path, monkeypatch):
    from shortcut_detect.audit.pipeline import run_audit
    from shortcut_detect.audit.store import DiskFullError

    out = tmp_path / "full"
    _fail_after(monkeypatch, 2)  # two chunks of 32 fit, the third does not
    with pytest.raises(DiskFullError, match=r"No space left .*part-000002\.parquet"):
        run_audit(_options(demo_manifest, out))
    assert AuditStore(out).table(["sample_id"]).num_rows == 64
    monkeypatch.undo()
    again = run_audit(_options(demo_manifest, out))
    assert again.already_done == 64 and again.processed == 56
    ids = AuditStore(out).table(["sample_id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == 120


def test_the_command_line_reports_a_full_disk_without_a_traceback(
    demo_manifest, tmp_path, monkeypatch, capsys
):
    from shortcut_detect.cli import EXIT_ERROR, main

    _fail_after(monkeypatch, 0)
    out = tmp_path / "cli"
    arguments = ["audit", "--model", "demo:shortcut", "--data", str(demo_manifest), "--out"]
    status = main([*arguments, str(out), "--no-report", "--num-workers", "0", "--no-progress"])
    error = capsys.readouterr().err
    assert status == EXIT_ERROR
    assert "error: No space left on the device to write" in error
    assert "Traceback" not in error
