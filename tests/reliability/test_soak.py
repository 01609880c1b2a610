"""Soak: many explanations and many CAM objects in one process leave no trace.

CI runs a short setting; a longer one is chosen with environment variables::

    SHORTCUT_DETECT_SOAK_EXPLAIN=10000 SHORTCUT_DETECT_SOAK_CYCLES=1000 \
        pytest tests/reliability/test_soak.py

(explain calls through the Grad-CAM generator, and create / call / close cycles of every
CAM class). Checked after the run: no hook left on any module, the model's parameters,
``requires_grad`` flags, gradients and train/eval modes unchanged, grad mode on, and the
resident memory grown by less than ``RSS_BOUND_MB`` after a warm-up of 10 % of the calls.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

import shortcut_detect.cam as sc
from shortcut_detect.gradcam import GradCAMHeatmapGenerator

EXPLAIN_CALLS = int(os.environ.get("SHORTCUT_DETECT_SOAK_EXPLAIN", "200"))
CREATE_CLOSE_CYCLES = int(os.environ.get("SHORTCUT_DETECT_SOAK_CYCLES", "2"))
RSS_BOUND_MB = 50.0


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
        )
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.features(x))).flatten(1))


def _state(model: nn.Module) -> dict[str, object]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers()],
        "flags": [p.requires_grad for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
    }


def _assert_untouched(model: nn.Module, before: dict[str, object]) -> None:
    after = _state(model)
    for name in ("params", "buffers"):
        assert all(torch.equal(a, b) for a, b in zip(after[name], before[name])), name  # type: ignore[arg-type]
    assert after["flags"] == before["flags"] and after["modes"] == before["modes"]
    assert all(p.grad is None for p in model.parameters())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks and not getattr(module, "_backward_pre_hooks", None)
    assert torch.is_grad_enabled()


def _model() -> nn.Module:
    model = _Net().train()  # train mode, one frozen layer: both must come back as they were
    model.fc.requires_grad_(False)
    return model


def test_many_explain_calls_leave_no_trace(rss_mb):
    model, images = _model(), torch.rand(4, 3, 16, 16)
    before = _state(model)
    warm_up = max(1, EXPLAIN_CALLS // 10)
    generator = GradCAMHeatmapGenerator(model, "act")
    for _ in range(warm_up):
        generator.explain(images)
    start = rss_mb()
    for _ in range(EXPLAIN_CALLS - warm_up):
        (explanation,) = generator.explain(images)
        assert explanation.raw_heatmaps.shape == (4, 16, 16)
    grown = rss_mb() - start
    generator.close()
    _assert_untouched(model, before)
    sys.stderr.write(f"soak: {EXPLAIN_CALLS} explain calls, RSS +{grown:.1f} MB\n")
    assert grown < RSS_BOUND_MB


def _make(name: str, model: nn.Module) -> sc.BaseCAM:
    cls = sc.get_method(name)
    if name == "cam":
        return cls(model, [model.act], fc_layer=model.fc)
    return cls(model, [model.act])


@pytest.mark.filterwarnings("ignore:FullGrad ignores target_layers:UserWarning")
def test_create_close_cycles_of_every_cam_class_leave_no_trace(rss_mb):
    names = sorted({**sc.METHODS, **sc.MORE_METHODS})
    model, images = _model(), torch.rand(2, 3, 16, 16)
    targets = [sc.ClassifierOutputTarget(1), sc.ClassifierOutputTarget(2)]
    before = _state(model)
    for name in names:  # warm-up: one cycle of each
        with _make(name, model) as cam:
            cam(images, targets=targets)
    start = rss_mb()
    for _ in range(CREATE_CLOSE_CYCLES):
        for name in names:
            cam = _make(name, model)
            assert cam(images, targets=targets).shape == (2, 16, 16), name
            cam.close()
            del cam
    grown = rss_mb() - start
    _assert_untouched(model, before)
    sys.stderr.write(
        f"soak: {CREATE_CLOSE_CYCLES} cycles x {len(names)} CAM classes, RSS +{grown:.1f} MB\n"
    )
    assert grown < RSS_BOUND_MB
