"""The audit on Ray (``--executor ray``) against the local executor, on one machine.

Three measurements:

* ``throughput``: Grad-CAM audits of the same PNG files with the local executor and with Ray
  (a local Ray instance with this machine's cores, the default actor plan), rounds alternating;
  medians. Settings: torchvision resnet18 (random weights) on 224x224 crops of 256x256 files,
  and the demo SmallCNN on 16384 48x48 files (a tiny model: per-image overheads dominate;
  enough images that the marginal rate is not lost in the noise of Ray's start).
* ``scaling``: a CPU-bound ScoreCAM audit (demo SmallCNN, 48x48) with 1, 2 and 4 actors:
  wall time per image of the explain pass.
* ``memory``: the driver's peak resident memory for 10^4 and 10^5 rows, with Ray and with the
  local executor: the explain pass, then the store's merge (what the intervention stage and
  the report start with). A manifest lists 64 PNG files of 48x48 pixels over and over (every
  row is decoded and explained, the files stay few), and the demo SmallCNN is explained at its
  first ReLU (``features.2``), whose 48x48 maps take 4.6 KB per row in the store: a driver
  that held the heatmaps would grow by at least that much per row, so the growth per row
  tells heatmaps from bookkeeping (the listing, the row table). Each run is its own process
  (with its own Ray instance); Ray's workers are other processes and not counted.

"Pass" is the rate over the whole shard (``DONE.json``: decoding, explaining, storing; for Ray
also starting the actors and shipping the model to them). "Marginal" cancels the start-up: each
audit also runs on the first half of the images, and the rate is the extra images over the
extra time; it is the rate a long audit approaches.

Run (on an otherwise idle machine)::

    .venv/bin/python benchmarks/bench_ray.py                      # everything
    .venv/bin/python benchmarks/bench_ray.py --only memory
    .venv/bin/python benchmarks/bench_ray.py --quick              # smoke run, tiny sizes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

import torch


def _write_png_set(directory: Path, count: int, size: int, seed: int = 0) -> Path:
    from shortcut_detect.data.demo_files import write_image_dataset
    from shortcut_detect.data.synthetic import make_shortcut_dataset

    data = make_shortcut_dataset(count, shortcut_strength=0.5, image_size=size, seed=seed)
    return write_image_dataset(data, directory)


def _repeated_manifest(manifest: Path, rows: int) -> Path:
    """A manifest of ``rows`` rows cycling through ``manifest``'s files (ids stay unique:
    repeats are numbered ``#2``, ``#3``...)."""
    with manifest.open() as handle:
        source = list(csv.DictReader(handle))
    root = manifest.parent
    out = root / f"manifest_{rows}.csv"
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(source[0]))
        writer.writeheader()
        for i in range(rows):
            row = dict(source[i % len(source)])
            row["path"] = str(root / row["path"])
            writer.writerow(row)
    return out


def _audit(manifest: Path, out: Path, **options) -> dict:
    """One audit without report; the shard's DONE.json plus the wall time with start-up."""
    from shortcut_detect.audit.pipeline import AuditOptions, run_audit

    shutil.rmtree(out, ignore_errors=True)
    values = {
        "model": "demo:shortcut",
        "data": str(manifest),
        "out": str(out),
        "group_column": "group",
        "mask_column": "mask",
        "batch_size": 32,
        "num_workers": 2,
        "progress": False,
        "report": False,
        "intervention_samples": 0,
    }
    values.update(options)
    started = time.perf_counter()
    run = run_audit(AuditOptions(**values))
    done = json.loads(next(out.glob("shards/*/DONE.json")).read_text())
    done["with_startup"] = run.processed / (time.perf_counter() - started)
    done["store_bytes"] = sum(p.stat().st_size for p in out.glob("shards/*/part-*"))
    return done


