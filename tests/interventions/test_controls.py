"""Controls matched on content: a region on the object is compared with other parts of the
object, not with the blank background; candidates on the foreground are described as such."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shortcut_detect.interventions import intervene
from shortcut_detect.interventions.discovery import Candidate, confirm_candidates
from shortcut_detect.interventions.regions import content_map, control_masks

FAST = {"n_bootstrap": 400, "n_permutations": 400}


def centred_objects(n_samples: int = 60, size: int = 24) -> torch.Tensor:
    """Dark images with a bright centred square (rows and columns 6..17)."""
    rng = np.random.default_rng(0)
    images = 0.05 * rng.random((n_samples, 1, size, size)).astype(np.float32)
    images[:, :, 6:18, 6:18] += 0.8
    return torch.from_numpy(images)


class ObjectMass(nn.Module):
    """Predicts class 1 (p about 0.93) from the total brightness of the image: every part of
    the object matters equally, no place is special."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logit = (images.flatten(1).sum(dim=1) - 125.0) / 3.0
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def test_matched_controls_cover_as_much_object_as_the_region():
    images = centred_objects()
    masks = np.zeros((len(images), 24, 24), dtype=bool)
    masks[:, 6:10, 10:14] = True  # the top edge of the object
    content = content_map(images)
    matched, found = control_masks(masks, 4, content=content, seed=0)
    unmatched, _ = control_masks(masks, 4, seed=0)
    assert found.all()
    on_object = content[:, None] > 0.4
    matched_share = (matched & on_object).sum(axis=(2, 3)) / masks[0].sum()
    unmatched_share = (unmatched & on_object).sum(axis=(2, 3)) / masks[0].sum()
    assert matched_share.mean() > 0.95
    assert unmatched_share.mean() < 0.6  # random placements mostly miss the object


def test_a_region_on_the_object_is_not_read_as_relied_on():
    images = centred_objects()
    masks = np.zeros((len(images), 24, 24), dtype=bool)
    masks[:, 6:10, 10:14] = True
    model = ObjectMass()
    matched = intervene(model, images, masks, **FAST)
    unmatched = intervene(model, images, masks, match_content=False, **FAST)
    # Without matching, removing part of the object looks like reliance on the region.
    assert unmatched.relied_on and unmatched.effect.value > 0.1
    assert not matched.relied_on and abs(matched.effect.value) < 0.02
    assert matched.parameters["match_content"] is True


def test_candidates_on_the_foreground_are_described_as_such():
    images = centred_objects()
    on_object = np.zeros((24, 24), dtype=bool)
    on_object[6:10, 10:14] = True
    corner = np.zeros((24, 24), dtype=bool)
    corner[0:4, 0:4] = True
    candidates = [Candidate("hotspot", on_object, "", 0.5), Candidate("hotspot", corner, "", 0.3)]
    tests = confirm_candidates(ObjectMass(), images, candidates, **FAST)
    assert tests[0].candidate.object_overlap == 1.0
    assert tests[1].candidate.object_overlap == 0.0
    assert "on the image foreground in 100% of images" in tests[0].reading
    assert "foreground" not in tests[1].reading
