"""The audit's model passes on a Ray cluster (``executor="ray"``, ``--executor ray``).

The driver keeps everything the local executor does: the record listing, the resume logic
(the store's committed ids are skipped), the :class:`~shortcut_detect.audit.store.ShardWriter`
and the analysis. Only the model passes move to Ray Data:

- the records still to do are cut into chunks of ``batch_size`` (the local executor's
  batches, so every image is explained in the same batch as it would be locally) and become a
  dataset, one chunk per row; each actor call takes several chunks
  (:func:`chunks_per_call`);
- each chunk is decoded (:class:`~shortcut_detect.data.images.ImageRecordDataset`:
  unreadable and missing files become error rows, as locally): on a CPU-only cluster by the
  actor that explains it, with GPUs by separate CPU tasks (:func:`_decode_in_actors`);
- an actor pool explains them (:class:`_ChunkExplainer`: model and CAM engine built once per
  actor; ``num_gpus`` per actor, fractional allowed, when the cluster has GPUs). Ray replaces
  an actor that dies and retries its chunk;
- the driver streams each explained chunk into the store as it arrives (it never holds more
  than the chunks in flight), dropping a chunk it already stored, so a retried chunk cannot
  write a row twice.

The embedding pass of the analysis runs in an actor pool too (:func:`ray_embedder`), and so do
the forward passes of the intervention stage (:class:`RayForwardPool`: the driver builds the
counterfactual images and computes the statistics; the actors only return probabilities).
Ray is imported only inside these functions: ``import shortcut_detect`` and the local executor
never load it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from shortcut_detect.audit.pipeline import (
    AuditError,
    AuditOptions,
    _batch_rows,
    _interrupted,
    _make_generator,
    _ShardCounts,
    _update_cam_size,
)
from shortcut_detect.audit.store import ShardWriter
from shortcut_detect.common.progress import ProgressBar
from shortcut_detect.common.serialization import json_default
from shortcut_detect.data.images import ImageRecord, ImageRecordDataset, collate_samples
from shortcut_detect.gradcam import class_probabilities, select_head
from shortcut_detect.models import LoadedModel

__all__ = [
    "RAY_INSTALL_HINT",
    "ActorPlan",
    "RayForwardPool",
    "chunks_per_call",
    "connect",
    "explain_on_ray",
    "import_ray",
    "plan_actors",
    "ray_embedder",
]

_LOG = logging.getLogger(__name__)
RAY_INSTALL_HINT = "pip install 'shortcut-detect[ray]'"
# Share of a cluster's CPUs (at least one) left to the decoding tasks.
_DECODE_CPU_SHARE = 0.25


def import_ray() -> Any:
    """The ``ray`` module (with Ray Data); :class:`AuditError` naming the extra if missing."""
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise AuditError(
            f'executor="ray" needs Ray (Ray Data), which is not installed: {RAY_INSTALL_HINT}'
        ) from error
    return ray


def connect(address: str | None) -> Any:
    """Join the Ray cluster at ``address`` (``"auto"``: the one this machine belongs to), or
    start a local instance with this machine's cores when ``address`` is ``None``.

    A process already connected (a notebook, the tests) keeps its connection.
    """
    ray = import_ray()
    # Ray Data's per-dataset INFO lines would drown the audit's own progress messages, and it
    # warns that its progress bars are off, as asked (the audit shows its own).
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    if address is None:
        _LOG.info("Starting a local Ray instance with %d CPUs...", os.cpu_count() or 1)
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    else:
        _LOG.info("Joining the Ray cluster at %s...", address)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise AuditError(
                f"Could not join the Ray cluster at ray_address={address} ({error}); start it "
                "with `ray start --head` or give its address (host:6379, or auto)"
            ) from error
    return ray


@dataclass(frozen=True)
class ActorPlan:
    """How the model passes use the cluster: actors and each one's resources."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads_per_actor: int

    def describe(self) -> str:
        """``"2 actors (0.5 CPU, 1 torch thread each)"``."""
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        threads = "thread" if self.threads_per_actor == 1 else "threads"
        return (
            f"{self.actors} actor{'s' if self.actors != 1 else ''} ({self.cpus_per_actor:g} CPU"
            f"{gpu}, {self.threads_per_actor} torch {threads} each)"
        )


