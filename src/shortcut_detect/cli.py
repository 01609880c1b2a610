"""The ``shortcut-detect`` command (also ``python -m shortcut_detect``).

Sub-commands: ``demo``, ``audit``, ``explain``, ``layers``, ``report``, ``app``. Errors are
printed as one line plus a hint (no traceback unless ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

import shortcut_detect.app as app_module
from shortcut_detect import __version__
from shortcut_detect.analysis.activations import activation_grid
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.audit.demo import run_demo
from shortcut_detect.audit.interventions import try_intervention_stage
from shortcut_detect.audit.nifti_export import export_audit_nifti
from shortcut_detect.audit.pipeline import AuditError, AuditOptions, run_audit
from shortcut_detect.audit.ray_executor import import_ray
from shortcut_detect.audit.report import build_report
from shortcut_detect.audit.store import AuditStore, StoreError, unfinished_shards_text
from shortcut_detect.cam import explain_method
from shortcut_detect.cam.image import apply_colormap
from shortcut_detect.cam.layers import spatial_layers
from shortcut_detect.common.device import DeviceUnavailableError, resolve_device
from shortcut_detect.common.modes import eval_mode
from shortcut_detect.common.serialization import json_default
from shortcut_detect.data.images import (
    DEFAULT_MAX_PIXELS,
    SLICE_PLANES,
    ImageLoadError,
    ManifestError,
    common_image_size,
    is_medical_name,
    load_image,
    read_image_set,
    slice_count,
    volume_slices,
)
from shortcut_detect.data.medical import (
    describe_window_spec,
    is_dicom_file,
    read_medical,
    save_heatmap_nifti,
)
from shortcut_detect.data.transforms import window_text
from shortcut_detect.gradcam import (
    DEFAULT_HEAD_MAPPINGS,
    GradCAMHeatmapGenerator,
    class_probabilities,
    select_head,
)
from shortcut_detect.lime import explain_lime
from shortcut_detect.models import (
    LoadedModel,
    ModelLoadError,
    ModelOptions,
    UnknownClassError,
    UnknownInputSizeError,
    class_index,
    load_model,
)
from shortcut_detect.viz import overlay_heatmap
from shortcut_detect.viz_embeddings import plot_activation_grid
from shortcut_detect.volume_explain import explain_volumes

__all__ = ["as_flags", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # also argparse's status for bad arguments
EXIT_SHORTCUT = 3
EXIT_INTERRUPTED = 130
LIME = "lime"  # the explain method that is not a CAM method


class CommandError(Exception):
    """An error to show as one line and a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _print(message: str = "") -> None:
    print(message, flush=True)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _StderrHandler(logging.Handler):
    """Plain messages to the current ``sys.stderr`` (looked up per message, as ``_log`` does)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _log(self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def _progress_messages() -> Iterator[None]:
    """While a command runs, INFO messages of the ``shortcut_detect`` loggers go to stderr.

    The logger stops propagating meanwhile, so a root handler of an embedding program does
    not print the same message a second time.
    """
    logger = logging.getLogger("shortcut_detect")
    handler = _StderrHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# -- argument parsing -----------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected numbers like 0.5,0.5,0.5, got {text!r}"
        ) from error


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.lower().replace("x", " ").replace(",", " ").split()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected a size like 224, 224,192 or 32,64,64 (3-D), got {text!r}"
        ) from error
    if not 1 <= len(values) <= 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a size like 224, 224,192 or 32,64,64 (3-D), got {text!r}"
        )
    return values


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parent


MODEL_HELP = (
    "demo[:shortcut|:clean], torchvision:NAME, timm:NAME, package.module:factory (your code: "
    "run from its folder or set PYTHONPATH), or a pickled full model file (with "
    "--trust-pickle). TorchScript files cannot be explained: they take no layer hooks"
)

# Options that take several numbers: "0.5,0.5,0.5" and "0.5 0.5 0.5" both work, and so does
# a negative first number ("--window -600,1500", a CT lung window).
_NUMBER_LIST_OPTIONS = ("--mean", "--std", "--resize", "--crop", "--window")
_NUMBER = re.compile(r"^([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?,?)+$")


def _join_number_lists(argv: Sequence[str]) -> list[str]:
    """Merge the numbers after ``--mean``/``--std``/``--resize``/``--crop``/``--window`` into
    one ``--option=values`` token.

    argparse cannot take "one to three numbers" without also swallowing a positional
    argument that follows (``explain --mean 0.5 0.5 0.5 cat.png``), so the values are
    joined before parsing: only tokens that are numbers are taken.
    """
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        joined.append(token)
        index += 1
        if token in _NUMBER_LIST_OPTIONS:
            values = []
            while index < len(argv) and _NUMBER.match(argv[index]):
                values.append(argv[index].rstrip(","))
                index += 1
            if values:
                # One "--option=values" token: argparse takes "-600,1500" for an option name.
                joined[-1] = f"{token}={','.join(values)}"
    return joined


def _model_options(required: bool = True) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument("--model", required=required, metavar="SPEC", help=MODEL_HELP)
    group.add_argument(
        "--weights",
        metavar="W",
        help="DEFAULT (published weights; needs the internet once) or a state dict file "
        "(.pt/.pth/.safetensors)",
    )
    group.add_argument("--num-classes", type=int, metavar="N", help="number of model outputs")
    group.add_argument(
        "--spatial-dims",
        type=int,
        choices=(2, 3),
        help="monai:NAME networks: 2-D or 3-D (default 3); 3-D models take volumes",
    )
    group.add_argument(
        "--in-channels",
        type=int,
        metavar="C",
        help="monai:NAME networks: input channels (default 1)",
    )
    group.add_argument(
        "--classes", metavar="FILE", help="class names in output order (one per line, or JSON)"
    )
    group.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a pickled full model (runs code from the file)",
    )
    group.add_argument(
        "--device",
        help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu; asking for a "
        "device this machine lacks is an error)",
    )
    prep = parent.add_argument_group("preprocessing (default: from the model's weights)")
    prep.add_argument("--preset", choices=["imagenet", "none"], help="a standard recipe")
    prep.add_argument(
        "--resize",
        type=_ints,
        metavar="N",
        help="resize images to N (or H,W; for a 3-D model D,H,W or N for a cube); without it, "
        "a 2-D model with no known recipe gets each image at its own size",
    )
    prep.add_argument(
        "--crop",
        type=_ints,
        metavar="N",
        help="with --resize: resize the shorter side, centre-crop N",
    )
    prep.add_argument(
        "--mean",
        type=_floats,
        metavar="M",
        help="normalisation mean, e.g. 0.5,0.5,0.5 or 0.5 0.5 0.5",
    )
    prep.add_argument(
        "--std", type=_floats, metavar="S", help="normalisation std, e.g. 0.5,0.5,0.5"
    )
    return parent


def _data_options(
    parser: argparse.ArgumentParser, *, required: bool, max_pixels_default: int
) -> argparse._ArgumentGroup:
    """The "data" group: ``--data``, ``--group-column``, ``--max-pixels`` (returned to extend)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=required,
        metavar="D",
        help="image folder (one sub-folder per class) or CSV/Parquet manifest with path,label"
        + ("" if required else " (default: the audit's images with --audit, else the demo's)"),
    )
    group.add_argument("--group-column", metavar="G", help="manifest column with the group")
    group.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help=f"refuse images with more pixels than this (default {max_pixels_default:,})",
    )
    return group


