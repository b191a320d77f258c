"""Calibration (torch_quant/calibration.py): static ranges against
``MinMaxObserver`` on captured layer inputs, percentiles, batch forms, the
row sample, non-finite data."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_quant as tq
from torch_quant.conversion import calibration

from conftest import MODES, assert_same
from model_helpers import (rel_err, observer_qparams, capture_inputs, relu_mlp, quantized, no_hooks_left, GRANULARITIES)


@pytest.mark.parametrize("act_mode", [*MODES, "auto"])
def test_per_tensor_calibration_is_exact_min_max(gen, act_mode):
    """Over all batches, not a sample: 3008 rows (far more than the 256 kept
    for statistics), batch shapes [1, K], [7, K], [2, 1500, K], with the
    extremes near the end of the last one."""
    model = relu_mlp()
    ref = copy.deepcopy(model)
    last = torch.randn(2, 1500, 17, generator=gen)
    last[1, 1499, 3] = 9.5
    last[1, 1498, 11] = -7.25
    data = [torch.randn(1, 17, generator=gen), torch.randn(7, 17, generator=gen), last]
    tq.quantize_model(model, act_mode, "per_tensor", data, smoothing=None, progress=False)
    inputs = capture_inputs(ref, data, ["0", "2", "4"])
    assert float(inputs["0"].max()) == 9.5 and float(inputs["0"].min()) == -7.25
    for name, rows in inputs.items():
        q = model.get_submodule(name)
        lo, hi = float(rows.min()), float(rows.max())
        assert q.stats["calibrated_range"] == (lo, hi), name
        assert q.stats["calibration_rows"] == 3008
        s, z = observer_qparams(rows, q.act_mode)
        assert_same(q.input_scale, s, f"{name} input_scale vs MinMaxObserver")
        assert_same(q.input_zero_point, z, f"{name} input_zero_point vs MinMaxObserver")
        s2, z2 = tq.choose_qparams(torch.tensor([lo, hi]), q.act_mode)
        assert_same(q.input_scale, s2, f"{name} input_scale vs choose_qparams")
        assert_same(q.input_zero_point, z2, f"{name} input_zero_point vs choose_qparams")
    if act_mode == "symmetric":
        assert float(model[0].input_scale) == pytest.approx(9.5 / 127, rel=1e-7)


@pytest.mark.parametrize("act_mode", MODES)
def test_percentile_clips_outliers(gen, act_mode):
    x = torch.randn(200, 17, generator=gen)
    x[13, 4] = 40.0
    x[100, 2] = -25.0
    minmax = tq.quantize_model(relu_mlp(), act_mode, "per_tensor", [x], smoothing=None, progress=False)
    clipped = tq.quantize_model(relu_mlp(), act_mode, "per_tensor", [x], percentile=99.0,
                                smoothing=None, progress=False)
    full = tq.quantize_model(relu_mlp(), act_mode, "per_tensor", [x], percentile=100.0,
                             smoothing=None, progress=False)
    assert minmax[0].stats["calibrated_range"] == (-25.0, 40.0)
    lo, hi = clipped[0].stats["calibrated_range"]
    # all 200 rows are kept, so these are torch.quantile of everything the layer saw
    p_lo, p_hi = torch.quantile(x.flatten(), torch.tensor([0.01, 0.99])).tolist()
    assert lo == pytest.approx(p_lo, rel=1e-6) and hi == pytest.approx(p_hi, rel=1e-6)
    assert -25.0 < lo < 0 < hi < 40.0 and hi < 4.0
    assert float(clipped[0].input_scale) < float(minmax[0].input_scale) / 5
    s, z = observer_qparams(torch.tensor([lo, hi]), act_mode)
    assert_same(clipped[0].input_scale, s, "scale of the clipped range")
    assert_same(clipped[0].input_zero_point, z, "zero point of the clipped range")
    for name in ("0", "2", "4"):
        a, b = full.get_submodule(name), minmax.get_submodule(name)
        assert_same(a.input_scale, b.input_scale, f"{name}: percentile=100 is min-max")
        assert_same(a.input_zero_point, b.input_zero_point, f"{name}: percentile=100 is min-max")
    # the clipped layer is the more accurate one on the bulk of the data
    bulk = x[(x.abs() < 4).all(1)]
    ref = relu_mlp()
    with torch.no_grad():
        e_clip = rel_err(clipped[0](bulk), ref[0](bulk))
        e_minmax = rel_err(minmax[0](bulk), ref[0](bulk))
    assert e_clip < e_minmax


def test_percentile_errors(gen):
    data = [torch.randn(5, 17, generator=gen)]
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*percentile.*per_tensor"):
        tq.quantize_model(relu_mlp(), "symmetric", "per_token", data, percentile=99.0,
                          progress=False)
    for bad in (50.0, 100.5, -1, "99"):  # "99": a TypeError
        with pytest.raises((ValueError, TypeError), match=r"(QuantConfig|quantize_).*percentile"):
            tq.quantize_model(relu_mlp(), "symmetric", "per_tensor", data, percentile=bad,
                              progress=False)


@pytest.mark.parametrize("act_mode,granularity,needs", [
    ("auto", "per_token", "act_mode='auto'"),
    ("symmetric", "per_tensor", "act_granularity='per_tensor'"),
    ("asymmetric", "per_tensor", "act_granularity='per_tensor'"),
    ("auto", "per_tensor", "act_mode='auto' and act_granularity='per_tensor'"),
])
def test_calibration_data_required(act_mode, granularity, needs):
    model = relu_mlp()
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*" + re.escape(needs)
                       + r".*calibration_data"):
        tq.quantize_model(model, act_mode, granularity)
    assert not quantized(model)


def test_bad_arguments(gen):
    model = relu_mlp()
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*act_mode.*'int8'"):
        tq.quantize_model(model, act_mode="int8")
    with pytest.raises(ValueError, match=r"(QuantConfig|quantize_).*act_granularity.*'per_channel'"):
        tq.quantize_model(model, act_granularity="per_channel")
    with pytest.raises(TypeError, match=r"(QuantConfig|quantize_).*model.*dict"):
        tq.quantize_model({"a": nn.Linear(2, 2)})
    with pytest.raises(TypeError, match=r"(QuantConfig|quantize_).*skip"):
        tq.quantize_model(model, skip=["0", 2])
    with pytest.raises(TypeError, match=r"QuantConfig: skip must be .*got int"):
        tq.quantize_model(model, skip=5)
    assert not quantized(model)


class Block3(nn.Module):
    def __init__(self, k=12):
        super().__init__()
        self.block = nn.Module()
        self.block.fc1 = nn.Linear(k, k)
        self.block.fc2 = nn.Linear(k, k)
        self.block.fc3 = nn.Linear(k, k)

    def forward(self, x):
        b = self.block
        return b.fc3(torch.relu(b.fc2(torch.relu(b.fc1(x)))))


def _unconvertible(kind):
    m = Block3()
    with torch.no_grad():
        if kind == "nan_weight":
            m.block.fc2.weight[3, 4] = float("nan")
        elif kind == "inf_bias":
            m.block.fc2.bias[0] = float("inf")
        elif kind == "float64":
            m.block.fc2.double()
        elif kind == "wide":
            m.block.fc2 = nn.Linear(65_800, 12)
        elif kind == "meta":
            m.block.fc2.to("meta")
    return m


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("kind,message", [
    ("nan_weight", "weight of layer 'block.fc2' holds NaN"),
    ("inf_bias", "bias of layer 'block.fc2' holds NaN or inf"),
    ("float64", "layer 'block.fc2' is torch.float64"),
    ("wide", "layer 'block.fc2' has 65800 input features"),
    ("meta", "layer 'block.fc2' has its weights on the meta device"),
])
def test_unconvertible_layer_leaves_the_model_as_it_was(gen, kind, message, granularity):
    """Every layer is checked before the model is touched: the error names
    the layer, and no layer is replaced or changed (calibration, smoothing's
    folds and the swap all come after)."""
    model = _unconvertible(kind)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.device.type != "meta"}
    data = [torch.randn(8, 12, generator=gen)] if granularity == "per_tensor" else None
    with pytest.raises(ValueError, match=re.escape(message)):
        tq.quantize_model(model, "symmetric", granularity, data, progress=False)
    assert not quantized(model)
    assert all(type(m) is nn.Linear for m in (model.block.fc1, model.block.fc2, model.block.fc3))
    after = {k: v for k, v in model.state_dict().items() if v.device.type != "meta"}
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]) or (v.isnan() == after[k].isnan()).all(), k
    # skipping the layer converts the rest (per token: no calibration pass through it)
    if kind != "wide" and granularity == "per_token":
        tq.quantize_model(model, "symmetric", granularity, data, skip="block.fc2", progress=False)
        assert sorted(quantized(model)) == ["block.fc1", "block.fc3"]


class TwoInputs(nn.Module):
    """``forward(x, y=None)``: calibration batches as tuples, lists or dicts."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(17, 9)
        self.fc2 = nn.Linear(9, 5)
        self.fc3 = nn.Linear(3, 5, bias=False)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, y=None):
        out = self.fc2(F.relu(self.fc1(x)))
        if y is not None:
            out = out + self.fc3(y)
        return out


