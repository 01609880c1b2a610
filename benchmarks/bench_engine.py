"""Engine speed: Grad-CAM and two heads from one forward, as multiples of a bare forward pass.

Times, side by side in one run, on torchvision resnet50 (random weights, CPU):

* a bare ``torch.no_grad()`` forward pass,
* ``shortcut_detect.cam.GradCAM`` (target ``layer4``, one class per sample),
* ``GradCAMHeatmapGenerator.generate_heatmap``,
* the same network with two heads (a tuple output) and
  ``GradCAMHeatmapGenerator.generate_attention_overlap`` (both heads' maps from one forward),
  against the bare forward pass of that two-head network.

Each case runs once to warm up, then ``--rounds`` times interleaved with the others; the
median is reported. Targets: Grad-CAM <= 1.1x the forward pass, two heads <= 1.25x.

Usage::

    .venv/bin/python benchmarks/bench_engine.py               # batch 16 and 1, 224x224
    .venv/bin/python benchmarks/bench_engine.py --batch 16 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from shortcut_detect.cam import ClassifierOutputTarget, GradCAM
from shortcut_detect.gradcam import GradCAMHeatmapGenerator


class TwoHeads(nn.Module):
    """resnet50 features with a disease head and an attribute head (tuple output)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        features = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.disease = nn.Linear(features, 5)
        self.attribute = nn.Linear(features, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.backbone(x)
        return self.disease(pooled), self.attribute(pooled)


CLOCK = time.perf_counter


def median_times(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    for run in cases.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = CLOCK()
            run()
            times[name].append(CLOCK() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(batch: int, size: int, rounds: int) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    two_heads = TwoHeads(torchvision.models.resnet50()).eval()
    x = torch.randn(batch, 3, size, size)
    classes = [ClassifierOutputTarget(i % 1000) for i in range(batch)]
    cam = GradCAM(model, [model.layer4])
    gen = GradCAMHeatmapGenerator(model, "layer4")
    gen_two = GradCAMHeatmapGenerator(two_heads, "backbone.layer4")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def forward_two() -> None:
        with torch.no_grad():
            two_heads(x)

    cases = {
        "forward (no_grad)": forward,
        "GradCAM (cam.GradCAM)": lambda: cam(x, targets=classes),
        "generate_heatmap": lambda: gen.generate_heatmap(x, target_index=list(range(batch))),
        "two-head forward (no_grad)": forward_two,
        "two heads, one forward": lambda: gen_two.generate_attention_overlap(x),
    }
    times = median_times(cases, rounds)
    base, base_two = times["forward (no_grad)"], times["two-head forward (no_grad)"]
    rows = []
    for name, seconds in times.items():
        reference = base_two if "two" in name else base
        rows.append((name, seconds, seconds / reference))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        "resnet50 random weights, "
        f"{args.size}x{args.size}, median of {args.rounds} interleaved rounds"
    )
    for batch in args.batch:
        print(f"\nbatch {batch}")
        print(f"| {'case':30s} | {'median s':>9s} | {'x forward':>9s} |")
        print(f"|{'-' * 32}|{'-' * 11}|{'-' * 11}|")
        for name, seconds, ratio in bench(batch, args.size, args.rounds):
            print(f"| {name:30s} | {seconds:9.3f} | {ratio:8.2f}x |")


if __name__ == "__main__":
    main()
