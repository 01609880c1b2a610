"""The audit store: per-sample rows (Parquet) and heatmaps at CAM resolution (``.npy``).

Layout of an audit directory::

    DIR/audit.json                                  run configuration (model, data, layer, sizes)
    DIR/shards/shard-00000-of-00002/part-000000.npy     heatmaps of one chunk, float16 (n, h, w)
    DIR/shards/shard-00000-of-00002/part-000000.parquet rows of the same chunk
    DIR/shards/shard-00000-of-00002/DONE.json           written when the shard finished
    DIR/merged/results.parquet, heatmaps.npy, sources.json   the merge of all parts (a cache)
    DIR/summary.json, DIR/report.html               the analysis

Each chunk is committed by renaming its Parquet file into place, after its heatmaps were
renamed into place, so a killed writer leaves either a whole chunk or nothing that counts
(a stray ``.npy`` without its Parquet is removed on restart). A restarted writer skips the
sample ids its shard already holds. Shards are independent: several processes (or nodes
sharing the directory) each write their own, and :meth:`AuditStore.merge` joins them.

Heatmaps are stored per sample divided by their maximum (``cam_max`` keeps the scale), so
float16 cannot overflow; :meth:`AuditStore.upsampled` gives them at the input size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shortcut_detect.common.serialization import json_default

__all__ = [
    "INTERVENTIONS_DIR",
    "INTERVENTIONS_FILE",
    "STORE_VERSION",
    "AuditStore",
    "ShardWriter",
    "StoreError",
    "close_inherited_locks",
    "load_interventions",
    "row_schema",
    "unfinished_shards_text",
]

STORE_VERSION = 1
# Lock files this process holds; forked children (DataLoader workers) must close their
# copies, or a killed writer's orphaned worker would keep the shard locked.
_HELD_LOCKS: set[int] = set()
_PART = re.compile(r"^part-(\d{6})\.parquet$")
_SHARD = re.compile(r"^shard-(\d{5})-of-(\d{5})$")

# name, pyarrow type name, description
ROW_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("sample_id", "string", "stable id: path relative to the data root"),
    ("index", "int64", "position in the image set"),
    ("path", "string", "image file"),
    ("status", "string", "'ok' or 'error'"),
    ("error", "string", "why the image could not be used"),
    ("label", "int64", "true class index (-1 unknown)"),
    ("label_name", "string", "label as written in the data"),
    ("group", "string", "group value (null without groups)"),
    ("prediction", "int64", "predicted class index"),
    ("prediction_name", "string", "predicted class name"),
    ("confidence", "float32", "probability of the predicted class"),
    ("label_probability", "float32", "probability given to the true class"),
    ("correct", "bool", "prediction == label"),
    ("target", "int64", "class the heatmap explains"),
    ("target_score", "float32", "logit of the explained class"),
    ("width", "int32", "width of the image file in pixels"),
    ("height", "int32", "height of the image file in pixels"),
    ("has_mask", "bool", "a region mask was given"),
    ("mask", "string", "the mask as given: 'box:x0,y0,x1,y1' or 'file:PATH'"),
    ("mask_area", "float32", "share of the image the mask covers"),
    ("mask_attention", "float32", "share of the heatmap's mass inside the mask"),
    ("mask_pointing_hit", "bool", "the heatmap's peak lies inside the mask"),
    ("mask_center_y", "float32", "mask centre row, 0 (top) .. 1 (bottom)"),
    ("mask_center_x", "float32", "mask centre column, 0 (left) .. 1 (right)"),
    ("peak_y", "float32", "heatmap peak row, 0 (top) .. 1 (bottom)"),
    ("peak_x", "float32", "heatmap peak column, 0 (left) .. 1 (right)"),
    ("entropy", "float32", "spatial entropy of the heatmap (0 focused .. 1 uniform)"),
    ("cam_max", "float32", "maximum of the raw CAM (stored maps are divided by it)"),
    ("heatmap_file", "string", "heatmap chunk, relative to the audit directory"),
    ("heatmap_row", "int32", "row in that chunk (-1: no heatmap)"),
    ("shard", "int32", "shard that wrote the row"),
)


def row_schema() -> Any:
    """The pyarrow schema of the per-sample table."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "float32": pa.float32(),
        "bool": pa.bool_(),
    }
    return pa.schema(
        [
            pa.field(name, types[kind], metadata={"description": text})
            for name, kind, text in ROW_FIELDS
        ]
    )