@pytest.mark.parametrize("act_mode", ["asymmetric", "auto"])
def test_calibration_batch_forms(gen, act_mode):
    xs = [torch.randn(7, 17, generator=gen), torch.randn(1, 17, generator=gen)]
    ys = [torch.randn(7, 3, generator=gen) * 3, torch.randn(1, 3, generator=gen)]
    forms = {
        "tuple": [(x, y) for x, y in zip(xs, ys)],
        "list": [[x, y] for x, y in zip(xs, ys)],
        "dict": [{"x": x, "y": y} for x, y in zip(xs, ys)],
        "dict_kw_only_y": [{"y": y, "x": x} for x, y in zip(xs, ys)],
        "generator": None,
    }
    ref = TwoInputs()
    inputs = capture_inputs(ref, forms["tuple"], ["fc1", "fc2", "fc3"])
    for form, data in forms.items():
        if data is None:
            data = ((x, y) for x, y in zip(xs, ys))  # no len()
        model = tq.quantize_model(TwoInputs(), act_mode, "per_tensor", data, smoothing=None, progress=False)
        q = quantized(model)
        assert sorted(q) == ["fc1", "fc2", "fc3"], form
        for name, rows in inputs.items():
            s, z = observer_qparams(rows, q[name].act_mode)
            assert_same(q[name].input_scale, s, f"{form} {name}")
            assert_same(q[name].input_zero_point, z, f"{form} {name}")
        with torch.no_grad():
            assert rel_err(model(xs[0], ys[0]), ref(xs[0], ys[0])) < 3e-2


