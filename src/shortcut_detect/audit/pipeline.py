"""The audit run: stream an image set through Grad-CAM into the store, resumably.

:func:`run_audit` loads the model and the data, skips samples a previous run (of this shard)
already stored, decodes images in DataLoader workers, explains each batch with one forward
and one backward pass, and commits rows and heatmaps chunk by chunk. When every shard is
finished it merges the shards and writes ``summary.json`` and ``report.html``.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shortcut_detect.audit.store import (
    STORE_VERSION,
    AuditStore,
    ShardWriter,
    close_inherited_locks,
    write_json,
)
from shortcut_detect.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageRecord,
    ImageRecordDataset,
    ImageSet,
    make_loader,
    mask_text,
    read_image_set,
)
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

TARGETS = ("predicted", "label")


class AuditError(ValueError):
    """The audit cannot run as asked (the message says what to change)."""


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
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool | None = None
    # analysis
    n_permutations: int = 1000
    max_analysis_samples: int = 5000
    embedding_samples: int = 1000
    seed: int = 0
    report: bool = True

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
            "outputs; check --num-classes/--classes or the label column"
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
        raise AuditError(f"--out {out} is a file; give a directory")
    if config_path.is_file():
        import json

        existing = json.loads(config_path.read_text())
        differences = [key for key in _IDENTITY_KEYS if existing.get(key) != config.get(key)]
        if not differences:
            config["cam_size"] = existing.get("cam_size")
            return
        if not overwrite:
            changes = "; ".join(
                f"{key}: {existing.get(key)!r} -> {config.get(key)!r}" for key in differences[:3]
            )
            raise AuditError(
                f"{out} holds an audit of a different run ({changes}). Use another --out, or "
                "--overwrite to discard it."
            )
        shutil.rmtree(out)
    elif out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise AuditError(
                f"--out {out} is a non-empty directory that is not an audit; give a new or "
                "empty directory"
            )
        raise AuditError(f"--overwrite only replaces audit directories; {out} is not one")
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, config)


# -- one batch ----------------------------------------------------------------------------------


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
    from shortcut_detect.analysis.maps import entropy, peak_locations
    from shortcut_detect.analysis.regions import attention_in_region

    labels = np.array([r.label for r in records], dtype=np.int64)
    by_label = target == "label" and bool((labels >= 0).all())
    request = torch.from_numpy(labels) if by_label else None
    explanation = generator.explain(images, [("logits", request)])[0]
    raw = explanation.raw_heatmaps
    predictions = explanation.predictions.astype(np.int64)
    targets = explanation.target_indices.astype(np.int64)
    # numpy, not torch: on a busy CPU torch's thread pool makes tiny ops cost milliseconds.
    logits = explanation.head_output.float().numpy().astype(np.float64)
    if logits.ndim == 1:  # one logit: class 1 is the logit, class 0 its negation
        positive = 1.0 / (1.0 + np.exp(-logits))
        probabilities = np.stack([1.0 - positive, positive], axis=1)
        target_scores = np.where(targets == 1, logits, -logits)
    else:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        target_scores = logits[np.arange(len(labels)), targets]
    confidences = probabilities[np.arange(len(labels)), predictions]
    raw = np.maximum(np.asarray(raw, dtype=np.float32), 0.0)
    if raw.ndim != 3:
        raise AuditError(
            f"The target layer gives {raw.ndim - 1}-D maps; the audit handles 2-D image maps only"
        )
    count, height, width = raw.shape
    cam_max = raw.reshape(count, -1).max(axis=1)
    scale = np.where(cam_max > 0, cam_max, 1.0)
    stored = (raw / scale[:, None, None]).astype(np.float16)

    peaks = peak_locations(raw)
    spreads = entropy(raw)
    mask_fraction = np.full(count, np.nan)
    mask_hit = np.zeros(count, dtype=bool)
    mask_area = np.full(count, np.nan)
    centres = np.full((count, 2), np.nan)
    flags = has_mask.numpy().astype(bool)
    if flags.any():
        region_masks = masks.numpy()[flags].astype(np.float64)
        region = attention_in_region(raw[flags], region_masks)
        mask_fraction[flags] = region.fractions
        mask_hit[flags] = region.pointing_hits
        mask_area[flags] = region_masks.reshape(len(region_masks), -1).mean(axis=1)
        for slot, mask in zip(np.flatnonzero(flags), region_masks):
            if mask.any():
                ys, xs = np.nonzero(mask)
                centres[slot] = (
                    (ys.mean() + 0.5) / mask.shape[0],
                    (xs.mean() + 0.5) / mask.shape[1],
                )

    rows = []
    for i, record in enumerate(records):
        label = int(record.label)
        prediction = int(predictions[i])
        label_probability = (
            float(probabilities[i, label]) if 0 <= label < probabilities.shape[1] else None
        )
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
                "confidence": float(confidences[i]),
                "label_probability": label_probability,
                "correct": (prediction == label) if label >= 0 else None,
                "target": int(targets[i]),
                "target_score": float(target_scores[i]),
                "width": int(sizes[i][0]) if sizes else None,
                "height": int(sizes[i][1]) if sizes else None,
                "has_mask": bool(flags[i]),
                "mask": mask_text(record.mask),
                "mask_area": _nan_to_none(mask_area[i]),
                "mask_attention": _nan_to_none(mask_fraction[i]),
                "mask_pointing_hit": bool(mask_hit[i]) if flags[i] else None,
                "mask_center_y": _nan_to_none(centres[i, 0]),
                "mask_center_x": _nan_to_none(centres[i, 1]),
                "peak_y": float((peaks[i, 0] + 0.5) / height),
                "peak_x": float((peaks[i, 1] + 0.5) / width),
                "entropy": _nan_to_none(spreads[i]),
                "cam_max": float(cam_max[i]),
                "heatmap_row": i,
            }
        )
    return BatchResult(rows=rows, maps=stored)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


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


# -- progress -------------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on a terminal; silence otherwise."""

    def __init__(self, total: int, done: int, enabled: bool | None, label: str) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress = None
        self._task = None
        if self.enabled and total > 0:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=total + done, completed=done, rate="")
        self._started = time.perf_counter()
        self._count = 0

    def advance(self, count: int) -> None:
        self._count += count
        if self._progress is not None:
            elapsed = max(time.perf_counter() - self._started, 1e-9)
            self._progress.update(
                self._task, advance=count, rate=f"{self._count / elapsed:.1f} img/s"
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- the run -----------------------------------------------------------------------------------


def _update_cam_size(out: Path, cam_size: tuple[int, int]) -> None:
    import json

    path = out / "audit.json"
    config = json.loads(path.read_text())
    if config.get("cam_size") != list(cam_size):
        config["cam_size"] = list(cam_size)
        write_json(path, config)


def run_audit(
    options: AuditOptions,
    *,
    loaded: LoadedModel | None = None,
    log: Any = None,
) -> AuditRun:
    """Run (or continue) an audit; analyse and report when all shards are finished.

    Parameters
    ----------
    options:
        What to audit and how.
    loaded:
        An already loaded model (skips :func:`load_model`).
    log:
        ``log(message)`` for progress messages (default: print to stderr).

    Raises
    ------
    AuditError, ModelLoadError, ManifestError, StoreError
        With a message naming what to change.
    AuditInterrupted
        On Ctrl-C; rows committed so far are kept (rerun to continue).
    """
    from shortcut_detect.gradcam import GradCAMHeatmapGenerator

    log = log or (lambda message: print(message, file=sys.stderr))
    if options.target not in TARGETS:
        raise AuditError(f"--target must be one of {', '.join(TARGETS)}, got {options.target!r}")
    if options.num_shards < 1:
        raise AuditError(f"--num-shards must be at least 1, got {options.num_shards}")
    if not 0 <= options.shard_index < options.num_shards:
        raise AuditError(
            f"--shard-index must be in 0..{options.num_shards - 1}, got {options.shard_index}"
        )
    started = time.perf_counter()
    loaded = loaded or load_model(options.model, **options.load_kwargs())
    if loaded.is_torchscript:
        raise AuditError(
            "Grad-CAM needs hooks on a layer, which TorchScript models do not support (a "
            "PyTorch limitation). Load the architecture from Python instead: --model "
            "package.module:factory or torchvision:NAME with --weights FILE, where FILE is "
            "torch.jit.load(path).state_dict() saved with torch.save."
        )
    layer = options.layer or loaded.default_layer
    if layer is None:
        raise AuditError(
            "No layer with a spatial output was found to explain; pass --layer NAME (list the "
            f"candidates with `shortcut-detect layers --model {options.model}`)"
        )
    try:
        generator = GradCAMHeatmapGenerator(
            loaded.model,
            layer,
            device=loaded.device,
            method=options.method,
        )
    except ValueError as error:
        raise AuditError(str(error)) from error

    image_set = read_image_set(
        options.data,
        class_names=loaded.class_names if loaded.class_names_known else None,
        path_column=options.path_column,
        label_column=options.label_column,
        group_column=options.group_column,
        mask_column=options.mask_column,
    )
    # len(class_names), not num_classes: a single-logit model has two classes.
    _check_labels(image_set, len(loaded.class_names))
    class_names = _adopt_data_class_names(loaded, image_set)
    out = Path(options.out).expanduser()
    config = run_config(options, loaded, image_set, layer, class_names)
    _prepare_directory(out, config, options.overwrite)

    records = image_set.shard(options.shard_index, options.num_shards)
    processed = failed = 0
    with ShardWriter(out, options.shard_index, options.num_shards, options.flush_rows) as writer:
        done = writer.done_ids()
        todo = [r for r in records if r.sample_id not in done]
        already = len(records) - len(todo)
        if todo:
            # A report of the earlier, partial store would now be stale.
            for name in ("summary.json", "report.html"):
                (out / name).unlink(missing_ok=True)
        if already:
            log(f"Continuing: {already} of {len(records)} samples of this shard are already done.")
        dataset = ImageRecordDataset(todo, loaded.transform, max_pixels=options.max_pixels)
        loader = make_loader(
            dataset,
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            worker_init=close_inherited_locks,
        )
        progress = _Progress(len(todo), already, options.progress, "Auditing")
        cam_size_known = config.get("cam_size") is not None
        run_started = time.perf_counter()
        try:
            for batch in loader:
                positions = batch["position"].tolist()
                ok = batch["ok"]
                batch_records = [todo[p] for p in positions]
                rows: list[dict[str, Any]] = []
                maps = np.zeros((0, 1, 1), dtype=np.float16)
                ok_index = [i for i, flag in enumerate(ok.tolist()) if flag]
                if ok_index:
                    selected = torch.tensor(ok_index)
                    result = explain_batch(
                        generator,
                        batch["image"][selected],
                        [batch_records[i] for i in ok_index],
                        batch["mask"][selected],
                        batch["has_mask"][selected],
                        class_names,
                        options.target,
                        [tuple(batch["size"][i].tolist()) for i in ok_index],
                    )
                    maps = result.maps
                    if not cam_size_known:
                        _update_cam_size(out, maps.shape[1:])
                        cam_size_known = True
                    by_position = dict(zip(ok_index, result.rows))
                else:
                    by_position = {}
                for i, record in enumerate(batch_records):
                    if i in by_position:
                        rows.append(by_position[i])
                    else:
                        rows.append(failed_row(record, batch["error"][i]))
                        failed += 1
                # rows with maps keep their order, matching `maps`
                writer.add(rows, maps if ok_index else None)
                processed += len(batch_records)
                progress.advance(len(batch_records))
        except KeyboardInterrupt as interrupt:
            writer.flush()
            progress.close()
            raise AuditInterrupted(
                f"Interrupted after {processed} new samples; {already + writer.written} are "
                "stored. Run the same command again to continue."
            ) from interrupt
        finally:
            progress.close()
            generator.close()
        seconds = time.perf_counter() - run_started
        writer.finish(
            {
                "processed": processed,
                "failed": failed,
                "seconds": round(seconds, 3),
                "images_per_second": round(processed / seconds, 3) if seconds > 0 else None,
            }
        )

    store = AuditStore(out)
    status = store.shard_status()
    run = AuditRun(
        store=store,
        processed=processed,
        already_done=already,
        failed=failed,
        shard_complete=True,
        all_complete=not status["unfinished"],
        seconds=time.perf_counter() - started,
    )
    if not run.all_complete:
        run.notes.append(
            f"Shard {options.shard_index} of {options.num_shards} is done; shards "
            f"{', '.join(map(str, status['unfinished']))} are not. When all are finished, run "
            f"`shortcut-detect report {out}`."
        )
        return run
    if not options.report:
        run.notes.append(f"Store complete; build the report with `shortcut-detect report {out}`.")
        return run
    if options.report:
        from shortcut_detect.audit.report import build_report

        run.summary, run.report_path = build_report(
            store,
            loaded=loaded,
            n_permutations=options.n_permutations,
            max_analysis_samples=options.max_analysis_samples,
            embedding_samples=options.embedding_samples,
            seed=options.seed,
            num_workers=options.num_workers,
            batch_size=options.batch_size,
            log=log,
        )
    return run


def options_dict(options: AuditOptions) -> dict[str, Any]:
    """The options as a plain dict (for logs)."""
    return asdict(options)