def plan_actors(
    resources: dict[str, float], actors: int | None = None, decoding_tasks: bool = True
) -> ActorPlan:
    """Actors and per-actor resources for a cluster with ``resources`` (Ray's
    ``cluster_resources()``: ``CPU``, ``GPU``).

    With ``decoding_tasks``, a quarter of the CPUs (at least one) is left to separate
    decoding tasks; without (the actors decode, or nothing is decoded), none. Without
    ``actors``: one per GPU, or on a CPU-only cluster one per CPU not left to decoding. GPUs
    are shared evenly (fractional when there are more actors than GPUs, at most one each);
    the CPUs not left to decoding are shared evenly as Ray reservations, while torch threads
    share all CPUs (the CPUs over the actors).
    """
    cpus = float(resources.get("CPU", 1.0))
    gpus = float(resources.get("GPU", 0.0))
    model_cpus = (
        max(cpus - max(1.0, cpus * _DECODE_CPU_SHARE), min(cpus, 0.5)) if decoding_tasks else cpus
    )
    if actors is None:
        actors = int(gpus) if gpus >= 1 else max(1, int(model_cpus))
    if actors < 1:
        raise AuditError(f"ray_actors= must be at least 1, got {actors}")
    gpus_per_actor = min(1.0, gpus / actors) if gpus > 0 else 0.0
    cpus_per_actor = min(1.0, model_cpus / actors)
    # Ray's scheduler works in hundredths of a CPU.
    cpus_per_actor = max(0.01, math.floor(cpus_per_actor * 100) / 100)
    # Like the local executor (torch threads on every core, decoding in between), an actor
    # gets torch threads for its share of all the CPUs, not only of those it reserves.
    threads = max(1, round(cpus / actors)) if not gpus_per_actor else 1
    return ActorPlan(actors, cpus_per_actor, gpus_per_actor, threads)


# -- chunks: what travels between the driver, the decoding tasks and the actors -------------------


def _record_json(records: Sequence[ImageRecord]) -> str:
    return json.dumps(
        [[r.sample_id, r.index, r.path, r.label, r.label_name, r.group, r.mask] for r in records],
        default=json_default,
    )


def _records(text: str) -> list[ImageRecord]:
    records = []
    for sample_id, index, path, label, label_name, group, mask in json.loads(text):
        if mask is not None:
            kind, value = mask
            mask = (kind, tuple(value) if kind == "box" else value)
        records.append(ImageRecord(sample_id, index, path, label, label_name, group, mask))
    return records


def _chunk_items(records: Sequence[ImageRecord], batch_size: int) -> list[dict[str, Any]]:
    return [
        {"chunk": number, "records": _record_json(records[start : start + batch_size])}
        for number, start in enumerate(range(0, len(records), batch_size))
    ]


def _decode_chunk(text: str, preprocessing: Any, max_pixels: int) -> dict[str, Any]:
    """One chunk's images, collated (a bad file becomes ``ok=False``, not an error)."""
    dataset = ImageRecordDataset(_records(text), preprocessing, max_pixels=max_pixels)
    return collate_samples([dataset[i] for i in range(len(dataset))])


def _decode_chunks(
    batch: dict[str, np.ndarray], *, preprocessing: Any, max_pixels: int
) -> dict[str, np.ndarray]:
    """Ray task: decode each chunk's images."""
    decoded = [
        pickle.dumps(_decode_chunk(text, preprocessing, max_pixels), pickle.HIGHEST_PROTOCOL)
        for text in batch["records"]
    ]
    return {**batch, "decoded": np.array(decoded, dtype=object)}


