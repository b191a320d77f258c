"""The ``act_mode="auto"`` policy.

Per layer, the conversion makes the layer both ways and keeps the mode whose
output on the layer's sampled calibration inputs (int8 weight, activations
quantized as the layer does) is closer to the float layer's output, in mean
squared error (``statistics.output_mse``); an exact tie keeps symmetric (no
zero point to apply). The output, not the input, is what the next layer
sees: an input channel that the weight ignores does not count, one it
amplifies counts more. Then :func:`check_auto` checks the choices on the
model's output."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from ..float_layers import set_module
from ..nn import ACT_MODES, QuantLinear
from .running import flat_outputs, run_model

__all__ = ["choose_mode", "check_auto"]


def choose_mode(errors: Dict[str, float]) -> str:
    """The mode of the smaller output error; strict, so a tie (e.g. all-zero
    inputs) keeps symmetric."""
    return "asymmetric" if errors["asymmetric"] < errors["symmetric"] else "symmetric"


def _model_error(model: nn.Module, batch, reference_out: List[Tensor]) -> float:
    """Squared error of the model's outputs on ``batch`` over the reference's power."""
    with torch.no_grad():
        out = flat_outputs(run_model(model, batch))
    err = sum(float((o.double() - r.double()).pow(2).sum()) for o, r in zip(out, reference_out))
    power = sum(float(r.double().pow(2).sum()) for r in reference_out)
    return err / power if power > 0 else err


def check_auto(model: nn.Module, layers: Dict[str, nn.Module],
               alternatives: Dict[int, Dict[str, QuantLinear]], per_layer: Dict[int, str],
               batch, reference_out: List[Tensor]) -> Tuple[Dict[int, str], dict]:
    """auto's per-layer choices (``per_layer``: id of the float layer -> mode)
    against every layer in one fixed mode, on the model's output for the first
    calibration batch: layer by layer errors add up differently through a
    model, and auto must not end worse than the better fixed mode. The
    per-layer choices stay unless a fixed mode is strictly better. Sets the
    chosen layers in ``model``; returns (the modes chosen, the three errors
    with ``chosen``) for every layer's report."""
    picks = {"per_layer": per_layer, **{m: {i: m for i in alternatives} for m in ACT_MODES}}

    def apply(pick):
        for name, layer in layers.items():
            set_module(model, name, alternatives[id(layer)][pick[id(layer)]])

    errors = {}
    for label, pick in picks.items():
        apply(pick)
        errors[label] = _model_error(model, batch, reference_out)
    best = min(errors, key=lambda k: (errors[k], k != "per_layer"))
    apply(picks[best])
    return picks[best], dict(errors, chosen=best)