def _medical_options(parser: argparse.ArgumentParser, *, export: bool = False) -> None:
    """The "medical images" group: ``--window``, ``--slices`` (and ``--export-nifti``)."""
    group = parser.add_argument_group("medical images (DICOM, NIfTI, 16-bit)")
    group.add_argument(
        "--window",
        metavar="W",
        help="intensity window: 'auto' (the file's window, else percentiles 0.5-99.5), "
        "'full' (min..max) or CENTER,WIDTH in the image's units, e.g. 40,400 for CT soft "
        "tissue (default: auto for DICOM/NIfTI, full 16-bit range for 16-bit PNG/TIFF)",
    )
    group.add_argument(
        "--slices",
        choices=SLICE_PLANES,
        help="feed 3-D volumes (NIfTI) to a 2-D model one slice of this plane at a time",
    )
    if export:
        group.add_argument(
            "--export-nifti",
            action="store_true",
            help="also write each heatmap as NIfTI aligned with the source (for 3D Slicer, "
            "ITK-SNAP); volumes read with --slices get one 3-D heatmap",
        )


def _layer_option(group: argparse._ActionsContainer, default: str = "the last spatial one") -> None:
    group.add_argument(
        "--layer",
        metavar="L",
        help=f"layer to explain (default: {default}; list them with `shortcut-detect layers`)",
    )


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("analysis")
    group.add_argument(
        "--permutations",
        type=int,
        default=1000,
        metavar="N",
        help="permutations of the group-comparison test (default 1000)",
    )
    group.add_argument(
        "--max-analysis-samples",
        type=int,
        default=5000,
        metavar="N",
        help="heatmaps used by the group comparison and SpRAy (default 5000)",
    )
    group.add_argument(
        "--embedding-samples",
        type=int,
        default=1000,
        metavar="N",
        help="images re-read for the embedding tests (default 1000; 0 skips them)",
    )
    group.add_argument("--seed", type=int, default=0, help="seed of subsampling and tests")
    group.add_argument(
        "--fail-on-shortcut",
        action="store_true",
        help=f"exit with status {EXIT_SHORTCUT} when a shortcut is suspected (for CI gates)",
    )


AUDIT_EXAMPLES = """
examples:
  shortcut-detect audit --model demo --data demo_output/data/manifest.csv \\
      --group-column group --mask-column mask --out audit_demo
  shortcut-detect audit --model torchvision:resnet18 --weights model.pt --classes classes.txt \\
      --data xrays/ --out audit_xrays --fail-on-shortcut
  # four workers, one shard each, then merge and report:
  shortcut-detect audit ... --num-shards 4 --shard-index 0 --out audit_big
  shortcut-detect report audit_big

The first runs after `shortcut-detect demo` (which writes demo_output/); the second needs
a state dict model.pt, class names in classes.txt and an image folder xrays/CLASS/*.png.
A killed or interrupted run continues where it stopped when run again with the same command.
Exit status: 0 done, 1 error, 2 device not available, 3 shortcut suspected (with
--fail-on-shortcut), 130 interrupted.
"""

MAIN_EPILOG = """
examples:
  shortcut-detect demo                      # offline demo: two models, two reports
  shortcut-detect audit --model M --data D --out DIR
  shortcut-detect explain cat.png --model torchvision:resnet50 --weights DEFAULT
  shortcut-detect layers --model torchvision:resnet50
  shortcut-detect report DIR                # rebuild a report from an audit store
  shortcut-detect app                       # the explorer on the built-in demo, offline
  shortcut-detect app --audit DIR           # browse an audit in the web app

Run `shortcut-detect COMMAND --help` for the options of a command.
"""

_Commands = Any  # argparse's private _SubParsersAction


