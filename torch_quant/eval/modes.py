"""The modes of an evaluation run (docs/evaluation.md): their names, and each
one's model made from the float one (ours through ``quantize_``, the peers
through peers.py), with the facts of how it was made."""

from __future__ import annotations

import copy
import time
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..conversion.config import QuantConfig
from ..conversion.convert import quantize_
from ..conversion.report import quantization_report
from .peers import PEERS
from .peers import convert as convert_peer
from .peers import quantized_layers as peer_layers
from .peers import unavailable as peer_unavailable

# mode name -> (act_mode, act_granularity); None: the float model
MODES: Dict[str, Optional[Tuple[str, str]]] = {
    "fp32": None,
    "w8a8-symmetric": ("symmetric", "per_token"),
    "w8a8-asymmetric": ("asymmetric", "per_token"),
    "w8a8-auto": ("auto", "per_token"),
    "w8a8-symmetric-static": ("symmetric", "per_tensor"),
    "w8a8-asymmetric-static": ("asymmetric", "per_tensor"),
    "w8a8-auto-static": ("auto", "per_tensor"),
}
DEFAULT_MODES = ("fp32", "w8a8-symmetric", "w8a8-asymmetric", "w8a8-auto")
# --modes all: the default modes and every peer this machine has (peers.py)
ALL_MODES = (*DEFAULT_MODES, *PEERS)


def quantized_copies(model: nn.Module, args, batches, log) -> Dict[str, Tuple[nn.Module, float]]:
    """mode -> (model, seconds its conversion took) for every mode of the run."""
    out = {}
    smoothing = None if args.smoothing == "off" else args.smoothing
    for mode in args.modes:
        if mode == "fp32":
            out[mode] = (model, 0.0)
            continue
        t0 = time.perf_counter()
        if mode in PEERS:
            m = convert_peer(mode, model, args.skip)
        else:
            m = copy.deepcopy(model)
            # Calibration data also for per-token modes without smoothing: it
            # gives the report its activation statistics.
            quantize_(m, QuantConfig(*MODES[mode], smoothing, args.skip), batches,
                      progress=False)
        out[mode] = (m, time.perf_counter() - t0)
        # a peer's count: it takes nn.Linear only, ours Conv1D too
        layers = f" ({peer_layers(mode, m)} layers)" if mode in PEERS else ""
        log(f"  {mode}: converted in {out[mode][1]:.1f} s{layers}")
    if args.compile:
        # dynamic: the last, shorter window does not compile again
        out = {k: (torch.compile(m, dynamic=True), t) for k, (m, t) in out.items()}
    return out


def how_made(mode: str, model: nn.Module, seconds: float, args) -> dict:
    """The fields of a mode's Result that say how its model was made."""
    if mode == "fp32":
        return {}
    if mode in PEERS:
        return dict(quantize_seconds=seconds, peer=PEERS[mode])
    model = getattr(model, "_orig_mod", model)  # --compile: the layers' own names
    return dict(quantize_seconds=seconds, smoothing=str(args.smoothing),
                layers=[r.to_dict() for r in quantization_report(model)])


def available_modes(modes: Sequence[str], log) -> list:
    """``modes`` without the peers this machine cannot run, each left out with a note."""
    kept = []
    for mode in modes:
        reason = peer_unavailable(mode) if mode in PEERS else None
        if reason is None:
            kept.append(mode)
        else:
            log(f"note: left out {reason}")
    return kept
