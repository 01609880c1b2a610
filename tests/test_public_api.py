"""Every public name is importable from the top-level package, and the core stays light."""

from __future__ import annotations

import subprocess
import sys

import shortcut_detect


def test_every_exported_name_resolves():
    for name in shortcut_detect.__all__:
        assert getattr(shortcut_detect, name) is not None, name
    from shortcut_detect import GradCAMHeatmapGenerator, ShortcutDetector, compare_groups

    assert callable(compare_groups) and callable(ShortcutDetector)
    assert GradCAMHeatmapGenerator.__module__ == "shortcut_detect.gradcam"


def test_core_import_does_not_load_heavy_extras():
    code = (
        "import sys, shortcut_detect, shortcut_detect.cam;"
        "heavy = [m for m in ('sklearn', 'matplotlib', 'gradio', 'scipy', 'pyarrow', 'jinja2')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core import loaded: {out.stdout}"