def _half_manifest(manifest: Path) -> Path:
    lines = manifest.read_text().splitlines()
    half = manifest.with_name("manifest_half.csv")
    rows = lines[1:]
    half.write_text("\n".join([lines[0], *rows[: len(rows) // 2]]) + "\n")
    return half


def _rates(manifest: Path, half: Path, out: Path, **options) -> tuple[float, float, float]:
    """Images/s over the whole pass, the marginal rate (start-up cancelled: the extra images of
    the full set over the extra time) and the store's bytes per image."""
    full_run = _audit(manifest, out, **options)
    half_run = _audit(half, out, **options)
    extra_images = full_run["processed"] - half_run["processed"]
    extra_seconds = full_run["seconds"] - half_run["seconds"]
    marginal = extra_images / extra_seconds if extra_seconds > 0 else float("nan")
    return full_run["images_per_second"], marginal, full_run["store_bytes"] / full_run["processed"]


def throughput(work: Path, quick: bool, rounds: int) -> None:
    import torchvision

    weights = work / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
    settings = [
        (
            "resnet18 224x224 (crop of 256)",
            _write_png_set(work / "big", 48 if quick else 512, 256, seed=1),
            {
                "model": "torchvision:resnet18",
                "weights": str(weights),
                "preset": "imagenet",
                "batch_size": 16,
            },
        ),
        (
            "demo SmallCNN 48x48",
            _write_png_set(work / "small", 256 if quick else 16384, 48),
            {"batch_size": 64},
        ),
    ]
    print(
        "| setting | images | local: pass / marginal | ray: pass / marginal "
        "| ray / local (marginal) | store per image |"
    )
    print("|---|---|---|---|---|---|")
    for name, manifest, options in settings:
        half = _half_manifest(manifest)
        rates: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        store = 0.0
        for _ in range(rounds):
            for executor in ("local", "ray"):
                *pair, store = _rates(manifest, half, work / "audit", executor=executor, **options)
                rates[executor].append(tuple(pair))
        median = {
            key: [statistics.median(values) for values in zip(*pairs)]
            for key, pairs in rates.items()
        }
        local, ray = (f"{median[k][0]:.1f} / {median[k][1]:.1f} img/s" for k in ("local", "ray"))
        ratio = median["ray"][1] / median["local"][1]
        count = len(manifest.read_text().splitlines()) - 1
        print(f"| {name} | {count} | {local} | {ray} | {ratio:.0%} | {store:.0f} B |")


def scaling(work: Path, quick: bool) -> None:
    manifest = _write_png_set(work / "scaling", 128 if quick else 1024, 48, seed=2)
    half = _half_manifest(manifest)
    print("| actors | wall time per image: pass / marginal | images/s: pass / marginal |")
    print("|---|---|---|")
    for actors in (1, 2, 4):
        rate, marginal, _ = _rates(
            manifest,
            half,
            work / "audit",
            executor="ray",
            ray_actors=actors,
            method="scorecam",
            batch_size=16,
        )
        print(
            f"| {actors} | {1000 / rate:.1f} ms / {1000 / marginal:.1f} ms "
            f"| {rate:.1f} / {marginal:.1f} |"
        )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_child(rows: int, executor: str, work: Path) -> None:
    """In a fresh process: the driver's peak RSS for an audit of ``rows`` rows."""
    from shortcut_detect.audit.ray_executor import connect
    from shortcut_detect.audit.store import AuditStore
    from shortcut_detect.models import load_model

    manifest = _repeated_manifest(work / "memory" / "manifest.csv", rows)
    if executor == "ray":
        connect(None)
    load_model("demo:shortcut")  # trains and caches the demo model before the baseline
    before = _peak_mb()
    out = work / f"memory_audit_{executor}"
    options = {"layer": "features.2", "batch_size": 256, "flush_rows": 1024}
    done = _audit(manifest, out, executor=executor, **options)
    explained = _peak_mb()
    store = AuditStore(out)
    store.merge()
    heatmaps = sum(p.stat().st_size for p in out.glob("shards/*/part-*.npy"))
    shutil.rmtree(out)
    print(
        json.dumps(
            {
                "before_mb": before,
                "explain_mb": explained,
                "merge_mb": _peak_mb(),
                "map_bytes_per_row": heatmaps / rows,
                **done,
            },
        )
    )


def memory(work: Path, quick: bool) -> None:
    _write_png_set(work / "memory", 64, 48, seed=3)
    print(
        "| rows | executor | driver RSS before the run | peak after the explain pass "
        "| peak after the merge | heatmaps in the store | explain pass |"
    )
    print("|---|---|---|---|---|---|---|")
    sizes = (1_000, 10_000) if quick else (10_000, 100_000)
    results: dict[tuple[int, str], dict] = {}
    for rows in sizes:
        for executor in ("ray", "local"):
            command = [sys.executable, __file__, "--rss-child", str(rows), "--work", str(work)]
            child = subprocess.run(
                [*command, "--executor", executor], capture_output=True, text=True, check=True
            )
            result = results[rows, executor] = json.loads(child.stdout.strip().splitlines()[-1])
            print(
                f"| {rows} | {executor} | {result['before_mb']:.0f} MB "
                f"| {result['explain_mb']:.0f} MB | {result['merge_mb']:.0f} MB "
                f"| {result['map_bytes_per_row'] * rows / 2**20:.0f} MB "
                f"| {result['images_per_second']:.0f} img/s |"
            )
    small, large = sizes
    for executor in ("ray", "local"):
        a, b = results[small, executor], results[large, executor]

        def per_row(key: str, a: dict = a, b: dict = b) -> float:
            return (b[key] - a[key]) * 2**20 / (large - small)

        print(
            f"{executor}: per extra row, {per_row('explain_mb'):.0f} B after the explain pass "
            f"and {per_row('merge_mb'):.0f} B after the merge; heatmaps "
            f"{b['map_bytes_per_row']:.0f} B per row in the store"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["throughput", "scaling", "memory"])
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--executor", default="ray", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        _peak_rss_child(args.rss_child, args.executor, Path(args.work))
        return
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "memory"):  # first: before this process starts Ray
            memory(work, args.quick)
        if args.only in (None, "throughput"):
            throughput(work, args.quick, 1 if args.quick else args.rounds)
        if args.only in (None, "scaling"):
            scaling(work, args.quick)


if __name__ == "__main__":
    main()
