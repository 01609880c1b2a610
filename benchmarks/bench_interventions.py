"""Time of the intervention test and of discovery on 200 images of the 48x48 demo model.

``intervene`` with the demo's marker masks (three fills, four content-matched control
placements each, a transplant, 1000 bootstrap and permutation resamples) and
``find_shortcuts`` from Grad-CAM heatmaps alone (candidates, then the same test per
candidate). Medians of ``--rounds`` runs; the machine's torch thread count is printed.

Run: ``python benchmarks/bench_interventions.py [--samples 200] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.data.demo import load_demo_models, make_demo_test_set
from shortcut_detect.gradcam import GradCAMHeatmapGenerator
from shortcut_detect.interventions import find_shortcuts, intervene


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    model = load_demo_models().shortcut_model
    data = make_demo_test_set(args.samples)
    images = torch.from_numpy(data.images)
    with GradCAMHeatmapGenerator(model, target_layer="features") as generator:
        heatmaps = heatmaps_from_images(generator, images, batch_size=100)
    options = {"n_bootstrap": args.resamples, "n_permutations": args.resamples}
    carriers = data.groups == 1
    masks = data.masks  # empty where the marker is absent
    given, discovered = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        result = intervene(model, images, masks, carriers=carriers, heatmaps=heatmaps, **options)
        given.append(time.perf_counter() - started)
        started = time.perf_counter()
        discovery = find_shortcuts(model, images, heatmaps=heatmaps, **options)
        discovered.append(time.perf_counter() - started)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.samples} images")
    print(
        f"intervene (given masks): {statistics.median(given):.2f} s, "
        f"{result.n_forward_passes} forward passes; reading: {result.reading}"
    )
    print(
        f"find_shortcuts (no metadata): {statistics.median(discovered):.2f} s, "
        f"{len(discovery.tests)} candidates tested, {len(discovery.confirmed)} confirmed"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