class StoreError(ValueError):
    """An audit directory that cannot be used as asked (the message says why)."""


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (tmp file, then rename)."""
    _atomic_write_bytes(path, (json.dumps(data, indent=2, default=json_default) + "\n").encode())


def _save_npy(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(partial, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, partial, compression="zstd")
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


INTERVENTIONS_DIR = "interventions"
INTERVENTIONS_FILE = "interventions.json"


def load_interventions(store: AuditStore) -> dict[str, Any] | None:
    """The intervention stage's results in ``store`` (``None`` when the stage did not run)."""
    path = store.root / INTERVENTIONS_DIR / INTERVENTIONS_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def shard_name(shard_index: int, num_shards: int) -> str:
    """``shard-00003-of-00008``."""
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def unfinished_shards_text(unfinished: Sequence[int], num_shards: int | None = None) -> str:
    """One clause: ``"shard 1 is not finished"``, ``"shards 1, 2 and 5 of 8 are not finished"``."""
    if not unfinished:
        raise ValueError("unfinished_shards_text needs at least one shard index")
    names = [str(index) for index in unfinished]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    total = "" if num_shards is None else f" of {num_shards}"
    if len(names) == 1:
        return f"shard {listed}{total} is not finished"
    return f"shards {listed}{total} are not finished"


