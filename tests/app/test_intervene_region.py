"""Removing or transplanting a box of the current image (issue #12, the explorer's part)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortcut_detect.app import callbacks
from shortcut_detect.app.callbacks import ERROR_PREFIX
from shortcut_detect.app.inputs import ExplorerInputError
from shortcut_detect.interventions.fills import apply_fill

SHORTCUT = "demo: shortcut model"
CROSS = 1
# Enough images that "most of them" is not luck: the shortcut model puts P(cross) near 1
# on marker images and the marker is the main evidence it uses (see tests/test_demo_*).
N_IMAGES = 8
CLEAR_CHANGE = 0.2


def sample_ids(test_data, *, marker: bool, label: int | None = None) -> list[str]:
    chosen = test_data.groups == int(marker)
    if label is not None:
        chosen &= test_data.labels == label
    return [str(i) for i in np.flatnonzero(chosen)[:N_IMAGES]]


def cross_probability_changes(explorer, ids, box, **options) -> np.ndarray:
    changes = []
    for sample_id in ids:
        result = explorer.intervene_region(
            explorer.select_sample(sample_id), box, model_name=SHORTCUT, target=CROSS, **options
        )
        changes.append(result.change)
    return np.array(changes)


def test_removing_the_marker_moves_marker_images_towards_the_other_class(explorer, test_data):
    marker = explorer.region_presets(SHORTCUT)["marker box"]
    x0, y0, x1, y1 = marker
    height, width = test_data.images.shape[2:]
    elsewhere = (width - x1, height - y1, width - x0, height - y0)  # same size, far corner
    ids = sample_ids(test_data, marker=True)
    removed = cross_probability_changes(explorer, ids, marker, action="remove")
    control = cross_probability_changes(explorer, ids, elsewhere, action="remove")
    assert (removed < -CLEAR_CHANGE).sum() >= N_IMAGES * 3 // 4, removed
    assert (control < -CLEAR_CHANGE).sum() <= N_IMAGES // 4, control
    assert removed.mean() < control.mean() - CLEAR_CHANGE


def test_transplanting_the_marker_moves_plain_images_towards_the_marker_class(explorer, test_data):
    marker = explorer.region_presets(SHORTCUT)["marker box"]
    donor = sample_ids(test_data, marker=True, label=CROSS)[0]
    ids = sample_ids(test_data, marker=False, label=0)
    changes = cross_probability_changes(explorer, ids, marker, action="transplant", donor=donor)
    assert (changes > CLEAR_CHANGE).sum() >= N_IMAGES * 3 // 4, changes


def test_removal_fills_only_the_box_with_the_interventions_fill(explorer):
    selection = explorer.select_sample("0")
    box = (3, 3, 9, 9)
    result = explorer.intervene_region(selection, box, "remove", "mean", model_name=SHORTCUT)
    original = torch.from_numpy(np.asarray(selection.array, dtype=np.float32))
    mask = torch.zeros(1, *original.shape[1:], dtype=torch.bool)
    mask[0, 3:9, 3:9] = True
    expected = apply_fill(original[None], mask, "mean")[0]
    np.testing.assert_array_equal(result.edited.array, expected.numpy())
    assert not np.array_equal(result.edited.array[:, 3:9, 3:9], selection.array[:, 3:9, 3:9])
    assert (result.action, result.fill, result.donor) == ("remove", "mean", None)
    # The edited image is explained for the class the original was predicted as.
    assert result.after.target_index == result.before.target_index
    assert result.before.predicted_name == result.before.target_name


def test_transplant_pastes_the_donor_pixels_at_the_same_place(explorer, test_data):
    selection = explorer.select_sample("6")
    result = explorer.intervene_region(selection, (3, 3, 9, 9), "transplant", model_name=SHORTCUT)
    donor = result.donor
    assert donor is not None and donor.label != selection.label
    assert donor.group != selection.group  # another class and, when there is one, group
    edited, original = result.edited.array, selection.array
    np.testing.assert_array_equal(edited[:, 3:9, 3:9], donor.array[:, 3:9, 3:9])
    outside = np.ones(original.shape[1:], dtype=bool)
    outside[3:9, 3:9] = False
    np.testing.assert_array_equal(edited[:, outside], original[:, outside])


def test_the_sentence_names_the_class_and_both_probabilities(explorer):
    result = explorer.intervene_region(explorer.select_sample("1"), (3, 3, 9, 9))
    before, after = result.before.target_probability, result.after.target_probability
    sentence = result.sentence()
    assert sentence.startswith("Removing the box (3, 3, 9, 9) (blur fill) changes ")
    assert f"P({result.class_name}) from {before:.2f} to {after:.2f}" in sentence
    verdict = "flips to" if result.flipped else "stays"
    assert f"the prediction {verdict} {result.after.predicted_name}" in sentence


@pytest.mark.parametrize(
    ("box", "match"),
    [
        ((0, 0, 0, 5), r"empty or inverted"),
        ((9, 3, 3, 9), r"empty or inverted.*x0 < x1"),
        ((3, 9, 9, 3), r"empty or inverted.*y0 < y1"),
        ((40, 40, 60, 60), r"outside the image.*48x48"),
        ((-2, 0, 5, 5), r"outside the image"),
        ((None, 0, 5, 5), r"four numbers x0, y0, x1, y1"),
        ((0, 0, 5), r"four numbers"),
        ("0,0,5,5", r"four numbers"),
        ((0.5, 0, 5, 5), r"whole pixels"),
        (("a", 0, 5, 5), r"must be numbers"),
        ((0, 0, 48, 48), r"covers the whole image"),
    ],
)
def test_bad_boxes_are_refused_with_a_clear_message(explorer, box, match):
    with pytest.raises(ExplorerInputError, match=match):
        explorer.intervene_region(explorer.select_sample("0"), box)


def test_bad_action_fill_and_donor_are_refused(explorer):
    selection = explorer.select_sample("0")
    with pytest.raises(ExplorerInputError, match=r"Unknown action 'erase'.*remove, transplant"):
        explorer.intervene_region(selection, (3, 3, 9, 9), "erase")
    with pytest.raises(ExplorerInputError, match=r"Unknown fill 'zero'.*blur, mean, noise"):
        explorer.intervene_region(selection, (3, 3, 9, 9), "remove", "zero")
    with pytest.raises(ExplorerInputError, match=r"donor is the image itself"):
        explorer.intervene_region(selection, (3, 3, 9, 9), "transplant", donor="0")
    with pytest.raises(ExplorerInputError, match=r"Demo sample 9999 does not exist"):
        explorer.intervene_region(selection, (3, 3, 9, 9), "transplant", donor="9999")


def test_presets_lie_inside_the_image_and_include_the_demo_marker(explorer, test_data):
    presets = explorer.region_presets(SHORTCUT)
    assert presets["marker box"] == tuple(test_data.marker_box)
    assert presets["top-left ninth"] == (0, 0, 16, 16)
    for x0, y0, x1, y1 in presets.values():
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48


def test_callback_turns_a_bad_box_into_a_message_and_a_good_one_into_images(explorer):
    selection = explorer.select_sample("1")
    args = (SHORTCUT, None, "gradcam", "predicted")
    refused = callbacks.intervene(
        explorer, selection, *args, (9, 3, 3, 9), "remove", "blur", "", 0.5
    )
    assert refused.message.startswith(ERROR_PREFIX) and "inverted" in refused.message
    assert refused.edited is None and refused.after is None
    # The image stays on the page, without a box, to click a new one on.
    assert refused.before.shape == (240, 240, 3)
    assert tuple(refused.before[15, 30]) != callbacks.BOX_COLOUR
    done = callbacks.intervene(explorer, selection, *args, (3, 3, 9, 9), "remove", "blur", "", 0.5)
    assert done.message == done.result.sentence()
    assert done.edited.shape == done.after.shape == done.before.shape == (240, 240, 3)
    assert set(done.top_after) == {"disk", "cross"}
    # The box is outlined on the before/after overlays (5x enlarged), not on the edited image.
    assert tuple(done.before[15, 30]) == callbacks.BOX_COLOUR
    assert tuple(done.edited[15, 30]) != callbacks.BOX_COLOUR
    nothing = callbacks.intervene(explorer, None, *args, (3, 3, 9, 9), "remove", "blur", "", 0.5)
    assert nothing.message.startswith(ERROR_PREFIX) and "Pick a test image" in nothing.message


def test_clicking_moves_the_box_centred_on_the_click_and_inside_the_image(explorer):
    # 48-pixel input shown 5x (240 px): a click at (100, 50) is pixel (20, 10).
    assert callbacks.move_box(explorer, SHORTCUT, (3, 3, 9, 9), 240, [100, 50]) == (
        17,
        7,
        23,
        13,
    )
    assert callbacks.move_box(explorer, SHORTCUT, (3, 3, 9, 9), 240, [239, 0]) == (
        42,
        0,
        48,
        6,
    )
    # An unusable box gets the default size, a ninth of the image.
    assert callbacks.move_box(explorer, SHORTCUT, (None, 3, 9, 9), 240, [120, 120]) == (
        16,
        16,
        32,
        32,
    )


def test_box_preview_outlines_a_valid_box_only(explorer):
    selection = explorer.select_sample("1")
    framed = callbacks.box_preview(explorer, selection, SHORTCUT, (3, 3, 9, 9))
    plain = callbacks.box_preview(explorer, selection, SHORTCUT, (9, 3, 3, 9))
    assert framed.shape == plain.shape == (240, 240, 3)
    assert tuple(framed[15, 30]) == callbacks.BOX_COLOUR
    assert tuple(plain[15, 30]) != callbacks.BOX_COLOUR
    computed = explorer.computations
    callbacks.box_preview(explorer, selection, SHORTCUT, (0, 0, 16, 16))
    assert explorer.computations == computed  # no heatmap is computed for the preview
