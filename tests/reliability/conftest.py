"""Fixtures of the reliability tests: an audit whose data set is hostile."""

from __future__ import annotations

import csv
import gc
import shutil
from pathlib import Path

import numpy as np
import pytest

# What a data set controls, each a script that would set window.__pwned or the page title.
# File names cannot hold "/", so they carry event-handler payloads.
FILE_PAYLOADS = ('<img src=x onerror="window.__pwned=1">', "<svg onload=window.__pwned=2>")
LABEL_PAYLOADS = ("<script>window.__pwned=3</script>", '"><img src=x onerror=window.__pwned=4>')
GROUP_PAYLOADS = ("<script>document.title='pwned'</script>", "<b onmouseover=window.__pwned=5>g")


def _rss_mb() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


@pytest.fixture(scope="session")
def rss_mb():
    """A function: this process's resident memory in MB (after a garbage collection)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("reads resident memory from /proc")
    return _rss_mb


@pytest.fixture(scope="session")
def payloads():
    """The payloads by field."""
    return {"files": FILE_PAYLOADS, "labels": LABEL_PAYLOADS, "groups": GROUP_PAYLOADS}


@pytest.fixture(scope="session")
def hostile_audit(tmp_path_factory, test_data):
    """A finished audit (with report and intervention examples) of 60 demo images whose file
    names, labels (= class names, via a class file), and groups are script payloads."""
    from PIL import Image

    from shortcut_detect.audit.pipeline import AuditOptions, run_audit

    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    x0, y0, x1, y1 = test_data.marker_box
    rows = []
    for index in range(60):
        name = f"images/{FILE_PAYLOADS[index % 2]}{index:03d}.png"
        pixels = np.uint8(np.clip(test_data.images[index].transpose(1, 2, 0), 0, 1) * 255 + 0.5)
        Image.fromarray(pixels).save(data / name)
        group = int(test_data.groups[index])
        rows.append(
            [name, LABEL_PAYLOADS[int(test_data.labels[index])], GROUP_PAYLOADS[group],
             f"{x0},{y0},{x1},{y1}" if group else ""]
        )  # fmt: skip
    with open(data / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "mask"])
        writer.writerows(rows)
    (data / "classes.txt").write_text("\n".join(LABEL_PAYLOADS) + "\n", encoding="utf-8")
    out = root / "audit"
    run = run_audit(
        AuditOptions(
            model="demo:shortcut",
            classes=str(data / "classes.txt"),
            data=str(data / "manifest.csv"),
            out=str(out),
            group_column="group",
            mask_column="mask",
            batch_size=16,
            num_workers=0,
            n_permutations=50,
            embedding_samples=40,
            intervention_samples=16,
            progress=False,
        )
    )
    assert run.report_path is not None
    yield out
    shutil.rmtree(root, ignore_errors=True)
