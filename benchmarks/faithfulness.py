"""Faithfulness of the CAM methods on the synthetic shortcut model.

The demo shortcut model was trained where a corner marker agrees with the label 95% of the
time, so it predicts from the marker. For held-out images with the marker drawn, each
method's maps are scored by:

* share of map mass inside the marker (the marker covers ~1.6% of the image),
* Average Drop % (lower is better) and Increase in Confidence % (higher is better), image
  times map, as in the Grad-CAM++ paper,
* ROAD with noisy linear imputation: mean probability of the predicted class after removing
  the most relevant (MoRF, lower is better) or least relevant (LeRF, higher is better)
  pixels first, and (LeRF - MoRF) / 2 (higher is better).

Usage::

    .venv/bin/python benchmarks/faithfulness.py [--images 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import shortcut_detect.cam as sc
from shortcut_detect.cam.metrics import confidence_change, road
from shortcut_detect.data.demo import load_demo_models, make_demo_test_set

FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_demo_models().shortcut_model.eval()
    data = make_demo_test_set(400, seed=1234)
    chosen = np.flatnonzero(data.groups == 1)[: args.images]
    images = torch.from_numpy(data.images[chosen])
    marker = data.masks[chosen]
    with torch.no_grad():
        predicted = model(images).argmax(1).tolist()
    targets = [sc.ClassifierOutputTarget(c) for c in predicted]
    print(
        f"shortcut model, {len(chosen)} held-out images with the marker drawn "
        f"(marker = {marker[0].mean():.1%} of the image), target layer 'features', "
        f"ROAD fractions {FRACTIONS}"
    )
    print(
        "| method | mass in marker | Average Drop % | Increase in Conf. % | ROAD MoRF | "
        "ROAD LeRF | ROAD (LeRF-MoRF)/2 | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, cls in sc.METHODS.items():
        start = time.perf_counter()
        with cls(model, ["features"]) as cam:
            maps = cam(images, targets=targets)
        seconds = time.perf_counter() - start
        mass = float((maps * marker).sum() / max(maps.sum(), 1e-12))
        change = confidence_change(model, images, maps, predicted, baseline="mean")
        result = road(model, images, maps, predicted, fractions=FRACTIONS, seed=args.seed)
        print(
            f"| {cls.__name__} ({name}) | {mass:.1%} | {change.average_drop:.1f} | "
            f"{change.increase_in_confidence:.1f} | {result.morf.mean():.3f} | "
            f"{result.lerf.mean():.3f} | {result.combined:.3f} | {seconds:.2f} |"
        )


if __name__ == "__main__":
    main()
