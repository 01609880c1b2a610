"""The Ray executor's options without a cluster: actor planning, SLURM job arrays, Ray missing."""

from __future__ import annotations

import argparse
import sys

import pytest

from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit
from shortcut_detect.audit.ray_executor import (
    _decode_in_actors,
    _explained_chunks,
    _records,
    chunks_per_call,
    plan_actors,
)
from shortcut_detect.cli import CommandError, _shards, main
from shortcut_detect.data.images import ImageRecord


def test_plan_leaves_cpus_to_decoding_and_shares_gpus():
    two_cores = plan_actors({"CPU": 2.0})
    assert (two_cores.actors, two_cores.cpus_per_actor, two_cores.threads_per_actor) == (1, 1, 2)
    shared = plan_actors({"CPU": 2.0}, actors=4)
    assert (shared.actors, shared.cpus_per_actor, shared.threads_per_actor) == (4, 0.25, 1)
    big = plan_actors({"CPU": 64.0})
    assert (big.actors, big.cpus_per_actor) == (48, 1.0)
    threaded = plan_actors({"CPU": 64.0}, actors=4)
    assert (threaded.cpus_per_actor, threaded.threads_per_actor) == (1.0, 16)
    gpus = plan_actors({"CPU": 16.0, "GPU": 4.0})
    assert (gpus.actors, gpus.gpus_per_actor) == (4, 1.0)
    assert plan_actors({"CPU": 16.0, "GPU": 2.0}, actors=8).gpus_per_actor == 0.25
    assert (
        "8 actors (1 CPU, 0.25 GPU, 1 torch thread each)"
        in plan_actors({"CPU": 16.0, "GPU": 2.0}, actors=8).describe()
    )
    # Actors that decode their own chunks (or the intervention stage's, which decode
    # nothing) get every CPU.
    own = plan_actors({"CPU": 2.0}, decoding_tasks=False)
    assert (own.actors, own.cpus_per_actor, own.threads_per_actor) == (2, 1.0, 1)
    assert plan_actors({"CPU": 64.0}, decoding_tasks=False).actors == 64
    with pytest.raises(AuditError, match="ray_actors= must be at least 1, got 0"):
        plan_actors({"CPU": 2.0}, actors=0)


def test_actors_decode_on_cpu_only_clusters_and_tasks_decode_for_gpus():
    assert _decode_in_actors({"CPU": 2.0})
    assert not _decode_in_actors({"CPU": 16.0, "GPU": 2.0})


def test_records_survive_the_trip_to_the_workers():
    from shortcut_detect.audit.ray_executor import _record_json

    records = [
        ImageRecord("a.png", 0, "/d/a.png", 1, "cat", "site1", ("box", (0.123456789, 2, 3, 4))),
        ImageRecord("b.png", 1, "/d/b.png", -1, "", None, ("file", "/d/b_mask.png")),
        ImageRecord("c.png", 2, "/d/c.png", 0, "dog"),
    ]
    assert _records(_record_json(records)) == records


@pytest.mark.parametrize(
    ("chunks", "batch_size", "actors", "expected"),
    [
        (256, 64, 2, 8),  # 512 images a call
        (32, 16, 2, 4),  # a small audit: still four calls per actor
        (3, 64, 2, 1),
        (1000, 1024, 4, 1),  # chunks already past 512 images
        (1000, 1, 2, 125),  # 512 wanted, at most chunks / (4 x actors)
    ],
)
def test_an_actor_call_takes_about_512_images_but_every_actor_gets_four_calls(
    chunks, batch_size, actors, expected
):
    per_call = chunks_per_call(chunks, batch_size, actors)
    assert per_call == expected
    assert -(-chunks // per_call) >= min(chunks, 4 * actors)


def test_a_chunk_delivered_twice_is_stored_once():
    import json
    import pickle

    import numpy as np

    def item(chunk: int) -> dict:
        rows = [{"sample_id": f"{chunk}-{k}", "heatmap_row": k} for k in range(2)]
        maps = np.full((2, 1, 1), chunk, dtype=np.float16)
        return {"chunk": chunk, "rows": json.dumps(rows), "maps": pickle.dumps(maps)}

    class Delivered:  # a retried chunk 1 arrives a second time
        def iter_rows(self):
            return iter([item(0), item(1), item(2), item(1)])

    chunks = list(_explained_chunks(Delivered()))
    assert [[row["sample_id"] for row in rows] for rows, _ in chunks] == [
        ["0-0", "0-1"],
        ["1-0", "1-1"],
        ["2-0", "2-1"],
    ]
    assert [maps[:, 0, 0].tolist() for _, maps in chunks] == [[0, 0], [1, 1], [2, 2]]


def _args(shard_index=None, num_shards=None):
    return argparse.Namespace(shard_index=shard_index, num_shards=num_shards)


def test_shards_come_from_a_slurm_job_array_unless_given():
    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert _shards(_args(), array) == (5, 8)
    assert _shards(_args(), {**array, "SLURM_ARRAY_TASK_MIN": "1"}) == (4, 8)
    assert _shards(_args(2, 4), array) == (2, 4)
    assert _shards(_args(), {}) == (0, 1)
    assert _shards(_args(), {"SLURM_ARRAY_TASK_ID": "3"}) == (0, 1)  # not an array
    with pytest.raises(CommandError, match="SLURM_ARRAY_TASK_ID=x"):
        _shards(_args(), {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "8"})


@pytest.fixture
def ray_hidden(monkeypatch):
    """Ray as if not installed (``import ray`` raises ImportError)."""
    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)


def test_without_ray_the_command_fails_with_one_line_naming_the_extra(ray_hidden, tmp_path, capsys):
    data, out = str(tmp_path), str(tmp_path / "o")
    status = main(["audit", "--model", "demo", "--data", data, "--out", out, "--executor", "ray"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert error == [
        "error: --executor ray needs Ray (Ray Data), which is not installed: "
        "pip install 'shortcut-detect[ray]'"
    ]
    assert not (tmp_path / "o").exists()


def test_without_ray_the_library_raises_before_loading_anything(ray_hidden, tmp_path):
    options = AuditOptions(
        model="no-such-model", data=str(tmp_path), out=str(tmp_path / "o"), executor="ray"
    )
    with pytest.raises(AuditError, match=r"shortcut-detect\[ray\]"):
        run_audit(options)


def test_unknown_executor_is_refused(tmp_path):
    options = AuditOptions(model="demo", data=str(tmp_path), out=str(tmp_path), executor="dask")
    with pytest.raises(AuditError, match="executor= must be one of local, ray, got 'dask'"):
        run_audit(options)
