"""False alarms and detection power of ShortcutDetector's embedding methods.

False alarms: embeddings with *no* group signal (standard normal, groups assigned at random)
for ``--seeds`` random seeds per configuration; the target is an overall risk of LOW in at
least 95 of 100 seeds. Detection power: group 1 (and 2, ...) shifted by ``shift`` standard
deviations in 4 dimensions of their own (Cohen's d = shift per dimension, Mahalanobis
distance 2 * shift), 20 seeds per shift.

Run:  .venv/bin/python benchmarks/bench_detector_false_alarms.py [--seeds 100] [--power-seeds 20]
(about 2-4 minutes on 2 busy CPU cores).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from shortcut_detect.detectors.shortcut_detector import ShortcutDetector

METHODS = ("probe", "statistical", "hbac", "geometric")
SIGNAL_DIMS = 4

# (name, samples, dimensions, groups, share of the first group or None for equal groups)
NULL_CONFIGS = [
    ("2 groups, N=300, D=32", 300, 32, 2, None),
    ("2 groups, N=120, D=256 (D > N)", 120, 256, 2, None),
    ("3 groups, N=300, D=64", 300, 64, 3, None),
    ("2 groups 80/20, N=200, D=16", 200, 16, 2, 0.8),
]
POWER_CONFIG = ("2 groups, N=300, D=32", 300, 32, 2, None)
SHIFTS = (0.5, 0.75, 1.0, 1.5)


def make_embeddings(
    n: int, dim: int, n_groups: int, shift: float, seed: int, first_share: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal embeddings; group j >= 1 shifted by ``shift`` in 4 dims of its own."""
    rng = np.random.default_rng(seed)
    if first_share is None:
        groups = rng.permutation(np.arange(n) % n_groups)
    else:
        n_first = round(first_share * n)
        groups = rng.permutation(np.r_[np.zeros(n_first, int), np.ones(n - n_first, int)])
    X = rng.normal(size=(n, dim))
    for j in range(1, n_groups):
        start = ((j - 1) * SIGNAL_DIMS) % dim
        X[groups == j, start : start + SIGNAL_DIMS] += shift
    return X, groups


def run(config: tuple, shift: float, seeds: int) -> dict:
    _, n, dim, n_groups, share = config
    overall: Counter = Counter()
    per_method: dict[str, Counter] = {m: Counter() for m in METHODS}
    started = time.perf_counter()
    for seed in range(seeds):
        X, groups = make_embeddings(n, dim, n_groups, shift, seed, share)
        detector = ShortcutDetector(methods=METHODS, random_state=seed).fit(X, groups)
        overall[detector.overall_risk] += 1
        for name, report in detector.get_results().items():
            per_method[name][report["risk"]] += 1
    return {
        "overall": overall,
        "per_method": per_method,
        "seconds_per_seed": (time.perf_counter() - started) / seeds,
    }


def _counts(counter: Counter) -> str:
    return " ".join(
        f"{level[0]}={counter.get(level, 0):<3d}" for level in ("LOW", "MODERATE", "HIGH")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds per null configuration")
    parser.add_argument("--power-seeds", type=int, default=20, help="seeds per planted shift")
    parser.add_argument("--part", choices=("all", "null", "power"), default="all")
    args = parser.parse_args()
    if args.part in ("all", "null"):
        false_alarms(args.seeds)
    if args.part in ("all", "power"):
        power(args.power_seeds)


def false_alarms(seeds: int) -> None:
    """Print the overall and per-method risk without group signal."""

    print(f"False alarms: overall risk over {seeds} seeds without group signal")
    print("  (L/M/H = seeds rated LOW / MODERATE / HIGH; target: LOW in >= 95%)")
    for config in NULL_CONFIGS:
        result = run(config, 0.0, seeds)
        low = result["overall"].get("LOW", 0)
        print(
            f"- {config[0]:<32s} overall LOW {low}/{seeds} ({low / seeds:.0%})  "
            f"[{result['seconds_per_seed']:.2f} s/seed]"
        )
        for name, counter in result["per_method"].items():
            print(f"    {name:<12s} {_counts(counter)}")


def power(seeds: int) -> None:
    """Print the share of seeds rated HIGH for planted shifts."""
    print(
        f"\nDetection power: {POWER_CONFIG[0]}, group 1 shifted by d in {SIGNAL_DIMS} "
        f"dimensions (Mahalanobis 2d), {seeds} seeds; share rated HIGH"
    )
    header = "  d      overall  " + "  ".join(f"{m:<11s}" for m in METHODS)
    print(header)
    for shift in SHIFTS:
        result = run(POWER_CONFIG, shift, seeds)
        high = result["overall"].get("HIGH", 0) / seeds
        cells = "  ".join(
            f"{result['per_method'][m].get('HIGH', 0) / seeds:<11.0%}" for m in METHODS
        )
        print(f"  {shift:<5g}  {high:<7.0%}  {cells}")


if __name__ == "__main__":
    main()