def _add_demo(commands: _Commands, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        formatter_class=_Formatter,
        help="offline demo: audit a shortcut model and a clean model",
        description="Build the planted-shortcut data, train (or reuse cached) shortcut and clean "
        "models, audit both through the real pipeline, and write two reports.",
        epilog="example:\n  shortcut-detect demo --out demo_output",
    )
    demo.add_argument("--out", default="demo_output", help="output folder (default ./demo_output)")
    demo.add_argument("--num-workers", type=int, default=2, help="image decoding workers")
    demo.add_argument("--samples", type=int, default=400, help="test images (default 400)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_audit(commands: _Commands, common: argparse.ArgumentParser, max_pixels: int) -> None:
    audit = commands.add_parser(
        "audit",
        parents=[common, _model_options()],
        formatter_class=_Formatter,
        help="audit a model on an image set and write a report",
        description="Explain every image of a data set, store per-sample results and heatmaps "
        "incrementally, and analyse them into summary.json and report.html.",
        epilog=AUDIT_EXAMPLES,
    )
    data = _data_options(audit, required=True, max_pixels_default=max_pixels)
    data.add_argument(
        "--mask-column",
        metavar="K",
        help="manifest column with the suspected shortcut region: mask image path or x0,y0,x1,y1",
    )
    data.add_argument("--path-column", default="path", metavar="C", help="default: path")
    data.add_argument("--label-column", default="label", metavar="C", help="default: label")
    run = audit.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="audit directory (store, report)")
    _layer_option(run)
    run.add_argument("--method", default="gradcam", help="CAM method (default gradcam)")
    run.add_argument(
        "--target",
        default="predicted",
        choices=["predicted", "label"],
        help="class to explain: the predicted one (default) or the true label",
    )
    run.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    run.add_argument(
        "--num-workers",
        type=int,
        default=2,
        metavar="N",
        help="image decoding processes (default 2; 0 decodes in the main process)",
    )
    run.add_argument(
        "--shard-index",
        type=int,
        metavar="I",
        help="this worker's shard (default: $SLURM_ARRAY_TASK_ID in a SLURM job array, else 0)",
    )
    run.add_argument(
        "--num-shards",
        type=int,
        metavar="N",
        help="number of shards (default: $SLURM_ARRAY_TASK_COUNT in a job array, else 1)",
    )
    _executor_options(run)
    run.add_argument(
        "--flush-rows",
        type=int,
        default=256,
        metavar="N",
        help="rows per committed chunk (default 256): at most this many are redone after a kill",
    )
    run.add_argument("--overwrite", action="store_true", help="discard an existing audit in --out")
    run.add_argument(
        "--no-report",
        action="store_true",
        help="only fill the store; analyse later with `shortcut-detect report DIR`",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    _medical_options(audit, export=True)
    _analysis_options(audit)
    _intervention_options(audit)


def _executor_options(run: argparse._ArgumentGroup) -> None:
    run.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where the model passes run: this process (default) or a Ray cluster "
        "(needs the [ray] extra)",
    )
    run.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --executor ray: the cluster to join (host:port, or auto); default: start a "
        "local Ray instance on this machine's cores",
    )
    run.add_argument(
        "--ray-actors",
        type=int,
        metavar="N",
        help="with --executor ray: model actors (default: one per GPU, else 3/4 of the CPUs)",
    )


def _shards(args: argparse.Namespace, environ: Any = os.environ) -> tuple[int, int]:
    """``(shard_index, num_shards)``: as given, else from a SLURM job array, else ``(0, 1)``."""
    task, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
    from_slurm = task is not None and count is not None and args.num_shards is None
    if from_slurm and args.shard_index is None:
        try:
            # Array indices may start above 0 (--array=1-8): count from the lowest.
            return int(task) - int(environ.get("SLURM_ARRAY_TASK_MIN", 0)), int(count)
        except ValueError as error:
            raise CommandError(
                f"SLURM_ARRAY_TASK_ID={task} / SLURM_ARRAY_TASK_COUNT={count} are not numbers",
                "give --shard-index and --num-shards",
            ) from error
    return (
        0 if args.shard_index is None else args.shard_index,
        1 if args.num_shards is None else args.num_shards,
    )


def _intervention_options(parser: argparse.ArgumentParser) -> None:
    interventions = parser.add_argument_group("interventions")
    interventions.add_argument(
        "--intervention-samples",
        type=int,
        default=200,
        metavar="N",
        help="images (stratified subsample) on which the given mask regions and the regions "
        "discovered from the heatmaps are removed and compared with control regions, to test "
        "whether the model relies on them (default 200; 0 turns the stage off)",
    )
    interventions.add_argument(
        "--no-interventions",
        action="store_const",
        const=0,
        dest="intervention_samples",
        help="skip the intervention stage (same as --intervention-samples 0)",
    )


def _add_explain(commands: _Commands, common: argparse.ArgumentParser) -> None:
    explain = commands.add_parser(
        "explain",
        parents=[common, _model_options()],
        formatter_class=_Formatter,
        help="heatmaps and top-5 predictions for single images",
        description="Write an overlay and a heatmap for each image, with the top-5 predictions.",
        epilog=(
            "examples:\n  shortcut-detect explain a.png b.jpg --model demo --out explained\n"
            "  shortcut-detect explain a.png --model demo --method lime --lime-samples 500"
        ),
    )
    explain.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files; for a 3-D model, volumes (NIfTI files, DICOM series folders): "
        "each gets its sagittal, coronal and axial slices through the heatmap's peak",
    )
    _layer_option(explain)
    explain.add_argument(
        "--method",
        default="gradcam",
        help="CAM method, or lime for LIME superpixels (default gradcam)",
    )
    explain.add_argument("--target", metavar="C", help="class index or name (default: predicted)")
    explain.add_argument(
        "--lime-samples",
        type=int,
        default=1000,
        metavar="N",
        help="--method lime: perturbed images scored per image (default 1000)",
    )
    explain.add_argument(
        "--seed", type=int, default=0, help="--method lime: seed of the perturbations (default 0)"
    )
    explain.add_argument(
        "--activations",
        type=int,
        default=0,
        metavar="K",
        help="also write the layer's K strongest channels and their mean, without gradient "
        "weighting, next to the heatmap (STEM_activations.png; default 0: off)",
    )
    explain.add_argument(
        "--out", default="explanations", metavar="DIR", help="default ./explanations"
    )
    explain.add_argument("--top-k", type=int, default=5, metavar="K", help="predictions to list")
    _medical_options(explain, export=True)


def _add_layers(commands: _Commands, common: argparse.ArgumentParser) -> None:
    layers = commands.add_parser(
        "layers",
        parents=[common, _model_options()],
        formatter_class=_Formatter,
        help="list the layers Grad-CAM can explain",
        description="Candidate target layers with their output shapes, from one dry forward pass; "
        "the default is marked with *. Without a known input size (no recipe, no --resize) "
        "the modules are listed without shapes.",
        epilog="examples:\n  shortcut-detect layers --model torchvision:resnet50\n"
        "  shortcut-detect layers --model mypkg.models:net",
    )
    layers.add_argument(
        "--all", action="store_true", help="list every spatial layer, not only blocks"
    )


