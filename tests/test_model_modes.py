"""Every public call that runs a model gives it back with each module's own ``training`` flag.

The model is in training mode with its BatchNorm layers frozen in eval mode (as when
fine-tuning). ``model.train(was_training)`` would put the BatchNorm layers back in training
mode; every call must restore the mixed state exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc
from shortcut_detect.analysis.batches import heatmaps_from_images
from shortcut_detect.analysis.groups import compare_groups
from shortcut_detect.analysis.heads import head_overlap_over_dataset
from shortcut_detect.cam.layers import default_layer, spatial_layers
from shortcut_detect.data.synthetic import SmallCNN
from shortcut_detect.embeddings import EmbeddingExtractor, extract_embeddings
from shortcut_detect.gradcam import (
    GradCAMHeatmapGenerator,
    compute_gradcam,
    get_activation_maps,
    get_conv_layers,
    get_top_predictions,
)


class TwoHeads(nn.Module):
    """SmallCNN's trunk with two linear heads, returning a tuple."""

    def __init__(self) -> None:
        super().__init__()
        base = SmallCNN(num_classes=3)
        self.features, self.pool = base.features, base.pool
        self.disease = base.classifier
        self.attribute = nn.Linear(64, 2)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.dropout(torch.flatten(self.pool(self.features(x)), 1))
        return self.disease(pooled), self.attribute(pooled)


def mixed(model: nn.Module) -> nn.Module:
    """Training mode, with every BatchNorm frozen in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def flags(model: nn.Module) -> list[bool]:
    return [module.training for module in model.modules()]


torch.manual_seed(0)
IMAGES = torch.rand(4, 3, 48, 48)
MAPS = np.random.default_rng(0).random((4, 48, 48)).astype(np.float32)


def _generator_calls(model: nn.Module) -> dict[str, object]:
    def generator(**kwargs):
        return GradCAMHeatmapGenerator(model, "features", **kwargs)

    return {
        "generate_heatmap": lambda: generator().generate_heatmap(IMAGES),
        "explain": lambda: generator().explain(IMAGES, [("logits", 0), ("logits", 1)]),
        "generate": lambda: generator().generate(IMAGES[0]),
        "generate_batch": lambda: generator().generate_batch(IMAGES),
        "use_guided": lambda: generator(use_guided=True).generate_heatmap(IMAGES),
        "method=scorecam": lambda: generator(method="scorecam").generate_heatmap(IMAGES[:1]),
        "default layer": lambda: GradCAMHeatmapGenerator(model).generate_heatmap(IMAGES),
        "compare_groups (generator)": lambda: generator().compare_groups(
            IMAGES, [0, 0, 1, 1], n_permutations=9
        ),
        "analysis.compare_groups": lambda: compare_groups(
            IMAGES, [0, 0, 1, 1], generator=generator(), n_permutations=9
        ),
        "heatmaps_from_images": lambda: heatmaps_from_images(generator(), IMAGES, batch_size=3),
    }


def _function_calls(model: nn.Module) -> dict[str, object]:
    return {
        "compute_gradcam": lambda: compute_gradcam(model, None, IMAGES[0], "features"),
        "get_activation_maps": lambda: get_activation_maps(model, None, IMAGES[0], "features"),
        "get_top_predictions": lambda: get_top_predictions(model, None, IMAGES[0], None, 2),
        "get_conv_layers": lambda: get_conv_layers(model),
        "spatial_layers": lambda: spatial_layers(model, IMAGES[:1]),
        "default_layer": lambda: default_layer(model, IMAGES[:1]),
        "guided_backprop": lambda: sc.guided_backprop(model, IMAGES, [lambda out: out[:, 0]]),
        "GuidedBackpropReLUModel": lambda: sc.GuidedBackpropReLUModel(model)(IMAGES[:1]),
        "confidence_change": lambda: sc.confidence_change(model, IMAGES, MAPS),
        "extract_embeddings (final linear input)": lambda: extract_embeddings(
            model, None, IMAGES, batch_size=3
        ),
        "extract_embeddings (named layer)": lambda: extract_embeddings(
            model, "features", IMAGES, batch_size=3
        ),
        "EmbeddingExtractor": lambda: EmbeddingExtractor(model, "features")(IMAGES),
    }


def _cam_calls(model: nn.Module) -> dict[str, object]:
    calls = {}
    for name, cls in sc.METHODS.items():

        def run(cls=cls):
            with cls(model, ["features"]) as cam:
                return cam(IMAGES[:2], targets=None)

        calls[f"cam.{name}"] = run
    return calls


ALL_CALLS = sorted(
    [*_generator_calls(nn.Module()), *_function_calls(nn.Module()), *_cam_calls(nn.Module())]
)


@pytest.mark.filterwarnings("ignore:No target_layer given")
@pytest.mark.parametrize("name", ALL_CALLS)
def test_single_head_calls_restore_every_modules_flag(name):
    torch.manual_seed(1)
    model = mixed(SmallCNN())
    calls = {**_generator_calls(model), **_function_calls(model), **_cam_calls(model)}
    before = flags(model)
    assert any(before) and not all(before)  # really mixed
    result = calls[name]()
    assert result is not None
    assert flags(model) == before, name


def test_road_and_compare_methods_restore_every_modules_flag():
    pytest.importorskip("scipy", reason="ROAD needs scipy (the analysis extra)")
    model = mixed(SmallCNN())
    before = flags(model)
    sc.road(model, IMAGES[:2], MAPS[:2], fractions=(0.5,))
    assert flags(model) == before
    sc.compare_methods(model, "features", IMAGES[:2], methods=("gradcam",), road_fractions=(0.5,))
    assert flags(model) == before


def test_two_head_calls_restore_every_modules_flag():
    torch.manual_seed(2)
    model = mixed(TwoHeads())
    before = flags(model)
    with GradCAMHeatmapGenerator(model, "features") as gen:
        gen.generate_attention_overlap(IMAGES)
        assert flags(model) == before
        head_overlap_over_dataset(gen, IMAGES, batch_size=3)
        assert flags(model) == before
