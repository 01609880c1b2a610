"""Path containment: the report embeds no file outside the audited data and the audit folder,
whatever the audit's files name (``../``, absolute paths, symbolic links).

The app's side (file names a request gives, uploads, Gradio's file route) is tested in
``tests/app/test_inputs.py`` / ``test_audit_browser.py`` / ``test_callbacks.py`` and, over
HTTP against a running server, in ``test_load.py``.
"""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
from PIL import Image

from shortcut_detect.audit.report import build_report
from shortcut_detect.audit.store import AuditStore


def test_a_tampered_intervention_file_cannot_embed_outside_files(hostile_audit, tmp_path):
    audit = tmp_path / "audit"
    shutil.copytree(hostile_audit, audit, symlinks=True)
    secret = tmp_path / "secret.png"
    noise = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(noise).save(secret)
    (audit / "interventions" / "link.png").symlink_to(secret)
    path = audit / "interventions" / "interventions.json"
    stored = json.loads(path.read_text())
    examples = [example for entry in stored["candidates"] for example in entry["examples"]]
    assert len(examples) >= 3
    crafted = ["../secret.png", str(secret), "interventions/link.png"]
    for example, name in zip(examples, crafted):
        example["original"] = name
    path.write_text(json.dumps(stored))

    summary, report = build_report(AuditStore(audit), n_permutations=10, embedding_samples=0)
    html = report.read_text(encoding="utf-8")
    assert base64.b64encode(secret.read_bytes()).decode() not in html
    # The untouched examples are still shown; the crafted ones are left out, not broken.
    kept = [example for example in examples[3:]]
    for example in kept:
        picture = (audit / example["original"]).read_bytes()
        assert base64.b64encode(picture).decode() in html
    named = [e["original"] for entry in summary["interventions"] for e in entry["examples"]]
    assert set(crafted) <= set(named)  # the summary still says what the file named
