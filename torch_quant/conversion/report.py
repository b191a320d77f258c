"""What ``quantize_`` did, layer by layer: ``quantization_report``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional

from torch import nn

from ..nn import quantized_layers

__all__ = ["LayerReport", "quantization_report", "format_report"]


@dataclass
class LayerReport:
    """One quantized layer. Statistics that need the float weights or the
    calibration data are None when the model was converted without them
    (activation statistics need ``calibration_data``) or loaded from a file."""

    name: str
    act_mode: str
    act_granularity: str
    in_features: int
    out_features: int
    #: float weight + bias bytes before conversion
    weight_bytes_before: Optional[int]
    #: int8 weight + float32 scales + int32 sums + float32 bias (+ static input qparams)
    weight_bytes_after: int
    #: fraction of the 8-bit integer range the layer's calibration inputs span
    #: (mean over sampled rows per token; the whole calibrated range per tensor)
    act_range_utilization: Optional[float]
    #: 10 log10(sum w^2 / sum (w - dequant(quant(w)))^2), dB
    weight_sqnr_db: Optional[float]
    #: the same for the calibration inputs sampled for this layer, quantized as it does
    act_sqnr_db: Optional[float]
    #: act_mode="auto": the mean squared error of the layer's output on its sampled
    #: calibration inputs, per mode ({"symmetric": ..., "asymmetric": ...}); it took
    #: the smaller (a tie: symmetric). None for a fixed mode.
    auto_output_mse: Optional[dict] = None
    #: act_mode="auto": the model's output error on the first calibration batch
    #: (squared error over power) with the per-layer choices ("per_layer") and with
    #: every layer "symmetric" or "asymmetric", and which was kept ("chosen": a fixed
    #: mode only when strictly better). None for a fixed mode.
    auto_model_error: Optional[dict] = None
    #: activation smoothing: {"kind": "norm" | "linear" | "input", "source": the
    #: norm or previous layer the factors were folded into (None for "input":
    #: applied in the quantize step), "alpha": None when not smoothed,
    #: "factor_min", "factor_max", "hadamard_block": > 0 when the layer rotates
    #: its input instead (alpha None)}; None when converted without calibration data
    smoothing: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


def quantization_report(model: nn.Module) -> List[LayerReport]:
    """A :class:`LayerReport` for every ``QuantLinear`` in ``model``."""
    out = []
    for name, q in quantized_layers(model):
        stats = q.stats
        # As stored (state_dict, files): the weight in its plain [out, in]
        # layout, which is also what a packed weight's numel() counts.
        after = sum(t.numel() * t.element_size()
                    for t in [*q.parameters(recurse=False), *q.buffers(recurse=False)])
        out.append(LayerReport(
            name=name, act_mode=q.act_mode, act_granularity=q.act_granularity,
            in_features=q.in_features, out_features=q.out_features,
            weight_bytes_before=stats.get("float_weight_bytes"), weight_bytes_after=after,
            act_range_utilization=stats.get("act_range_utilization"),
            weight_sqnr_db=stats.get("weight_sqnr_db"), act_sqnr_db=stats.get("act_sqnr_db"),
            auto_output_mse=stats.get("auto_output_mse"),
            auto_model_error=stats.get("auto_model_error"), smoothing=stats.get("smoothing"),
        ))
    return out


def _num(v: Optional[float], spec: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def format_report(reports: List[LayerReport]) -> str:
    """The reports as a text table, with a total line."""
    head = ("layer", "act mode", "granularity", "in x out", "bytes before", "bytes after",
            "ratio", "act range used", "W SQNR dB", "act SQNR dB")
    rows = []
    for r in reports:
        ratio = (r.weight_bytes_before / r.weight_bytes_after
                 if r.weight_bytes_before is not None else None)
        util = None if r.act_range_utilization is None else 100 * r.act_range_utilization
        rows.append((r.name, r.act_mode, r.act_granularity, f"{r.in_features}x{r.out_features}",
                     _num(r.weight_bytes_before, ","), f"{r.weight_bytes_after:,}",
                     _num(ratio, ".2f"), "-" if util is None else f"{util:.1f}%",
                     _num(r.weight_sqnr_db, ".1f"), _num(r.act_sqnr_db, ".1f")))
    before = [r.weight_bytes_before for r in reports]
    total_before = sum(before) if reports and None not in before else None
    total_after = sum(r.weight_bytes_after for r in reports)
    rows.append((f"total ({len(reports)} layers)", "", "", "", _num(total_before, ","),
                 f"{total_after:,}",
                 _num(total_before / total_after if total_before and total_after else None, ".2f"),
                 "", "", ""))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    left = {0, 1, 2}

    def line(cells):
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *map(line, rows[:-1]), sep, line(rows[-1])])
