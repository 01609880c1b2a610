"""End to end in a real browser: headless Chromium (Debian's) driven by Playwright.

The app runs in this process on a free port of 127.0.0.1 (one server per mode, one browser
for the module); screenshots go to each test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shortcut_detect.app import free_port, make_explorer, start_app
from shortcut_detect.app.explorer import Explorer

pytestmark = [
    pytest.mark.browser,
    # Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000
SHORTCUT = "demo: shortcut model"
CLEAN = "demo: clean model"


# -- set-up ----------------------------------------------------------------------------------


def chromium_path() -> str:
    """Debian's Chromium: skipped when missing locally, required in CI."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("Chromium is required in CI (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def demo_app(demo_explorer_models, demo_source):
    chromium_path()  # no server without a browser to drive it
    explorer = Explorer(demo_explorer_models, demo_source)
    running = start_app(explorer=explorer, port=free_port())
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def audit_app(audit_dir, demo_explorer_models):
    chromium_path()
    del demo_explorer_models  # loaded once for the session
    running = start_app(explorer=make_explorer(audit=audit_dir), port=free_port())
    try:
        yield running
    finally:
        running.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    return page


# -- driving Gradio ----------------------------------------------------------------------------


def choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` (its visible label) in the Gradio dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input[role=combobox]").click()
    page.get_by_role("option", name=option, exact=True).click()


# The text of a Markdown component, without the progress note shown while an event runs.
MARKDOWN_TEXT = """(selector) => {
    const node = document.querySelector(selector);
    if (!node) return null;
    const tracker = node.querySelector('[data-testid="status-tracker"]');
    if (tracker && !tracker.classList.contains('hide')) return null;  // still running
    const prose = node.querySelector('[data-testid="markdown"]') || node;
    return prose.innerText;
}"""


def text_of(page, elem_id: str) -> str:
    return page.evaluate(MARKDOWN_TEXT, f"#{elem_id}") or ""


def wait_for_text(page, elem_id: str, text: str, before: str | None = None) -> str:
    """Wait until ``#elem_id`` is idle, contains ``text`` and is no longer ``before``."""
    page.wait_for_function(
        f"""([selector, text, before]) => {{
            const now = ({MARKDOWN_TEXT})(selector);
            return now !== null && now.includes(text) && (before === null || now !== before);
        }}""",
        arg=[f"#{elem_id}", text, before],
    )
    return text_of(page, elem_id)


def image_source(page, elem_id: str) -> str | None:
    locator = page.locator(f"#{elem_id} img")
    return locator.first.get_attribute("src") if locator.count() else None


def wait_for_new_image(page, elem_id: str, before: str | None) -> str:
    """Wait until ``#elem_id`` shows a loaded picture other than ``before``; return its src."""
    page.wait_for_function(
        """([selector, before]) => {
            const img = document.querySelector(selector);
            return img !== null && img.complete && img.naturalWidth > 0
                && img.getAttribute('src') !== before;
        }""",
        arg=[f"#{elem_id} img", before],
    )
    return image_source(page, elem_id)  # type: ignore[return-value]


def generate(page) -> str:
    """Press Generate and wait for the new result; returns the status line."""
    before = text_of(page, "status")
    page.click("#generate")
    return wait_for_text(page, "status", "Heatmap of", before)


def press_in_tab(page, tab: str, button: str) -> None:
    """Open the result tab ``tab`` and press ``#button`` in it.

    *Generate* switches back to the *Explain* tab in a follow-up event, which may arrive
    just after the tab was opened on a busy machine; then the tab is opened again.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for _ in range(10):
        page.get_by_role("tab", name=tab).click()
        try:
            page.click(f"#{button}", timeout=3_000)
            return
        except PlaywrightTimeoutError:
            continue
    raise AssertionError(f"#{button} never became clickable in the {tab!r} tab")


def pick_gallery_item(page, index: int) -> str:
    before = text_of(page, "status")
    page.locator("#gallery img").nth(index).click()
    return wait_for_text(page, "status", "Selected", before)


def upload(page, path: Path) -> str:
    before = text_of(page, "status")
    page.get_by_role("tab", name="Upload").click()
    page.locator("#upload input[type=file]").set_input_files(str(path))
    return wait_for_text(page, "status", path.name, before)


# -- the tests ---------------------------------------------------------------------------------


def test_pick_explain_and_adjust(browser, demo_app, tmp_path):
    explorer = demo_app.explorer
    page = open_page(browser, demo_app.url)
    page.wait_for_selector("#gallery img")
    assert page.locator("#gallery img").count() == 20
    assert "features · Sequential 64x12x12 (default)" in page.locator("#layer input").input_value()

    status = pick_gallery_item(page, 0)
    assert page.locator("#preview img").count() == 1
    status = generate(page)
    assert f"model {SHORTCUT}" in status and "layer features" in status
    for elem_id in ("original", "heatmap", "overlay"):
        wait_for_new_image(page, elem_id, None)
    overlay = image_source(page, "overlay")
    top = text_of(page, "top5")
    assert "disk" in top and "cross" in top and "%" in top
    page.screenshot(path=tmp_path / "1-generated.png", full_page=True)

    # Opacity re-blends the overlay from the cached heatmap: nothing is recomputed.
    computed = explorer.computations
    heatmap_src = image_source(page, "heatmap")
    number = page.locator("#opacity input[type=number]")
    number.fill("0.9")
    number.press("Enter")
    overlay_opaque = wait_for_new_image(page, "overlay", overlay)
    assert explorer.computations == computed
    assert image_source(page, "heatmap") == heatmap_src
    page.screenshot(path=tmp_path / "2-opacity.png", full_page=True)

    # Another layer: a new heatmap and overlay.
    choose(page, "layer", "features.4 · Conv2d 32x24x24")
    status = generate(page)
    assert "layer features.4" in status
    overlay_layer = wait_for_new_image(page, "overlay", overlay_opaque)
    assert explorer.computations == computed + 1

    # Every CAM method the registry offers can be chosen (the last one here).
    method_label, method_key = explorer.method_choices()[-1]
    choose(page, "method", method_label)
    status = generate(page)
    assert method_key in status
    wait_for_new_image(page, "overlay", overlay_layer)

    # Another sample and the other model: the top-5 list changes.
    pick_gallery_item(page, 5)
    choose(page, "layer", "features · Sequential 64x12x12 (default)")
    generate(page)
    top_shortcut = text_of(page, "top5")
    page.get_by_label(CLEAN).check()
    page.wait_for_timeout(300)  # the model picker refreshes the layer and class lists
    status = generate(page)
    assert f"model {CLEAN}" in status
    page.wait_for_function(
        "([selector, before]) => document.querySelector(selector).innerText !== before",
        arg=["#top5", top_shortcut],
    )
    assert text_of(page, "top5") != top_shortcut
    page.screenshot(path=tmp_path / "3-clean-model.png", full_page=True)

    # Resampling draws other test images.
    first = image_source(page, "gallery")
    page.click("#resample")
    wait_for_new_image(page, "gallery", first)
    page.close()


def test_target_class_and_comparisons(browser, demo_app, tmp_path):
    page = open_page(browser, demo_app.url)
    page.wait_for_selector("#gallery img")
    pick_gallery_item(page, 3)
    choose(page, "target", "disk")
    assert "Heatmap of disk" in generate(page)
    choose(page, "target", "cross")
    assert "Heatmap of cross" in generate(page)

    press_in_tab(page, "Compare classes", "compare-classes")
    status = wait_for_text(page, "class-status", "correlation")
    assert "left disk" in status and "right cross" in status
    left = wait_for_new_image(page, "class-overlay-a", None)
    right = wait_for_new_image(page, "class-overlay-b", None)
    assert left != right
    page.screenshot(path=tmp_path / "classes.png", full_page=True)

    press_in_tab(page, "Compare layers", "compare-layers")
    status = wait_for_text(page, "layer-status", "features.4")
    assert "features.0" in status and "features" in status
    for name in ("early", "middle", "late"):
        wait_for_new_image(page, f"layer-overlay-{name}", None)
    page.screenshot(path=tmp_path / "layers.png", full_page=True)
    page.close()


def test_uploads_good_and_bad(browser, demo_app, image_files, tmp_path):
    page = open_page(browser, demo_app.url)
    page.wait_for_selector("#gallery img")

    status = upload(page, image_files["rgb"])
    assert "Selected upload" in status
    generate(page)
    overlay = wait_for_new_image(page, "overlay", None)
    assert "cross" in text_of(page, "top5")
    page.screenshot(path=tmp_path / "1-upload.png", full_page=True)

    status = upload(page, image_files["gray"])
    assert "grayscale" in status
    generate(page)
    overlay = wait_for_new_image(page, "overlay", overlay)

    status = upload(page, image_files["rgba"])
    assert "Error" not in status

    status = upload(page, image_files["text"])
    assert status.startswith("Error:") and "not an image" in status
    page.screenshot(path=tmp_path / "2-not-an-image.png", full_page=True)
    # With the refused upload nothing is selected: Generate asks for an image.
    page.click("#generate")
    wait_for_text(page, "status", "Pick a test image")

    status = upload(page, image_files["bomb"])
    assert status.startswith("Error:") and "above the limit" in status
    page.screenshot(path=tmp_path / "3-too-large.png", full_page=True)
    page.close()


def test_audit_results_open_in_the_explorer(browser, audit_app, tmp_path):
    page = open_page(browser, audit_app.url)
    page.get_by_role("tab", name="Audit results").click()
    message = wait_for_text(page, "audit-message", "of 41 samples")
    assert message.startswith("41 of 41")
    grid = page.locator("#audit-table [role=grid]")
    assert grid.get_attribute("aria-rowcount") == "42"  # with the header row
    page.screenshot(path=tmp_path / "1-audit.png", full_page=True)

    choose(page, "audit-group", "marker")
    choose(page, "audit-outcome", "misclassified")
    message = wait_for_text(page, "audit-message", "samples", message)
    shown = int(message.split()[0])
    page.wait_for_function(
        "([selector, count]) => document.querySelector(selector)"
        ".getAttribute('aria-rowcount') === count",
        arg=["#audit-table [role=grid]", str(shown + 1)],
    )
    assert 0 < shown < 41
    assert page.locator("#audit-table [data-testid=cell-0-5]").inner_text().strip() == "marker"
    assert page.locator("#audit-table [data-testid=cell-0-4]").inner_text().strip() == "false"

    cell = page.locator("#audit-table [data-testid=cell-0-0]")
    sample_id = cell.inner_text().strip()
    cell.click()
    page.wait_for_function(
        "([selector, value]) => document.querySelector(selector).value === value",
        arg=["#audit-sample textarea", sample_id],
    )
    before = text_of(page, "status")
    page.click("#audit-open")
    status = wait_for_text(page, "status", "Heatmap of", before)
    assert Path(sample_id).name in status
    wait_for_new_image(page, "overlay", None)
    page.screenshot(path=tmp_path / "2-opened.png", full_page=True)
    page.close()


def test_remove_and_transplant_a_box(browser, demo_app, tmp_path):
    page = open_page(browser, demo_app.url)
    page.wait_for_selector("#gallery img")
    pick_gallery_item(page, 0)
    page.get_by_role("tab", name="Intervene").click()
    # The marker-box preset is filled in, and the box is outlined on the current image.
    assert page.locator("#box-x0 input").input_value() == "3"
    assert page.locator("#box-x1 input").input_value() == "9"
    wait_for_new_image(page, "box-before", None)

    page.click("#box-apply")
    sentence = wait_for_text(page, "box-message", "changes P(")
    assert sentence.startswith("Removing the box (3, 3, 9, 9) (blur fill) changes P(")
    assert "the prediction" in sentence
    edited = wait_for_new_image(page, "box-edited", None)
    wait_for_new_image(page, "box-after", None)
    assert "%" in text_of(page, "box-top-after")
    page.screenshot(path=tmp_path / "1-removed.png", full_page=True)

    # An inverted box: a message on the page, not a traceback.
    corner = page.locator("#box-x1 input")
    corner.fill("2")
    corner.press("Enter")
    page.click("#box-apply")
    message = wait_for_text(page, "box-message", "Error", sentence)
    assert "empty or inverted" in message
    page.screenshot(path=tmp_path / "2-bad-box.png", full_page=True)

    # Clicking the image moves a ninth-sized box there (the inverted one is replaced).
    box_image = page.locator("#box-before img")
    size = box_image.bounding_box()
    box_image.click(position={"x": size["width"] * 0.9, "y": size["height"] * 0.9})
    page.wait_for_function("() => document.querySelector('#box-x1 input').value === '48'")
    assert page.locator("#box-x0 input").input_value() == "32"
    assert page.locator("#box-preset input").input_value() == "custom box"

    page.get_by_label("transplant the box").check()
    page.click("#box-apply")
    sentence = wait_for_text(page, "box-message", "Transplanting the box (32, 32, 48, 48)", message)
    assert "changes P(" in sentence
    wait_for_new_image(page, "box-edited", edited)
    page.screenshot(path=tmp_path / "3-transplanted.png", full_page=True)
    page.screenshot(path="/tmp/intapp-transplanted.png", full_page=True)
    page.close()


# -- the views: activation maps, LIME, the embedding map ----------------------------------------


@pytest.fixture(scope="module")
def map_audit_app(audit_dir, tmp_path_factory, demo_explorer_models):
    """An audit of the same images with its report, so with an embedding map."""
    from shortcut_detect.audit.pipeline import AuditOptions, run_audit

    chromium_path()
    del demo_explorer_models
    out = tmp_path_factory.mktemp("map_audit") / "audit"
    options = AuditOptions(
        model="demo",
        data=str(audit_dir.parent / "data" / "manifest.csv"),
        out=str(out),
        group_column="group",
        mask_column="mask",
        num_workers=0,
        n_permutations=100,
        intervention_samples=0,
        progress=False,
    )
    run_audit(options)
    running = start_app(explorer=make_explorer(audit=out), port=free_port())
    try:
        yield running, out
    finally:
        running.close()


def assert_not_blank(path: Path, min_colours: int = 16) -> None:
    """A screenshot shows content: many colours and visible contrast, not a flat page."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours >= min_colours, f"{path.name}: only {colours} colours"
    assert pixels.std() > 10, f"{path.name}: almost uniform (std {pixels.std():.1f})"


def wait_for_gallery(page, elem_id: str, count: int) -> None:
    page.wait_for_function(
        """([selector, count]) => {
            const images = [...document.querySelectorAll(selector)];
            return images.length === count && images.every((img) => img.complete
                && img.naturalWidth > 0);
        }""",
        arg=[f"#{elem_id} img", count],
    )


def test_activation_maps_next_to_gradcam_and_lime(browser, demo_app, tmp_path):
    page = open_page(browser, demo_app.url)
    pick_gallery_item(page, 0)
    generate(page)
    status = wait_for_text(page, "activation-status", "channels with the highest mean activation")
    assert "features (64x12x12)" in status
    wait_for_gallery(page, "activation-grid", 8)
    wait_for_new_image(page, "activation-mean", None)
    captions = page.locator("#activation-grid").inner_text()
    assert captions.count("channel ") == 8
    page.locator("#activation-grid").screenshot(path=tmp_path / "1-activation-grid.png")
    page.locator("#activation-mean").screenshot(path=tmp_path / "1-activation-mean.png")
    page.screenshot(path=tmp_path / "1-explain-with-activations.png", full_page=True)
    for name in ("1-activation-grid.png", "1-activation-mean.png"):
        assert_not_blank(tmp_path / name)

    assert not page.locator("#lime-samples").is_visible()  # only while LIME is chosen
    choose(page, "method", "LIME (superpixels)")
    page.locator("#lime-samples input").fill("80")
    page.locator("#lime-seed input").fill("2")
    before_overlay = image_source(page, "overlay")
    before = text_of(page, "status")
    page.click("#generate")
    status = wait_for_text(page, "status", "LIME weights of", before)
    assert "80 samples, seed 2" in status
    wait_for_new_image(page, "overlay", before_overlay)
    page.locator("#heatmap").screenshot(path=tmp_path / "2-lime-heatmap.png")
    page.screenshot(path=tmp_path / "2-lime.png", full_page=True)
    assert_not_blank(tmp_path / "2-lime-heatmap.png")
    page.close()


def test_embedding_map_recolours_selects_and_opens_a_point(browser, map_audit_app, tmp_path):
    import json

    running, out = map_audit_app
    points = json.loads((out / "embedding_map.json").read_text())
    page = open_page(browser, running.url)
    page.get_by_role("tab", name="Audit results").click()
    plot = page.locator("#embedding-map")
    plot.scroll_into_view_if_needed()
    page.wait_for_function(
        "([selector, count]) => document.querySelectorAll(selector).length === count",
        arg=["#embedding-map .mark-symbol.role-mark path", len(points["sample_id"])],
    )
    caption = wait_for_text(page, "map-caption", "map of")
    assert "Groups" in caption  # the audit's sentence for the group colouring
    plot.screenshot(path=tmp_path / "1-map-by-group.png")
    assert_not_blank(tmp_path / "1-map-by-group.png")

    page.locator("#map-colour").get_by_text("true class", exact=True).click()
    caption = wait_for_text(page, "map-caption", "Classes", caption)
    page.wait_for_function(
        "(selector) => [...document.querySelectorAll(selector)].some("
        "(node) => node.textContent.includes('disk'))",
        arg="#embedding-map .role-legend text",
    )
    plot.screenshot(path=tmp_path / "2-map-by-class.png")
    assert_not_blank(tmp_path / "2-map-by-class.png")

    # Drag across the middle of the plot: the points of that band are listed.
    box = page.locator("#embedding-map svg").first.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=8)
    page.mouse.move(box["x"] + box["width"] * 0.8, y, steps=8)
    page.mouse.up()
    message = wait_for_text(page, "map-message", "in the selected band")
    assert int(message.split()[0]) > 0
    page.wait_for_function(
        "(selector) => document.querySelector(selector).value !== ''",
        arg="#audit-sample textarea",
    )
    sample_id = page.locator("#audit-sample textarea").input_value()
    assert sample_id in points["sample_id"]
    page.screenshot(path=tmp_path / "3-map-selection.png", full_page=True)
    before = text_of(page, "status")
    page.click("#audit-open")
    status = wait_for_text(page, "status", "Heatmap of", before)
    assert Path(sample_id).name in status
    wait_for_new_image(page, "overlay", None)
    page.screenshot(path=tmp_path / "4-opened-from-map.png", full_page=True)
    page.close()


@pytest.fixture(scope="module")
def volume_app(tmp_path_factory, bright_voxel_model_file):
    """The explorer of a tiny 3-D model over four synthetic NIfTI volumes."""
    pytest.importorskip("nibabel")
    chromium_path()
    from shortcut_detect.data.medical.synthetic import write_synthetic_nifti_set

    root = tmp_path_factory.mktemp("volume_app")
    data = write_synthetic_nifti_set(root / "data", 4, shape=(16, 16, 16), agreement=1.0, seed=4)
    explorer = make_explorer(
        str(bright_voxel_model_file),
        data=str(data.root),
        trust_pickle=True,
        resize=[16],
        window="250,700",
    )
    running = start_app(explorer=explorer, port=free_port())
    marked = next(p for p, m in zip(data.paths, data.marker) if m)
    try:
        yield running, marked.relative_to(data.root).as_posix()
    finally:
        running.close()


def test_a_volume_opens_at_the_heatmap_peak_and_the_plane_and_slider_move(
    browser, volume_app, tmp_path
):
    from shortcut_detect.viz_volume import peak_voxel

    running, sample_id = volume_app
    page = open_page(browser, running.url)
    choose(page, "volume-pick", sample_id)
    wait_for_text(page, "status", "Selected volume")
    before = text_of(page, "status")
    page.click("#generate")
    status = wait_for_text(page, "status", "heatmap of", before)
    explorer = running.explorer
    computed = explorer.computations
    again = explorer.explain(explorer.select_sample(sample_id))[0]  # the page's, from the cache
    assert again.cached and explorer.computations == computed
    x, y, z = peak_voxel(again.heatmap)
    assert f"peak at voxel ({x}, {y}, {z})" in status
    caption = wait_for_text(page, "volume-caption", "(heatmap peak)")
    assert caption.startswith(f"{sample_id} · lesion: axial slice {z + 1} of 16")
    assert page.locator("#volume-slice input[type=number]").input_value() == str(z)
    overlay = wait_for_new_image(page, "volume-overlay", None)
    assert "%" in text_of(page, "top5")
    page.screenshot(path=tmp_path / "1-volume-peak.png", full_page=True)

    # Another plane opens at the peak too.
    page.get_by_label("sagittal").check()
    caption = wait_for_text(page, "volume-caption", f"sagittal slice {x + 1} of 16", caption)
    overlay = wait_for_new_image(page, "volume-overlay", overlay)
    # The slider moves through the slices.
    number = page.locator("#volume-slice input[type=number]")
    number.fill("3")
    number.press("Enter")
    wait_for_text(page, "volume-caption", "sagittal slice 4 of 16", caption)
    wait_for_new_image(page, "volume-overlay", overlay)
    page.screenshot(path=tmp_path / "2-volume-moved.png", full_page=True)
    page.close()