def test_calibration_sample_represents_late_batches(gen):
    """The rows kept for statistics are a uniform sample of every row seen,
    not the first ones: 40 batches of 64 rows, each row tagged with its
    batch; the 256 kept rows come about evenly from the first and second
    half (expected 128 each; binomial sd 8)."""
    layer = nn.Linear(3, 2)
    obs = calibration.Observer("x", torch.Generator().manual_seed(0))
    for b in range(40):
        obs(layer, (torch.full((64, 3), float(b)) + torch.rand(64, 3, generator=gen) * 0.1,))
    batch = obs.rows[:, 0].floor()
    assert obs.rows.shape[0] == calibration.SAMPLE_ROWS and obs.seen == 40 * 64
    late = int((batch >= 20).sum())
    assert 96 <= late <= 160, late
    assert int((batch == 39).sum()) > 0  # the very last batch is represented


def test_calibration_tensor_batches(gen):
    data = [torch.randn(7, 17, generator=gen), torch.randn(3, 2, 17, generator=gen)]
    # a bare tensor batch: model(x); fc3 is then never called, which is an error
    # (its range would be unknown), naming the layer
    m = TwoInputs()
    with pytest.raises(ValueError, match=r"quantize_.*never reached.*fc3"):
        tq.quantize_model(m, "symmetric", "per_tensor", data, smoothing=None, progress=False)
    assert not quantized(m) and no_hooks_left(m)
    # and with only the x path, tensor batches calibrate it
    mlp = relu_mlp()
    inputs = capture_inputs(copy.deepcopy(mlp), data, ["0"])
    tq.quantize_model(mlp, "symmetric", "per_tensor", data, smoothing=None, progress=False)
    s, z = observer_qparams(inputs["0"], "symmetric")
    assert_same(mlp[0].input_scale, s, "tensor batches")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_calibration_data_names_the_layer(gen, bad):
    x = torch.randn(4, 17, generator=gen)
    y = torch.randn(4, 3, generator=gen)
    y[2, 1] = bad
    model = TwoInputs()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"quantize_.*'fc3'.*NaN or inf"):
        tq.quantize_model(model, "symmetric", "per_tensor", [{"x": x, "y": y}], progress=False)
    # nothing converted, no hooks left behind, weights untouched
    assert not quantized(model) and no_hooks_left(model)
    for k, v in model.state_dict().items():
        assert_same(v, before[k], k)
    x[0, 0] = bad
    with pytest.raises(ValueError, match=r"'fc1'"):
        tq.quantize_model(model, "auto", "per_token", [(x, None)], progress=False)
    assert not quantized(model) and no_hooks_left(model)
