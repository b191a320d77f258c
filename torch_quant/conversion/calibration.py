"""Calibration: the float model runs once over the calibration data with a
forward pre-hook on every layer to be replaced. Each hook keeps the exact
finite min and max of the layer's inputs (and, when asked, of the inputs
rotated by a Hadamard block) and a bounded random sample of input rows
(tokens): the static ranges, the ``auto`` choice, the smoothing search and
the report's statistics come from these."""

from __future__ import annotations

import math
from typing import Dict, Iterable, NamedTuple, Optional

import torch
from torch import Tensor, nn

from ..hadamard import hadamard_rows
from ..float_layers import float_weight_and_bias
from ..hadamard import largest_hadamard_block
from .running import run_model

__all__ = ["SAMPLE_ROWS", "Observer", "calibrate", "static_range"]


SAMPLE_ROWS = 256  # input rows (tokens) kept per layer for statistics


class Observer:
    """Statistics of one layer's inputs during calibration."""

    def __init__(self, name: str, generator: torch.Generator, rotate: int = 0) -> None:
        self.name = name
        self.lo = math.inf
        self.hi = -math.inf
        # with rotate = b > 0, also the range of the inputs rotated by the
        # b-block Hadamard transform (static per-tensor rotation needs it)
        self.rotate = rotate
        self.rot_lo = math.inf
        self.rot_hi = -math.inf
        self.rows: Optional[Tensor] = None  # [<= SAMPLE_ROWS, K] float32 sample
        self.seen = 0  # rows seen so far (reservoir sampling)
        self.gen = generator
        self.ch_lo: Optional[Tensor] = None  # per input channel min and max (float32 [K])
        self.ch_hi: Optional[Tensor] = None

    def divided(self, s: Optional[Tensor]) -> "Observer":
        """The statistics of the inputs divided by s per channel (smoothing)."""
        if s is None:
            return self
        out = Observer(self.name, self.gen)
        out.rows, out.seen = self.rows / s, self.seen
        out.ch_lo, out.ch_hi = self.ch_lo / s, self.ch_hi / s
        out.lo, out.hi = float(out.ch_lo.min()), float(out.ch_hi.max())
        return out

    def absmax(self) -> Tensor:
        return torch.maximum(self.ch_lo.abs(), self.ch_hi.abs())

    def __call__(self, module: nn.Module, args) -> None:
        if not args or not isinstance(args[0], Tensor):
            return
        x = args[0].detach()
        if x.numel() == 0:
            return
        if not torch.isfinite(x).all():
            raise ValueError(f"tq.quantize_: calibration input of layer '{self.name}' "
                             f"holds NaN or inf")
        rows = x.reshape(-1, x.shape[-1]).float().cpu()
        ch_lo, ch_hi = torch.aminmax(rows, dim=0)
        self.ch_lo = ch_lo if self.ch_lo is None else torch.minimum(self.ch_lo, ch_lo)
        self.ch_hi = ch_hi if self.ch_hi is None else torch.maximum(self.ch_hi, ch_hi)
        self.lo = min(self.lo, float(ch_lo.min()))
        self.hi = max(self.hi, float(ch_hi.max()))
        if self.rotate:
            r_lo, r_hi = torch.aminmax(hadamard_rows(rows, self.rotate))
            self.rot_lo = min(self.rot_lo, float(r_lo))
            self.rot_hi = max(self.rot_hi, float(r_hi))
        # Reservoir sampling of rows, so that every row seen is about equally
        # likely to be kept whatever the batch sizes: row i of this batch
        # replaces a random slot with probability SAMPLE_ROWS / (rows seen + 1).
        n = rows.shape[0]
        free = SAMPLE_ROWS - (0 if self.rows is None else self.rows.shape[0])
        head = rows[:max(free, 0)]
        self.rows = head.clone() if self.rows is None else torch.cat([self.rows, head])
        rest = rows[head.shape[0]:]
        if rest.shape[0]:
            seen = self.seen + head.shape[0] + torch.arange(rest.shape[0], dtype=torch.float64)
            slot = (torch.rand(rest.shape[0], generator=self.gen, dtype=torch.float64)
                    * (seen + 1)).long()
            # Row by row, a later row replaces an earlier one in the same
            # slot: an indexed write with repeated slots would leave it to
            # chance (and the thread count) which one stays.
            last: Dict[int, int] = {}
            for i, sl in enumerate(slot.tolist()):
                if sl < SAMPLE_ROWS:
                    last[sl] = i
            if last:
                self.rows[torch.tensor(list(last))] = rest[torch.tensor(list(last.values()))]
        self.seen += n


def _progress(data, enabled: bool):
    if not enabled:
        return data
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; stay usable without it
        return data
    total = len(data) if hasattr(data, "__len__") else None
    return tqdm(data, total=total, desc="tq calibration", unit="batch")


class Calibration(NamedTuple):
    """What calibration returns: each layer's observer, and the first batch
    (kept because the data may be one-shot: smoothing probes the model on it
    and the auto policy checks its choices on it; None when there was none)."""

    observers: Dict[str, Observer]
    first_batch: object


def calibrate(model: nn.Module, layers: Dict[str, nn.Module], data: Iterable,
              progress: bool = True, seed: int = 0,
              rotated_ranges: bool = False) -> Calibration:
    """Runs ``model`` over ``data``: each layer's observer, and the first
    batch. ``rotated_ranges``: observers also record the range of
    Hadamard-rotated inputs (block: largest_hadamard_block of the layer's
    input width)."""
    gen = torch.Generator().manual_seed(seed)
    observers = {name: Observer(name, gen, largest_hadamard_block(_in_features(m))
                                 if rotated_ranges else 0) for name, m in layers.items()}
    handles = [m.register_forward_pre_hook(observers[name]) for name, m in layers.items()]
    first = None
    try:
        with torch.no_grad():
            for batch in _progress(data, progress):
                if first is None:
                    first = batch
                run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, o in observers.items() if o.seen == 0]
    if missing:
        raise ValueError(f"tq.quantize_: the calibration data never reached "
                         f"{len(missing)} layer(s): {', '.join(missing[:5])}"
                         f"{', ...' if len(missing) > 5 else ''}")
    return Calibration(observers, first)


def static_range(lo: float, hi: float, rows: Tensor, percentile: Optional[float]):
    """The (lo, hi) a static per-tensor quantizer should cover: calibration's
    [lo, hi], or the given percentiles of the sampled ``rows`` within it."""
    if percentile is None:
        return lo, hi
    q = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0])
    p_lo, p_hi = torch.quantile(rows.flatten(), q).tolist()
    return max(p_lo, lo), min(p_hi, hi)


def _in_features(layer: nn.Module) -> int:
    return float_weight_and_bias(layer)[0].shape[1]
