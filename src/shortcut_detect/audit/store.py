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
import errno
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shortcut_detect.common.faults import fault_point
from shortcut_detect.common.serialization import json_default

__all__ = [
    "CONFIG_COPY",
    "CONFIG_FILE",
    "INTERVENTIONS_DIR",
    "INTERVENTIONS_FILE",
    "STORE_VERSION",
    "AuditStore",
    "DiskFullError",
    "ShardWriter",
    "StoreError",
    "clear_unstarted_run",
    "close_inherited_locks",
    "load_interventions",
    "read_config",
    "remove_stray_temp_files",
    "row_schema",
    "running_writers",
    "unfinished_shards_text",
    "write_config",
    "write_json",
    "write_text",
]

_LOG = logging.getLogger(__name__)

STORE_VERSION = 1
# Lock files this process holds; forked children (DataLoader workers) must close their
# copies, or a killed writer's orphaned worker would keep the shard locked.
_HELD_LOCKS: set[int] = set()
_PART = re.compile(r"^part-(\d{6})\.parquet$")
_SHARD = re.compile(r"^shard-(\d{5})-of-(\d{5})$")
# Temporary files are named NAME.tmp-HOST-PID (older stores: NAME.tmp-PID).
_TEMP = re.compile(r"\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)$")
_HOST = socket.gethostname().replace("/", "_")
CONFIG_FILE = "audit.json"
# A second copy of audit.json: a torn audit.json alone does not orphan the committed rows.
CONFIG_COPY = "audit.copy.json"

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


class DiskFullError(StoreError):
    """A write failed for lack of space; what was committed before is kept."""


# Heatmaps a merge reads and writes at a time.
_MERGE_CHUNK = 8192


def _partial_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{_HOST}-{os.getpid()}")


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file, synced, then renamed into place.

    A failed write removes its temporary file; lack of space raises :class:`DiskFullError`.
    """
    partial = _partial_path(path)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point("write")
        os.replace(partial, path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"No space left on the device to write {path}. What was committed so far is "
                "kept: free some space and run the same command again to continue."
            ) from error
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (tmp file, then rename)."""
    text = (json.dumps(data, indent=2, default=json_default) + "\n").encode()
    _atomic_write(path, lambda handle: handle.write(text))


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically (tmp file, then rename)."""
    data = text.encode("utf-8")
    _atomic_write(path, lambda handle: handle.write(data))


def _save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda handle: np.save(handle, array))


def _write_parquet(path: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    _atomic_write(path, lambda handle: pq.write_table(table, handle, compression="zstd"))


def _read_json(path: Path, consequence: str) -> Any | None:
    """The JSON in ``path``; ``None`` when it is missing, or damaged (then one warning line
    saying so and what happens instead: ``consequence``)."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError
        reason = "empty" if path.is_file() and path.stat().st_size == 0 else type(error).__name__
        _LOG.warning("%s is damaged (%s, left by a crash?); %s.", path, reason, consequence)
        return None


