"""The audit store: committed chunks, resume bookkeeping, shards, merge, readers."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from shortcut_detect.audit.store import AuditStore, ShardWriter, StoreError, write_json


def _config(root, num_shards=1):
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        root / "audit.json",
        {"input_size": [16, 16], "cam_size": [4, 4], "num_shards": num_shards, "n_samples": 10},
    )


def _rows(ids, with_map=True):
    return [
        {
            "sample_id": sid,
            "index": int(sid[1:]),
            "path": f"/{sid}.png",
            "status": "ok" if with_map else "error",
            "label": 0,
            "heatmap_row": i if with_map else -1,
        }
        for i, sid in enumerate(ids)
    ]


def _maps(n, seed=0):
    return np.random.default_rng(seed).random((n, 4, 4)).astype(np.float32)


def test_chunks_roundtrip_in_data_order(tmp_path):
    _config(tmp_path)
    maps = _maps(5)
    with ShardWriter(tmp_path, 0, 1, flush_rows=2) as writer:
        writer.add(_rows(["s3", "s1"]), maps[:2])  # flushed: 2 rows
        writer.add(_rows(["s9"], with_map=False), None)
        writer.add(_rows(["s0", "s5"]), maps[2:4])  # flushed: 3 rows
        writer.add(_rows(["s7"]), maps[4:5])
        writer.finish()
    store = AuditStore(tmp_path)
    table = store.table()
    assert table.column("sample_id").to_pylist() == ["s0", "s1", "s3", "s5", "s7", "s9"]
    assert len(store.part_files()) == 3
    expected = {"s3": maps[0], "s1": maps[1], "s0": maps[2], "s5": maps[3], "s7": maps[4]}
    got = store.heatmaps(["s5", "s3", "s7"])
    for sid, value in zip(["s5", "s3", "s7"], got):
        np.testing.assert_allclose(value, expected[sid], atol=1e-3)  # float16 storage
    assert store.upsampled(["s0"]).shape == (1, 16, 16)
    with pytest.raises(KeyError, match="could not be read"):
        store.heatmaps(["s9"])
    assert store.shard_status()["unfinished"] == []


def test_restart_sees_committed_ids_and_drops_partial_files(tmp_path):
    _config(tmp_path)
    writer = ShardWriter(tmp_path, 0, 1, flush_rows=2)
    writer.add(_rows(["s0", "s1"]), _maps(2))
    writer.add(_rows(["s2"]), _maps(1))  # buffered, never committed ("killed")
    writer.close()
    shard = tmp_path / "shards" / "shard-00000-of-00001"
    (shard / "part-000007.npy").write_bytes(b"orphan heatmaps of an uncommitted chunk")
    (shard / "part-000008.parquet.tmp-123").write_bytes(b"half written")
    restarted = ShardWriter(tmp_path, 0, 1, flush_rows=2)
    assert restarted.done_ids() == {"s0", "s1"}
    assert not (shard / "part-000007.npy").exists()
    assert not (shard / "part-000008.parquet.tmp-123").exists()
    restarted.add(_rows(["s2", "s3"]), _maps(2))
    restarted.close()
    ids = AuditStore(tmp_path).table().column("sample_id").to_pylist()
    assert ids == ["s0", "s1", "s2", "s3"]


def test_one_writer_per_shard(tmp_path):
    _config(tmp_path)
    with ShardWriter(tmp_path, 0, 1), pytest.raises(StoreError, match="Another process"):
        ShardWriter(tmp_path, 0, 1)
    ShardWriter(tmp_path, 0, 1).close()  # released


def test_shards_merge_into_one_table_and_heatmap_file(tmp_path):
    _config(tmp_path, num_shards=2)
    maps = _maps(4, seed=3)
    with ShardWriter(tmp_path, 0, 2) as first:
        first.add(_rows(["s0", "s2"]), maps[[0, 2]])
        first.finish()
    store = AuditStore(tmp_path)
    assert store.shard_status()["unfinished"] == [1]
    with ShardWriter(tmp_path, 1, 2) as second:
        second.add(_rows(["s1", "s3"]), maps[[1, 3]])
        second.finish()
    before = store.table()
    merged = store.merge()
    assert (merged / "heatmaps.npy").exists()
    sources = json.loads((merged / "sources.json").read_text())
    assert len(sources) == 2
    after = AuditStore(tmp_path)
    table = after.table()
    assert table.column("sample_id").to_pylist() == ["s0", "s1", "s2", "s3"]
    assert set(table.column("heatmap_file").to_pylist()) == {"merged/heatmaps.npy"}
    np.testing.assert_allclose(after.heatmaps(["s0", "s1", "s2", "s3"]), maps, atol=1e-3)
    assert before.column("label").to_pylist() == table.column("label").to_pylist()
    # A chunk added later makes the merge stale: readers go back to the chunks.
    with ShardWriter(tmp_path, 1, 2) as again:
        again.add(_rows(["s5"]), _maps(1))
        again.flush()
    assert AuditStore(tmp_path).table().num_rows == 5


def test_merge_keeps_rows_without_maps_and_reads_maps_across_chunk_files(tmp_path, monkeypatch):
    from shortcut_detect.audit import store as store_module

    _config(tmp_path, num_shards=2)
    maps = _maps(6, seed=5)
    with ShardWriter(tmp_path, 0, 2, flush_rows=2) as first:
        first.add(_rows(["s0", "s4"]), maps[[0, 3]])
        first.add(_rows(["s2"], with_map=False), None)
        first.add(_rows(["s6"]), maps[[4]])
        first.finish()
    with ShardWriter(tmp_path, 1, 2, flush_rows=1) as second:
        second.add(_rows(["s1", "s3"]), maps[[1, 2]])
        second.add(_rows(["s5"], with_map=False), None)
        second.add(_rows(["s7"]), maps[[5]])
        second.finish()
    expected = AuditStore(tmp_path).heatmaps(["s0", "s1", "s3", "s4", "s6", "s7"])
    monkeypatch.setattr(store_module, "_MERGE_CHUNK", 4)  # blocks that span chunk files
    merged = AuditStore(tmp_path).merge()
    table = AuditStore(tmp_path).table()
    assert table.column("sample_id").to_pylist() == [f"s{i}" for i in range(8)]
    assert table.column("heatmap_row").to_pylist() == [0, 1, -1, 2, 3, -1, 4, 5]
    files = table.column("heatmap_file").to_pylist()
    assert files == [None if i in (2, 5) else "merged/heatmaps.npy" for i in range(8)]
    np.testing.assert_array_equal(np.load(merged / "heatmaps.npy"), expected.astype(np.float16))


def test_merge_streams_the_heatmaps_instead_of_holding_them_all(tmp_path, monkeypatch):
    import tracemalloc

    from shortcut_detect.audit import store as store_module

    tmp_path.mkdir(exist_ok=True)
    write_json(tmp_path / "audit.json", {"cam_size": [32, 32], "num_shards": 1})
    count = 2000
    maps = np.random.default_rng(1).random((count, 32, 32)).astype(np.float16)
    with ShardWriter(tmp_path, 0, 1, flush_rows=500) as writer:
        writer.add(_rows([f"s{i}" for i in range(count)]), maps)
        writer.finish()
    monkeypatch.setattr(store_module, "_MERGE_CHUNK", 100)
    tracemalloc.start()
    try:
        merged = AuditStore(tmp_path).merge()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Holding every map takes maps.nbytes (4 MB) at once; a chunk of 100 maps 0.2 MB.
    assert peak < maps.nbytes / 2
    np.testing.assert_array_equal(np.load(merged / "heatmaps.npy"), maps)


def test_store_reader_refuses_other_directories(tmp_path):
    with pytest.raises(StoreError, match="not an audit directory"):
        AuditStore(tmp_path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_killed_writers_forked_worker_does_not_keep_the_lock(tmp_path):
    """DataLoader workers are forked from the writer; when the writer is killed, a worker
    that is still alive must not keep the shard locked (so a restart can begin at once)."""
    from shortcut_detect.audit.store import close_inherited_locks

    _config(tmp_path)
    writer_pid = os.fork()
    if writer_pid == 0:  # the writer
        try:
            ShardWriter(tmp_path, 0, 1)
            if os.fork() == 0:  # its decoding worker, outliving it
                close_inherited_locks()
                time.sleep(5)
                os._exit(0)
            time.sleep(0.3)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(writer_pid, 0)
    ShardWriter(tmp_path, 0, 1).close()  # no "Another process is writing"


def test_background_writer_commits_the_same_chunks(tmp_path):
    ids = [f"s{i}" for i in range(10)]
    rows = _rows(ids[:4]) + _rows(ids[4:6], with_map=False) + _rows(ids[6:])
    for row, position in zip(rows[6:], range(4, 8)):
        row["heatmap_row"] = position
    maps = _maps(8)
    tables = {}
    for background in (False, True):
        root = tmp_path / str(background)
        _config(root)
        with ShardWriter(root, 0, 1, flush_rows=3, background=background) as writer:
            writer.add(rows[:5], maps[:4])
            writer.add(rows[5:], maps[4:])
            writer.finish()
        store = AuditStore(root)
        tables[background] = store.table().to_pylist()
        np.testing.assert_array_equal(store.heatmaps(ids[:4] + ids[6:]), maps.astype(np.float16))
        assert len(store.part_files()) == 2
    assert tables[True] == tables[False]


def test_background_writer_raises_the_error_of_a_failed_chunk(tmp_path, monkeypatch):
    import shortcut_detect.audit.store as store_module

    def broken(path, table):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "_write_parquet", broken)
    _config(tmp_path)
    with ShardWriter(tmp_path, 0, 1, flush_rows=100, background=True) as writer:
        writer.add(_rows(["s0"]), _maps(1))
        writer.flush()
        with pytest.raises(OSError, match="disk full"):
            writer.wait()
    assert not (tmp_path / "shards" / "shard-00000-of-00001" / "DONE.json").exists()


def test_unfinished_shards_read_as_one_sentence():
    from shortcut_detect.audit.store import unfinished_shards_text

    assert unfinished_shards_text([1]) == "shard 1 is not finished"
    assert unfinished_shards_text([1, 2]) == "shards 1 and 2 are not finished"
    assert unfinished_shards_text([0, 2, 5], 8) == "shards 0, 2 and 5 of 8 are not finished"
    with pytest.raises(ValueError, match="at least one shard index"):
        unfinished_shards_text([])
