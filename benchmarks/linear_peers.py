"""The candidates of the ``linear`` section, ours and the peers, and how they
are timed.

Every candidate gets its own ``copies`` independent weights and cycles
through them call by call, so that a weight too large for the caches is read
from DRAM on every call whichever candidate ran before (sharing weights
between two candidates timed back to back would let the second hit the L3).
"""

from __future__ import annotations

import gc
import random
import importlib.util
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_quant as tq

from .timing import cycling, error_text, quiet, spread

# torchao's int8 tensor subclass, compiled, warns about AOT autograd caching.
warnings.filterwarnings("ignore", message=r".*_stable_hash_for_caching.*")

SLOW_CAP_S = 5.0  # skip a slow candidate whose call takes (or would take) longer
SLOW_BUDGET_S = 6.0  # timed seconds per slow baseline and shape

PEER_LABELS = {  # key: (label, short name for the goals; None: not an int8 peer)
    "fp32": ("fp32 F.linear(x, w)", None),
    "bf16": ("bf16 F.linear(x, w), x and w bf16", None),
    "ours_sym": ("ours QuantLinear symmetric (packed w)", None),
    "ours_asym": ("ours QuantLinear asymmetric (packed w)", None),
    "ours_plain": ("ours op symmetric, plain [N,K] w", None),
    "ours_plain_wsum": ("ours op symmetric, plain [N,K] w + w_sum", None),
    "ours_smooth": ("ours QuantLinear symmetric + input_smooth", None),
    "ours_hadamard": ("ours QuantLinear symmetric + Hadamard rotation", None),
    "qd_tensor": ("torch.ao quantize_dynamic, per-tensor w", "quantize_dynamic per-tensor"),
    "qd_channel": ("torch.ao quantize_dynamic, per-channel w", "quantize_dynamic per-channel"),
    "int_mm": ("torch._int_mm(x_int8, w_int8.t()), int32 out", "torch._int_mm"),
    "w8pack": ("aten._weight_int8pack_mm(x, w_int8, scales)", "aten._weight_int8pack_mm"),
    "torchao_eager": ("torchao int8 dyn-act/int8-w, eager", "torchao eager"),
    "torchao_compiled": ("torchao int8 dyn-act/int8-w, torch.compile", "torchao compiled"),
}


@dataclass
class LinCand:
    key: str
    fn: Callable[[], object]
    weight_nbytes: int  # weight bytes one call reads
    to_fp32: Optional[Callable[[object], torch.Tensor]] = None  # output -> y, for the check
    slow: bool = False  # may be very slow: fewer repetitions, skipped past the cap

    @property
    def label(self) -> str:
        return PEER_LABELS[self.key][0]

    @property
    def int8_peer(self) -> Optional[str]:
        return PEER_LABELS[self.key][1]


@dataclass
class Peers:
    """What this torch (and environment) offers."""
    quantize_dynamic: Optional[Tuple[Callable, object]]
    int_mm: bool
    w8pack: bool
    torchao: Optional[Tuple[Callable, Callable]]  # (quantize_, Int8DynamicActivationInt8WeightConfig)
    torchao_compiled: bool


def find_peers(notes: List[str], torchao_compiled: bool = True) -> Peers:
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
        qd = (quantize_dynamic, per_channel_dynamic_qconfig)
    except ImportError as e:
        qd = None
        notes.append(f"torch.ao.quantization.quantize_dynamic: skipped (not in this torch: {e})")
    int_mm = hasattr(torch, "_int_mm")
    if not int_mm:
        notes.append("torch._int_mm: skipped (not in this torch)")
    w8 = hasattr(torch.ops.aten, "_weight_int8pack_mm")
    if not w8:
        notes.append("aten._weight_int8pack_mm: skipped (not in this torch)")
    ao = None
    if importlib.util.find_spec("torchao") is None:
        notes.append("torchao Int8DynamicActivationInt8WeightConfig (eager and torch.compile): "
                     "skipped (torchao is not installed)")
    else:
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            ao = (quantize_, Int8DynamicActivationInt8WeightConfig)
        except Exception as e:  # noqa: BLE001  (any import failure of an optional peer)
            notes.append(f"torchao Int8DynamicActivationInt8WeightConfig: skipped "
                         f"(import failed: {error_text(e)})")
    return Peers(qd, int_mm, w8, ao, torchao_compiled and ao is not None)


