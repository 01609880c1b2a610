"""intervene(): reliance on the demo marker, 3-D volumes, boxes vs masks, batching, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_detect.interventions import intervene
from shortcut_detect.interventions.stats import Estimate

FAST = {"n_bootstrap": 500, "n_permutations": 500}


@pytest.fixture(scope="module")
def marker_data(test_data):
    return test_data.subset(np.arange(120))


def test_shortcut_model_relies_on_its_marker(shortcut_model, marker_data):
    result = intervene(
        shortcut_model,
        marker_data.images,
        marker_data.masks,
        carriers=marker_data.groups == 1,
        **FAST,
    )
    assert result.reading == "relied on" and result.relied_on
    assert result.effect.value > 0.3 and result.effect.low > 0
    assert result.removal[result.fill].flip_rate.value > 0.5
    assert result.transplant is not None and result.transplant.effect.low > 0.1
    assert result.n_tested == int((marker_data.groups == 1).sum())
    assert json.loads(json.dumps(result.to_dict(per_sample=True)))["reading"] == "relied on"


def test_clean_model_does_not_rely_on_the_marker(clean_model, marker_data):
    result = intervene(
        clean_model,
        marker_data.images,
        marker_data.masks,
        carriers=marker_data.groups == 1,
        **FAST,
    )
    assert not result.relied_on
    assert abs(result.effect.value) < 0.1 and result.effect.low < 0.05
    assert result.reading == "not relied on"  # no heatmaps given: attention unknown


def test_a_region_without_room_for_a_control_is_not_testable(clean_model, marker_data):
    # The left 60% of the image: every shifted copy overlaps it, so no control exists; that
    # must not read as "not relied on" (nor as salient but unused).
    size = marker_data.images.shape[-1]
    region = np.zeros((size, size), dtype=bool)
    region[:, : int(0.6 * size)] = True
    result = intervene(clean_model, marker_data.images, region, **FAST)
    assert result.effect.n == 0 and np.isnan(result.effect.value)
    assert result.reading == "not testable (no control region fits)"
    assert not result.relied_on


def test_every_fill_is_reported_and_auto_picks_the_least_disturbing(shortcut_model, marker_data):
    result = intervene(shortcut_model, marker_data.images[:30], marker_data.marker_box, **FAST)
    assert set(result.removal) == {"blur", "mean", "noise"}
    disturbance = {name: fill.control_disturbance for name, fill in result.removal.items()}
    assert result.fill == min(disturbance, key=disturbance.get)
    chosen = intervene(
        shortcut_model, marker_data.images[:30], marker_data.marker_box, fill="blur", **FAST
    )
    assert chosen.fill == "blur"


def test_box_and_mask_of_the_same_region_give_the_same_result(shortcut_model, marker_data):
    images = marker_data.images[:20]
    from_box = intervene(shortcut_model, images, marker_data.marker_box, fills=("mean",), **FAST)
    from_mask = intervene(shortcut_model, images, marker_data.marker_mask, fills=("mean",), **FAST)
    assert from_box.effect == from_mask.effect
    np.testing.assert_array_equal(
        from_box.per_sample["region_drop"], from_mask.per_sample["region_drop"]
    )


class CubeNet(nn.Module):
    """A tiny 3-D CNN whose class-1 score is the brightness of the cube [1:3]^3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.conv(x)[:, 0, 1:3, 1:3, 1:3].mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([-8 * score, 8 * score], dim=1)


def _volumes(n: int = 40) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    volumes = 0.1 * torch.randn(n, 1, 8, 8, 8, generator=generator)
    carriers = np.arange(n) % 2 == 0
    volumes[torch.from_numpy(carriers), :, 1:3, 1:3, 1:3] = 1.0
    return volumes, carriers


def test_volumes_with_a_cube_region():
    volumes, carriers = _volumes()
    cube = np.zeros((8, 8, 8), dtype=bool)
    cube[1:3, 1:3, 1:3] = True
    result = intervene(CubeNet(), volumes, cube, carriers=carriers, **FAST)
    assert result.relied_on
    assert result.removal[result.fill].flip_rate.value == pytest.approx(1.0)
    assert result.transplant is not None and result.transplant.moved_share.value == 1.0
    from_box = intervene(CubeNet(), volumes, (1, 1, 1, 3, 3, 3), carriers=carriers, **FAST)
    assert from_box.effect == result.effect
    elsewhere = intervene(CubeNet(), volumes, (5, 5, 5, 7, 7, 7), carriers=carriers, **FAST)
    assert not elsewhere.relied_on


