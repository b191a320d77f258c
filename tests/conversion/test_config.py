"""``tq.QuantConfig`` (every setting checked when it is built) and
``tq.quantize_`` (applies one in place); ``quantize_model`` is the same call
with the settings as arguments."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import torch_quant as tq


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(act_mode="sideways"), ValueError, "act_mode must be one of"),
    (dict(act_mode=None), TypeError, "act_mode must be one of"),
    (dict(act_granularity="per_row"), ValueError, "act_granularity must be one of"),
    (dict(smoothing="sometimes"), ValueError, "smoothing must be one of"),
    (dict(smoothing=1.5), ValueError, r"smoothing alpha must be in \[0, 1\]"),
    (dict(smoothing=float("nan")), ValueError, r"smoothing alpha must be in \[0, 1\]"),
    (dict(smoothing=True), TypeError, "smoothing must be"),
    (dict(smoothing=[0.5]), TypeError, "smoothing must be"),
    (dict(skip=5), TypeError, "skip must be a string or a sequence of strings"),
    (dict(skip=["a", 3]), TypeError, "skip must be a string or a sequence of strings"),
    (dict(percentile=99.9), ValueError, "percentile applies to act_granularity='per_tensor'"),
    (dict(act_granularity="per_tensor", percentile=40), ValueError, r"percentile must be in \(50, 100\]"),
    (dict(act_granularity="per_tensor", percentile="99"), TypeError, "percentile must be a number"),
])
def test_bad_settings_fail_when_the_config_is_built(kwargs, error, match):
    with pytest.raises(error, match=r"tq\.QuantConfig: " + match):
        tq.QuantConfig(**kwargs)


def test_config_normalises_and_round_trips_through_json():
    c = tq.QuantConfig("asymmetric", "per_tensor", smoothing=1, skip="lm_head", percentile=99)
    assert c.skip == ("lm_head",) and c.smoothing == 1.0 and c.percentile == 99.0
    assert tq.QuantConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert tq.QuantConfig(skip=None).skip == ()
    with pytest.raises(ValueError, match="unknown settings"):
        tq.QuantConfig.from_dict({"act_mode": "symmetric", "colour": "blue"})
    with pytest.raises(dataclasses_frozen_error()):
        c.act_mode = "symmetric"


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_settings_that_need_calibration_data_say_so():
    model = mlp()
    for config in (tq.QuantConfig(act_mode="auto"), tq.QuantConfig(act_granularity="per_tensor"),
                   tq.QuantConfig(smoothing="search"), tq.QuantConfig(smoothing=0.5)):
        with pytest.raises(ValueError, match="needs calibration_data"):
            tq.quantize_(model, config)
    assert all(isinstance(m, nn.Linear) for m in model if not isinstance(m, nn.ReLU))
    with pytest.raises(TypeError, match="config must be a tq.QuantConfig"):
        tq.quantize_(model, {"act_mode": "symmetric"})


@pytest.mark.parametrize("config", [
    tq.QuantConfig(),
    tq.QuantConfig("asymmetric", skip=["2"]),
    tq.QuantConfig("auto", "per_tensor", smoothing="off"),
    tq.QuantConfig("symmetric", "per_tensor", smoothing=0.5, percentile=99.9),
])
def test_quantize_applies_the_config_as_quantize_model_does(config):
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 16, generator=g) for _ in range(2)]
    needs = config.needs_calibration()
    a = tq.quantize_(mlp(), config, calib if needs else None, progress=False)
    b = tq.quantize_model(mlp(), config.act_mode, config.act_granularity,
                          calib if needs else None, list(config.skip),
                          percentile=config.percentile, smoothing=config.smoothing,
                          progress=False)
    x = torch.randn(5, 16, generator=g)
    assert torch.equal(a(x), b(x))
    kinds = {name: type(m).__name__ for name, m in a.named_modules() if name}
    assert kinds["0"] == "QuantLinear"
    assert kinds["2"] == ("Linear" if "2" in config.skip else "QuantLinear")
    # one config, several models: it holds no state
    c = copy.deepcopy(mlp())
    tq.quantize_(c, config, calib if needs else None, progress=False)
    assert torch.equal(c(x), a(x))
