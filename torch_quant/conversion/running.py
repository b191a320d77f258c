"""Running a model on a calibration batch and comparing what comes out: the
helpers that calibration, smoothing's folding checks and the auto policy
share."""

from __future__ import annotations

from typing import List

from torch import Tensor, nn


def run_model(model: nn.Module, batch) -> object:
    """``model(batch)`` for a tensor batch, ``model(*batch)`` for a tuple or
    list, ``model(**batch)`` for a dict: every form calibration takes."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def flat_outputs(out) -> List[Tensor]:
    """Every tensor in a model's output (nested tuples, lists, dicts), as float32."""
    if isinstance(out, Tensor):
        return [out.detach().float()]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flat_outputs(v)]
    return []


def outputs_close(a: List[Tensor], b: List[Tensor], rtol: float = 1e-3) -> bool:
    """Same shapes, and each tensor of ``a`` within ``rtol`` times the largest
    magnitude of its counterpart in ``b``."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        if x.numel() and (x - y).abs().max() > rtol * y.abs().max().clamp_min(1e-30):
            return False
    return True
