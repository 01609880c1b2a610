"""Building and serving the app: modes, defaults, Gradio kept out of the core library."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from shortcut_detect.app import build_app, free_port, make_explorer, run_app, start_app
from shortcut_detect.app.explorer import method_choices
from shortcut_detect.app.inputs import ExplorerInputError


def test_the_core_library_does_not_import_gradio():
    code = (
        "import sys\n"
        "import shortcut_detect, shortcut_detect.gradcam, shortcut_detect.cam\n"
        "import shortcut_detect.viz, shortcut_detect.data.demo\n"
        "import shortcut_detect.models, shortcut_detect.data.images, shortcut_detect.audit.store\n"
        "import shortcut_detect.app, shortcut_detect.app.callbacks, shortcut_detect.app.explorer\n"
        "print('gradio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "False"


def component_ids(blocks):
    config = blocks.get_config_file()
    return {c["props"].get("elem_id"): c for c in config["components"] if c["props"].get("elem_id")}


def test_build_app_lays_out_every_control(explorer):
    import gradio as gr

    blocks = build_app(explorer=explorer)
    assert isinstance(blocks, gr.Blocks)
    components = component_ids(blocks)
    expected = {
        "model", "gallery", "resample", "upload", "preview", "layer", "method", "target",
        "opacity", "generate", "status", "original", "heatmap", "overlay", "top5",
        "class-a", "class-b", "compare-classes", "layer-early", "layer-middle", "layer-late",
        "compare-layers", "lime-samples", "lime-seed", "activation-mean", "activation-grid",
    }  # fmt: skip
    assert expected <= set(components)
    assert "audit-table" not in components  # only with --audit
    props = {key: components[key]["props"] for key in ("method", "layer", "target", "opacity")}
    assert [tuple(c) for c in props["method"]["choices"]] == [
        *method_choices(),
        ("LIME (superpixels)", "lime"),
    ]
    assert props["layer"]["value"] == "features"
    assert ("features · Sequential 64x12x12 (default)", "features") in map(
        tuple, props["layer"]["choices"]
    )
    assert props["target"]["value"] == "predicted"
    assert (props["opacity"]["minimum"], props["opacity"]["maximum"]) == (0.0, 1.0)


def test_audit_mode_adds_the_results_tab(audit_dir):
    blocks = build_app(audit=audit_dir)
    components = component_ids(blocks)
    assert {"audit-table", "audit-sort", "audit-group", "audit-outcome", "audit-open"} <= set(
        components
    )
    assert blocks.explorer.audit is not None


def test_model_spec_mode_loads_through_load_model(demo_explorer_models):
    explorer = make_explorer(model="demo:clean", layer="features.8")
    assert len(explorer.model_names) == 1
    model = explorer.get_model()
    assert model.class_names == ("disk", "cross")
    assert explorer.layer_choices().default == "features.8"
    # The clean demo model served both ways gives the same heatmap.
    reference = next(m for m in demo_explorer_models if "clean" in m.name)
    assert model.model.state_dict().keys() == reference.model.state_dict().keys()
    selection = explorer.select_sample("3")
    ours = explorer.explain(selection)[0]
    demo = make_explorer().explain(selection, reference.name, "features.8")[0]
    np.testing.assert_allclose(ours.heatmap, demo.heatmap, atol=1e-5)


def test_data_mode_uses_the_folder(tmp_path, image_files):
    (tmp_path / "disk").mkdir()
    (tmp_path / "disk" / "a.png").write_bytes(image_files["rgb"].read_bytes())
    explorer = make_explorer(data=tmp_path)
    assert list(explorer.sample_ids()) == ["disk/a.png"]


def test_bad_start_up_options_fail_early_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="No layer named 'nope'"):
        make_explorer(layer="nope")
    with pytest.raises(ValueError, match="Unknown model spec"):
        make_explorer(model="no such model")
    with pytest.raises(ExplorerInputError, match="no such file"):
        make_explorer(data=tmp_path / "missing")


def test_start_app_serves_on_localhost(explorer):
    running = start_app(explorer=explorer, port=free_port())
    try:
        assert running.url.startswith("http://127.0.0.1:")
        assert running.blocks.server_name == "127.0.0.1"
        with urllib.request.urlopen(running.url, timeout=30) as response:
            assert response.status == 200
            assert "shortcut-detect explorer" in response.read().decode()
    finally:
        running.close()


def test_run_app_prints_the_address(explorer, monkeypatch, capsys):
    import gradio as gr

    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
    monkeypatch.setattr("shortcut_detect.app.make_explorer", lambda *args, **kwargs: explorer)
    port = free_port()
    url = run_app(port=port)
    assert url == f"http://127.0.0.1:{port}/"
    assert f"running at {url}" in capsys.readouterr().out
    with pytest.raises(OSError, match="Connection refused"):  # closed after block_thread
        urllib.request.urlopen(url, timeout=5)
