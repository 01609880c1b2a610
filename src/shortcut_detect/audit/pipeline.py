"""The audit run: stream an image set through Grad-CAM into the store, resumably.

:func:`run_audit` loads the model and the data, skips samples a previous run (of this shard)
already stored, decodes images in DataLoader workers, explains each batch with one forward
and one backward pass, and commits rows and heatmaps chunk by chunk. When every shard is
finished it merges the shards, runs the intervention stage (does the model rely on the given
or discovered regions? see :mod:`shortcut_detect.audit.interventions`) on a subsample, and
writes ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shortcut_detect.analysis.maps import entropy, peak_locations
from shortcut_detect.analysis.regions import attention_in_region
from shortcut_detect.audit.interventions import try_intervention_stage
from shortcut_detect.audit.store import (
    CONFIG_COPY,
    STORE_VERSION,
    AuditStore,
    ShardWriter,
    clear_unstarted_run,
    close_inherited_locks,
    read_config,
    remove_stray_temp_files,
    running_writers,
    unfinished_shards_text,
    write_config,
)
from shortcut_detect.common.logs import forward_log
from shortcut_detect.common.progress import ProgressBar
from shortcut_detect.common.serialization import nan_to_none
from shortcut_detect.data.images import (
    DEFAULT_MAX_PIXELS,
    SLICE_PLANES,
    ImageRecord,
    ImageRecordDataset,
    ImageSet,
    collate_samples,
    make_chunk_loader,
    make_loader,
    mask_text,
    read_image_set,
)
from shortcut_detect.data.medical.window import describe_window_spec
from shortcut_detect.data.transforms import window_text
from shortcut_detect.models import LoadedModel, ModelOptions, load_model

__all__ = [
    "AuditError",
    "AuditInterrupted",
    "AuditOptions",
    "AuditRun",
    "BatchResult",
    "explain_batch",
    "run_audit",
]

_LOG = logging.getLogger(__name__)
TARGETS = ("predicted", "label")
EXECUTORS = ("local", "ray")


class AuditError(ValueError):
    """The audit cannot run as asked (the message says what to change)."""


class ModelOutputError(ValueError):
    """The model failed on, or gave unusable output for, some images of a batch."""


class AuditInterrupted(KeyboardInterrupt):
    """The run was interrupted; committed rows are kept and a rerun continues."""


@dataclass
class AuditOptions:
    """Everything ``shortcut-detect audit`` takes (see ``shortcut-detect audit --help``)."""

    model: str
    data: str
    out: str
    weights: str | None = None
    num_classes: int | None = None
    classes: str | None = None
    trust_pickle: bool = False
    layer: str | None = None
    method: str = "gradcam"
    target: str = "predicted"
    path_column: str = "path"
    label_column: str = "label"
    group_column: str | None = None
    mask_column: str | None = None
    batch_size: int = 32
    num_workers: int = 2
    device: str | None = None
    shard_index: int = 0
    num_shards: int = 1
    flush_rows: int = 256
    preset: str | None = None
    resize: list[int] | None = None
    crop: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    spatial_dims: int | None = None
    in_channels: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool | None = None
    # analysis
    n_permutations: int = 1000
    max_analysis_samples: int = 5000
    embedding_samples: int = 1000
    seed: int = 0
    report: bool = True
    intervention_samples: int = 200
    # medical images
    window: str | None = None
    slices: str | None = None
    # where the model passes run: "local" (this process) or "ray" (a Ray cluster)
    executor: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None

    def model_options(self) -> ModelOptions:
        """The model part of these options (the fields named like :class:`ModelOptions`')."""
        names = [f.name for f in fields(ModelOptions) if f.name != "spec"]
        return ModelOptions(spec=self.model, **{name: getattr(self, name) for name in names})

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`~shortcut_detect.models.load_model`."""
        return self.model_options().load_kwargs()


@dataclass
class AuditRun:
    """What :func:`run_audit` did."""

    store: AuditStore
    processed: int
    already_done: int
    failed: int
    shard_complete: bool
    all_complete: bool
    seconds: float
    summary: dict[str, Any] | None = None
    report_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Throughput of this run's processed images."""
        return self.processed / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class BatchResult:
    """Rows and stored maps of one explained batch."""

    rows: list[dict[str, Any]]
    maps: np.ndarray  # (n_ok, h, w) float16, each divided by its maximum


# -- setting up ---------------------------------------------------------------------------------


def _adopt_data_class_names(loaded: LoadedModel, image_set: ImageSet) -> list[str]:
    names = list(loaded.class_names)
    if loaded.class_names_known or not image_set.label_names:
        return names
    data_names = image_set.label_names
    if len(data_names) == len(names) and not all(n.isdigit() for n in data_names):
        return list(data_names)
    return names


def _check_labels(image_set: ImageSet, num_classes: int) -> None:
    bad = sorted({r.label for r in image_set.records if r.label >= num_classes})
    if bad:
        raise AuditError(
            f"The data has labels up to class index {bad[-1]} but the model has {num_classes} "
            "outputs; check num_classes= and classes= or the label column"
        )


def run_config(
    options: AuditOptions,
    loaded: LoadedModel,
    image_set: ImageSet,
    layer: str,
    class_names: list[str],
) -> dict[str, Any]:
    """The identity of a run (what must match for a rerun to continue it) plus context."""
    return {
        "store_version": STORE_VERSION,
        "model": loaded.spec,
        "weights": loaded.weights,
        "layer": layer,
        "method": options.method,
        "target": options.target,
        "data": str(Path(options.data).expanduser().resolve()),
        "data_fingerprint": image_set.fingerprint(),
        "n_samples": len(image_set),
        "num_shards": options.num_shards,
        "input_size": list(loaded.input_size),
        "cam_size": None,
        "class_names": class_names,
        "preprocessing": loaded.transform.to_dict(),
        "preprocessing_text": loaded.transform.describe(),
        "group_column": options.group_column,
        "mask_column": options.mask_column,
        "has_groups": image_set.has_groups,
        "has_masks": image_set.has_masks,
        "data_kind": image_set.kind,
        "model_notes": list(loaded.notes),
        "data_notes": list(image_set.notes),
        "load_options": {
            key: value for key, value in options.load_kwargs().items() if key not in ("device",)
        },
        "path_column": options.path_column,
        "label_column": options.label_column,
        "window": describe_window_spec(loaded.transform.window),
        "slices": options.slices,
    }


_IDENTITY_KEYS = (
    "store_version",
    "model",
    "weights",
    "layer",
    "method",
    "target",
    "data_fingerprint",
    "num_shards",
    "input_size",
    "preprocessing",
)


def _prepare_directory(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    config_path = out / "audit.json"
    if out.exists() and not out.is_dir():
        raise AuditError(f'out="{out}" is a file; give a directory')
    is_audit = config_path.is_file() or (out / CONFIG_COPY).is_file()
    if is_audit:
        remove_stray_temp_files(out)
        existing = read_config(out)
        if existing is None and not AuditStore(out).part_files():
            _LOG.warning("Rewriting the damaged run configuration of %s (no rows stored yet).", out)
            existing = config
        previous = existing or {}
        differences = [key for key in _IDENTITY_KEYS if previous.get(key) != config.get(key)]
        if not differences:
            config["cam_size"] = previous.get("cam_size")
            write_config(out, config)
            return
        if not overwrite:
            if existing is None:
                raise AuditError(
                    f"The run configuration of {out} (audit.json and its copy) is damaged, so its "
                    "stored rows cannot be matched to this run. Use another out=, or "
                    "overwrite=True to discard them."
                )
            changes = "; ".join(
                f"{key}: {previous.get(key)!r} -> {config.get(key)!r}" for key in differences[:3]
            )
            raise AuditError(
                f"{out} holds an audit of a different run ({changes}). Use another out=, or "
                "overwrite=True to discard it."
            )
        running = running_writers(out)
        if running:
            raise AuditError(
                f"overwrite=True would delete {out} while it is being written: "
                f"{'; '.join(running)}. Stop that run first."
            )
        shutil.rmtree(out)
    elif out.is_dir() and any(out.iterdir()) and not clear_unstarted_run(out):
        if not overwrite:
            raise AuditError(
                f'out="{out}" is a non-empty directory that is not an audit; give a new or '
                "empty directory"
            )
        raise AuditError(f"overwrite=True only replaces audit directories; {out} is not one")
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, config)


# -- one batch ----------------------------------------------------------------------------------


def _probabilities(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(n, k)`` and the score of each explained class."""
    if logits.ndim == 1:  # one logit: class 1 is the logit, class 0 its negation
        positive = 1.0 / (1.0 + np.exp(-logits))
        return np.stack([1.0 - positive, positive], axis=1), np.where(targets == 1, logits, -logits)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities, logits[np.arange(len(logits)), targets]


def _mask_numbers(raw: np.ndarray, masks: torch.Tensor, flags: np.ndarray) -> dict[str, np.ndarray]:
    """Attention in each sample's mask, whether the peak hits it, its area and its centre."""
    count = len(raw)
    numbers = {
        "mask_area": np.full(count, np.nan),
        "mask_attention": np.full(count, np.nan),
        "mask_pointing_hit": np.zeros(count, dtype=bool),
        "mask_center_y": np.full(count, np.nan),
        "mask_center_x": np.full(count, np.nan),
    }
    if not flags.any():
        return numbers
    region_masks = masks.numpy()[flags].astype(np.float64)
    region = attention_in_region(raw[flags], region_masks)
    numbers["mask_attention"][flags] = region.fractions
    numbers["mask_pointing_hit"][flags] = region.pointing_hits
    # Volumes (N, D, H, W): the centre is that of the mask's (H, W) projection.
    height, width = region_masks.shape[-2:]
    flat = region_masks.reshape(len(region_masks), -1, height, width).sum(axis=1)
    pixels = flat.sum(axis=(1, 2))
    numbers["mask_area"][flags] = pixels / region_masks[0].size
    # The centre of each mask's pixels, 0..1 from the top and from the left.
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = flat.sum(axis=2) @ np.arange(height) / pixels
        cols = flat.sum(axis=1) @ np.arange(width) / pixels
    numbers["mask_center_y"][flags] = np.where(pixels > 0, (rows + 0.5) / height, np.nan)
    numbers["mask_center_x"][flags] = np.where(pixels > 0, (cols + 0.5) / width, np.nan)
    return numbers


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats with NaN as ``None``, for the row table."""
    return [nan_to_none(value) for value in values.tolist()]


def explain_batch(
    generator: Any,
    images: torch.Tensor,
    records: list[ImageRecord],
    masks: torch.Tensor,
    has_mask: torch.Tensor,
    class_names: list[str],
    target: str = "predicted",
    sizes: list[tuple[int, int]] | None = None,
) -> BatchResult:
    """Explain one batch of decoded images and turn it into store rows.

    Per-sample numbers (peak, entropy, attention in the mask) are read off the CAM at its
    native resolution, where it was computed; masks are area-averaged onto that grid.
    """
    labels = np.array([r.label for r in records], dtype=np.int64)
    by_label = target == "label" and bool((labels >= 0).all())
    request = torch.from_numpy(labels) if by_label else None
    # The store keeps the maps at the layer's resolution: no resizing to the input.
    explanation = generator.explain(images, [("logits", request)], upsample=False)[0]
    predictions = explanation.predictions.astype(np.int64)
    targets = explanation.target_indices.astype(np.int64)
    # numpy, not torch: on a busy CPU torch's thread pool makes tiny ops cost milliseconds.
    logits = explanation.head_output.float().numpy().astype(np.float64)
    if logits.ndim not in (1, 2) or len(logits) != len(records):
        raise AuditError(
            f"The model's output has shape {tuple(logits.shape)} for a batch of {len(records)} "
            "images; the audit needs one logit per class per image, (batch, classes)"
        )
    if not np.isfinite(logits).all():
        raise ModelOutputError("the model's output is not finite (NaN or inf logits)")
    probabilities, target_scores = _probabilities(logits, targets)
    confidences = probabilities[np.arange(len(labels)), predictions]
    raw = np.maximum(np.asarray(explanation.raw_heatmaps, dtype=np.float32), 0.0)
    if raw.ndim != images.ndim - 1:
        raise AuditError(
            f"The target layer gives {raw.ndim - 1}-D maps for {images.ndim - 2}-D inputs; "
            "choose a layer with spatial outputs of the input's dimensions"
        )
    count = len(raw)
    height, width = raw.shape[-2:]
    cam_max = raw.reshape(count, -1).max(axis=1)
    scale = np.where(cam_max > 0, cam_max, 1.0)
    stored = (raw / scale.reshape(-1, *([1] * (raw.ndim - 1)))).astype(np.float16)

    # Volumes: peak_y/peak_x are the peak's row and column (its depth is in the map).
    peaks = peak_locations(raw)[:, -2:]
    flags = has_mask.numpy().astype(bool)
    columns = {
        "confidence": confidences.tolist(),
        "target": targets.tolist(),
        "target_score": target_scores.tolist(),
        "peak_y": ((peaks[:, 0] + 0.5) / height).tolist(),
        "peak_x": ((peaks[:, 1] + 0.5) / width).tolist(),
        "entropy": _nullable(entropy(raw)),
        "cam_max": cam_max.tolist(),
    }
    for name, values in _mask_numbers(raw, masks, flags).items():
        columns[name] = values.tolist() if values.dtype == bool else _nullable(values)
    rows = []
    for i, record in enumerate(records):
        label = int(record.label)
        prediction = int(predictions[i])
        known_label = 0 <= label < probabilities.shape[1]
        rows.append(
            {
                "sample_id": record.sample_id,
                "index": record.index,
                "path": record.path,
                "status": "ok",
                "error": None,
                "label": label,
                "label_name": record.label_name,
                "group": record.group,
                "prediction": prediction,
                "prediction_name": class_names[prediction]
                if 0 <= prediction < len(class_names)
                else str(prediction),
                "label_probability": float(probabilities[i, label]) if known_label else None,
                "correct": (prediction == label) if label >= 0 else None,
                "width": int(sizes[i][0]) if sizes else None,
                "height": int(sizes[i][1]) if sizes else None,
                "has_mask": bool(flags[i]),
                "mask": mask_text(record.mask),
                **{name: values[i] for name, values in columns.items()},
                "heatmap_row": i,
            }
        )
        if not flags[i]:
            rows[-1]["mask_pointing_hit"] = None
    return BatchResult(rows=rows, maps=stored)


def failed_row(record: ImageRecord, error: str) -> dict[str, Any]:
    """The row of an image that could not be read."""
    return {
        "sample_id": record.sample_id,
        "index": record.index,
        "path": record.path,
        "status": "error",
        "error": error,
        "label": int(record.label),
        "label_name": record.label_name,
        "group": record.group,
        "has_mask": record.mask is not None,
        "mask": mask_text(record.mask),
        "heatmap_row": -1,
    }


def _batch_rows(
    batch: dict[str, Any],
    records: list[ImageRecord],
    generator: Any,
    class_names: list[str],
    target: str,
) -> tuple[list[dict[str, Any]], np.ndarray | None, int]:
    """Rows (in batch order), the maps of the readable images, and how many failed."""
    ok = batch["ok"].numpy().astype(bool)
    if not ok.any():
        return [failed_row(r, e) for r, e in zip(records, batch["error"])], None, len(records)
    images, masks, has_mask, sizes = batch["image"], batch["mask"], batch["has_mask"], batch["size"]
    if not ok.all():  # only then copy the readable part out of the batch
        selected = torch.from_numpy(np.flatnonzero(ok))
        images, masks, has_mask, sizes = (t[selected] for t in (images, masks, has_mask, sizes))
    readable = [r for r, flag in zip(records, ok) if flag]
    arguments = (images, masks, has_mask, [tuple(size) for size in sizes.tolist()])
    try:
        result = explain_batch(generator, arguments[0], readable, *arguments[1:3], class_names,
                               target, arguments[3])  # fmt: skip
    except AuditError:
        raise
    except Exception:  # some image makes the model fail: find which, one by one
        result, model_errors = _explain_one_by_one(
            generator, readable, arguments, class_names, target
        )
        errors = iter(model_errors)
        batch_errors = [
            error if not flag else next(errors) for error, flag in zip(batch["error"], ok)
        ]
        ok = np.array([not error for error in batch_errors])
        batch = {**batch, "error": batch_errors}
    explained = iter(result.rows)
    # rows with maps keep their order, matching `maps`
    rows = [
        next(explained) if flag else failed_row(record, error)
        for record, flag, error in zip(records, ok, batch["error"])
    ]
    return rows, (result.maps if result.rows else None), int((~ok).sum())


def _explain_one_by_one(
    generator: Any,
    records: list[ImageRecord],
    arguments: tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]],
    class_names: list[str],
    target: str,
) -> tuple[BatchResult, list[str]]:
    """Explain a batch the model failed on image by image: the rows and maps of the images
    that work, and for each image ``""`` or why the model failed on it.

    Raises :class:`AuditError` when it fails on every image in the same way (a broken model,
    not a bad image)."""
    images, masks, has_mask, sizes = arguments
    rows: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    errors: list[str] = []
    reasons: list[str] = []
    for i, record in enumerate(records):
        one = slice(i, i + 1)
        try:
            result = explain_batch(generator, images[one], [record], masks[one], has_mask[one],
                                   class_names, target, sizes[one])  # fmt: skip
        except AuditError:
            raise
        except Exception as error:  # reported in the image's row
            reasons.append(_error_text(error))
            errors.append(f"{record.path}: the model failed on this image ({reasons[-1]})")
            continue
        rows.extend(result.rows)
        maps.append(result.maps)
        errors.append("")
    if not rows and len(set(reasons)) == 1:
        raise AuditError(
            f"The model fails on every image of a batch in the same way ({reasons[0]}); check "
            "the model, its weights and the preprocessing"
        )
    stored = np.concatenate(maps) if maps else np.zeros((0, 1, 1), dtype=np.float16)
    return BatchResult(rows=rows, maps=stored), errors


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# -- the run -----------------------------------------------------------------------------------


def _update_cam_size(out: Path, cam_size: tuple[int, int]) -> None:
    config = AuditStore(out).config
    if config.get("cam_size") != list(cam_size):
        config["cam_size"] = list(cam_size)
        write_config(out, config)


def _check_options(options: AuditOptions) -> None:
    if options.target not in TARGETS:
        raise AuditError(f"target= must be one of {', '.join(TARGETS)}, got {options.target!r}")
    if options.intervention_samples < 0:
        raise AuditError(
            f"intervention_samples= must be 0 (off) or positive, got {options.intervention_samples}"
        )
    if options.num_shards < 1:
        raise AuditError(f"num_shards= must be at least 1, got {options.num_shards}")
    if options.window is not None:
        try:
            window_text(options.window)
        except ValueError as error:
            raise AuditError(str(error).replace("--window", "window=")) from error
    if options.slices is not None and options.slices not in SLICE_PLANES:
        raise AuditError(
            f"slices= must be one of {', '.join(SLICE_PLANES)} (or None), got {options.slices!r}"
        )
    if not 0 <= options.shard_index < options.num_shards:
        raise AuditError(
            f"shard_index= must be in 0..{options.num_shards - 1}, got {options.shard_index}"
        )
    _check_executor(options)


def _check_executor(options: AuditOptions) -> None:
    if options.executor not in EXECUTORS:
        raise AuditError(
            f"executor= must be one of {', '.join(EXECUTORS)}, got {options.executor!r}"
        )
    if options.ray_actors is not None and options.ray_actors < 1:
        raise AuditError(f"ray_actors= must be at least 1, got {options.ray_actors}")
    if options.executor == "ray":
        _ray_executor().import_ray()  # before the model loads: a missing extra fails fast


def _ray_executor() -> Any:
    # Imported on demand: ray_executor imports this module, and only Ray runs need it.
    from shortcut_detect.audit import ray_executor

    return ray_executor


def _intervention_pool(options: AuditOptions, loaded: LoadedModel) -> AbstractContextManager:
    """Where the intervention stage's forward passes run: ``None`` (this process) or, with
    the Ray executor, a pool of Ray actors."""
    if options.executor == "ray":
        return _ray_executor().RayForwardPool(options, loaded)
    return nullcontext()


def _make_generator(options: AuditOptions, loaded: LoadedModel) -> tuple[Any, str]:
    """The Grad-CAM generator on the chosen layer, and the layer's name."""
    from shortcut_detect.gradcam import GradCAMHeatmapGenerator

    if loaded.is_torchscript:
        raise AuditError(
            "Grad-CAM needs hooks on a layer, which TorchScript models do not support (a "
            "PyTorch limitation). Load the architecture from Python instead: "
            'model="package.module:factory" or model="torchvision:NAME" with weights=FILE, '
            "where FILE is torch.jit.load(path).state_dict() saved with torch.save."
        )
    layer = options.layer or loaded.default_layer
    if layer is None:
        raise AuditError(
            "No layer with a spatial output was found to explain; pass layer=NAME (list the "
            f"candidates with `shortcut-detect layers --model {options.model}`)"
        )
    try:
        generator = GradCAMHeatmapGenerator(
            loaded.model, layer, device=loaded.device, method=options.method
        )
    except ValueError as error:
        raise AuditError(str(error)) from error
    return generator, layer


def _read_data(options: AuditOptions, loaded: LoadedModel) -> tuple[ImageSet, list[str]]:
    image_set = read_image_set(
        options.data,
        class_names=loaded.class_names if loaded.class_names_known else None,
        path_column=options.path_column,
        label_column=options.label_column,
        group_column=options.group_column,
        mask_column=options.mask_column,
        slices=options.slices,
        volumes=loaded.spatial_dims == 3,
    )
    # len(class_names), not num_classes: a single-logit model has two classes.
    _check_labels(image_set, len(loaded.class_names))
    return image_set, _adopt_data_class_names(loaded, image_set)


@dataclass
class _ShardCounts:
    processed: int = 0
    failed: int = 0
    already: int = 0


class _ExplainedChunks(torch.utils.data.Dataset):
    """Chunks of ``batch_size`` records, each decoded *and explained* where it is loaded.

    In DataLoader workers of one torch thread each, the decoding and the model share no
    cores: on a CPU, ``w`` such workers keep ``w`` cores busy with whole chunks, where a
    model with ``w`` threads beside ``w`` decoding workers would oversubscribe them (its
    threads stall whenever a decoder runs), which costs small models half their throughput.
    """

    def __init__(
        self,
        images: ImageRecordDataset,
        generator: Any,
        class_names: list[str],
        target: str,
        batch_size: int,
    ) -> None:
        self.images = images
        self.generator = generator
        self.class_names = class_names
        self.target = target
        self.starts = range(0, len(images), batch_size)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[list[dict[str, Any]], np.ndarray | None, int]:
        start = self.starts[index]
        positions = range(start, min(start + self.batch_size, len(self.images)))
        batch = collate_samples([self.images[p] for p in positions])
        records = [self.images.records[p] for p in positions]
        return _batch_rows(batch, records, self.generator, self.class_names, self.target)


def _explain_in_workers(options: AuditOptions, loaded: LoadedModel) -> bool:
    """Whether the decoding workers also explain (CPU models with two or more workers)."""
    device = next((p.device for p in loaded.model.parameters()), torch.device("cpu"))
    return options.num_workers >= 2 and device.type == "cpu"


def _explain_shard(
    options: AuditOptions,
    loaded: LoadedModel,
    generator: Any,
    todo: list[ImageRecord],
    writer: ShardWriter,
    progress: ProgressBar,
    class_names: list[str],
    cam_size_known: bool,
) -> _ShardCounts:
    """Decode, explain and store every record of ``todo``."""
    counts = _ShardCounts()
    dataset = ImageRecordDataset(todo, loaded.transform, max_pixels=options.max_pixels)
    if _explain_in_workers(options, loaded):
        dataset.preprocessing.warm_up()
        chunks = _ExplainedChunks(
            dataset, generator, class_names, options.target, options.batch_size
        )
        results = make_chunk_loader(
            chunks, num_workers=options.num_workers, worker_init=close_inherited_locks
        )
    else:
        loader = make_loader(
            dataset,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            worker_init=close_inherited_locks,
        )
        results = (
            _batch_rows(
                batch,
                [todo[p] for p in batch["position"].tolist()],
                generator,
                class_names,
                options.target,
            )
            for batch in loader
        )
    try:
        for rows, maps, failed in results:
            if maps is not None and not cam_size_known:
                _update_cam_size(writer.root, maps.shape[1:])
                cam_size_known = True
            writer.add(rows, maps)
            counts.processed += len(rows)
            counts.failed += failed
            progress.advance(len(rows))
    except KeyboardInterrupt as interrupt:
        raise _interrupted(writer, counts.processed) from interrupt
    return counts


def _interrupted(writer: ShardWriter, processed: int) -> AuditInterrupted:
    """Commit what is buffered; the error that tells how far the run got."""
    writer.flush()
    writer.wait()
    return AuditInterrupted(
        f"Interrupted after {processed} new samples; "
        f"{len(writer.done_ids())} are stored. Run the same command again to continue."
    )


def _audit_shard(
    options: AuditOptions,
    loaded: LoadedModel,
    generator: Any,
    image_set: ImageSet,
    class_names: list[str],
    out: Path,
    config: dict[str, Any],
) -> _ShardCounts:
    """Audit this run's shard, skipping what an earlier run stored; mark it finished."""
    records = image_set.shard(options.shard_index, options.num_shards)
    with ShardWriter(
        out, options.shard_index, options.num_shards, options.flush_rows, background=True
    ) as writer:
        done = writer.done_ids()
        todo = [r for r in records if r.sample_id not in done]
        del done  # a resumed run of millions of ids needs it no longer
        already = len(records) - len(todo)
        if todo:
            # A report of the earlier, partial store would now be stale.
            for name in ("summary.json", "report.html"):
                (out / name).unlink(missing_ok=True)
        if already:
            _LOG.info(
                "Continuing: %d of %d samples of this shard are already done.",
                already,
                len(records),
            )
        progress = ProgressBar(len(todo), "Auditing", enabled=options.progress, done=already)
        started = time.perf_counter()
        explain = _ray_executor().explain_on_ray if options.executor == "ray" else _explain_shard
        with progress:
            counts = explain(
                options,
                loaded,
                generator,
                todo,
                writer,
                progress,
                class_names,
                config.get("cam_size") is not None,
            )
        writer.flush()
        writer.wait()
        seconds = time.perf_counter() - started
        writer.finish(
            {
                "processed": counts.processed,
                "failed": counts.failed,
                "seconds": round(seconds, 3),
                "images_per_second": round(counts.processed / seconds, 3) if seconds > 0 else None,
            }
        )
    counts.already = already
    return counts


def _shards_left_note(options: AuditOptions, unfinished: list[int], out: Path) -> str:
    return (
        f"Shard {options.shard_index} of {options.num_shards} is done; "
        f"{unfinished_shards_text(unfinished)}. When all are finished, run "
        f"`shortcut-detect report {out}`."
    )


def run_audit(
    options: AuditOptions,
    *,
    loaded: LoadedModel | None = None,
    log: Any = None,
) -> AuditRun:
    """Run (or continue) an audit; analyse and report when all shards are finished.

    Progress messages go to the ``shortcut_detect.audit`` loggers (INFO); the progress bar
    to stderr when it is a terminal (``options.progress``).

    Parameters
    ----------
    options:
        What to audit and how.
    loaded:
        An already loaded model (skips :func:`load_model`).
    log:
        Deprecated: a callable that also receives the progress messages; attach a
        :mod:`logging` handler to ``shortcut_detect.audit`` instead.

    Raises
    ------
    AuditError, ModelLoadError, ManifestError, StoreError
        With a message naming what to change.
    AuditInterrupted
        On Ctrl-C; rows committed so far are kept (rerun to continue).
    """
    with forward_log(log, deprecated="run_audit(log=...)"):
        _check_options(options)
        started = time.perf_counter()
        loaded = loaded or load_model(options.model, **options.load_kwargs())
        if options.window is not None:
            loaded = replace(loaded, transform=replace(loaded.transform, window=options.window))
        generator, layer = _make_generator(options, loaded)
        try:
            image_set, class_names = _read_data(options, loaded)
            out = Path(options.out).expanduser()
            config = run_config(options, loaded, image_set, layer, class_names)
            _prepare_directory(out, config, options.overwrite)
            counts = _audit_shard(options, loaded, generator, image_set, class_names, out, config)
        finally:
            generator.close()
        return _after_shard(options, loaded, out, counts, started)


def _after_shard(
    options: AuditOptions, loaded: LoadedModel, out: Path, counts: _ShardCounts, started: float
) -> AuditRun:
    """The run's result; the report too when this was the last unfinished shard."""
    store = AuditStore(out)
    status = store.shard_status()
    run = AuditRun(
        store=store,
        processed=counts.processed,
        already_done=counts.already,
        failed=counts.failed,
        shard_complete=True,
        all_complete=not status["unfinished"],
        seconds=time.perf_counter() - started,
    )
    if not run.all_complete:
        run.notes.append(_shards_left_note(options, status["unfinished"], out))
        return run
    if options.intervention_samples > 0:
        with _intervention_pool(options, loaded) as pool:
            failure = try_intervention_stage(
                store,
                loaded,
                n_samples=options.intervention_samples,
                seed=options.seed,
                batch_size=options.batch_size,
                num_workers=options.num_workers,
                pool=pool,
            )
        if failure:
            run.notes.append(failure)
    if not options.report:
        run.notes.append(f"Store complete; build the report with `shortcut-detect report {out}`.")
    else:
        from shortcut_detect.audit.report import build_report  # report imports this module

        run.summary, run.report_path = build_report(
            store,
            loaded=loaded,
            n_permutations=options.n_permutations,
            max_analysis_samples=options.max_analysis_samples,
            embedding_samples=options.embedding_samples,
            seed=options.seed,
            num_workers=options.num_workers,
            batch_size=options.batch_size,
            embedder=(
                _ray_executor().ray_embedder(options, loaded) if options.executor == "ray" else None
            ),
        )
    return run


def options_dict(options: AuditOptions) -> dict[str, Any]:
    """The options as a plain dict (for logs)."""
    return asdict(options)
