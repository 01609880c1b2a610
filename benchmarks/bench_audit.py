"""Audit throughput against the engine's bare heatmap throughput.

Two settings:

* the synthetic demo set (48x48 PNG files, the demo SmallCNN), and
* torchvision resnet50 (random weights, saved to a local file) on 224x224 crops of 256x256
  PNG files, target ``layer4``.

"Engine" is :meth:`GradCAMHeatmapGenerator.explain` on batches already in memory (no decoding,
no storing). "Pipeline" is ``run_audit`` without the report: reading the manifest, decoding
and preprocessing in DataLoader workers, explaining, per-sample numbers, and committing rows
and heatmaps to the store. Rounds alternate between the two; medians are printed, and the
share is the median over rounds of each round's pipeline rate over its engine rate.

Run::

    .venv/bin/python benchmarks/bench_audit.py            # both settings
    .venv/bin/python benchmarks/bench_audit.py --quick    # fewer images
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

# As `import shortcut_detect` (and so the CLI) does before torch loads: idle OpenMP threads
# sleep instead of spinning, for the engine and the pipeline alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch


def _write_png_set(directory: Path, count: int, size: int, seed: int = 0) -> Path:
    from shortcut_detect.data.demo_files import write_image_dataset
    from shortcut_detect.data.synthetic import make_shortcut_dataset

    data = make_shortcut_dataset(count, shortcut_strength=0.5, image_size=size, seed=seed)
    return write_image_dataset(data, directory)


def _engine_rate(loaded, layer: str, manifest: Path, batch_size: int) -> float:
    from shortcut_detect.data.images import load_image, read_image_set
    from shortcut_detect.gradcam import GradCAMHeatmapGenerator

    names = loaded.class_names if loaded.class_names_known else None
    records = read_image_set(manifest, class_names=names).records
    tensors = torch.stack([loaded.transform(load_image(r.path)) for r in records])
    with GradCAMHeatmapGenerator(loaded.model, layer, device=loaded.device) as generator:
        generator.explain(tensors[:batch_size], [("logits", None)])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(tensors), batch_size):
            generator.explain(tensors[start : start + batch_size], [("logits", None)])
        seconds = time.perf_counter() - started
    return len(tensors) / seconds


def _pipeline_rate(
    spec: str,
    weights: str | None,
    manifest: Path,
    out: Path,
    batch_size: int,
    workers: int,
    extra: dict,
) -> tuple[float, float]:
    from shortcut_detect.audit.pipeline import AuditOptions, run_audit

    shutil.rmtree(out, ignore_errors=True)
    options = AuditOptions(
        model=spec,
        weights=weights,
        data=str(manifest),
        out=str(out),
        group_column="group",
        mask_column="mask",
        batch_size=batch_size,
        num_workers=workers,
        progress=False,
        report=False,
        **extra,
    )
    started = time.perf_counter()
    run = run_audit(options)
    total = time.perf_counter() - started
    done = json.loads((out / "shards" / "shard-00000-of-00001" / "DONE.json").read_text())
    return float(done["images_per_second"]), run.processed / total


def _bench(
    name: str,
    spec: str,
    weights: str | None,
    manifest: Path,
    work: Path,
    batch_size: int,
    workers: int,
    rounds: int,
    extra: dict,
) -> None:
    from shortcut_detect.models import load_model

    loaded = load_model(spec, weights=weights, **{k: v for k, v in extra.items()})
    layer = loaded.default_layer
    engine, loop, end_to_end = [], [], []
    for _ in range(rounds):
        engine.append(_engine_rate(loaded, layer, manifest, batch_size))
        rate, total = _pipeline_rate(
            spec, weights, manifest, work / "audit", batch_size, workers, extra
        )
        loop.append(rate)
        end_to_end.append(total)
    e, p, t = statistics.median(engine), statistics.median(loop), statistics.median(end_to_end)
    # Each round's pipeline against the engine just before it: this machine's speed drifts
    # by 10-20% between minutes, and adjacent runs share the drift.
    shares = [pipeline / bare for bare, pipeline in zip(engine, loop)]
    count = len(manifest.read_text().splitlines()) - 1
    print(
        f"{name:<34} {count:>5} imgs  batch {batch_size:<3} workers {workers}  "
        f"engine {e:8.1f} img/s  pipeline {p:8.1f} img/s  "
        f"share {statistics.median(shares):5.1%} (rounds {min(shares):.1%}-{max(shares):.1%})  "
        f"with start-up {t:8.1f} img/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--synthetic-images",
        type=int,
        default=8192,
        help="images of the synthetic setting (enough that the loop, not the start of the "
        "decoding workers, dominates the timed part)",
    )
    parser.add_argument("--only", choices=["synthetic", "resnet50"])
    args = parser.parse_args()
    torch.manual_seed(0)
    rounds = 1 if args.quick else args.rounds
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"medians of {rounds} round(s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "synthetic"):
            manifest = _write_png_set(
                work / "synthetic", 256 if args.quick else args.synthetic_images, 48
            )
            _bench(
                "synthetic 48x48, demo SmallCNN",
                "demo:shortcut",
                None,
                manifest,
                work,
                64,
                args.workers,
                rounds,
                {},
            )
        if args.only in (None, "resnet50"):
            import torchvision

            weights = work / "resnet50.pt"
            torch.save(torchvision.models.resnet50(num_classes=2).state_dict(), weights)
            manifest = _write_png_set(work / "big", 32 if args.quick else 64, 256, seed=1)
            _bench(
                "resnet50 224x224 (crop of 256)",
                "torchvision:resnet50",
                str(weights),
                manifest,
                work,
                16,
                args.workers,
                rounds,
                {"preset": "imagenet"},
            )
    np.random.seed(0)


if __name__ == "__main__":
    main()
