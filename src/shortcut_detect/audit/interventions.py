"""The intervention stage of an audit: does the model *rely* on the suspected regions?

After the explain pass, :func:`run_intervention_stage` re-reads a stratified subsample of the
images through the model's preprocessing, builds the candidates (the given masks, and regions
discovered from the stored heatmaps, groups or embeddings), tests each one with
:func:`~shortcut_detect.interventions.intervene` (remove the region, compare with control
regions of the same shape) and writes ``interventions/interventions.json`` plus a few
before/after example images into the store. A rerun with the same store and options reuses
the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shortcut_detect.analysis.maps import location_words, region_location
from shortcut_detect.audit.analysis import stratified_subsample
from shortcut_detect.audit.store import (
    INTERVENTIONS_DIR,
    INTERVENTIONS_FILE,
    AuditStore,
    load_interventions,
    write_json,
)
from shortcut_detect.common.serialization import to_jsonable
from shortcut_detect.data.images import ImageRecord, ImageRecordDataset, make_loader, mask_from_text
from shortcut_detect.interventions import (
    CandidateTest,
    InterventionResult,
    confirm_candidates,
    discover_candidates,
    intervene,
)
from shortcut_detect.interventions.core import ForwardPool, predict_probabilities
from shortcut_detect.interventions.fills import apply_fill

__all__ = [
    "INTERVENTIONS_DIR",
    "INTERVENTIONS_FILE",
    "load_interventions",
    "run_intervention_stage",
]

_LOG = logging.getLogger(__name__)

GIVEN_MASK = "given mask"
VOLUME_NOTE = (
    "Volumes: the mask column's regions are tested; discovery of candidate regions without "
    "masks works on 2-D images only."
)
N_EXAMPLES = 3
_RESAMPLES = 1000  # bootstrap resamples and sign-flip permutations per estimate
_FILE_VERSION = 1


def _fingerprint(store: AuditStore, n_stored: int, options: dict[str, Any]) -> dict[str, Any]:
    config = store.config
    return {
        "version": _FILE_VERSION,
        "model": config.get("model"),
        "weights": config.get("weights"),
        "data_fingerprint": config.get("data_fingerprint"),
        "n_samples_stored": n_stored,
        "options": options,
    }


def _load_images(
    rows: list[dict[str, Any]], preprocessing: Any, batch_size: int, num_workers: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Model inputs, masks at input size, has-mask flags and readable flags of ``rows``."""
    records = [
        ImageRecord(
            sample_id=row["sample_id"],
            index=i,
            path=row["path"],
            label=int(row["label"]),
            label_name=str(row.get("label_name") or ""),
            group=row.get("group"),
            mask=mask_from_text(row.get("mask")),
        )
        for i, row in enumerate(rows)
    ]
    loader = make_loader(
        ImageRecordDataset(records, preprocessing),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    images, masks, has_mask, ok = [], [], [], []
    for batch in loader:
        images.append(batch["image"])
        masks.append(batch["mask"])
        has_mask.append(batch["has_mask"].numpy())
        ok.append(batch["ok"].numpy())
    return (
        torch.cat(images),
        torch.cat(masks),
        np.concatenate(has_mask).astype(bool),
        np.concatenate(ok).astype(bool),
    )


def _central_slice(volume: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The axial slice ``(C, H, W)`` through the middle of the mask (of the volume if empty)."""
    depths = torch.nonzero(mask.reshape(mask.shape[0], -1).any(dim=1)).flatten()
    middle = int(depths.float().mean().round()) if len(depths) else volume.shape[1] // 2
    return volume[:, middle]


def _entry(
    source: str,
    description: str,
    result: InterventionResult,
    location: str,
    reading: str,
    box: Any,
) -> dict[str, Any]:
    removal = result.removal[result.fill]
    return {
        "source": source,
        "description": description,
        "location": location,
        "box": box,
        "confirmed": result.relied_on,
        "reading": result.reading,
        "sentence": reading,
        "effect": result.effect.value,
        "interval": [result.effect.low, result.effect.high],
        "p": result.effect.p_value,
        "flip_rate": removal.flip_rate.value,
        "flip_interval": [removal.flip_rate.low, removal.flip_rate.high],
        "control_flip_rate": removal.control_flip_rate.value,
        "control_drop": removal.control_probability_drop.value,
        "fill": result.fill,
        "n_tested": result.n_tested,
        "salient": result.salient,
        "attention_enrichment": None if result.attention is None else result.attention.enrichment,
        "summary": result.summary,
        "result": result.to_dict(),
    }


def _given_mask_sentence(result: InterventionResult, location: str) -> str:
    removal = result.removal[result.fill]
    if result.relied_on:
        return (
            f"The model relies on the given mask region ({location}): removing it flips "
            f"{removal.flip_rate.text(percent=True)} of predictions, control "
            f"{removal.control_flip_rate.value:.0%}; effect {result.effect.text()}."
        )
    return (
        f"Not confirmed: the given mask region ({location}) reads '{result.reading}' "
        f"(effect {result.effect.text()})."
    )


def _to_uint8(image: torch.Tensor, preprocessing: Any) -> np.ndarray:
    """A preprocessed ``(C, H, W)`` input back to a displayable RGB uint8 image."""
    values = image.detach().float().clone()
    if preprocessing.mean is not None and preprocessing.std is not None:
        std = torch.tensor(preprocessing.std, dtype=values.dtype)[:, None, None]
        mean = torch.tensor(preprocessing.mean, dtype=values.dtype)[:, None, None]
        values = values * std + mean
    array = values.clamp(0, 1).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.uint8(array[:, :, :3] * 255 + 0.5)


def _examples(
    model: Any,
    device: torch.device,
    images: torch.Tensor,
    masks: np.ndarray,
    result: InterventionResult,
    ids: list[str],
    class_names: list[str],
    preprocessing: Any,
    folder: Path,
    prefix: str,
    pool: ForwardPool | None = None,
) -> list[dict[str, Any]]:
    """Save a few (original, region removed) pairs, flipped predictions first."""
    from PIL import Image

    tested = np.flatnonzero(result.per_sample["tested"])
    flips = np.nan_to_num(result.per_sample["region_flip"][tested], nan=0.0)
    drops = np.nan_to_num(result.per_sample["region_drop"][tested], nan=0.0)
    chosen = tested[np.lexsort((-drops, -flips))][:N_EXAMPLES]
    if not len(chosen):
        return []
    index = torch.from_numpy(chosen)
    mask = torch.from_numpy(
        masks[chosen] if masks.ndim == images.ndim - 1 else np.repeat(masks[None], len(chosen), 0)
    )
    removed = apply_fill(images[index], mask, result.fill, torch.Generator().manual_seed(0))
    before = predict_probabilities(model, images[index], device=device, pool=pool)
    after = predict_probabilities(model, removed, device=device, pool=pool)
    examples = []
    for k, position in enumerate(chosen):
        names = []
        pair = (("original", images[position]), ("removed", removed[k]))
        if images.ndim == 5:  # volumes: the axial slice through the region
            pair = tuple((kind, _central_slice(volume, mask[k])) for kind, volume in pair)
        for kind, tensor in pair:
            name = f"{prefix}_{k}_{kind}.png"
            Image.fromarray(_to_uint8(tensor, preprocessing)).save(folder / name)
            names.append(f"{INTERVENTIONS_DIR}/{name}")
        old, new = int(before[k].argmax()), int(after[k].argmax())
        examples.append(
            {
                "sample_id": ids[position],
                "original": names[0],
                "removed": names[1],
                "before": _class(class_names, old),
                "before_probability": float(before[k, old]),
                "after": _class(class_names, new),
                "after_probability": float(after[k, new]),
                "flipped": old != new,
            }
        )
    return examples


def _class(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


@dataclass
class _Subsample:
    """The images of the stage, read through the model's preprocessing, with their masks."""

    rows: list[dict[str, Any]]
    images: torch.Tensor
    masks: np.ndarray
    has_mask: np.ndarray
    heatmaps: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [row["sample_id"] for row in self.rows]


@dataclass
class _ExampleWriter:
    """Saves before/after example images of one test into the stage's folder."""

    loaded: Any
    sample: _Subsample
    class_names: list[str]
    folder: Path
    pool: ForwardPool | None = None

    def __call__(
        self, masks: np.ndarray, result: InterventionResult, prefix: str
    ) -> list[dict[str, Any]]:
        return _examples(
            self.loaded.model,
            self.loaded.device,
            self.sample.images,
            masks,
            result,
            self.sample.ids,
            self.class_names,
            self.loaded.transform,
            self.folder,
            prefix,
            self.pool,
        )


def _stratified_rows(
    table: Any, has_groups: bool, n_samples: int, seed: int
) -> list[dict[str, Any]]:
    """At most ``n_samples`` rows of ``table``, stratified by group, mask presence and
    prediction (only the chosen rows become Python dicts: the table may be huge)."""
    groups = table.column("group").to_pylist() if has_groups else [""] * table.num_rows
    strata = np.array(
        [
            f"{group}|{bool(mask)}|{prediction}"
            for group, mask, prediction in zip(
                groups, table.column("mask").to_pylist(), table.column("prediction").to_pylist()
            )
        ],
        dtype=object,
    )
    ids = table.column("sample_id").to_numpy(zero_copy_only=False)
    return table.take(stratified_subsample(ids, strata, n_samples, seed)).to_pylist()


def _read_subsample(
    store: AuditStore,
    rows: list[dict[str, Any]],
    loaded: Any,
    batch_size: int,
    num_workers: int,
) -> _Subsample:
    """Decode the rows' images and masks (dropping unreadable ones) and load their heatmaps."""
    images, mask_tensor, has_mask, ok = _load_images(
        rows, loaded.transform, batch_size, num_workers
    )
    keep = np.flatnonzero(ok)
    rows = [rows[i] for i in keep]
    heatmaps = store.heatmaps([row["sample_id"] for row in rows]).astype(np.float32)
    return _Subsample(
        rows=rows,
        images=images[torch.from_numpy(keep)],
        masks=mask_tensor.numpy()[keep].astype(bool),
        has_mask=has_mask[keep],
        heatmaps=heatmaps,
    )


def _given_mask_entry(
    sample: _Subsample, loaded: Any, examples: _ExampleWriter, options: dict[str, Any]
) -> dict[str, Any] | None:
    """The test of the mask column's regions (``None`` when too few images carry one)."""
    has_mask, masks = sample.has_mask, sample.masks
    if not (has_mask.sum() >= 2 or (has_mask.any() and (~has_mask).any())):
        return None
    result = intervene(
        loaded.model, sample.images, masks, carriers=has_mask, heatmaps=sample.heatmaps, **options
    )
    location = region_location(masks[has_mask].any(axis=0))
    entry = _entry(
        GIVEN_MASK,
        f"the mask column's regions ({int(has_mask.sum())} of {len(sample.rows)} images carry one)",
        result,
        location,
        _given_mask_sentence(result, location),
        None,
    )
    entry["examples"] = examples(masks, result, "mask")
    return entry


def _discovered_entries(
    sample: _Subsample,
    loaded: Any,
    examples: _ExampleWriter,
    options: dict[str, Any],
    has_groups: bool,
) -> tuple[list[dict[str, Any]], int]:
    """Candidate regions discovered from heatmaps, groups or embeddings, each tested;
    returns the entries and the number of candidates."""
    rows = sample.rows
    groups = np.array([str(row["group"]) for row in rows]) if has_groups else None
    embeddings = None
    if groups is None:
        embeddings = _embeddings(loaded, sample.images, options["batch_size"])
    predictions = np.array([int(row["prediction"]) for row in rows])
    labels = np.array([int(row["label"]) for row in rows])
    candidates = discover_candidates(
        sample.heatmaps,
        image_size=tuple(sample.images.shape[2:]),
        groups=groups,
        embeddings=embeddings,
        predictions=predictions if (labels >= 0).all() else None,
        labels=labels if (labels >= 0).all() else None,
        n_permutations=200,
        seed=options["seed"],
    )
    tests: list[CandidateTest] = confirm_candidates(
        loaded.model, sample.images, candidates, heatmaps=sample.heatmaps, **options
    )
    entries = []
    for k, test in enumerate(tests):
        candidate = test.candidate
        entry = _entry(
            candidate.source,
            candidate.description,
            test.result,
            region_location(candidate.region),
            test.reading,
            list(candidate.box),
        )
        # Relied on but without a fixed pattern: part of the object, not a shortcut.
        entry.update(
            confirmed=test.confirmed,
            object_like=test.object_like,
            pattern_separation=candidate.pattern_separation,
            pattern_consistency=candidate.pattern_consistency,
            ninths=sorted({*_ninths(candidate.region), *filter(None, [candidate.ninth])}),
        )
        entry["examples"] = examples(candidate.region, test.result, f"candidate{k}")
        entries.append(entry)
    return entries, len(candidates)


def _ninths(region: np.ndarray) -> list[str]:
    """The ninths of the image holding at least a quarter of the region (a hotspot's box
    may straddle the ninth its peaks came from), so the verdict can match the peak signal."""
    height, width = region.shape[-2:]
    total = max(int(region.sum()), 1)
    names = []
    for row in range(3):
        for column in range(3):
            cell = region[
                row * height // 3 : (row + 1) * height // 3,
                column * width // 3 : (column + 1) * width // 3,
            ]
            if 4 * int(cell.sum()) >= total:
                names.append(location_words((row, column), (3, 3)))
    return names


def _discovery_notes(n_candidates: int) -> list[str]:
    if n_candidates == 0:
        return [
            "Discovery found no candidate region (no off-centre attention hotspot, "
            "concentrated SpRAy cluster or significant group difference)."
        ]
    if n_candidates > 1:
        return [
            f"{n_candidates} discovered candidates were tested; their significance level is "
            "Bonferroni-corrected."
        ]
    return []


def try_intervention_stage(store: AuditStore, loaded: Any, **options: Any) -> str | None:
    """Merge the store and run :func:`run_intervention_stage` with ``options``.

    Returns ``None``, or the note to show when the stage failed (the rest of the report is
    still useful, so a failure here does not stop it).
    """
    store.merge()
    try:
        run_intervention_stage(store, loaded, **options)
    except (ValueError, RuntimeError) as error:
        return f"The intervention stage failed and was skipped: {error}"
    return None


def run_intervention_stage(
    store: AuditStore,
    loaded: Any,
    *,
    n_samples: int = 200,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    pool: ForwardPool | None = None,
) -> dict[str, Any] | None:
    """Test the given and discovered candidate regions on a subsample; write the results.

    Parameters
    ----------
    store:
        A complete, merged audit store.
    loaded:
        The audited :class:`~shortcut_detect.models.LoadedModel`.
    n_samples:
        Images in the stratified (by group, mask presence and prediction) subsample;
        ``0`` skips the stage.
    seed, batch_size, num_workers:
        Subsampling and test seed; batching of decoding and forward passes.
    pool:
        Where the forward passes of the tests run (``None``: in this process; the Ray
        executor's actors, see :class:`~shortcut_detect.interventions.core.ForwardPool`).
        The statistics are computed here either way.

    Returns
    -------
    The JSON written to ``interventions/interventions.json`` (``None`` when skipped).
    """
    if n_samples <= 0:
        return None
    import pyarrow.compute as pc

    columns = ["sample_id", "path", "status", "label", "label_name", "group", "mask", "prediction"]
    table = store.table(columns)
    table = table.filter(pc.equal(table.column("status"), "ok"))
    options = {"n_samples": int(n_samples), "seed": int(seed)}
    fingerprint = _fingerprint(store, table.num_rows, options)
    existing = load_interventions(store)
    if existing is not None and existing.get("fingerprint") == fingerprint:
        _LOG.info("Interventions: reusing the results of an earlier run.")
        return existing
    if table.num_rows < 4:
        return None
    config = store.config
    has_groups = bool(config.get("has_groups"))
    subset = _stratified_rows(table, has_groups, int(n_samples), seed)
    _LOG.info("Interventions on %d images...", len(subset))
    sample = _read_subsample(store, subset, loaded, batch_size, num_workers)
    folder = store.root / INTERVENTIONS_DIR
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    examples = _ExampleWriter(loaded, sample, list(config.get("class_names", [])), folder, pool)
    test_options = {
        "n_bootstrap": _RESAMPLES,
        "n_permutations": _RESAMPLES,
        "batch_size": batch_size,
        "device": loaded.device,
        "seed": seed,
        "pool": pool,
    }
    given = _given_mask_entry(sample, loaded, examples, test_options)
    if sample.images.ndim == 5:
        discovered, notes = [], [VOLUME_NOTE]
    else:
        discovered, n_candidates = _discovered_entries(
            sample, loaded, examples, test_options, has_groups
        )
        notes = _discovery_notes(n_candidates)
    output = to_jsonable(
        {
            "fingerprint": fingerprint,
            "n_samples": len(sample.rows),
            "candidates": ([given] if given is not None else []) + discovered,
            "notes": notes,
        }
    )
    write_json(folder / INTERVENTIONS_FILE, output)
    return output


def _embeddings(loaded: Any, images: torch.Tensor, batch_size: int) -> np.ndarray | None:
    """Penultimate features of ``images`` (for candidate groups); ``None`` if unavailable."""
    from shortcut_detect.embeddings import extract_embeddings

    try:
        return extract_embeddings(loaded.model, None, images, batch_size, progress=False)
    except (ValueError, RuntimeError, TypeError) as error:
        _LOG.info("Interventions: no embeddings for candidate groups (%s).", error)
        return None
