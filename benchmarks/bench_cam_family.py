"""CAM family speed and memory, side by side with pytorch-grad-cam, captum and torchcam.

Part 1, gradient methods (and EigenCAM) on torchvision resnet50, random weights, target
``layer4``, 224x224, CPU, one class per sample, batch 1 and 16: each call (object set-up,
maps at input resolution, clean-up) as a multiple of a bare ``torch.no_grad()`` forward
pass, measured in interleaved rounds in one process (median), and our speed-up over
pytorch-grad-cam's same method. Targets: >= 2.5x pytorch-grad-cam, at least as fast as
captum's ``LayerGradCam``.

Part 2, gradient-free methods that re-run the model (ScoreCAM, AblationCAM), batch 1,
224x224, the same batch size for every library (16, pytorch-grad-cam's ScoreCAM default).
pytorch-grad-cam needs one full forward pass per channel, so the default setup is resnet18
``layer4`` (512 channels); resnet50 ``layer4`` (2048 channels) takes about 8 minutes::

    .venv/bin/python benchmarks/bench_cam_family.py --parts 2 \\
        --perturbation resnet50:layer4 --perturbation-methods ScoreCAM

Target: ScoreCAM >= 1.5x pytorch-grad-cam.

Part 3, peak memory of one Grad-CAM call per library (batch 16), each in a fresh
subprocess (Linux): after a warm-up call, the peak RSS during a second call minus the RSS
before it.

Usage::

    .venv/bin/python benchmarks/bench_cam_family.py            # all parts, a few minutes
    .venv/bin/python benchmarks/bench_cam_family.py --parts 1 --batch 16 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

import shortcut_detect.cam as sc

GRADIENT_METHODS = [
    "GradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "EigenGradCAM",
    "EigenCAM",
]
TORCHCAM_NAMES = {
    "GradCAM": "GradCAM",
    "GradCAMPlusPlus": "GradCAMpp",
    "XGradCAM": "XGradCAM",
    "LayerCAM": "LayerCAM",
    "ScoreCAM": "ScoreCAM",
}


def _normalise(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """What every library's result is turned into: (B, H, W) in [0, 1] at input size."""
    maps = F.interpolate(maps.reshape(maps.shape[0], 1, *maps.shape[-2:]), size, mode="bilinear")
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low + 1e-7)).reshape(maps.shape[0], *size)


def ours(
    method: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    classes: list[int],
    layer: str = "layer4",
    batch_size: int | None = None,
) -> Callable:
    targets = [sc.ClassifierOutputTarget(c) for c in classes]
    kwargs = {} if batch_size is None else {"batch_size": batch_size}

    def run() -> object:
        with getattr(sc, method)(model, [model.get_submodule(layer)], **kwargs) as cam:
            return cam(x, targets=targets)

    return run


def pytorch_grad_cam(
    method: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    classes: list[int],
    layer: str = "layer4",
    batch_size: int | None = None,
) -> Callable:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(c) for c in classes]

    def run() -> object:
        kwargs = {"batch_size": batch_size} if batch_size and method == "AblationCAM" else {}
        with (
            contextlib.redirect_stderr(io.StringIO()),  # its progress bars
            getattr(pgc, method)(model, [model.get_submodule(layer)], **kwargs) as cam,
        ):
            if batch_size and method == "ScoreCAM":
                cam.batch_size = batch_size
            return cam(x, targets=targets)

    return run


def captum_gradcam(model: torch.nn.Module, x: torch.Tensor, classes: list[int]) -> Callable:
    from captum.attr import LayerGradCam

    def run() -> object:
        maps = LayerGradCam(model, model.layer4).attribute(
            x, target=classes, relu_attributions=True
        )
        return _normalise(maps.detach(), tuple(x.shape[-2:]))

    return run


