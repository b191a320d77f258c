"""The numbers the conversion decides with and reports: static parameters
of a range, fake quantization (quantize then dequantize, with the ops
themselves), SQNR, range utilization and a layer's output error."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import ops
from .calibration import Observer
from ..float_layers import float_weight_and_bias
from ..nn import QuantLinear

__all__ = ["static_qparams", "fake_quantize", "sqnr_db", "range_utilization",
           "act_range_utilization", "output_mse"]


def static_qparams(lo: float, hi: float, mode: str):
    """Per-tensor (scale, zero_point) of the range [lo, hi], computed by the op
    itself so that the rules of docs/semantics.md ("Modes and rounding") apply (range widened to contain 0)."""
    return ops.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), mode)


def fake_quantize(rows: Tensor, mode: str, granularity: str, scale=None, zero_point=None) -> Tensor:
    """``rows`` quantized and dequantized as the layer would (float32)."""
    if granularity == "per_token":
        q, s, z = ops.quantize_per_token(rows, mode)
        return ops.dequantize(q, s, z)
    q = ops.quantize(rows, scale, zero_point, mode)
    return ops.dequantize(q, scale, zero_point)


def sqnr_db(x: Tensor, x_hat: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    signal = float(x.double().pow(2).sum())
    noise = float((x.double() - x_hat.double()).pow(2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def range_utilization(lo: Tensor, hi: Tensor, scale: Tensor) -> float:
    """The fraction of the 8-bit integer range that data in [lo, hi] spans once
    divided by ``scale``: ``(hi - lo) / scale / 255``, at most 1 (a clipped
    range uses all of it); the mean when lo, hi, scale are per row. E.g. [-3, 5]
    symmetric: scale 5/127, the data spans -76.2 .. 127, 203.2 / 255 = 79.7%."""
    return float(((hi - lo) / scale / 255.0).clamp(max=1.0).mean())


def act_range_utilization(rows: Tensor, obs: Observer, mode: str, granularity: str,
                          scale=None) -> float:
    """range_utilization of a layer's inputs: per token, of each sampled row
    with its own scale; per tensor, of everything calibration saw."""
    if granularity == "per_token":
        _, s, _ = ops.quantize_per_token(rows, mode)
        return range_utilization(rows.amin(-1), rows.amax(-1), s)
    return range_utilization(torch.tensor(obs.lo), torch.tensor(obs.hi), scale)


def output_mse(layer: nn.Module, q: QuantLinear, rows: Tensor) -> float:
    """Mean squared difference between the quantized and the float layer's
    outputs on ``rows`` (bias included in both, so it cancels)."""
    weight, bias = float_weight_and_bias(layer)
    with torch.no_grad():
        y = torch.nn.functional.linear(rows, weight.detach().float(),
                                       None if bias is None else bias.detach().float())
        y_q = q(rows)
    return float((y_q.double() - y.double()).pow(2).mean())