def test_one_forward_pass_per_batch_of_counterfactuals():
    volumes, _ = _volumes(10)
    model = CubeNet()
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    result = intervene(
        model, volumes, (1, 1, 1, 3, 3, 3), fills=("mean",), n_controls=3, batch_size=8, **FAST
    )
    # 10 originals in 2 batches, 10 x (1 region + 3 controls) = 40 counterfactuals in 5.
    assert calls == [8, 2, 8, 8, 8, 8, 8]
    assert result.n_forward_passes == 7
    calls.clear()
    intervene(model, volumes, (1, 1, 1, 3, 3, 3), n_controls=3, batch_size=1000, **FAST)
    assert calls == [10, 120]  # three fills x 40 counterfactuals in one pass


def test_model_modes_are_restored(shortcut_model, marker_data):
    shortcut_model.train()
    try:
        intervene(shortcut_model, marker_data.images[:8], marker_data.marker_box, **FAST)
        assert shortcut_model.training
    finally:
        shortcut_model.eval()


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ((40, 40, 60, 60), "outside the image"),
        ((5, 5, 5, 9), "empty or outside"),
        (np.zeros((48, 48), dtype=bool), "region is empty"),
        (np.ones((32, 32), dtype=bool), "does not fit images"),
        (np.ones((48, 48), dtype=bool), "covers a whole image"),
        ((1, 2, 3), "box or a mask|does not fit"),
    ],
)
def test_bad_regions_are_refused(shortcut_model, marker_data, region, message):
    with pytest.raises(ValueError, match=message):
        intervene(shortcut_model, marker_data.images[:4], region, **FAST)


def test_bad_images_and_options_are_refused(shortcut_model, marker_data):
    box = marker_data.marker_box
    with pytest.raises(ValueError, match="0 images"):
        intervene(shortcut_model, np.zeros((0, 3, 48, 48), np.float32), box)
    with pytest.raises(ValueError, match=r"batch \(N, C, H, W\)"):
        intervene(shortcut_model, marker_data.images[0], box)
    with pytest.raises(ValueError, match="fills must be some of"):
        intervene(shortcut_model, marker_data.images[:4], box, fills=("inpaint",))
    with pytest.raises(ValueError, match="carriers must be 4 booleans"):
        intervene(shortcut_model, marker_data.images[:4], box, carriers=[True, False])
    with pytest.raises(ValueError, match="n_controls must be a positive integer"):
        intervene(shortcut_model, marker_data.images[:4], box, n_controls=0)


def _estimate(value: float, low: float, high: float, p: float | None = None) -> Estimate:
    return Estimate(value, low, high, n=100, p_value=p)


def test_reliance_needs_the_region_itself_to_move_the_prediction():
    # A control paste that lands on the object lowers the target class by itself; a region
    # that changes nothing then "beats" the control. That is not reliance.
    from shortcut_detect.interventions.core import FillResult, TransplantResult, _reading

    no_change = _estimate(-0.004, -0.009, 0.001)
    removal = FillResult(
        "blur",
        _estimate(0.0, 0.0, 0.0),
        _estimate(0.0, 0.0, 0.0),
        no_change,
        _estimate(0.1, 0.05, 0.15),
        _estimate(-0.1, -0.15, -0.05, p=1.0),
        _estimate(0.0, 0.0, 0.0, p=1.0),
        0.1,
    )
    beats_control = _estimate(0.08, 0.05, 0.11, p=0.001)
    transplant = TransplantResult(
        0, no_change, no_change, no_change, _estimate(-0.085, -0.12, -0.06), beats_control, 100
    )
    reading, relied, _ = _reading(removal, transplant, None, 0.05, 0.05, 2.0)
    assert not relied and reading == "not relied on"
    moves = TransplantResult(
        0, no_change, no_change, _estimate(0.3, 0.25, 0.35), no_change, beats_control, 100
    )
    reading, relied, _ = _reading(removal, moves, None, 0.05, 0.05, 2.0)
    assert relied and reading == "relied on"
