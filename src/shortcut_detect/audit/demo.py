"""``shortcut-detect demo``: the whole product on built-in data, offline, in about a minute.

The planted-shortcut test set is written to disk as PNG files with a CSV manifest (group =
marker present, mask = the marker's box), and both demo models are audited through the same
pipeline a user's data goes through.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from shortcut_detect.audit.pipeline import AuditOptions, AuditRun, run_audit

__all__ = ["DEMO_MODELS", "run_demo"]

DEMO_MODELS = {"shortcut": "demo:shortcut", "clean": "demo:clean"}


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
    """
    from shortcut_detect.data.demo import demo_cache_dir, load_demo_models
    from shortcut_detect.data.demo_files import write_demo_dataset

    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    cache = demo_cache_dir()
    if not all((cache / f"{kind}_model_seed0.pt").exists() for kind in ("shortcut", "clean")):
        log(f"Training the two demo models (first run only, about 30 s; cached in {cache})...")
    load_demo_models()
    log(f"Writing {n_samples} test images and a manifest to {out / 'data'} ...")
    manifest = write_demo_dataset(out / "data", n_samples=n_samples)
    runs = {}
    for name, spec in DEMO_MODELS.items():
        target = out / f"{name}_model"
        if (target / "audit.json").exists():
            shutil.rmtree(target)  # the demo always shows a fresh run
        log(f"Auditing the {name} model ({spec})...")
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
        runs[name] = run_audit(options, log=log)
    return runs
