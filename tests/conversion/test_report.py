"""quantization_report / format_report (torch_quant/report.py) against
statistics computed here from PyTorch's own quantizers."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torch_quant as tq

from conftest import MODES
from model_helpers import (torch_fake_quant_tensor, relu_mlp, GRANULARITIES, Tiny, ALL_TINY, MLP_TINY)


# ---------------------------------------------------------------------------
# 6. quantization_report / format_report


def report_model():
    model = nn.Sequential(OrderedDict(proj=nn.Linear(2, 1)))
    with torch.no_grad():
        model.proj.weight.copy_(torch.tensor([[0.5, -0.3]]))
        model.proj.bias.fill_(0.25)
    return model


def row_of(table: str, name: str):
    rows = [line.split() for line in table.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, table
    return rows[0]


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_report_hand_computed(granularity):
    model = report_model()
    x = torch.tensor([[-3.0, 5.0]])
    w = model.proj.weight.detach().clone()
    tq.quantize_model(model, "symmetric", granularity, [x], smoothing=None, progress=False)
    (r,) = tq.quantization_report(model)
    assert isinstance(r, tq.LayerReport)
    assert (r.name, r.act_mode, r.act_granularity) == ("proj", "symmetric", granularity)
    assert (r.in_features, r.out_features) == (2, 1)
    # [-3, 5] symmetric: scale 5/127, the data spans -76.2 .. 127 codes of 255
    assert abs(r.act_range_utilization - 203.2 / 255) < 1e-6
    # float32 weight [1, 2] + bias [1]
    assert r.weight_bytes_before == 4 * (2 + 1)
    # docs/semantics.md ("Python API") buffers: int8 weight [N, K], float32 scale [N], int32 sum [N],
    # float32 bias [N], + 0-dim float32 input_scale and int32 zero point
    N, K = 1, 2
    expected_after = N * K + 4 * N + 4 * N + 4 * N + (8 if granularity == "per_tensor" else 0)
    assert r.weight_bytes_after == expected_after
    # as stored: the state_dict's bytes (the weight plain, as in files)
    assert r.weight_bytes_after == sum(b.numel() * b.element_size()
                                       for b in model.proj.state_dict().values())
    # SQNRs from torch's own quantizers
    x_hat = torch_fake_quant_tensor(x, torch.tensor(5.0) / 127, 0, "symmetric")
    act_sqnr = 10 * math.log10(float(x.double().pow(2).sum())
                               / float((x.double() - x_hat.double()).pow(2).sum()))
    assert r.act_sqnr_db == pytest.approx(act_sqnr, rel=1e-9)
    w_scale = (w.abs().amax(1) / 127).double()
    w_hat = torch.quantize_per_channel(w, w_scale, torch.zeros(1, dtype=torch.long), 0,
                                       torch.qint8).dequantize()
    w_sqnr = 10 * math.log10(float(w.double().pow(2).sum())
                             / float((w.double() - w_hat.double()).pow(2).sum()))
    assert r.weight_sqnr_db == pytest.approx(w_sqnr, rel=1e-9)
    # and by hand: -3 -> code -76 (-76.2 rounded), 5 -> 127; -0.3 -> -76, 0.5 -> 127
    assert act_sqnr == pytest.approx(10 * math.log10(34 / (3 - 76 * 5 / 127) ** 2), rel=1e-5)
    assert w_sqnr == pytest.approx(10 * math.log10(0.34 / (0.3 - 76 * 0.5 / 127) ** 2), rel=1e-5)
    d = r.to_dict()
    assert d["name"] == "proj" and d["act_range_utilization"] == r.act_range_utilization

    table = tq.format_report([r])
    assert "proj" in table and "79.7%" in table
    cells = row_of(table, "proj")
    assert cells[:4] == ["proj", "symmetric", granularity, "2x1"]
    assert cells[4] == "12" and cells[5] == str(expected_after)
    assert cells[6] == f"{12 / expected_after:.2f}"
    assert cells[7] == "79.7%"
    assert cells[8] == f"{w_sqnr:.1f}" and cells[9] == f"{act_sqnr:.1f}"
    assert "total (1 layers)" in table


def test_report_without_calibration():
    model = report_model()
    tq.quantize_model(model, "asymmetric", "per_token", progress=False)
    (r,) = tq.quantization_report(model)
    assert r.act_range_utilization is None and r.act_sqnr_db is None
    assert r.weight_sqnr_db is not None and r.weight_bytes_before == 12
    cells = row_of(tq.format_report([r]), "proj")
    assert cells[7] == "-" and cells[9] == "-"
    assert cells[8] != "-"


def test_stats_are_the_layers_own_read_only_record():
    """A converted layer's stats are recorded once by quantize_ and cannot be
    changed through the mapping the layer hands out; a layer made by
    from_float has none, and the report shows what record_stats recorded."""
    model = report_model()
    tq.quantize_model(model, "symmetric", "per_token", progress=False)
    stats = model.proj.stats
    assert stats["float_weight_bytes"] == 12
    with pytest.raises(TypeError):
        stats["weight_sqnr_db"] = 0.0
    assert tq.QuantLinear.from_float(nn.Linear(3, 2)).stats == {}
    model.proj.record_stats(dict(stats, weight_sqnr_db=12.5))
    (r,) = tq.quantization_report(model)
    assert r.weight_sqnr_db == 12.5 and stats["weight_sqnr_db"] != 12.5


def test_report_many_layers_and_conv1d(gen):
    model = Tiny().eval()
    x = torch.randn(3, 16, generator=gen)
    tq.quantize_model(model, "auto", "per_token", [x], skip="*.mlp.*", progress=False)
    reports = tq.quantization_report(model)
    assert [r.name for r in reports] == [n for n in ALL_TINY if n not in MLP_TINY]
    ref = Tiny()
    for r in reports:
        layer = ref.get_submodule(r.name)
        params = [p for p in (layer.weight, layer.bias) if p is not None]
        assert r.weight_bytes_before == sum(p.numel() * 4 for p in params)
        assert r.weight_bytes_after == sum(b.numel() * b.element_size()
                                           for b in model.get_submodule(r.name).state_dict().values())
        assert r.act_mode in MODES and 0 < r.act_range_utilization <= 1
    table = tq.format_report(reports)
    for r in reports:
        assert r.name in table
    assert f"total ({len(reports)} layers)" in table
    assert tq.quantization_report(relu_mlp()) == []