def read_config(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The run configuration of an audit directory (``None`` when neither ``audit.json`` nor
    its copy is readable). A damaged ``audit.json`` is restored from the copy."""
    root = Path(root)
    config = _read_json(root / CONFIG_FILE, "reading its copy")
    if isinstance(config, dict):
        return config
    copy = _read_json(root / CONFIG_COPY, "the run configuration is lost")
    if not isinstance(copy, dict):
        return None
    if (root / CONFIG_FILE).exists():
        write_json(root / CONFIG_FILE, copy)
        _LOG.warning("Restored %s from %s.", root / CONFIG_FILE, CONFIG_COPY)
    return copy


def write_config(root: str | os.PathLike[str], config: dict[str, Any]) -> None:
    """Write ``audit.json`` and its copy."""
    root = Path(root)
    write_json(root / CONFIG_COPY, config)
    write_json(root / CONFIG_FILE, config)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _is_stray_temp(path: Path) -> bool:
    """A temporary file whose writer (on this machine) is gone."""
    match = _TEMP.search(path.name)
    if match is None:
        return False
    host = match.group("host")
    if host is not None and host != _HOST:
        return False  # another node's: it may still be writing
    return not _pid_alive(int(match.group("pid")))


def remove_stray_temp_files(root: str | os.PathLike[str]) -> int:
    """Remove temporary files that killed writers left in ``root`` and its ``merged`` and
    ``interventions`` folders (shard folders are cleaned by their writer); returns how many."""
    root = Path(root)
    removed = 0
    for folder in (root, root / "merged", root / INTERVENTIONS_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and _is_stray_temp(path):
                path.unlink(missing_ok=True)
                removed += 1
    if removed:
        _LOG.warning("Removed %d temporary file(s) a killed run left in %s.", removed, root)
    return removed


def clear_unstarted_run(root: str | os.PathLike[str]) -> bool:
    """Remove what a run killed while writing its first configuration left in ``root`` (only
    the temporary files of ``audit.json`` and its copy); ``True`` when that was all there was,
    so that ``root`` can start afresh. Any other file leaves ``root`` untouched."""
    root = Path(root)
    entries = list(root.iterdir())
    config_names = (f"{CONFIG_FILE}.tmp-", f"{CONFIG_COPY}.tmp-")
    if not entries or not all(
        path.is_file() and path.name.startswith(config_names) and _is_stray_temp(path)
        for path in entries
    ):
        return False
    for path in entries:
        path.unlink(missing_ok=True)
    _LOG.warning("Removed the unfinished run configuration a killed run left in %s.", root)
    return True


def _lock_holder(path: Path) -> str:
    """Who holds a shard lock, from what it wrote into the lock file."""
    info = _read_json_quietly(path)
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    text = f"process {info['pid']} on {info.get('host', '?')}, started {info.get('started', '?')}"
    if info.get("host") == _HOST and not _pid_alive(int(info["pid"])):
        text += "; it has exited but a process it started still holds the lock"
    return text


def _read_json_quietly(path: Path) -> Any | None:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def running_writers(root: str | os.PathLike[str]) -> list[str]:
    """``"shard-00000-of-00001 (process 123 on HOST, started ...)"`` for every shard of
    ``root`` that a live process is writing now."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no fcntl on Windows: no cross-process lock
        return []
    running = []
    base = Path(root) / "shards"
    for lock in sorted(base.glob("shard-*/LOCK")) if base.is_dir() else []:
        with open(lock, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                running.append(f"{lock.parent.name} ({_lock_holder(lock)})")
    return running


INTERVENTIONS_DIR = "interventions"
INTERVENTIONS_FILE = "interventions.json"


def load_interventions(store: AuditStore) -> dict[str, Any] | None:
    """The intervention stage's results in ``store`` (``None`` when the stage did not run)."""
    path = store.root / INTERVENTIONS_DIR / INTERVENTIONS_FILE
    stored = _read_json(path, "the intervention stage counts as not run")
    return stored if isinstance(stored, dict) else None


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


def _read_chunk(path: Path, columns: Sequence[str] | None = None) -> Any:
    """One Parquet file; a damaged one raises :class:`StoreError` saying how to repair it."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=None if columns is None else list(columns))
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise StoreError(
            f"{path} is damaged ({_first_line(error)}); run the audit command again: it "
            "removes the damaged chunk and explains its samples again"
        ) from error


def _heatmap_columns(has_map: np.ndarray, file: str) -> dict[str, Any]:
    """``heatmap_row`` and ``heatmap_file`` of rows whose maps lie in ``file`` in row order
    (``has_map`` says which rows have one; the others get -1 and no file)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    positions = np.where(has_map, np.cumsum(has_map) - 1, -1).astype(np.int32)
    files = pc.if_else(pa.array(has_map, pa.bool_()), pa.scalar(file), pa.scalar(None, pa.string()))
    return {"heatmap_row": pa.array(positions), "heatmap_file": files}


def _with_columns(table: Any, columns: dict[str, Any]) -> Any:
    """``table`` with the row-schema ``columns`` (name -> arrow array) replaced."""
    schema = row_schema()
    for name, values in columns.items():
        field = schema.field(name)
        table = table.set_column(schema.get_field_index(name), field, values.cast(field.type))
    return table


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _chunk_damage(path: Path, heatmaps: Path | None = None) -> str | None:
    """Why a committed chunk (rows ``path`` + ``heatmaps``, by default next to it with the
    suffix ``.npy``) cannot be read, or ``None`` when it can."""
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        return "empty"
    try:
        rows = pq.read_table(path, columns=["heatmap_row"]).column(0).to_pylist()
    except (OSError, ValueError):
        return "unreadable rows"
    needed = max((row for row in rows if row is not None), default=-1) + 1
    if needed == 0:
        return None
    try:
        count = np.load(heatmaps or path.with_suffix(".npy"), mmap_mode="r").shape[0]
    except FileNotFoundError:
        return "heatmaps missing"
    except (OSError, ValueError, EOFError):
        return "unreadable heatmaps"
    return None if count >= needed else "heatmaps truncated"


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
        path = self.directory / "LOCK"
        handle = open(path, "a+")  # noqa: SIM115 - held for the writer's life
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            _HELD_LOCKS.add(handle.fileno())
        except ImportError:  # pragma: no cover - no fcntl on Windows: no cross-process lock
            pass
        except OSError as error:
            handle.close()
            raise StoreError(
                f"Another process is writing {self.directory.name} of {self.root} "
                f"({_lock_holder(path)}); wait for it, stop it, or give each worker its own "
                "shard_index="
            ) from error
        # Who holds the lock, for the message a second run shows; the lock itself is the
        # OS's, so it goes away with the process however it ends.
        holder = {"pid": os.getpid(), "host": _HOST, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        return handle

    def _clean_partial(self) -> None:
        """Remove what a killed or failed writer left: temporary files, heatmaps without
        their rows, damaged chunks (their samples are explained again); one line says so."""
        damaged = [
            f"{path.name} ({reason})"
            for path in sorted(self.directory.glob("part-*.parquet"))
            if (reason := _chunk_damage(path)) is not None
        ]
        for text in damaged:
            stem = text.split(".", 1)[0]
            (self.directory / f"{stem}.parquet").unlink(missing_ok=True)
            (self.directory / f"{stem}.npy").unlink(missing_ok=True)
        committed = {p.stem for p in self.directory.glob("part-*.parquet")}
        leftovers = 0
        for path in self.directory.iterdir():
            if ".tmp-" in path.name or (path.suffix == ".npy" and path.stem not in committed):
                path.unlink(missing_ok=True)
                leftovers += 1
        if damaged:
            _LOG.warning(
                "Removed %d damaged chunk(s) of %s: %s; their samples are explained again.",
                len(damaged),
                self.directory.name,
                ", ".join(damaged),
            )
        elif leftovers:
            _LOG.info(
                "Removed %d unfinished file(s) a stopped run left in %s.",
                leftovers,
                self.directory.name,
            )
        (self.directory / "DONE.json").unlink(missing_ok=True)

    def _last_part(self) -> int:
        numbers = [int(m.group(1)) for p in self.directory.iterdir() if (m := _PART.match(p.name))]
        return max(numbers, default=-1)

    def done_ids(self) -> set[str]:
        """Sample ids this shard has committed (ok or failed)."""
        done: set[str] = set()
        for path in sorted(self.directory.glob("part-*.parquet")):
            done.update(_read_chunk(path, ["sample_id"]).column(0).to_pylist())
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
        # Arrow's own row conversion: a Python loop per column costs the main process of a
        # small-model audit about 12 us per row.
        table = pa.Table.from_pylist(rows, schema=schema)
        with_map = np.array([row.get("heatmap_row", -1) != -1 for row in rows], dtype=bool)
        shard = pa.array(np.full(len(rows), self.shard_index, dtype=np.int32))
        table = _with_columns(table, {**_heatmap_columns(with_map, relative), "shard": shard})
        if any(with_map):
            _save_npy(self.directory / f"{stem}.npy", np.concatenate(maps, axis=0))
            fault_point("commit.heatmaps")
        _write_parquet(self.directory / f"{stem}.parquet", table)
        fault_point("commit.rows")
        self.written += len(rows)

    def finish(self, info: dict[str, Any] | None = None) -> None:
        """Flush and mark the shard complete."""
        self.flush()
        self.wait()
        fault_point("shard.done")
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
        if not any((self.root / name).is_file() for name in (CONFIG_FILE, CONFIG_COPY)):
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
            config = read_config(self.root)
            if config is None:
                raise StoreError(
                    f"{self.root / CONFIG_FILE} is damaged and has no readable copy; run the "
                    "audit again with overwrite=True to start afresh"
                )
            self._config = config
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
            marker = self.root / "shards" / name / "DONE.json"
            done = marker.exists() and isinstance(
                _read_json(marker, f"shard {index} counts as not finished"), dict
            )
            (finished if done else unfinished).append(index)
        return {"expected": num, "finished": finished, "unfinished": unfinished}

    def _sources(self) -> list[list[Any]]:
        return [[str(p.relative_to(self.root)), p.stat().st_size] for p in self.part_files()]

    def _merged_is_fresh(self) -> bool:
        sources = self.root / "merged" / "sources.json"
        if not sources.is_file() or not (self.root / "merged" / "results.parquet").is_file():
            return False
        if _read_json_quietly(sources) != self._sources():
            return False
        merged = self.root / "merged"
        if _chunk_damage(merged / "results.parquet", merged / "heatmaps.npy") is not None:
            _LOG.warning("The merged files of %s are damaged; they are merged again.", self.root)
            with contextlib.suppress(OSError):
                sources.unlink()
            return False
        return True

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
            parts = [_read_chunk(p, read_columns) for p in self.part_files()]
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
            array = self._chunk_maps(file)
            positions = [p for p, _ in pairs]
            rows = [r for _, r in pairs]
            out[positions] = array[rows].astype(np.float32)
        return out

    def _chunk_maps(self, file: str) -> np.ndarray:
        """The heatmaps of one chunk file, memory-mapped."""
        try:
            return np.load(self.root / file, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise StoreError(
                f"{self.root / file} is damaged ({_first_line(error)}); run the audit "
                "command again: it explains the damaged chunk's samples again"
            ) from error

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
    def _gather_maps(self, names: Any, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The maps at ``rows`` of the chunk files ``names[codes]``, in the given order."""
        out = np.empty((len(rows), *(self.cam_size or (1, 1))), dtype=np.float16)
        for code in np.unique(codes):
            file = names[int(code)].as_py()
            array = self._chunk_maps(file)
            where = np.flatnonzero(codes == code)
            out[where] = array[rows[where]]
        return out

    def merge(self) -> Path:
        """Join all shards into ``merged/results.parquet`` + ``merged/heatmaps.npy``.

        The merged files are a cache of the shards (which stay): a later merge replaces them
        when chunks were added. Returns the merged directory.
        """
        import pyarrow.compute as pc

        merged = self.root / "merged"
        if self._merged_is_fresh():
            return merged
        merged.mkdir(exist_ok=True)
        sources = self._sources()
        table = self.table()
        # Columns as arrays, not Python objects per row: a merge of millions of rows.
        rows = pc.fill_null(table.column("heatmap_row"), -1).to_numpy().astype(np.int64)
        files = pc.dictionary_encode(table.column("heatmap_file").combine_chunks())
        has_map = (rows >= 0) & files.indices.is_valid().to_numpy(zero_copy_only=False)
        file_codes = pc.fill_null(files.indices, 0).to_numpy()
        mapped = np.flatnonzero(has_map)
        shape = (len(mapped), *(self.cam_size or (1, 1)))

        def write_maps(handle: BinaryIO) -> None:
            # Chunk by chunk, so that merging never holds every heatmap in memory.
            header = {"descr": "<f2", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(handle, header)
            for start in range(0, len(mapped), _MERGE_CHUNK):
                part = mapped[start : start + _MERGE_CHUNK]
                block = self._gather_maps(files.dictionary, file_codes[part], rows[part])
                # The array's own buffer: tobytes() would copy each block once more.
                handle.write(np.ascontiguousarray(block.astype("<f2", copy=False)).data)

        _atomic_write(merged / "heatmaps.npy", write_maps)
        fault_point("merge.heatmaps")
        table = _with_columns(table, _heatmap_columns(has_map, "merged/heatmaps.npy"))
        _write_parquet(merged / "results.parquet", table)
        fault_point("merge.rows")
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