def _add_report(commands: _Commands, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser(
        "report",
        parents=[common],
        formatter_class=_Formatter,
        help="rebuild summary.json and report.html from an audit directory",
        description="Merge the shards of a finished or interrupted audit and write its report.",
        epilog="example:\n  shortcut-detect report audit_out",
    )
    report.add_argument("directory", metavar="DIR", help="the audit's --out directory")
    report.add_argument(
        "--no-model",
        action="store_true",
        help="do not reload the model (skips the embedding and intervention tests)",
    )
    report.add_argument("--num-workers", type=int, default=2, metavar="N")
    report.add_argument("--batch-size", type=int, default=32, metavar="N")
    _analysis_options(report)
    # The stage's results are kept in the store: with the audit's settings it reuses them.
    _intervention_options(report)


def _add_app(commands: _Commands, common: argparse.ArgumentParser) -> None:
    app = commands.add_parser(
        "app",
        parents=[common, _model_options(required=False)],
        formatter_class=_Formatter,
        help="the interactive explorer (web app)",
        description="Start the web app: with no options on the built-in demo (its two models and "
        "test images, offline); on a model (--model) and its data (--data); or on a finished "
        "audit (--audit DIR: its model, layer and images unless given).",
        epilog="examples:\n  shortcut-detect app\n  shortcut-detect app --model M --data D\n"
        "  shortcut-detect app --audit audit_out",
    )
    # The app's defaults are stated here, not imported: building the parser must not load
    # the app package (tests check these against shortcut_detect.app.inputs).
    app_data = _data_options(app, required=False, max_pixels_default=40_000_000)
    app_data.add_argument(
        "--audit",
        metavar="DIR",
        help="an audit directory to browse (its model, layer and images unless given)",
    )
    explorer = app.add_argument_group("explorer")
    _layer_option(explorer, default="the audit's with --audit, else the last spatial one")
    explorer.add_argument(
        "--cache-size", type=int, metavar="N", help="heatmaps kept in memory (default 256)"
    )
    explorer.add_argument(
        "--window",
        metavar="W",
        help="a 3-D model's volumes: intensity window 'auto' (default: the file's, else "
        "percentiles 0.5-99.5), 'full' or CENTER,WIDTH, as for the audit",
    )
    explorer.add_argument(
        "--max-upload-mb",
        type=float,
        metavar="MB",
        help="refuse larger uploaded files (default 50)",
    )
    server = app.add_argument_group("server")
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
        "page and the model to the network)",
    )
    server.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    login = server.add_mutually_exclusive_group()
    login.add_argument(
        "--auth",
        metavar="USER:PASS",
        help="ask for this user and password (default: the SHORTCUT_DETECT_AUTH environment "
        "variable; required when --host is not 127.0.0.1)",
    )
    login.add_argument(
        "--no-auth",
        action="store_true",
        help="serve on a non-loopback --host without a password",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``shortcut-detect``."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="shortcut-detect",
        description="See where an image model looks and find the shortcuts it learned.",
        epilog=MAIN_EPILOG,
        formatter_class=_Formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"shortcut-detect {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(commands, common)
    _add_audit(commands, common, DEFAULT_MAX_PIXELS)
    _add_explain(commands, common)
    _add_layers(commands, common)
    _add_report(commands, common)
    _add_app(commands, common)
    return parser


# -- commands ----------------------------------------------------------------------------------


def _print_verdict(summary: dict[str, Any], title: str = "") -> None:
    verdict = summary["verdict"]
    label = "SHORTCUT SUSPECTED" if verdict["shortcut_suspected"] else "no shortcut suspected"
    _print(f"{title}Verdict: {verdict['risk']} risk, {label}.")
    _print(f"  {verdict['headline']}")
    for reason in verdict["reasons"][:4]:
        _print(textwrap.fill(reason, width=100, initial_indent="  - ", subsequent_indent="    "))


def _data_image_size(args: argparse.Namespace) -> Callable[[], tuple[int, int]]:
    """The size the images of ``--data`` share (read from file headers, only when needed)."""

    def read() -> tuple[int, int]:
        image_set = read_image_set(
            args.data,
            path_column=getattr(args, "path_column", "path"),
            label_column=getattr(args, "label_column", "label"),
            group_column=args.group_column,
            slices=getattr(args, "slices", None),
        )
        return common_image_size(record.path for record in image_set.records)

    return read


def _audit_options(args: argparse.Namespace, model: ModelOptions) -> AuditOptions:
    shard_index, num_shards = _shards(args)
    return AuditOptions(
        model=model.spec,
        data=args.data,
        out=args.out,
        layer=args.layer,
        method=args.method,
        target=args.target,
        path_column=args.path_column,
        label_column=args.label_column,
        group_column=args.group_column,
        mask_column=args.mask_column,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        shard_index=shard_index,
        num_shards=num_shards,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_actors=args.ray_actors,
        flush_rows=args.flush_rows,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        n_permutations=args.permutations,
        max_analysis_samples=args.max_analysis_samples,
        embedding_samples=args.embedding_samples,
        intervention_samples=args.intervention_samples,
        seed=args.seed,
        report=not args.no_report,
        window=args.window,
        slices=args.slices,
        **model.load_kwargs(),
    )


def _finish_run(run: Any, fail_on_shortcut: bool) -> int:
    rate = run.images_per_second
    rate_text = f" ({rate:.1f} images/s)" if run.processed and rate == rate else ""
    _print(
        f"Audited {run.processed} images in {run.seconds:.1f} s{rate_text}"
        + (f", {run.already_done} done by an earlier run" if run.already_done else "")
        + (f"; {run.failed} could not be read (listed in the report)" if run.failed else "")
        + "."
    )
    for note in run.notes:
        _print(note)
    if run.summary is None:
        return EXIT_OK
    return _report_outcome(run.summary, run.report_path, fail_on_shortcut)


def _report_outcome(summary: dict[str, Any], path: Path, fail_on_shortcut: bool) -> int:
    """Print the verdict and where the report is; the exit status it calls for."""
    _print_verdict(summary)
    _print(f"Report:  {path}")
    _print(f"Summary: {path.with_name('summary.json')}")
    if fail_on_shortcut and summary["verdict"]["shortcut_suspected"]:
        return EXIT_SHORTCUT
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    model = ModelOptions.from_args(args)
    # Loaded here, not in run_audit, so a model fed images at their own size learns that
    # size from the data's file headers, and mixed sizes stop the run before it starts.
    options = _audit_options(args, model)
    if options.executor == "ray":
        import_ray()  # a missing extra fails before the model loads
    loaded = model.load(image_size=_data_image_size(args))
    run = run_audit(options, loaded=loaded)
    if args.export_nifti:
        _export_audit_nifti(args.out)
    return _finish_run(run, args.fail_on_shortcut)


def _export_audit_nifti(directory: str) -> None:
    try:
        index = export_audit_nifti(directory)
    except ValueError as error:
        raise CommandError(str(error)) from error
    _print(f"NIfTI heatmaps: {index.parent} (listed in {index.name})")


def cmd_report(args: argparse.Namespace) -> int:
    store = AuditStore(args.directory)
    status = store.shard_status()
    complete = not status["unfinished"]
    wants_embeddings = bool(store.config.get("has_groups")) and args.embedding_samples > 0
    wants_interventions = complete and args.intervention_samples > 0
    loaded = None
    if not args.no_model and (wants_embeddings or wants_interventions):
        options = dict(store.config.get("load_options", {}))
        try:
            loaded = load_model(
                store.config["model"], image_size=tuple(store.input_size), **options
            )
        except Exception as error:  # the report is still useful without the model's tests
            _log(
                f"note: could not reload the model for the embedding and intervention tests "
                f"({error})"
            )
    if not complete:
        _log(
            f"note: {unfinished_shards_text(status['unfinished'], status['expected'])}; "
            "the report covers the samples stored so far"
        )
    if loaded is not None and wants_interventions:
        failure = try_intervention_stage(
            store,
            loaded,
            n_samples=args.intervention_samples,
            seed=args.seed,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        if failure:
            _log(f"note: {failure}")
    summary, path = build_report(
        store,
        loaded=loaded if wants_embeddings else None,
        n_permutations=args.permutations,
        max_analysis_samples=args.max_analysis_samples,
        embedding_samples=args.embedding_samples,
        seed=args.seed,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    return _report_outcome(summary, path, args.fail_on_shortcut)


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    results = run_demo(
        args.out,
        n_samples=args.samples,
        num_workers=args.num_workers,
        progress=False if args.no_progress else None,
    )
    _print("")
    for name, run in results.items():
        _print_verdict(run.summary, title=f"[{name} model] ")
        _print(f"  report: {run.report_path}")
        _print("")
    _print(
        f"Demo finished in {time.perf_counter() - started:.0f} s. Open the reports in a browser."
    )
    return EXIT_OK


def _layers_hint(spec: str) -> str:
    return f"list the layers with `shortcut-detect layers --model {spec}`"


def _explainable(args: argparse.Namespace, sources: list[str]) -> tuple[LoadedModel, str | None]:
    """The model of ``explain`` and the layer to explain (``None`` for LIME, which needs no
    layer), checked before any work."""
    if args.activations < 0:
        raise CommandError(f"--activations must be 0 (off) or more, got {args.activations}")
    lime = args.method.lower() == LIME
    if lime and args.lime_samples < 2:
        raise CommandError(f"--lime-samples must be at least 2, got {args.lime_samples}")
    if not lime:
        try:
            explain_method(args.method)
        except ValueError as error:
            raise CommandError(f"{error} (or lime)") from error
    loaded = ModelOptions.from_args(args).load(image_size=lambda: common_image_size(sources))
    if loaded.spatial_dims == 3:
        _check_volume_explain(args)
    if lime:
        if args.export_nifti and loaded.transform.crop:
            raise CommandError(
                "--export-nifti maps heatmaps back onto the source's voxels, which a centre "
                "crop makes impossible",
                "use --resize N without --crop (or --preset none) for this model",
            )
        return loaded, None
    if loaded.is_torchscript:
        raise CommandError(
            "Grad-CAM needs layer hooks, which TorchScript models do not support",
            "load the architecture from Python (--model package.module:factory) with the "
            "state dict as --weights",
        )
    layer = args.layer or loaded.default_layer
    if layer is None:
        raise CommandError("No spatial layer found to explain", _layers_hint(args.model))
    if args.export_nifti and loaded.transform.crop:
        raise CommandError(
            "--export-nifti maps heatmaps back onto the source's voxels, which a centre crop "
            "makes impossible",
            "use --resize N without --crop (or --preset none) for this model",
        )
    return loaded, layer


def _check_volume_explain(args: argparse.Namespace) -> None:
    """What ``explain`` cannot do for a 3-D model, refused before any work."""
    refused = [
        (args.method.lower() == LIME, "--method lime (superpixels are 2-D)"),
        (bool(args.slices), "--slices (a 3-D model takes whole volumes)"),
        (args.activations > 0, "--activations (activation tiles are 2-D)"),
    ]
    for given, what in refused:
        if given:
            raise CommandError(
                f"--model {args.model} takes volumes: {what} is for 2-D models",
                "drop the option; explain writes each volume's slices through the heatmap's "
                "peak (and --export-nifti the 3-D heatmap)",
            )
    for text in args.images:
        if not (Path(text).is_dir() or is_medical_name(text) or is_dicom_file(text)):
            raise CommandError(
                f"{text} is not a volume, and --model {args.model} takes volumes",
                "give NIfTI files (.nii, .nii.gz), DICOM series folders or multi-frame DICOM "
                "volumes; 2-D images need a 2-D model",
            )


def _explain_inputs(args: argparse.Namespace) -> list[tuple[Path, str, str]]:
    """``(file, stem, source)`` per explained image: the file the user gave, the output name
    stem and what :func:`load_image` reads (the file, or ``FILE#PLANE=INDEX`` per slice of a
    volume with ``--slices``)."""
    inputs = []
    for text in args.images:
        path = Path(text)
        stem = path.name[: -len(".nii.gz")] if text.lower().endswith(".nii.gz") else path.stem
        count = slice_count(path, args.slices) if args.slices else None
        if count is None:
            inputs.append((path, stem, text))
        else:
            inputs.extend(
                (path, f"{stem}_{args.slices}{i:03d}", f"{text}#{args.slices}={i}")
                for i in range(count)
            )
    return inputs


def _write_explanation(
    out: Path, stem: str, display: np.ndarray, heat: np.ndarray, raw: np.ndarray
) -> dict[str, str]:
    overlay_path, heatmap_path = out / f"{stem}_overlay.png", out / f"{stem}_heatmap.png"
    Image.fromarray(overlay_heatmap(display, heat, alpha=0.45)).save(overlay_path)
    Image.fromarray(np.uint8(apply_colormap(heat) * 255 + 0.5)).save(heatmap_path)
    np.save(out / f"{stem}_heatmap.npy", raw.astype(np.float32))
    return {"overlay": str(overlay_path), "heatmap": str(heatmap_path)}


def _export_nifti(
    out: Path,
    inputs: list[tuple[Path, str, str]],
    heatmaps: np.ndarray,
    results: list[dict[str, Any]],
    args: argparse.Namespace,
) -> list[str]:
    """Write the heatmaps of DICOM/NIfTI inputs as NIfTI aligned with their sources: one 3-D
    map per volume read slice-wise, one 2-D map per image with geometry. Adds ``nifti`` (and
    ``pixel_spacing_mm``) to the rows of ``results``; returns the files written."""
    written: list[str] = []
    volumes: dict[Path, list[int]] = {}
    for i, (path, _, source) in enumerate(inputs):
        if source != str(path):
            volumes.setdefault(path, []).append(i)
        elif is_medical_name(path):
            image = read_medical(path, window=args.window or "auto")
            results[i]["pixel_spacing_mm"] = (
                None if image.spacing is None else [float(v) for v in image.spacing]
            )
            if image.affine is None:
                results[i]["nifti"] = None
                continue
            target = out / f"{inputs[i][1]}_heatmap.nii.gz"
            save_heatmap_nifti(heatmaps[i], image.affine, target, shape=image.spatial_shape)
            results[i]["nifti"] = str(target)
            written.append(str(target))
    for path, rows in volumes.items():
        slices = volume_slices(path, args.slices, window=args.window)
        stem = inputs[rows[0]][1].rsplit(f"_{args.slices}", 1)[0]
        target = out / f"{stem}_heatmap.nii.gz"
        volume = slices.volume
        save_heatmap_nifti(slices.to_volume(heatmaps[rows]), volume.affine, target)
        for i in rows:
            results[i]["nifti"] = str(target)
        written.append(str(target))
    return written


def cmd_explain(args: argparse.Namespace) -> int:
    if args.window is not None:
        try:
            window_text(args.window)
        except ValueError as error:
            raise CommandError(str(error)) from error
    inputs = _explain_inputs(args)
    loaded, layer = _explainable(args, [source for _, _, source in inputs])
    try:
        target = class_index(args.target, loaded.class_names)
    except UnknownClassError as error:
        raise CommandError(f"--target: {error}") from error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if loaded.spatial_dims == 3:
        return _explain_volumes(args, loaded, layer, target, inputs, out)
    images = [load_image(source, window=args.window) for _, _, source in inputs]
    batch = torch.stack([loaded.transform(image) for image in images])
    if layer is None:
        maps, probabilities, extra = _lime_maps(args, loaded, batch, target)
    else:
        maps, probabilities, extra = _cam_maps(args, loaded, layer, batch, target)
    heatmaps = np.stack([np.asarray(m) for m in maps.heatmaps])
    results = []
    used: set[str] = set()
    for i, ((path, stem, source), image) in enumerate(zip(inputs, images)):
        while stem in used:
            stem += "_"
        used.add(stem)
        inputs[i] = (path, stem, source)
        files = _write_explanation(
            out,
            stem,
            loaded.transform.display(image),
            maps.heatmaps[i],
            maps.raw_heatmaps[i],
        )
        values, indices = probabilities[i].topk(min(args.top_k, probabilities.shape[1]))
        top = [
            {"class_idx": int(c), "class_name": loaded.class_names[int(c)], "confidence": float(v)}
            for v, c in zip(values, indices)
        ]
        explained = loaded.class_names[int(maps.target_indices[i])]
        results.append(
            {
                "image": source,
                "explained_class": explained,
                "top_predictions": top,
                **files,
                **extra[i],
            }
        )
        _print(f"{source}: explained class '{explained}'")
        for rank, item in enumerate(top, 1):
            _print(f"  {rank}. {item['class_name']:<24} {item['confidence']:7.2%}")
    if args.activations:
        _write_activations(args, loaded, layer, batch, images, heatmaps, inputs, results, out)
    exported = _export_nifti(out, inputs, heatmaps, results, args) if args.export_nifti else []
    (out / "explanations.json").write_text(
        json.dumps(
            {
                "model": loaded.spec,
                "layer": layer,
                "method": args.method,
                "window": describe_window_spec(args.window),
                "slices": args.slices,
                "images": results,
            },
            indent=2,
        )
    )
    _print(f"Overlays and heatmaps written to {out}/ (explanations.json lists them).")
    if exported:
        _print(f"NIfTI heatmaps aligned with their sources: {len(exported)} file(s).")
    return EXIT_OK


def _explain_volumes(
    args: argparse.Namespace,
    loaded: LoadedModel,
    layer: str | None,
    target: int | None,
    inputs: list[tuple[Path, str, str]],
    out: Path,
) -> int:
    """``explain`` with a 3-D model: each volume's slices through the heatmap's peak (see
    :func:`shortcut_detect.volume_explain.explain_volumes`)."""
    stems: list[str] = []
    for _, stem, _ in inputs:
        while stem in stems:
            stem += "_"
        stems.append(stem)
    assert layer is not None  # LIME, the only method without a layer, is refused for volumes
    try:
        results = explain_volumes(
            loaded,
            layer,
            [(source, stem) for (_, _, source), stem in zip(inputs, stems)],
            out,
            method=args.method,
            target=target,
            window=args.window,
            export_nifti=args.export_nifti,
            top_k=args.top_k,
        )
    except ImageLoadError:
        raise  # a volume that cannot be read: its own message
    except ValueError as error:  # an unknown layer or method for this model
        raise CommandError(str(error), _layers_hint(args.model)) from error
    for row in results:
        _print(
            f"{row['image']}: explained class '{row['explained_class']}', heatmap peak at "
            f"voxel {tuple(row['peak_voxel'])} of the {'x'.join(map(str, row['input_shape']))} "
            f"input"
            + (f" ({', '.join(map(str, row['peak_mm']))} mm RAS)" if row["peak_mm"] else "")
        )
        for rank, item in enumerate(row["top_predictions"], 1):
            _print(f"  {rank}. {item['class_name']:<24} {item['confidence']:7.2%}")
    (out / "explanations.json").write_text(
        json.dumps(
            {
                "model": loaded.spec,
                "layer": layer,
                "method": args.method,
                "window": describe_window_spec(args.window or loaded.transform.window),
                "volumes": results,
            },
            indent=2,
            default=json_default,
        )
    )
    _print(f"Slices through each heatmap's peak written to {out}/ (explanations.json lists them).")
    if args.export_nifti:
        _print(f"NIfTI heatmaps aligned with their sources: {len(results)} file(s).")
    return EXIT_OK


def _write_activations(
    args: argparse.Namespace,
    loaded: LoadedModel,
    layer: str | None,
    batch: torch.Tensor,
    images: list[Any],
    heatmaps: np.ndarray,
    inputs: list[tuple[Path, str, str]],
    results: list[dict[str, Any]],
    out: Path,
) -> None:
    """``--activations K``: a figure of the layer's raw responses per image, and their
    channels in the JSON."""
    import matplotlib.pyplot as plt

    layer = layer or loaded.default_layer
    for i, (_, stem, _) in enumerate(inputs):
        grid = activation_grid(
            loaded.model, batch[i], layer, top_k=args.activations, device=loaded.device
        )
        target = out / f"{stem}_activations.png"
        figure = plot_activation_grid(
            grid, loaded.transform.display(images[i]), heatmap=heatmaps[i], save_path=target
        )
        plt.close(figure)
        results[i]["activations"] = {"figure": str(target), **grid.to_dict()}


class _Maps(NamedTuple):
    """Per image of ``explain``: heatmap in [0, 1], raw map, class explained."""

    heatmaps: Sequence[np.ndarray]
    raw_heatmaps: Sequence[np.ndarray]
    target_indices: Sequence[int]


def _cam_maps(
    args: argparse.Namespace, loaded: LoadedModel, layer: str, batch: torch.Tensor, target: Any
) -> tuple[_Maps, torch.Tensor, list[dict[str, Any]]]:
    try:
        generator = GradCAMHeatmapGenerator(
            loaded.model, layer, device=loaded.device, method=args.method
        )
    except ValueError as error:
        raise CommandError(str(error), _layers_hint(args.model)) from error
    parts = []
    with generator:
        # Batches of 32: a volume read slice-wise can give hundreds of inputs.
        for start in range(0, len(batch), 32):
            parts.append(generator.explain(batch[start : start + 32], [("logits", target)])[0])
    maps = _Maps(
        np.concatenate([np.asarray(part.heatmaps) for part in parts]),
        np.concatenate([np.asarray(part.raw_heatmaps) for part in parts]),
        np.concatenate([np.asarray(part.target_indices) for part in parts]),
    )
    probabilities = torch.cat([class_probabilities(part.head_output) for part in parts])
    return maps, probabilities, [{} for _ in batch]


def _lime_maps(
    args: argparse.Namespace, loaded: LoadedModel, batch: torch.Tensor, target: Any
) -> tuple[_Maps, torch.Tensor, list[dict[str, Any]]]:
    """LIME per image: the heatmap is the positive superpixel weights, the raw map the
    signed ones; the JSON lists the top superpixels and the surrogate's fit."""
    explanations = []
    for image in batch:
        try:
            explanations.append(
                explain_lime(
                    loaded.model,
                    image,
                    target,
                    num_samples=args.lime_samples,
                    seed=args.seed,
                    device=loaded.device,
                )
            )
        except (ValueError, ImportError) as error:
            raise CommandError(f"LIME failed: {error}") from error
    with eval_mode(loaded.model), torch.inference_mode():
        outputs = loaded.model(batch.to(loaded.device))
    probabilities = class_probabilities(select_head(outputs, "logits", DEFAULT_HEAD_MAPPINGS))
    maps = _Maps(
        [item.heatmap for item in explanations],
        [item.signed_map() for item in explanations],
        [item.target for item in explanations],
    )
    extra = [
        {
            "lime": {
                key: item.to_dict()[key]
                for key in ("top_superpixels", "n_superpixels", "score", "num_samples", "seed")
            }
        }
        for item in explanations
    ]
    return maps, probabilities.cpu(), extra


def _list_modules(model: ModelOptions, reason: str) -> int:
    """``layers`` without an input size: module names and types, no shapes."""
    module = model.build()
    rows = [
        (name, type(child).__name__)
        for name, child in module.named_modules()
        if name
        and (
            isinstance(child, (torch.nn.Conv2d, torch.nn.Conv3d))
            or next(child.children(), None) is not None
        )
    ]
    _print(f"{model.spec}: input size unknown, so no output shapes ({reason})")
    width = max((len(name) for name, _ in rows), default=10)
    _print(f"   {'layer':<{width}}  type")
    for name, kind in rows:
        _print(f"   {name:<{width}}  {kind}")
    _print(
        "Explain one with --layer NAME; add --resize N (and --mean/--std) to see output shapes "
        "and the default layer."
    )
    return EXIT_OK


def cmd_layers(args: argparse.Namespace) -> int:
    model = ModelOptions.from_args(args)
    try:
        loaded = model.load()
    except UnknownInputSizeError:
        return _list_modules(model, "no preprocessing recipe and no --resize")
    if loaded.is_torchscript:
        raise CommandError(
            "TorchScript models cannot be inspected layer by layer (no hooks)",
            "load the architecture from Python (--model package.module:factory)",
        )
    example = torch.zeros(1, loaded.in_channels, *loaded.input_size, device=loaded.device)
    infos = spatial_layers(loaded.model, example)
    if not args.all:
        # Blocks and convolutions are the useful targets; activations, norms and pools repeat
        # the shape of the layer before them.
        infos = [
            info
            for info in infos
            if info.name == loaded.default_layer
            or isinstance(info.module, (torch.nn.Conv2d, torch.nn.Conv3d))
            or next(info.module.children(), None) is not None
        ]
    _print(f"{loaded.spec}: input {loaded.in_channels}x{'x'.join(map(str, loaded.input_size))}")
    width = max((len(info.name) for info in infos), default=10)
    _print(f"   {'layer':<{width}}  {'type':<22} output shape")
    for info in infos:
        mark = "*" if info.name == loaded.default_layer else " "
        shape = "x".join(str(s) for s in info.output_shape[1:])
        _print(f" {mark} {info.name:<{width}}  {type(info.module).__name__:<22} {shape}")
    _print(f"* default target layer ({loaded.default_layer}); choose another with --layer NAME")
    return EXIT_OK


def _unknown_app_image_size(spec: str) -> Callable[[], tuple[int, int]]:
    def fail() -> tuple[int, int]:
        raise CommandError(
            f"--model {spec} is fed images at their own size, but with no --data there are "
            "no images to take the size from",
            "add --resize N (the size the model expects), or --data D (images of one size)",
        )

    return fail


def cmd_app(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise CommandError(
            "The web app needs gradio, which is not installed",
            "pip install 'shortcut-detect[app]'",
        ) from error
    # Only what was given: run_app's own defaults (and an audit's recorded preprocessing)
    # apply to the rest. No --model and no --audit: the built-in demo models and data.
    given: dict[str, Any] = {
        "group_column": args.group_column,
        "max_pixels": args.max_pixels,
        "cache_size": args.cache_size,
        "max_upload_bytes": None if args.max_upload_mb is None else int(args.max_upload_mb * 2**20),
        "auth": args.auth,
        "no_auth": args.no_auth,
        "window": args.window,
    }
    given.update(ModelOptions.from_args(args).load_kwargs())
    if args.model and not (args.resize or args.crop):
        # Called only when the model is fed images at their own size; an audit brings its own.
        if args.data:
            given["image_size"] = _data_image_size(args)
        elif args.audit is None:
            given["image_size"] = _unknown_app_image_size(args.model)
    app_module.run_app(
        model=args.model,
        data=args.data,
        audit=args.audit,
        host=args.host,
        port=args.port,
        layer=args.layer,
        **{key: value for key, value in given.items() if value is not None and value is not False},
    )
    return EXIT_OK


COMMANDS = {
    "audit": cmd_audit,
    "report": cmd_report,
    "demo": cmd_demo,
    "explain": cmd_explain,
    "layers": cmd_layers,
    "app": cmd_app,
}

_KNOWN_ERRORS = (
    CommandError,
    AuditError,
    StoreError,
    ManifestError,
    ImageLoadError,
    ModelLoadError,
    ExplorerInputError,
)

# Library messages name parameters (``num_classes=3``); the command line shows its flags.
_FLAG_PARAMETERS = (
    "weights",
    "num_classes",
    "spatial_dims",
    "in_channels",
    "classes",
    "trust_pickle",
    "device",
    "preset",
    "resize",
    "crop",
    "mean",
    "std",
    "model",
    "layer",
    "target",
    "out",
    "overwrite",
    "num_shards",
    "shard_index",
    "executor",
    "ray_address",
    "ray_actors",
    "intervention_samples",
    "auth",
    "no_auth",
)
_PARAMETER = re.compile(
    r"\b(" + "|".join(_FLAG_PARAMETERS) + r")="
    # an optional value: quoted, or up to a space, comma, ";", ")" or a final ":"/"."
    r'(?:"([^"]*)"|(?![.,;:)])(\S+?)(?=[\s,;)]|[:.](?:\s|$)|$))?'
)


def as_flags(message: str) -> str:
    """A library message in command-line terms: ``num_classes=3`` -> ``--num-classes 3``."""

    def flag(match: re.Match[str]) -> str:
        name = "--" + match.group(1).replace("_", "-")
        value = match.group(2) if match.group(2) is not None else match.group(3)
        return name if value in (None, "", "True") else f"{name} {value}"

    return _PARAMETER.sub(flag, message)


def _hint_for(error: BaseException, command: str) -> str:
    if isinstance(error, CommandError):
        return error.hint
    if isinstance(error, ModelLoadError):
        return f"see `shortcut-detect {command} --help` for the model options"
    if isinstance(error, ManifestError):
        return (
            "a manifest is a CSV/Parquet file with path,label columns (plus optional group "
            "and mask)"
        )
    return ""


def _report_error(error: BaseException, known: bool, command: str) -> None:
    text = as_flags(str(error).strip()) or type(error).__name__
    lines = text.splitlines()
    if known:
        _log(f"error: {lines[0]}")
    else:
        _log(f"error: {type(error).__name__}: {lines[0]}")
    for line in lines[1:]:
        _log(f"  {line}")
    hint = _hint_for(error, command) if known else "rerun with --debug to see the traceback"
    if hint:
        _log(f"hint: {hint}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``shortcut-detect``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(_join_number_lists(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    handler = COMMANDS[args.command]
    try:
        if getattr(args, "device", None):
            resolve_device(args.device)  # before any work: a wrong device is a usage error
        with _progress_messages():
            return handler(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        message = str(interrupt) or "Interrupted."
        _log(message)
        return EXIT_INTERRUPTED
    except DeviceUnavailableError as error:
        if args.debug:
            raise
        _log(f"error: {as_flags(str(error))}")
        return EXIT_USAGE
    except Exception as error:
        if args.debug:
            raise
        known = isinstance(error, _KNOWN_ERRORS)
        if not known and isinstance(error, (FileNotFoundError, PermissionError)):
            known = True
        _report_error(error, known, args.command)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
