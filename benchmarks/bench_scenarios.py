"""Detection rates of the intervention test on planted-shortcut scenarios (markdown table).

For every base (synthetic shapes, scikit-learn digits) and scenario kind (see
``shortcut_detect.data.scenarios.KINDS``) and every seed, a small CNN is trained (cached) and
tested on 200 held-out images where the marker is independent of the label:

- with metadata: ``intervene`` on the true marker masks, carriers = images with the marker;
- without metadata: ``find_shortcuts`` from the Grad-CAM heatmaps alone; a localised shortcut
  counts as found when a confirmed candidate overlaps the marker's place.

The global artefact (brightness) has no region: "with metadata" is ``intervene_global`` on
brightness (the known statistic), "without" is ``find_global_shortcuts`` over brightness and
contrast (Bonferroni-corrected); its time column is one ``intervene_global`` call.

For scenarios whose model does not use a marker (salient_unused, clean) the rates are false
alarms. The "oracle" column is the ground truth no detector sees: the share of marker carriers
whose prediction changes when the marker is removed exactly (the same test image drawn
without it); "oracle relies" counts the seeds whose exact removal lowers the predicted
class's probability by at least ``ORACLE_RELIANCE`` (the intervention test's ``min_effect``)
on average: a seed below it is a model that does not rely on the marker, whatever its
training data. Scenario-seeds run in ``--jobs`` processes of one torch thread each; every row is
appended to ``--out`` (JSON lines) as it finishes.

Run: ``python benchmarks/bench_scenarios.py [--seeds 20] [--jobs 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.data.scenarios import BASES, KINDS, LOCALISED, load_scenario
from shortcut_detect.gradcam import GradCAMHeatmapGenerator
from shortcut_detect.interventions import (
    find_global_shortcuts,
    find_shortcuts,
    intervene,
    intervene_global,
)

ORACLE_RELIANCE = 0.05


def run_one(base: str, kind: str, seed: int, resamples: int) -> dict[str, object]:
    scenario = load_scenario(base, kind, seed)
    with GradCAMHeatmapGenerator(scenario.model, target_layer="features") as generator:
        heatmaps = heatmaps_from_images(generator, scenario.images, batch_size=100)
    options = {"n_bootstrap": resamples, "n_permutations": resamples, "seed": seed}
    row: dict[str, object] = {
        "accuracy": scenario.accuracy,
        "oracle": scenario.oracle_flip_rate(),
        "oracle_drop": scenario.oracle_probability_drop(),
    }
    if kind == "global_brightness":
        started = time.perf_counter()
        result = intervene_global(scenario.model, scenario.images, "brightness", **options)
        row["seconds"] = time.perf_counter() - started
        row["with"] = result.relied_on
        row["effect"] = result.effect.value
        row["salient"] = None
        found = find_global_shortcuts(scenario.model, scenario.images, **options)
        row["without"] = any(test.relied_on for test in found)
        return row
    started = time.perf_counter()
    result = intervene(
        scenario.model,
        scenario.images,
        scenario.masks,
        carriers=scenario.carriers,
        heatmaps=heatmaps,
        **options,
    )
    row["seconds"] = time.perf_counter() - started
    row["with"] = result.relied_on
    row["effect"] = result.effect.value
    row["salient"] = result.salient
    discovery = find_shortcuts(scenario.model, scenario.images, heatmaps=heatmaps, **options)
    confirmed = discovery.confirmed
    if kind in LOCALISED:
        row["without"] = any((t.candidate.region & scenario.marker_zone).any() for t in confirmed)
    else:
        row["without"] = bool(confirmed)
    return row


def _one_thread() -> None:
    torch.set_num_threads(1)


def _task(args: tuple[str, str, int, int]) -> dict[str, object]:
    base, kind, seed, resamples = args
    try:
        row = run_one(base, kind, seed, resamples)
    except Exception as error:  # one broken seed must not lose the others' rows
        row = {"error": f"{type(error).__name__}: {error}"}
    row.update(base=base, kind=kind, seed=seed)
    return row


def rate(values: list[object]) -> str:
    flags = [bool(v) for v in values if v is not None]
    if not flags:
        return "n/a"
    return f"{np.mean(flags):.0%} ({sum(flags)}/{len(flags)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="seeds per scenario (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 seeds, fewer resamples")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--out", default="scenario-rows.jsonl", help="rows as JSON lines")
    parser.add_argument("--bases", nargs="*", default=list(BASES), choices=BASES)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    args = parser.parse_args(argv)
    seeds = 3 if args.quick else args.seeds
    resamples = 500 if args.quick else 1000
    started = time.perf_counter()
    tasks = [
        (base, kind, seed, resamples)
        for base in args.bases
        for kind in args.kinds
        for seed in range(seeds)
    ]
    rows: list[dict[str, object]] = []
    out = Path(args.out)
    with (
        ProcessPoolExecutor(args.jobs, initializer=_one_thread) as pool,
        out.open("a") as sink,
    ):
        for row in pool.map(_task, tasks):
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(row, file=sys.stderr, flush=True)
    lines = [
        "| base | scenario | uses shortcut | oracle flip (median) | oracle relies "
        "| with metadata | without metadata | mean effect | salient | test acc. "
        "| s / intervene (200 img) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for base in args.bases:
        for kind in args.kinds:
            lines.append(
                _table_line(
                    base, kind, [r for r in rows if r["base"] == base and r["kind"] == kind]
                )
            )
    print(
        f"\n{seeds} seeds per scenario; {time.perf_counter() - started:.0f} s in all "
        f"({args.jobs} processes of 1 thread).\n"
    )
    print("\n".join(lines))
    return 0


def _table_line(base: str, kind: str, rows: list[dict[str, object]]) -> str:
    uses = "yes" if kind in (*LOCALISED, "global_brightness") else "no (false alarms)"
    oracle = np.nanmedian([float(r["oracle"]) for r in rows])
    relies = rate([float(r["oracle_drop"]) >= ORACLE_RELIANCE for r in rows])
    accuracy = np.mean([float(r["accuracy"]) for r in rows])
    without = rate([r["without"] for r in rows])
    if kind == "global_brightness":
        return (
            f"| {base} | {kind} | {uses} | {oracle:.0%} | {relies} "
            f"| {rate([r['with'] for r in rows])} "
            f"| {without} | {np.mean([r['effect'] for r in rows]):+.3f} | n/a (no region) "
            f"| {accuracy:.2f} | {np.median([r['seconds'] for r in rows]):.1f} |"
        )
    return (
        f"| {base} | {kind} | {uses} | {oracle:.0%} | {relies} "
        f"| {rate([r['with'] for r in rows])} "
        f"| {without} | {np.mean([r['effect'] for r in rows]):+.3f} "
        f"| {rate([r['salient'] for r in rows])} | {accuracy:.2f} "
        f"| {np.median([r['seconds'] for r in rows]):.1f} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