def _decoded(
    batch: dict[str, np.ndarray], preprocessing: Any, max_pixels: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each chunk's records and decoded images: from the decoding tasks, or decoded here."""
    for k, text in enumerate(batch["records"]):
        if "decoded" in batch:
            yield text, pickle.loads(batch["decoded"][k])
        else:
            yield text, _decode_chunk(text, preprocessing, max_pixels)


def _decode_in_actors(resources: dict[str, float]) -> bool:
    """Whether the actors decode their chunks themselves: on CPU-only clusters, where
    decoding and the model share the same CPUs anyway, separate decoding tasks only add
    object-store copies and scheduling (measured: the explain pass of a small model is
    several times faster); with GPUs, CPU tasks decode while the GPU actors compute."""
    return not resources.get("GPU")


def _decoding_memory(preprocessing: Any, batch_size: int) -> int:
    """Bytes a decoding task reserves: its worker (Python, torch, Ray: about 460 MiB unique
    memory) plus a few copies of one decoded chunk. Ray Data warns of the risk of running
    out of memory when a task uses more than 4/5 of its reservation."""
    chunk = batch_size * preprocessing.channels * math.prod(preprocessing.size) * 4
    return 640 * 2**20 + 4 * chunk


def _portable(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with its model on the CPU, so that actors on any device can unpickle it."""
    if loaded.device.type == "cpu":
        return loaded
    return replace(loaded, model=deepcopy(loaded.model).cpu(), device=torch.device("cpu"))


def _on_actor_device(loaded: LoadedModel, threads: int) -> LoadedModel:
    import ray

    torch.set_num_threads(threads)
    if ray.get_gpu_ids() and torch.cuda.is_available():
        device = torch.device("cuda")
        return replace(loaded, model=loaded.model.to(device), device=device)
    return loaded


class _ChunkExplainer:
    """Ray actor: explains decoded chunks into store rows and heatmaps (model built once)."""

    def __init__(
        self, loaded: LoadedModel, options: AuditOptions, class_names: list[str], threads: int
    ) -> None:
        self.loaded = _on_actor_device(loaded, threads)
        self.generator, _ = _make_generator(options, self.loaded)
        self.class_names = class_names
        self.target = options.target
        self.max_pixels = options.max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows_out, maps_out = [], []
        for text, decoded in _decoded(batch, self.loaded.transform, self.max_pixels):
            rows, maps, _ = _batch_rows(
                decoded, _records(text), self.generator, self.class_names, self.target
            )
            rows_out.append(json.dumps(rows, default=json_default))
            maps_out.append(b"" if maps is None else pickle.dumps(maps, pickle.HIGHEST_PROTOCOL))
        return {
            "chunk": batch["chunk"],
            "rows": np.array(rows_out, dtype=object),
            "maps": np.array(maps_out, dtype=object),
        }


class _ChunkEmbedder:
    """Ray actor: penultimate features of decoded chunks (model built once)."""

    def __init__(self, loaded: LoadedModel, batch_size: int, threads: int, max_pixels: int) -> None:
        self.loaded = _on_actor_device(loaded, threads)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from shortcut_detect.embeddings import extract_embeddings

        features = []
        for _, decoded in _decoded(batch, self.loaded.transform, self.max_pixels):
            images = decoded["image"]
            array = extract_embeddings(
                self.loaded.model, None, images, self.batch_size, progress=False
            )
            features.append(pickle.dumps(array, pickle.HIGHEST_PROTOCOL))
        return {"chunk": batch["chunk"], "features": np.array(features, dtype=object)}


def chunks_per_call(chunks: int, batch_size: int, actors: int) -> int:
    """How many chunks of ``batch_size`` images an actor explains per call.

    Each call is a Ray task with its own scheduling and object-store hand-offs (a few
    milliseconds on a busy machine: half the throughput of a small model when every call
    carries one chunk of 64 48x48 images), so a call carries about 512 images; but no fewer
    than four calls per actor, so that a small audit still keeps every actor busy.
    """
    wanted = max(1, 512 // max(1, batch_size))
    return max(1, min(wanted, math.ceil(chunks / (4 * max(1, actors)))))


def _pipeline(
    records: Sequence[ImageRecord],
    loaded: LoadedModel,
    *,
    batch_size: int,
    max_pixels: int,
    actor_class: type,
    constructor: dict[str, Any],
    plan: ActorPlan,
    decode_in_actors: bool,
) -> Any:
    """The Ray Data dataset: chunks -> decoding tasks (unless ``decode_in_actors``) -> actor
    pool of ``actor_class``."""
    ray = import_ray()
    items = _chunk_items(records, batch_size)
    per_call = chunks_per_call(len(items), batch_size, plan.actors)
    blocks = max(1, min(math.ceil(len(items) / per_call), 4096))
    try:
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
    except TypeError:  # Ray < 2.10
        dataset = ray.data.from_items(items, parallelism=blocks)
    if not decode_in_actors:
        dataset = dataset.map_batches(
            _decode_chunks,
            batch_size=per_call,
            fn_kwargs={"preprocessing": loaded.transform, "max_pixels": max_pixels},
            num_cpus=1,
            # Being unlike the actors' arguments, the memory reservation also keeps Ray Data
            # from fusing decoding into the actors (it does when both ask for one CPU), so
            # that decoding overlaps with the model passes.
            memory=_decoding_memory(loaded.transform, batch_size),
        )
    return dataset.map_batches(
        actor_class,
        batch_size=per_call,
        fn_constructor_kwargs=constructor,
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
    )


# -- the explain pass -----------------------------------------------------------------------


def _explained_chunks(
    dataset: Any,
) -> Iterator[tuple[list[dict[str, Any]], np.ndarray | None]]:
    """Each chunk's rows and maps, once: a chunk that Ray delivers again (a retried task
    whose first attempt also finished) is dropped. Within a run every sample id is in one
    chunk, so remembering chunk numbers (not sample ids) keeps the driver's memory small."""
    delivered: set[int] = set()
    for item in dataset.iter_rows():
        chunk = int(item["chunk"])
        if chunk in delivered:
            continue
        delivered.add(chunk)
        maps = pickle.loads(item["maps"]) if len(item["maps"]) else None
        yield json.loads(item["rows"]), maps


def explain_on_ray(
    options: AuditOptions,
    loaded: LoadedModel,
    generator: Any,
    todo: list[ImageRecord],
    writer: ShardWriter,
    progress: ProgressBar,
    class_names: list[str],
    cam_size_known: bool,
) -> _ShardCounts:
    """Explain and store every record of ``todo`` on Ray (the local ``_explain_shard``'s
    counterpart; ``generator`` is the driver's, unused: each actor builds its own)."""
    del generator
    counts = _ShardCounts()
    if not todo:
        return counts
    ray = connect(options.ray_address)
    resources = ray.cluster_resources()
    decode_in_actors = _decode_in_actors(resources)
    plan = plan_actors(resources, options.ray_actors, decoding_tasks=not decode_in_actors)
    _LOG.info("Explaining on Ray: %s.", plan.describe())
    dataset = _pipeline(
        todo,
        loaded,
        batch_size=options.batch_size,
        max_pixels=options.max_pixels,
        actor_class=_ChunkExplainer,
        constructor={
            "loaded": _portable(loaded),
            "options": options,
            "class_names": class_names,
            "threads": plan.threads_per_actor,
        },
        plan=plan,
        decode_in_actors=decode_in_actors,
    )
    try:
        for rows, maps in _explained_chunks(dataset):
            if maps is not None and len(maps) and not cam_size_known:
                _update_cam_size(writer.root, maps.shape[1:])
                cam_size_known = True
            writer.add(rows, maps)
            counts.processed += len(rows)
            counts.failed += sum(row["status"] != "ok" for row in rows)
            progress.advance(len(rows))
    except KeyboardInterrupt as interrupt:
        raise _interrupted(writer, counts.processed) from interrupt
    return counts


# -- the embedding pass -------------------------------------------------------------------------


def ray_embedder(
    options: AuditOptions, loaded: LoadedModel
) -> Callable[[list[str], Any, int], np.ndarray]:
    """An ``embedder`` for :func:`~shortcut_detect.audit.analysis.analyse_store` that extracts
    the features in an actor pool of the cluster ``options`` name."""

    def embed(paths: list[str], preprocessing: Any, batch_size: int) -> np.ndarray:
        ray = connect(options.ray_address)
        resources = ray.cluster_resources()
        decode_in_actors = _decode_in_actors(resources)
        plan = plan_actors(resources, options.ray_actors, decoding_tasks=not decode_in_actors)
        records = [
            ImageRecord(sample_id=str(i), index=i, path=p, label=-1, label_name="")
            for i, p in enumerate(paths)
        ]
        dataset = _pipeline(
            records,
            replace(loaded, transform=preprocessing),
            batch_size=batch_size,
            max_pixels=options.max_pixels,
            actor_class=_ChunkEmbedder,
            constructor={
                "loaded": _portable(loaded),
                "batch_size": batch_size,
                "threads": plan.threads_per_actor,
                "max_pixels": options.max_pixels,
            },
            plan=plan,
            decode_in_actors=decode_in_actors,
        )
        chunks = {
            int(item["chunk"]): pickle.loads(item["features"]) for item in dataset.iter_rows()
        }
        return np.concatenate([chunks[k] for k in sorted(chunks)])

    return embed


# -- the intervention stage's forward passes ---------------------------------------------------


class _ForwardActor:
    """Ray actor: class probabilities of batches of model inputs (model loaded once)."""

    def __init__(self, loaded: LoadedModel, threads: int) -> None:
        self.loaded = _on_actor_device(loaded, threads)
        self.loaded.model.eval()

    def probabilities(self, batch: np.ndarray, head: str | int) -> np.ndarray:
        # A copy: arrays from the object store are read-only.
        inputs = torch.from_numpy(np.array(batch)).to(self.loaded.device)
        with torch.inference_mode():
            outputs = self.loaded.model(inputs)
            return class_probabilities(select_head(outputs, head)).cpu().numpy()


class RayForwardPool:
    """The intervention stage's forward passes on actors of the cluster ``options`` name (a
    :class:`~shortcut_detect.interventions.core.ForwardPool`).

    The actors start at the first batch (a stage that reuses earlier results starts none) and
    stop when the pool is closed (``with RayForwardPool(...) as pool:``). Batches go to the
    actors in turn, at most ``in_flight`` per actor at once, so the driver's memory holds a
    bounded number of counterfactual batches. An actor that dies is restarted and its
    batches retried.
    """

    def __init__(self, options: AuditOptions, loaded: LoadedModel, in_flight: int = 2) -> None:
        self._options = options
        self._loaded = loaded
        self._in_flight = in_flight
        self._actors: list[Any] = []
        self._pending: list[Any] = []
        self._turn = 0

    def _start(self) -> None:
        ray = connect(self._options.ray_address)
        plan = plan_actors(ray.cluster_resources(), self._options.ray_actors, decoding_tasks=False)
        _LOG.info("Interventions on Ray: %s.", plan.describe())
        actor_class = ray.remote(
            num_cpus=plan.cpus_per_actor,
            num_gpus=plan.gpus_per_actor,
            max_restarts=-1,
            max_task_retries=-1,
        )(_ForwardActor)
        model = ray.put(_portable(self._loaded))
        self._actors = [
            actor_class.remote(model, plan.threads_per_actor) for _ in range(plan.actors)
        ]

    def submit(self, batch: torch.Tensor, head: str | int) -> Any:
        """Send ``batch`` to the next actor; its result's object reference."""
        ray = import_ray()
        if not self._actors:
            self._start()
        while len(self._pending) >= self._in_flight * len(self._actors):
            _, self._pending = ray.wait(self._pending, num_returns=1)
        actor = self._actors[self._turn % len(self._actors)]
        self._turn += 1
        reference = actor.probabilities.remote(batch.detach().cpu().numpy(), head)
        self._pending.append(reference)
        return reference

    def collect(self, handles: list[Any]) -> list[torch.Tensor]:
        """The probabilities of the submitted batches ``handles``, in order."""
        ray = import_ray()
        return [torch.from_numpy(np.array(result)) for result in ray.get(list(handles))]

    def close(self) -> None:
        """Stop the actors."""
        if self._actors:
            ray = import_ray()
            for actor in self._actors:
                ray.kill(actor)
        self._actors, self._pending = [], []

    def __enter__(self) -> RayForwardPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
