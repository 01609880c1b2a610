"""``shortcut-detect demo``: the whole product on built-in data, offline, in about a minute.

The planted-shortcut test set is written to disk as PNG files with a CSV manifest (group =
marker present, mask = the marker's box), and both demo models are audited through the same
pipeline a user's data goes through.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from shortcut_detect.audit.pipeline import AuditOptions, AuditRun, run_audit
from shortcut_detect.common.logs import forward_log

__all__ = ["DEMO_MODELS", "run_demo"]

DEMO_MODELS = {"shortcut": "demo:shortcut", "clean": "demo:clean"}
_LOG = logging.getLogger(__name__)


def run_demo(
    out: str | Path = "demo_output",
    *,
    n_samples: int = 400,
    num_workers: int = 2,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, AuditRun]:
    """Audit the demo's shortcut and clean models; returns ``{"shortcut": run, "clean": run}``.

    Reports go to ``OUT/shortcut_model/report.html`` and ``OUT/clean_model/report.html``.
    Progress messages go to the ``shortcut_detect.audit`` loggers; ``log`` (deprecated) also
    receives them.
    """
    with forward_log(log, deprecated="run_demo(log=...)"):
        return _run_demo(Path(out), n_samples, num_workers, progress)


def _run_demo(
    out: Path, n_samples: int, num_workers: int, progress: bool | None
) -> dict[str, AuditRun]:
    from shortcut_detect.data.demo import demo_cache_dir, load_demo_models
    from shortcut_detect.data.demo_files import write_demo_dataset

    cache = demo_cache_dir()
    if not all((cache / f"{kind}_model_seed0.pt").exists() for kind in ("shortcut", "clean")):
        _LOG.info(
            "Training the two demo models (first run only, about 25 s; cached in %s)...", cache
        )
    load_demo_models()
    _LOG.info("Writing %d test images and a manifest to %s ...", n_samples, out / "data")
    manifest = write_demo_dataset(out / "data", n_samples=n_samples)
    runs = {}
    for name, spec in DEMO_MODELS.items():
        target = out / f"{name}_model"
        if (target / "audit.json").exists():
            shutil.rmtree(target)  # the demo always shows a fresh run
        _LOG.info("Auditing the %s model (%s)...", name, spec)
        options = AuditOptions(
            model=spec,
            data=str(manifest),
            out=str(target),
            group_column="group",
            mask_column="mask",
            batch_size=64,
            num_workers=num_workers,
            progress=progress,
        )
        runs[name] = run_audit(options)
    return runs