def linear_module(w: torch.Tensor) -> nn.Linear:
    """An nn.Linear without bias whose weight is (a view of) w, without random init."""
    N, K = w.shape
    lin = nn.Linear(K, N, bias=False, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    return lin.eval()


class Weights:
    """One shape's weights, `copies` independent ones per candidate, built once
    (packing, prepacking and torchao's conversion are outside the timed calls)."""

    def __init__(self, w: torch.Tensor, copies: int, peers: Peers) -> None:
        N, K = w.shape
        self.N, self.K = N, K
        with torch.inference_mode(False):
            self.w_scale, w_zp = tq.choose_qparams(w, "symmetric", axis=0)
            self.w_q = tq.quantize(w, self.w_scale, w_zp, "symmetric", axis=0)
            self.fp32 = [w.clone() for _ in range(copies)]
            # the float a user runs where the CPU has bf16 units (AMX, Zen 4/5)
            self.bf16 = [w.to(torch.bfloat16) for _ in range(copies)]
            self.ours = {mode: [tq.QuantLinear.from_float(linear_module(w), act_mode=mode)
                                for _ in range(copies)]
                         for mode in ("symmetric", "asymmetric")}
            # smoothing factors applied in the quantize step (the fallback
            # when they cannot be folded into an earlier layer): their cost
            smooth = torch.rand(K, generator=torch.Generator().manual_seed(0)) + 0.5
            self.ours_smooth = [tq.QuantLinear.from_float(linear_module(w), smooth=smooth)
                                for _ in range(copies)]
            # the largest Hadamard block up to 2048 (what conversion picks)
            block = tq.hadamard.largest_hadamard_block(K)
            self.ours_hadamard = [tq.QuantLinear.from_float(linear_module(w), hadamard_block=block)
                                  for _ in range(copies)] if block else []
            self.plain = [self.w_q.clone() for _ in range(copies)]
            # a given w_sum is checked on every call (against the sums the
            # plain kernel takes in its pass): its cost is this row's
            self.plain_wsum = [(w, w.sum(1, dtype=torch.int32)) for w in
                               (self.w_q.clone() for _ in range(copies))]
            self.int_mm = [self.w_q.clone() for _ in range(copies)] if peers.int_mm else []
            self.w8 = [self.w_q.clone() for _ in range(copies)] if peers.w8pack else []
        self.packed_nbytes = self.ours["symmetric"][0].weight.packed.nbytes
        self.built: Dict[str, object] = {}  # key: modules, or ("error", details)
        if peers.quantize_dynamic is not None:
            quantize_dynamic, per_channel = peers.quantize_dynamic
            for key, spec in (("qd_tensor", {nn.Linear}), ("qd_channel", {nn.Linear: per_channel})):
                try:
                    self.built[key] = [
                        quiet(lambda: quantize_dynamic(nn.Sequential(linear_module(w)), spec,
                                                       dtype=torch.qint8, inplace=True))
                        for _ in range(copies)]
                except Exception as e:  # noqa: BLE001  (a peer this torch cannot build)
                    self.built[key] = ("error", error_text(e))
        if peers.torchao is not None:
            quantize_, ao_config = peers.torchao
            keys = ("torchao_eager", "torchao_compiled") if peers.torchao_compiled else (
                "torchao_eager",)
            for key in keys:
                try:
                    mods = []
                    for _ in range(copies):
                        lin = linear_module(w.clone())
                        quiet(lambda: quantize_(lin, ao_config()))
                        mods.append(lin)
                    self.built[key] = mods
                except Exception as e:  # noqa: BLE001
                    self.built[key] = ("error", error_text(e))

    def candidates(self, x: torch.Tensor, x_q: torch.Tensor, x_s: torch.Tensor,
                   unavailable: Dict[str, Tuple[str, str]]) -> List[LinCand]:
        """The candidates at one M (x: [M, K]); fp32 first, the reference."""
        N, K = self.N, self.K
        ws = self.w_scale
        x_bf16 = x.to(torch.bfloat16)  # a bf16 model's activations are bf16 already: untimed
        cands = [
            LinCand("fp32", cycling(lambda wt: F.linear(x, wt), [(t,) for t in self.fp32]),
                    4 * N * K),
            LinCand("bf16", cycling(lambda wt: F.linear(x_bf16, wt), [(t,) for t in self.bf16]),
                    2 * N * K),
            LinCand("ours_sym", cycling(lambda m: m(x), [(m,) for m in self.ours["symmetric"]]),
                    self.packed_nbytes),
            LinCand("ours_asym", cycling(lambda m: m(x), [(m,) for m in self.ours["asymmetric"]]),
                    self.packed_nbytes),
            LinCand("ours_smooth", cycling(lambda m: m(x), [(m,) for m in self.ours_smooth]),
                    self.packed_nbytes),
            *([LinCand("ours_hadamard", cycling(lambda m: m(x), [(m,) for m in self.ours_hadamard]),
                       self.packed_nbytes)] if self.ours_hadamard else []),
            LinCand("ours_plain", cycling(lambda wt: tq.dynamic_quantized_linear(
                x, wt, ws, None, None, "symmetric"), [(t,) for t in self.plain]), N * K),
            LinCand("ours_plain_wsum", cycling(lambda wt, s: tq.dynamic_quantized_linear(
                x, wt, ws, None, s, "symmetric"), self.plain_wsum), N * K),
        ]
        for key in ("qd_tensor", "qd_channel"):
            b = self.built.get(key)
            if isinstance(b, tuple):
                unavailable[key] = b
            elif b is not None:
                cands.append(LinCand(key, cycling(lambda m: m(x), [(m,) for m in b]), N * K))
        if self.int_mm:
            cands.append(LinCand(
                "int_mm", cycling(lambda wt: torch._int_mm(x_q, wt.t()), [(t,) for t in self.int_mm]),
                N * K, to_fp32=lambda acc: acc.float() * x_s[:, None] * ws[None, :], slow=True))
        if self.w8:
            cands.append(LinCand(
                "w8pack", cycling(lambda wt: torch.ops.aten._weight_int8pack_mm(x, wt, ws),
                                  [(t,) for t in self.w8]), N * K, slow=True))
        if any(k.startswith("torchao") for k in self.built):
            torch._dynamo.reset()
        for key in ("torchao_eager", "torchao_compiled"):
            b = self.built.get(key)
            if isinstance(b, tuple):
                unavailable[key] = b
                continue
            if b is None:
                continue
            if key == "torchao_eager":
                step = lambda m: m(x)  # noqa: E731
            else:
                compiled = torch.compile(lambda m, inp: m(inp), dynamic=False)
                step = lambda m, c=compiled: c(m, x)  # noqa: E731
            cands.append(LinCand(key, cycling(step, [(m,) for m in b]), N * K))
        return cands


def predict_call_s(hist: Dict[str, List[Tuple[int, int, int, float]]], key: str,
                   M: int, N: int, K: int) -> Optional[Tuple[float, str]]:
    """A call's time from an earlier shape, scaled by the work (M*N*K); None if none."""
    h = hist.get(key, [])
    same = [(m, t) for m, n, k, t in h if (n, k) == (N, K) and m <= M]
    if same:
        m, t = max(same)
        return t * M / m, f"M={m}"
    other = [(m, n, k, t) for m, n, k, t in h if m == M]
    if other:
        m, n, k, t = other[-1]
        return t * N * K / (n * k), f"N={n} K={k}"
    return None


def measure_linear(cands: Sequence[LinCand], reps: int, warmup: int,
                   predicted: Dict[str, Optional[Tuple[float, str]]]):
    """Warm up (the first call is timed and checked), then time round-robin.

    Returns ({key: {rep index: seconds}}, {key: (short skip reason, details)},
    {key: rel err}, {key: first call seconds}). A slow candidate is skipped if
    its call is predicted (or its first call found) to take more than
    SLOW_CAP_S, and otherwise runs in about SLOW_BUDGET_S of repetitions
    spread evenly over the `reps` rounds.
    """
    clock = time.perf_counter
    plan: Dict[str, Set[int]] = {}
    skipped: Dict[str, Tuple[str, str]] = {}
    rel_err: Dict[str, float] = {}
    first: Dict[str, float] = {}
    y_ref = None
    for c in cands:
        pred = predicted.get(c.key)
        if c.slow and pred is not None and pred[0] > SLOW_CAP_S:
            skipped[c.key] = (f"too slow: >{SLOW_CAP_S:g} s",
                              f"~{pred[0]:.1f} s per call predicted from {pred[1]}")
            continue
        try:
            t0 = clock()
            out = c.fn()
            t1 = clock()
            y = c.to_fp32(out) if c.to_fp32 is not None else out
        except Exception as e:  # noqa: BLE001  (a baseline this torch cannot run)
            skipped[c.key] = ("error", error_text(e))
            continue
        first[c.key] = t1 - t0
        if y_ref is None:
            y_ref = y.float()  # the first candidate (fp32 F.linear) is the reference
        else:
            rel_err[c.key] = float((y.float() - y_ref).norm() / y_ref.norm())
        del out, y
        if c.slow and t1 - t0 > SLOW_CAP_S:
            skipped[c.key] = (f"too slow: >{SLOW_CAP_S:g} s", f"its first call took {t1 - t0:.1f} s")
            continue
        if not c.slow or t1 - t0 < 0.25:
            for _ in range(warmup - 1):
                c.fn()
        n = reps
        if c.slow:
            n = max(1, min(reps, int(SLOW_BUDGET_S / max(t1 - t0, 1e-9))))
        plan[c.key] = set(spread(n, reps))
    times: Dict[str, Dict[int, float]] = {k: {} for k in plan}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        order = list(cands)
        shuffle = random.Random(0).shuffle
        for i in range(reps):
            # A new order every round: a fixed (or rotated) one times the same
            # candidate right after the one that evicts the caches (fp32
            # streams 4x the bytes) nearly every time, a 20-40% bias.
            shuffle(order)
            for c in order:
                if i in plan.get(c.key, ()):
                    t0 = clock()
                    c.fn()
                    t1 = clock()
                    times[c.key][i] = t1 - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, skipped, rel_err, first