def torchcam(
    method: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    classes: list[int],
    layer: str = "layer4",
    batch_size: int = 16,
) -> Callable:
    from torchcam import methods

    cls = getattr(methods, TORCHCAM_NAMES[method])
    gradient_free = method == "ScoreCAM"

    def run() -> object:
        kwargs = {"batch_size": batch_size} if gradient_free else {}
        with cls(model, layer, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
            if gradient_free:
                with torch.inference_mode():
                    scores = model(x)
            else:
                scores = model(x)
            maps = extractor(class_idx=classes, scores=scores)[0]
        model.zero_grad(set_to_none=True)
        return _normalise(maps.detach(), tuple(x.shape[-2:]))

    return run


CLOCK = time.perf_counter


def median_times(cases: dict[str, Callable], rounds: int, warmup: bool = True) -> dict[str, float]:
    if warmup:
        for run in cases.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = CLOCK()
            run()
            times[name].append(CLOCK() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval()


def part_gradient(batch: int, rounds: int, methods: list[str]) -> None:
    model = _model("resnet50")
    x = torch.randn(batch, 3, 224, 224)
    classes = [(7 * i) % 1000 for i in range(batch)]

    def forward() -> None:
        with torch.no_grad():
            model(x)

    cases: dict[str, Callable] = {"forward": forward}
    for method in methods:
        cases[f"ours {method}"] = ours(method, model, x, classes)
        cases[f"pgc {method}"] = pytorch_grad_cam(method, model, x, classes)
        if method in TORCHCAM_NAMES:
            cases[f"torchcam {method}"] = torchcam(method, model, x, classes)
    if "GradCAM" in methods:
        cases["captum GradCAM"] = captum_gradcam(model, x, classes)
    times = median_times(cases, rounds)
    base = times["forward"]
    print(f"\nresnet50, batch {batch}: bare forward {base:.3f} s (median of {rounds})")
    print("| method | ours | pytorch-grad-cam | ours vs pgc throughput | captum | torchcam |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        mine, theirs = times[f"ours {method}"], times[f"pgc {method}"]
        captum = times.get("captum GradCAM") if method == "GradCAM" else None
        torch_cam = times.get(f"torchcam {method}")
        print(
            f"| {method} | {mine / base:.2f}x | {theirs / base:.2f}x | {theirs / mine:.2f}x | "
            + (f"{captum / base:.2f}x" if captum else "-")
            + " | "
            + (f"{torch_cam / base:.2f}x" if torch_cam else "-")
            + " |"
        )


def part_perturbation(setups: list[str], rounds: int, batch_size: int, methods: list[str]) -> None:
    print(
        f"\nbatch 1, 224x224, {batch_size} masked/ablated images per forward pass in every "
        f"library, median of {rounds}"
    )
    print(
        "| model, layer (channels) | method | ours s | pytorch-grad-cam s | ours vs pgc "
        "| torchcam s |"
    )
    print("|---|---|---|---|---|---|")
    for setup in setups:
        model_name, layer = setup.split(":")
        model = _model(model_name)
        x = torch.randn(1, 3, 224, 224)
        classes = [7]
        with torch.no_grad():
            channels = _channels(model, layer, x)
        args = (model, x, classes, layer)
        cases = {}
        for method in methods:
            cases[f"ours {method}"] = ours(method, *args, batch_size=batch_size)
            cases[f"pgc {method}"] = pytorch_grad_cam(method, *args, batch_size=batch_size)
            if method in TORCHCAM_NAMES:
                cases[f"torchcam {method}"] = torchcam(method, *args, batch_size=batch_size)
        times = median_times(cases, rounds, warmup=False)
        for method in methods:
            mine, theirs = times[f"ours {method}"], times[f"pgc {method}"]
            other = times.get(f"torchcam {method}")
            print(
                f"| {model_name} {layer} ({channels}) | {method} | {mine:.2f} | {theirs:.2f} | "
                f"{theirs / mine:.2f}x | " + (f"{other:.2f}" if other else "-") + " |"
            )


def _channels(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    shapes = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, output: shapes.append(output.shape[1])
    )
    try:
        model(x)
    finally:
        handle.remove()
    return shapes[0]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_probe(library: str, batch: int) -> None:
    """Run in a subprocess: peak RSS growth of one (warm) call, printed as JSON."""
    model = _model("resnet50")
    x = torch.randn(batch, 3, 224, 224)
    classes = [(7 * i) % 1000 for i in range(batch)]
    if library == "forward":

        def run() -> None:
            with torch.no_grad():
                model(x)

    elif library == "ours":
        run = ours("GradCAM", model, x, classes)
    elif library == "pytorch-grad-cam":
        run = pytorch_grad_cam("GradCAM", model, x, classes)
    elif library == "captum":
        run = captum_gradcam(model, x, classes)
    else:
        run = torchcam("GradCAM", model, x, classes)
    run()  # one-time initialisation (thread pools, kernel caches) is not the call's cost
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    run()
    print(json.dumps({"library": library, "extra_mib": (_status_kib("VmHWM") - before) / 1024}))


def part_memory(batch: int) -> None:
    print(f"\npeak memory of a Grad-CAM call, resnet50, batch {batch} (fresh process each)")
    print("| library | peak RSS growth during the call |")
    print("|---|---|")
    for library in ("forward", "ours", "pytorch-grad-cam", "captum", "torchcam"):
        result = subprocess.run(
            [sys.executable, __file__, "--memory-probe", library, "--batch", str(batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        extra = json.loads(result.stdout.strip().splitlines()[-1])["extra_mib"]
        label = "bare forward (no_grad)" if library == "forward" else library
        print(f"| {label} | {extra:.0f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=GRADIENT_METHODS)
    parser.add_argument(
        "--perturbation",
        nargs="+",
        default=["resnet18:layer4"],
        help="model:layer setups for part 2 (resnet50:layer4, 2048 channels: ~8 minutes)",
    )
    parser.add_argument("--perturbation-methods", nargs="+", default=["ScoreCAM", "AblationCAM"])
    parser.add_argument("--perturbation-batch-size", type=int, default=16)
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine)",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore")
    if args.memory_probe:
        memory_probe(args.memory_probe, args.batch[0])
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        "CPU, random weights"
    )
    if 1 in args.parts:
        for batch in args.batch:
            part_gradient(batch, args.rounds, args.methods)
    if 2 in args.parts:
        part_perturbation(
            args.perturbation,
            max(1, args.rounds - 1),
            args.perturbation_batch_size,
            args.perturbation_methods,
        )
    if 3 in args.parts:
        part_memory(max(args.batch))


if __name__ == "__main__":
    main()
