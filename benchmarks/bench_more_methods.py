"""Speed of the issue-#15 methods against the library that defines each one.

torchvision ResNet with random weights (``--model resnet18`` or ``resnet50``), target
``layer4``, CPU, one class per sample. Each call (object set-up, maps, clean-up) is timed in
interleaved rounds in one process; the table shows the median seconds per call and our
speed-up (reference time / our time). pytorch-grad-cam methods are compared with
pytorch-grad-cam 1.5.x, CAM, SmoothGradCAMpp, SSCAM and ISCAM with torchcam (whose maps are
taken at layer resolution, then resized like ours). SSCAM and ISCAM run ``--samples`` steps
(default 2: a 512-channel layer already takes ~1000 masked passes per step and image);
``--default-steps`` uses torchcam's defaults instead (35 and 10 steps; minutes per call).
DeepFeatureFactorization is timed with 16 components against pytorch-grad-cam's.

Usage::

    .venv/bin/python benchmarks/bench_more_methods.py --model resnet18 --size 224 --batch 2
    .venv/bin/python benchmarks/bench_more_methods.py --methods SSCAM,ISCAM --batch 1 \
        --rounds 2 --model resnet50 --default-steps
    .venv/bin/python benchmarks/bench_more_methods.py --methods SSCAM,ISCAM --batch 1 \
        --rounds 1 --no-warm-up --model resnet50 --samples 1
    .venv/bin/python benchmarks/bench_more_methods.py --quick   # a tiny smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision

import shortcut_detect.cam as sc


def _pgc_case(name: str, model, oracle, inputs, classes, layers: str = "layer4"):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils import model_targets as ot

    ours_cls, ref_cls = getattr(sc, name), getattr(pgc, name)
    target_cls = "ClassifierOutputReST" if name == "ShapleyCAM" else "ClassifierOutputTarget"
    ours_targets = [getattr(sc, target_cls)(c) for c in classes]
    ref_targets = [getattr(ot, target_cls)(c) for c in classes]

    def pick(m):
        if name == "RefineCAM":
            return [m.layer3, m.layer4]
        return [] if name == "FullGrad" else [getattr(m, layers)]

    def ours():
        with ours_cls(model, pick(model)) as cam:
            if name == "FinerCAM":
                return cam(inputs)
            return cam(inputs, ours_targets)

    def reference():
        cam = ref_cls(oracle, pick(oracle))
        with contextlib.redirect_stdout(io.StringIO()):
            result = cam(inputs) if name == "FinerCAM" else cam(inputs, ref_targets)
        if hasattr(cam, "activations_and_grads"):
            cam.activations_and_grads.release()
        oracle.zero_grad(set_to_none=True)
        return result

    return ours, reference


TORCHCAM_METHODS = ("CAM", "SmoothGradCAMpp", "SSCAM", "ISCAM")


def _torchcam_case(name: str, model, oracle, inputs, classes, samples: int | None = None):
    import torchcam.methods as tcm

    targets = [sc.ClassifierOutputTarget(c) for c in classes]
    options = {} if samples is None or name not in ("SSCAM", "ISCAM") else {"num_samples": samples}

    def ours():
        torch.manual_seed(0)
        with getattr(sc, name)(model, [model.layer4], **options) as cam:
            return cam(inputs, targets)

    def reference():
        size = tuple(inputs.shape[2:])
        torch.manual_seed(0)
        if name == "CAM":
            with tcm.CAM(oracle, "layer4", "fc", input_shape=inputs.shape[1:]) as extractor:
                with torch.inference_mode():
                    oracle(inputs)
                maps = extractor(list(classes))[0]
        else:
            method = getattr(tcm, name)
            with method(oracle, "layer4", input_shape=inputs.shape[1:], **options) as ex:
                scores = oracle(inputs)
                maps = ex(list(classes), scores)[0].detach()
        oracle.zero_grad(set_to_none=True)
        return sc.engine.minmax_normalize(sc.engine.upsample(maps, size)).numpy()

    return ours, reference


def _dff_case(model, oracle, inputs):
    import pytorch_grad_cam as pgc

    def ours():
        with sc.DeepFeatureFactorization(model, model.layer4) as dff:
            return dff(inputs, n_components=16)

    def reference():
        dff = pgc.DeepFeatureFactorization(oracle, oracle.layer4)
        result = dff(inputs, n_components=16)
        dff.activations_and_grads.release()
        return result

    return ours, reference


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time_after_own(fn: Callable[[], object], paired: bool) -> float:
    if paired:
        fn()
    return _time(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "resnet50"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--methods",
        default="FullGrad,ShapleyCAM,FinerCAM,FEM,KPCA_CAM,SegEigenCAM,RandomCAM,RefineCAM,"
        "CAM,SmoothGradCAMpp,SSCAM,ISCAM,DeepFeatureFactorization",
    )
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--samples", type=int, default=2, help="SSCAM/ISCAM steps (default 2)")
    steps.add_argument(
        "--default-steps",
        action="store_true",
        help="SSCAM/ISCAM with torchcam's default steps (35 and 10)",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the untimed first call of each library (for calls of minutes)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 64x64, batch 1, 1 round")
    args = parser.parse_args()
    if args.default_steps:
        args.samples = None
    if args.quick:
        args.size, args.batch, args.rounds = 64, 1, 1
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    oracle = getattr(torchvision.models, args.model)().eval()
    oracle.load_state_dict(model.state_dict())
    inputs = torch.randn(args.batch, 3, args.size, args.size)
    classes = [int(c) for c in torch.arange(args.batch) * 7 % 1000]
    print(
        f"{args.model} {args.size}x{args.size}, batch {args.batch}, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads"
        + (
            f", SSCAM/ISCAM {args.samples} steps"
            if args.samples
            else ", SSCAM/ISCAM torchcam's default steps (35/10)"
        )
    )
    print("| method | reference | ours (s) | reference (s) | speed-up |")
    print("|---|---|---|---|---|")
    for name in args.methods.split(","):
        torchcam_method = name in TORCHCAM_METHODS
        if torchcam_method:
            ours, reference = _torchcam_case(name, model, oracle, inputs, classes, args.samples)
        elif name == "DeepFeatureFactorization":
            ours, reference = _dff_case(model, oracle, inputs)
        else:
            ours, reference = _pgc_case(name, model, oracle, inputs, classes)
        warm_up = float("inf") if args.no_warm_up else _time(ours) + _time(reference)
        # Short calls are timed right after a call of the same library: a call that follows
        # the other library's pays for its left-overs (numpy's BLAS threads spin for a while
        # after pytorch-grad-cam's SVDs and take one of the two cores from the next forward).
        paired = warm_up < 2.0
        mine, theirs = [], []
        for _ in range(args.rounds):
            mine.append(_time_after_own(ours, paired))
            theirs.append(_time_after_own(reference, paired))
        ours_s, ref_s = statistics.median(mine), statistics.median(theirs)
        library = "torchcam" if torchcam_method else "pytorch-grad-cam"
        print(f"| {name} | {library} | {ours_s:.3f} | {ref_s:.3f} | {ref_s / ours_s:.2f}x |")


if __name__ == "__main__":
    main()
