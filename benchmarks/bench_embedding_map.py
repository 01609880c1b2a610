"""Time of :func:`shortcut_detect.embedding_map` for 10^4 points of 512 features.

The data are four Gaussian clusters (two classes x two groups) in 512 dimensions, like the
penultimate features of a CNN. Each method runs once per round (with the same seed, so the
maps are identical); the median wall time is printed with the machine's load average,
because the numbers are only meaningful on an otherwise idle machine.

Run::

    .venv/bin/python benchmarks/bench_embedding_map.py                 # t-SNE and PCA
    .venv/bin/python benchmarks/bench_embedding_map.py --points 5000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from shortcut_detect.analysis.embedding_map import describe_embedding_map, embedding_map


def _features(count: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=count)
    groups = rng.integers(0, 2, size=count)
    centres = rng.normal(0.0, 1.0, size=(2, 2, dims))
    data = centres[labels, groups] + rng.normal(0.0, 1.5, size=(count, dims))
    return data.astype(np.float32), labels, groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["tsne", "pca"])
    parser.add_argument(
        "--threads", type=int, default=1, help="OpenMP threads for t-SNE (0: all cores)"
    )
    args = parser.parse_args()
    data, labels, groups = _features(args.points, args.dims)
    print(
        f"{args.points} points x {args.dims} features, t-SNE threads {args.threads or 'all'}; "
        f"load average {os.getloadavg()}"
    )
    for method in args.methods:
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            result = embedding_map(
                data, method, seed=0, max_points=None, n_threads=args.threads or None
            )
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        description = describe_embedding_map(result, labels, groups)
        describe_seconds = time.perf_counter() - started
        print(
            f"{method:5s} median {statistics.median(times):7.1f} s over {args.rounds} rounds "
            f"(min {min(times):.1f} s); describe {describe_seconds:.1f} s; "
            f"load average now {os.getloadavg()[0]:.1f}"
        )
        print(f"      {description.sentence}")


if __name__ == "__main__":
    main()
