"""The shared helpers: JSON conversion, risk order, module modes, device choice, progress."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_detect.common import (
    ProgressBar,
    Risk,
    eval_mode,
    json_default,
    nan_to_none,
    resolve_device,
    to_jsonable,
)
from shortcut_detect.common.device import DeviceUnavailableError, place_model


def test_nan_to_none_maps_non_finite_to_none():
    assert nan_to_none(None) is None
    assert nan_to_none(float("nan")) is None
    assert nan_to_none(np.float32("inf")) is None
    assert nan_to_none(np.float64(0.25)) == 0.25
    assert isinstance(nan_to_none(np.int64(3)), float)


def test_to_jsonable_converts_nested_values_and_round_trips():
    @dataclasses.dataclass
    class Result:
        score: float
        values: np.ndarray

    value = {
        1: (np.float32(0.5), float("nan")),
        "arr": np.arange(4, dtype=np.int16),
        "tensor": torch.tensor([1.5, float("inf")]),
        "path": Path("/tmp/x.png"),
        "risk": Risk.HIGH,
        "result": Result(score=np.float64(2.0), values=np.ones(2)),
        "flag": np.bool_(True),
    }
    out = to_jsonable(value)
    assert out == {
        "1": [0.5, None],
        "arr": [0, 1, 2, 3],
        "tensor": [1.5, None],
        "path": "/tmp/x.png",
        "risk": "HIGH",
        "result": {"score": 2.0, "values": [1.0, 1.0]},
        "flag": True,
    }
    assert json.loads(json.dumps(out)) == out


def test_to_jsonable_summarises_large_arrays():
    big = np.arange(10, dtype=np.float32)
    out = to_jsonable({"big": big}, max_array_values=5)["big"]
    assert out["shape"] == [10] and out["min"] == 0.0 and out["max"] == 9.0
    assert "omitted" in out


def test_json_default_for_json_dumps():
    text = json.dumps(
        {"a": np.int32(2), "b": np.zeros(2), "c": Path("p"), "d": Risk.LOW}, default=json_default
    )
    assert json.loads(text) == {"a": 2, "b": [0.0, 0.0], "c": "p", "d": "LOW"}
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        json.dumps({"x": object()}, default=json_default)


def test_risk_order_parse_and_string_equality():
    assert Risk.UNKNOWN < Risk.LOW < Risk.MODERATE < Risk.HIGH
    assert Risk.HIGH == "HIGH" and str(Risk.MODERATE) == "MODERATE"
    assert Risk.parse("moderate") is Risk.MODERATE
    assert Risk.parse(None) is Risk.UNKNOWN
    assert Risk.highest(["LOW", Risk.HIGH, None]) is Risk.HIGH
    assert Risk.highest([]) is Risk.UNKNOWN
    assert Risk.MODERATE >= "LOW"
    with pytest.raises(ValueError, match="unknown risk level 'SEVERE'"):
        Risk.parse("SEVERE")
    assert json.dumps(Risk.HIGH) == '"HIGH"'


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def test_eval_mode_restores_each_module_flag_also_on_error():
    model = _Mixed().train()
    model.bn.eval()  # a frozen BatchNorm inside a training model
    before = {name: m.training for name, m in model.named_modules()}
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert {name: m.training for name, m in model.named_modules()} == before


def test_resolve_device_rules():
    model = _Mixed()
    assert resolve_device(None, model) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_progress_bar_counts_and_tracks():
    bar = ProgressBar(total=3, label="test", enabled=False)
    items = list(bar.track([[1, 2], [3]], size=len))
    assert items == [[1, 2], [3]]
    assert bar.count == 3


def test_place_model_moves_only_when_a_device_is_asked_for():
    model = nn.Linear(2, 2)
    assert place_model(model) == torch.device("cpu")
    assert next(model.parameters()).device.type == "cpu"
    # "meta" exists on every machine, so the move is visible without a GPU.
    assert place_model(model, "meta") == torch.device("meta")
    assert next(model.parameters()).device.type == "meta"
    assert place_model(model) == torch.device("meta")  # stays where it is