class ShardWriter:
    """Appends rows and heatmaps of one shard, in committed chunks.

    Parameters
    ----------
    root:
        The audit directory.
    shard_index, num_shards:
        Which shard this writer owns.
    flush_rows:
        Rows per chunk; :meth:`add` commits a chunk when this many rows are buffered.
    background:
        Commit chunks in a writer thread, so that the caller computes the next chunk while
        this one is written and synced to disk. At most one chunk is in flight; its error,
        if any, is raised by the next :meth:`flush`, :meth:`wait` or :meth:`finish`.

    Only one process may write a shard at a time (an OS file lock enforces it; the lock
    goes away with the process, even when it is killed).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        shard_index: int,
        num_shards: int,
        flush_rows: int = 256,
        *,
        background: bool = False,
    ) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, got {flush_rows}")
        self.root = Path(root)
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.flush_rows = flush_rows
        self.directory = self.root / "shards" / shard_name(shard_index, num_shards)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_handle = self._lock()
        self._rows: list[dict[str, Any]] = []
        self._maps: list[np.ndarray] = []
        self._clean_partial()
        self._next_part = self._last_part() + 1
        self.written = 0
        self._executor = ThreadPoolExecutor(1, "shard-writer") if background else None
        self._pending: Future[None] | None = None

    def _lock(self) -> Any:
        handle = open(self.directory / "LOCK", "a+")  # noqa: SIM115 - held for the writer's life
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _HELD_LOCKS.add(handle.fileno())
        except ImportError:  # pragma: no cover - no fcntl on Windows: no cross-process lock
            pass
        except OSError as error:
            handle.close()
            raise StoreError(
                f"Another process is writing {self.directory.name} of {self.root}; wait for it "
                "or give each worker its own shard_index="
            ) from error
        return handle

    def _clean_partial(self) -> None:
        committed = {p.stem for p in self.directory.glob("part-*.parquet")}
        for path in self.directory.iterdir():
            if ".tmp-" in path.name or (path.suffix == ".npy" and path.stem not in committed):
                path.unlink(missing_ok=True)
        (self.directory / "DONE.json").unlink(missing_ok=True)

    def _last_part(self) -> int:
        numbers = [int(m.group(1)) for p in self.directory.iterdir() if (m := _PART.match(p.name))]
        return max(numbers, default=-1)

    def done_ids(self) -> set[str]:
        """Sample ids this shard has committed (ok or failed)."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for path in sorted(self.directory.glob("part-*.parquet")):
            done.update(pq.read_table(path, columns=["sample_id"]).column(0).to_pylist())
        return done

    def add(self, rows: Sequence[dict[str, Any]], heatmaps: np.ndarray | None) -> None:
        """Buffer rows; ``heatmaps`` holds one map per row whose ``heatmap_row`` is not -1.

        Rows with a heatmap must come in the same order as ``heatmaps``.
        """
        with_map = sum(1 for row in rows if row.get("heatmap_row", -1) != -1)
        count = 0 if heatmaps is None else len(heatmaps)
        if with_map != count:
            raise ValueError(f"{with_map} rows expect a heatmap but {count} were given")
        self._rows.extend(rows)
        if heatmaps is not None and len(heatmaps):
            self._maps.append(np.asarray(heatmaps, dtype=np.float16))
        if len(self._rows) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        """Commit the buffered rows as one chunk (no-op when empty).

        With ``background=True`` the chunk is handed to the writer thread; :meth:`wait`
        returns when it is on disk.
        """
        if not self._rows:
            return
        stem = f"part-{self._next_part:06d}"
        rows, maps = self._rows, self._maps
        self._rows, self._maps = [], []
        self._next_part += 1
        if self._executor is None:
            self._commit(stem, rows, maps)
            return
        self.wait()
        self._pending = self._executor.submit(self._commit, stem, rows, maps)

    def wait(self) -> None:
        """Block until the chunk handed to the writer thread is committed (raises its error)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _commit(self, stem: str, rows: list[dict[str, Any]], maps: list[np.ndarray]) -> None:
        import pyarrow as pa

        relative = f"shards/{self.directory.name}/{stem}.npy"
        schema = row_schema()
        columns: dict[str, list[Any]] = {
            name: [row.get(name) for row in rows] for name in schema.names
        }
        with_map = [row.get("heatmap_row", -1) != -1 for row in rows]
        positions = np.cumsum(with_map) - 1
        columns["heatmap_row"] = [int(p) if has else -1 for p, has in zip(positions, with_map)]
        columns["heatmap_file"] = [relative if has else None for has in with_map]
        columns["shard"] = [self.shard_index] * len(rows)
        if any(with_map):
            _save_npy(self.directory / f"{stem}.npy", np.concatenate(maps, axis=0))
        _write_parquet(self.directory / f"{stem}.parquet", pa.table(columns, schema=schema))
        self.written += len(rows)

    def finish(self, info: dict[str, Any] | None = None) -> None:
        """Flush and mark the shard complete."""
        self.flush()
        self.wait()
        write_json(
            self.directory / "DONE.json",
            {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})},
        )

    def close(self) -> None:
        """Let a chunk in flight land, then release the shard lock (buffered rows not flushed
        are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._lock_handle is not None:
            _HELD_LOCKS.discard(self._lock_handle.fileno())
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def close_inherited_locks() -> None:
    """In a forked child: close the parent's shard-lock files (the parent keeps its lock)."""
    for descriptor in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD_LOCKS.clear()


class AuditStore:
    """Read an audit directory (finished, interrupted or still being written).

    Parameters
    ----------
    directory:
        The ``--out`` directory of ``shortcut-detect audit``.

    Examples
    --------
    >>> store = AuditStore("audit_out")                           # doctest: +SKIP
    >>> table = store.table()                          # pyarrow Table, one row per sample
    >>> maps = store.upsampled(table["sample_id"][:8].to_pylist())  # (8, H, W) in [0, 1]
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory)
        if not (self.root / "audit.json").is_file():
            raise StoreError(
                f"{self.root} is not an audit directory (no audit.json); run "
                "`shortcut-detect audit --out DIR ...` first"
            )
        self._config: dict[str, Any] | None = None
        self._index: dict[str, tuple[str, int]] | None = None

    # -- configuration -----------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The run configuration (``audit.json``)."""
        if self._config is None:
            self._config = json.loads((self.root / "audit.json").read_text())
        return self._config

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the model input: the size to upsample heatmaps to."""
        return tuple(self.config["input_size"])  # type: ignore[return-value]

    @property
    def cam_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of the stored heatmaps (``None`` before the first chunk)."""
        size = self.config.get("cam_size")
        if size:
            return tuple(size)  # type: ignore[return-value]
        for path in self.part_files():
            heat = path.with_suffix(".npy")
            if heat.exists():
                return tuple(np.load(heat, mmap_mode="r").shape[1:])  # type: ignore[return-value]
        return None

    @property
    def class_names(self) -> list[str]:
        """Class names in output order."""
        return list(self.config.get("class_names", []))

    # -- parts ----------------------------------------------------------------------------------
    def shard_dirs(self) -> list[Path]:
        """All shard directories."""
        base = self.root / "shards"
        if not base.is_dir():
            return []
        return sorted(p for p in base.iterdir() if p.is_dir() and _SHARD.match(p.name))

    def part_files(self) -> list[Path]:
        """Committed row chunks of every shard."""
        return [p for d in self.shard_dirs() for p in sorted(d.glob("part-*.parquet"))]

    def shard_status(self) -> dict[str, Any]:
        """``{"expected": n_shards, "finished": [...], "unfinished": [...]}``."""
        num = int(self.config.get("num_shards", 1))
        finished, unfinished = [], []
        for index in range(num):
            name = shard_name(index, num)
            done = (self.root / "shards" / name / "DONE.json").exists()
            (finished if done else unfinished).append(index)
        return {"expected": num, "finished": finished, "unfinished": unfinished}

    def _sources(self) -> list[list[Any]]:
        return [[str(p.relative_to(self.root)), p.stat().st_size] for p in self.part_files()]

    def _merged_is_fresh(self) -> bool:
        sources = self.root / "merged" / "sources.json"
        if not sources.is_file() or not (self.root / "merged" / "results.parquet").is_file():
            return False
        try:
            return json.loads(sources.read_text()) == self._sources()
        except (OSError, json.JSONDecodeError):
            return False

    # -- reading --------------------------------------------------------------------------------
    def table(self, columns: Sequence[str] | None = None) -> Any:
        """The per-sample rows as a pyarrow Table, one row per sample id, in data order.

        Reads the merged file when it is up to date, else every committed chunk.
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = list(columns) if columns is not None else None
        read_columns = None
        if wanted is not None:
            read_columns = list(dict.fromkeys([*wanted, "sample_id", "index"]))
        if self._merged_is_fresh():
            table = pq.read_table(self.root / "merged" / "results.parquet", columns=read_columns)
        else:
            parts = [pq.read_table(p, columns=read_columns) for p in self.part_files()]
            schema = row_schema()
            if read_columns is not None:
                schema = pa.schema([schema.field(n) for n in read_columns])
            table = pa.concat_tables(parts) if parts else schema.empty_table()
            if table.num_rows:
                table = table.take(pc.sort_indices(table, [("index", "ascending")]))
                table = _drop_duplicate_ids(table)
        if wanted is not None:
            table = table.select(wanted)
        return table

    def _heatmap_index(self) -> dict[str, tuple[str, int]]:
        if self._index is None:
            table = self.table(["sample_id", "heatmap_file", "heatmap_row"])
            ids = table.column("sample_id").to_pylist()
            files = table.column("heatmap_file").to_pylist()
            rows = table.column("heatmap_row").to_pylist()
            self._index = {
                sid: (file, int(row))
                for sid, file, row in zip(ids, files, rows)
                if file is not None and row is not None and row >= 0
            }
        return self._index

    def heatmaps(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Stored maps ``(n, h, w)`` float32 in [0, 1] at the CAM's native resolution.

        Raises ``KeyError`` for ids without a heatmap (unknown, or images that failed).
        """
        ids = list(sample_ids)
        index = self._heatmap_index()
        missing = [sid for sid in ids if sid not in index]
        if missing:
            raise KeyError(
                f"No heatmap for {len(missing)} sample id(s), e.g. {missing[0]!r} (unknown id or "
                "an image that could not be read)"
            )
        size = self.cam_size or (0, 0)
        out = np.empty((len(ids), *size), dtype=np.float32)
        by_file: dict[str, list[tuple[int, int]]] = {}
        for position, sid in enumerate(ids):
            file, row = index[sid]
            by_file.setdefault(file, []).append((position, row))
        for file, pairs in by_file.items():
            array = np.load(self.root / file, mmap_mode="r")
            positions = [p for p, _ in pairs]
            rows = [r for _, r in pairs]
            out[positions] = array[rows].astype(np.float32)
        return out

    def upsampled(self, sample_ids: Iterable[str], size: Sequence[int] | None = None) -> np.ndarray:
        """Heatmaps upsampled to ``size`` (default: the model input size), in [0, 1]."""
        from shortcut_detect.gradcam import upsampled_raw

        maps = self.heatmaps(sample_ids)
        if len(maps) == 0:
            return np.zeros((0, *(size or self.input_size)), dtype=np.float32)
        return upsampled_raw(maps, tuple(size or self.input_size))

    def iter_heatmaps(self, chunk: int = 4096) -> Iterable[tuple[list[str], np.ndarray]]:
        """``(ids, maps)`` chunks over every stored heatmap, in data order, bounded memory."""
        table = self.table(["sample_id", "heatmap_row"])
        ids = [
            sid
            for sid, row in zip(
                table.column("sample_id").to_pylist(), table.column("heatmap_row").to_pylist()
            )
            if row is not None and row >= 0
        ]
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            yield part, self.heatmaps(part)

    # -- merging --------------------------------------------------------------------------------
    def merge(self) -> Path:
        """Join all shards into ``merged/results.parquet`` + ``merged/heatmaps.npy``.

        The merged files are a cache of the shards (which stay): a later merge replaces them
        when chunks were added. Returns the merged directory.
        """
        import pyarrow as pa

        merged = self.root / "merged"
        if self._merged_is_fresh():
            return merged
        merged.mkdir(exist_ok=True)
        sources = self._sources()
        table = self.table()
        ids = table.column("sample_id").to_pylist()
        rows = table.column("heatmap_row").to_pylist()
        with_map = [sid for sid, row in zip(ids, rows) if row is not None and row >= 0]
        size = self.cam_size or (1, 1)
        maps = np.empty((len(with_map), *size), dtype=np.float16)
        for start in range(0, len(with_map), 8192):
            part = with_map[start : start + 8192]
            maps[start : start + len(part)] = self.heatmaps(part)
        _save_npy(merged / "heatmaps.npy", maps)
        new_rows: list[int] = []
        new_files: list[str | None] = []
        position = 0
        for row in rows:
            if row is not None and row >= 0:
                new_rows.append(position)
                new_files.append("merged/heatmaps.npy")
                position += 1
            else:
                new_rows.append(-1)
                new_files.append(None)
        schema = row_schema()
        table = table.set_column(
            schema.get_field_index("heatmap_row"),
            schema.field("heatmap_row"),
            pa.array(new_rows, pa.int32()),
        )
        table = table.set_column(
            schema.get_field_index("heatmap_file"),
            schema.field("heatmap_file"),
            pa.array(new_files, pa.string()),
        )
        _write_parquet(merged / "results.parquet", table)
        write_json(merged / "sources.json", sources)
        self._index = None
        return merged


def _drop_duplicate_ids(table: Any) -> Any:
    import pyarrow as pa

    ids = table.column("sample_id").to_pylist()
    seen: set[str] = set()
    keep = []
    for position, sid in enumerate(ids):
        if sid not in seen:
            seen.add(sid)
            keep.append(position)
    if len(keep) == len(ids):
        return table
    return table.take(pa.array(keep, pa.int64()))
