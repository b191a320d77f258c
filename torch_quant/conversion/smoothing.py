"""Activation smoothing for ``quantize_`` (SmoothQuant: Xiao et al., 2023).

A few input channels of a layer can carry values many times larger than the
rest of the row (after the norms of a transformer), so one scale per token
spends most of the 8-bit range on them. Smoothing divides input channel j by
a factor ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` and multiplies the
weight's column j by it: the product is unchanged, the activations are
flatter, the weights a little less so.

Where the division goes, found from the model's behaviour on one calibration
batch (names are never read):

* **into a norm**: a module with a 1-d ``weight`` whose returned tensor is the
  very tensor a layer receives. Its gain (and bias) is divided by s; all the
  layers that read that tensor share s. Two gain forms are recognised by
  trying them on the norm's own input: ``y = n(x) * weight (+ bias)``
  (LayerNorm, RMSNorm) and ``y = n(x) * (1 + weight)`` (Gemma).
* **into the previous linear layer** A of a layer B when B's input is, channel
  by channel, proportional to A's output rows (``v_proj -> o_proj`` through
  attention, ``up_proj -> down_proj`` through a gated MLP, ``fc1 -> ReLU ->
  fc2``): found by scaling A's rows by distinct factors and watching which
  later inputs change by exactly those factors.
* **otherwise into the quantize step** of the layer itself (the ``smooth``
  argument of ``dynamic_quantized_linear``; ``QuantLinear.input_smooth``).

Each fold is checked (the norm on its input, then the model's inputs and
output on the batch); a fold that changes the float model beyond rounding is
undone and the layers use the quantize-step path. ``alpha`` is fixed, or
searched per group of layers that share an input: the one whose layers'
outputs on the sampled calibration rows (int8 weight, activations quantized
as the layer will) are closest to the float outputs (error relative to the
output's power, summed over the group; "off" is a candidate).

With per-token activations the search has one more candidate per group: no
smoothing, and a **Hadamard rotation** of each layer's input instead
(``hadamard_block`` of ``dynamic_quantized_linear``; the weight holds
``W H / b``). A rotation mixes every channel of a run of b into every other,
so an outlier channel no longer sets a row's scale alone: on Gemma 3 270M's
``down_proj`` inputs (the product of the gated MLP, which no per-channel
factor flattens well) it cut the mean KL divergence from fp32 of quantizing
those layers alone from 0.0067 (searched smoothing) to 0.0008. It is chosen
where it gives the smaller summed layer output error, like an alpha.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from ..hadamard import hadamard_rows
from ..float_layers import float_weight_and_bias, transformed_weight
from ..hadamard import largest_hadamard_block

# The groups and the folding live in smoothing_groups.py (re-exported here).
from .smoothing_groups import SmoothGroup, find_groups, fold, probe_batch  # noqa: F401

__all__ = ["SEARCH_ALPHAS", "STATIC_MAX_ALPHA", "SmoothGroup", "find_groups",
           "smoothing_factors", "fold", "choose_alpha", "choose_rotation",
           "probe_batch"]

#: alphas tried by the search (besides no smoothing)
SEARCH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: ... of which static (per-tensor) modes try those up to this one. Their
#: per-layer output error keeps falling up to alpha 0.9, but the model does
#: not follow: SmolLM2-135M, static asymmetric, 8192 tokens: searched up to
#: 0.9 (median pick 0.9) KL 0.060 from fp32 (+5.1% perplexity), alpha 0.85
#: everywhere 0.051 (+4.0%), 0.7 everywhere 0.038 (+3.2%). The large factors
#: move the outlier channels into the weights, whose rounding error is the
#: same for every token and adds up from layer to layer, which a per-layer
#: mean squared error on independent rows undercounts.
STATIC_MAX_ALPHA = 0.7
_FACTOR_RANGE = 1e4  # factors are clamped to [1 / 1e4, 1e4] after normalisation


def smoothing_factors(act_absmax: Tensor, weights: Sequence[Tensor], alpha: float,
                      channel_map: Optional[Tensor] = None, n_sources: int = 0) -> Tensor:
    """s per input channel: ``max|X_j|^alpha / max|W_j|^(1 - alpha)`` over the
    weights ``[N, K]`` that read the input, normalised to a geometric mean of
    1 and clamped. Channels with no activation (or no weight) get the factor
    their neighbours' extremes allow, never a division by 0. With a
    channel_map (input j is output row map[j] of the previous layer, -1: not
    known) the factors are shared by the channels of one row (maxima over
    them), and channels of no known row get 1."""
    ax = act_absmax.double()
    aw = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).double()
    if channel_map is not None:
        known = channel_map >= 0
        cm = channel_map[known]
        ax = torch.zeros(n_sources, dtype=torch.float64).scatter_reduce(0, cm, ax[known], "amax")
        aw = torch.zeros(n_sources, dtype=torch.float64).scatter_reduce(0, cm, aw[known], "amax")
    floor_x = ax[ax > 0].min() if (ax > 0).any() else torch.tensor(1.0, dtype=torch.float64)
    floor_w = aw[aw > 0].min() if (aw > 0).any() else torch.tensor(1.0, dtype=torch.float64)
    s = ax.clamp_min(floor_x).pow(alpha) / aw.clamp_min(floor_w).pow(1.0 - alpha)
    s = s / torch.exp(torch.log(s).mean())
    s = s.clamp(1.0 / _FACTOR_RANGE, _FACTOR_RANGE).float()
    if channel_map is None:
        return s
    return torch.where(channel_map >= 0, s[channel_map.clamp_min(0)], torch.ones(()))


def _fake_quant_weight(w: Tensor) -> Tensor:
    scale, zp = ops.choose_qparams(w, "symmetric", axis=0)
    return ops.dequantize(ops.quantize(w, scale, zp, "symmetric", axis=0), scale, zp, axis=0)


def _fake_quant_rows(x: Tensor, mode: str, granularity: str, lo: float, hi: float) -> Tensor:
    if granularity == "per_token":
        q, s, z = ops.quantize_per_token(x, mode)
        return ops.dequantize(q, s, z)
    scale, zp = ops.choose_qparams(torch.tensor([lo, hi], dtype=torch.float32), mode)
    return ops.dequantize(ops.quantize(x, scale, zp, mode), scale, zp)


def layer_errors(rows: Tensor, weights: Sequence[Tensor], s: Optional[Tensor], modes: Sequence[str],
                 granularity: str, ch_lo: Tensor, ch_hi: Tensor,
                 hadamard_block: int = 0) -> Dict[str, List[float]]:
    """Per mode, per weight: the output error of the quantized layer on
    ``rows`` (squared error over the float output's power), inputs divided
    by s (None: not smoothed) or rotated (``hadamard_block``). The
    per-tensor range is calibration's per-channel range divided by s (for
    rotated inputs: pass the rotated range as every channel's)."""
    x = rows if s is None else rows / s
    if hadamard_block:
        x = hadamard_rows(x, hadamard_block)
    lo = float((ch_lo if s is None else ch_lo / s).min())
    hi = float((ch_hi if s is None else ch_hi / s).max())
    out: Dict[str, List[float]] = {}
    x_q = {m: _fake_quant_rows(x, m, granularity, lo, hi) for m in modes}
    for w in weights:
        ref = rows @ w.t()
        power = float(ref.double().pow(2).mean()) or 1.0
        w_q = _fake_quant_weight(transformed_weight(w, s, hadamard_block))
        for m in modes:
            err = float((x_q[m] @ w_q.t() - ref).double().pow(2).mean()) / power
            out.setdefault(m, []).append(err)
    return out


def choose_rotation(rows: Tensor, weights: Sequence[Tensor], modes: Sequence[str],
                    granularity: str, best_errors: Dict[str, List[float]],
                    rotated_range: Tuple[float, float] = (0.0, 0.0)) -> int:
    """The Hadamard block for these layers (the largest power of two up to
    2048 dividing K) when rotating their inputs gives a smaller summed layer
    output error than ``best_errors`` (the chosen alpha's), else 0.
    ``rotated_range``: per tensor, calibration's range of the rotated inputs."""
    block = largest_hadamard_block(rows.shape[-1])
    if not block or (granularity == "per_tensor" and not math.isfinite(rotated_range[0])):
        return 0
    lo = rows.new_full((rows.shape[-1],), rotated_range[0])
    hi = rows.new_full((rows.shape[-1],), rotated_range[1])
    rot = layer_errors(rows, weights, None, modes, granularity, lo, hi, hadamard_block=block)

    def total(errs):
        return sum(min(errs[m][i] for m in modes) for i in range(len(weights)))
    return block if total(rot) < total(best_errors) else 0


def choose_alpha(rows: Tensor, act_absmax: Tensor, ch_lo: Tensor, ch_hi: Tensor,
                 weights: Sequence[Tensor], modes: Sequence[str], granularity: str,
                 alphas: Sequence[Optional[float]], channel_map: Optional[Tensor] = None,
                 n_sources: int = 0) -> Tuple[Optional[float], Dict[str, List[float]]]:
    """The alpha (None: no smoothing) with the smallest summed layer output
    error, each layer counted in its better mode when several are allowed
    (act_mode="auto"); and that alpha's errors. Ties keep the earlier alpha."""
    best = None
    for alpha in alphas:
        s = (None if alpha is None else
             smoothing_factors(act_absmax, weights, alpha, channel_map, n_sources))
        errs = layer_errors(rows, weights, s, modes, granularity, ch_lo, ch_hi)
        total = sum(min(errs[m][i] for m in modes) for i in range(len(weights)))
        if best is None or total < best[0]:
            best = (total, alpha, errs)
    return best[1], best[2]
