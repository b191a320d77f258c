"""Speed of the torch_quant operators against PyTorch baselines, as ratios.

Run ``python -m torch_quant.bench`` (``--help`` for the flags). Every number in
the output comes from this one run: the baselines are measured next to our ops,
in the same process, on the same tensors, so the ratios do not depend on how
fast or how loaded the machine is on a given day, only on how the two compare.

Methodology
-----------
* Timing: ``time.perf_counter`` around one call of each operator (CPU ops are
  synchronous, so the call's wall time is the op's time). Garbage collection is
  off while timing.
* Warm-up: every candidate runs ``--warmup`` times (default 3) before timing,
  so that the allocator has its pools, the pages of the inputs are mapped, the
  thread pool is up and the ISA dispatch has happened.
* Interleaving: the candidates of one comparison (e.g. our quantize, torch's
  quantize_per_tensor and the fp32 copy) are timed round-robin: repetition i
  runs each of them once, in turn. A burst of noise from another process on
  this small machine then hits all of them alike, instead of one whole series.
* Statistics: ``--repeat`` repetitions (default 21); a table shows the median
  and the interquartile range (IQR = q3 - q1) of each candidate. A ratio is
  the ratio of two medians. Because the runs are interleaved, repetition i of
  two candidates ran back to back, so the goals block also shows the IQR of the
  per-repetition ratios: a FAIL whose IQR straddles the threshold is noise-level.
* Load: on a small machine a busy neighbour (a compiler, a test run) makes the
  multi-threaded ops wait for a core, in steps of a scheduler tick, which can
  double a time. The header shows the load average, and each section's footer
  how many cores other processes used meanwhile (from /proc/stat), with a
  WARNING above 0.2: rerun such a section on an idle machine.
* Bandwidth: effective GB/s = bytes the op must move / median time, with
  1 GB = 1e9 bytes. quantize counts 5 bytes per element (4 read + 1 written),
  dequantize 5 (1 read + 4 written), the fp32 copy 8 (4 + 4), choose_qparams
  and aminmax 4 (read only). ``dst.copy_(x)`` into a preallocated tensor is
  the memory-bandwidth ceiling that an element-wise op can hope to approach.
* Allocation: our ops allocate their output on every call, as
  ``torch.quantize_per_tensor`` and the composed torch ops do, and the timed
  region includes freeing it. That is fair between the two, but it is not free:
  with torch's default CPU allocator a fresh 32 MiB block is mmap-ed and
  page-faulted 4 KiB at a time on first write, which is why ``x.clone()`` is
  much slower than ``dst.copy_(x)``. The per-tensor table has an "alloc +
  fill" row that shows that cost alone (torch's allocator), so it can be told
  apart from a kernel's; how much of it an op pays depends on how it allocates
  (e.g. on 2 MiB pages). The header prints the transparent-huge-page setting
  and ``THP_MEM_ALLOC_ENABLE`` (which makes torch's allocator use huge pages),
  since both move these numbers. Whether a fresh output lands on pages that are
  already mapped also depends on what ran before in the process (glibc grows
  its mmap threshold after large frees), so the same op can differ by 2x
  between sections; compare ratios within a table, not times across tables.

Sections (``--only NAME``, several names separated by commas):

per_tensor
    quantize / dequantize / choose_qparams of one 32 Mi-element float32 tensor
    against ``torch.quantize_per_tensor``, ``Tensor.dequantize`` and
    ``torch.aminmax``, with the fp32 copy as the bandwidth ceiling.
per_token
    ``quantize_per_token`` of a 4096 x 4096 float32 matrix against the same
    quantizer composed of torch ops (which, unlike ours, does not leave
    NaN/inf out of the range, so it is if anything the cheaper of the two).
isa
    the per-tensor and per-token quantize with each instruction set of
    ``torch_quant._C._supported_cpu_isas()``, relative to the best one.
linear
    ``dynamic_quantized_linear`` (W8A8: int8 per-channel weights, activations
    quantized per token inside the op, symmetric and asymmetric) at
    K = N = 4096 and K = 4096, N = 11008 (an LLM MLP), M in {1, 16, 256},
    against fp32 ``F.linear`` and the int8 paths this torch has on CPU:
    ``torch.ao.quantization.quantize_dynamic`` (fbgemm), ``torch._int_mm``,
    ``aten._weight_int8pack_mm`` and, when installed, torchao's
    ``Int8DynamicActivationInt8WeightConfig`` (eager and ``torch.compile``).
    No bias anywhere. Each candidate cycles through 4 independent copies of
    its weights, call by call, so that every call reads them from DRAM: a
    16 MiB int8 weight would otherwise stay in a 32 MiB L3 between calls while
    the 64 MiB fp32 one cannot, which flatters int8 at small M. Repetitions
    per shape: 11 (M <= 16) or 5 (M = 256) unless ``--repeat`` is given; the
    slow baselines get fewer (about 6 s of calls per shape) and are skipped
    where one call takes, or is predicted to take, more than 5 s.
cuda
    the CUDA kernels against a device copy and bfloat16 cuBLAS, on the first
    GPU (torch_quant/bench_cuda.py has the details); skipped without one.

The goals block at the end checks the project's targets for per-tensor
quantize (effective bandwidth >= 0.7 x copy bandwidth; at least as fast as
``torch.quantize_per_tensor``), per-token quantize (>= 3x the composed
torch ops) and the linear (symmetric W8A8 >= 3x fp32 ``F.linear`` at M = 1,
>= 2.5x at M = 16 and 256 for K = N = 4096; asymmetric time <= 1.05x
symmetric at every shape; at least as fast as every int8 baseline at every
shape). ``--json PATH`` writes every measurement, raw times included.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_quant as tq
from torch_quant import _C

# torch.quantize_per_tensor warns that quantized dtypes are deprecated; the
# baseline is still what users have today, so measure it quietly.
warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")

PER_TENSOR_NUMEL = 32 * 2**20
PER_TOKEN_SHAPE = (4096, 4096)
FLT_EPSILON = 2.0**-23

GOAL_BW_FRACTION = 0.7  # our quantize GB/s / fp32 copy GB/s
GOAL_VS_TORCH = 1.0  # torch.quantize_per_tensor time / our time
GOAL_PER_TOKEN = 3.0  # composed torch per-token time / our time

# linear section
LINEAR_SHAPES = ((4096, 4096), (11008, 4096))  # (N, K)
LINEAR_MS = (1, 16, 256)
LINEAR_REPEAT = {1: 11, 16: 11, 256: 5}  # default repetitions per M
LINEAR_WEIGHT_COPIES = 4  # cycled call by call, so weights come from DRAM
LINEAR_SLOW_CAP_S = 5.0  # skip a candidate whose call takes (or would take) longer
LINEAR_SLOW_BUDGET_S = 6.0  # timed seconds per slow baseline and shape
GOAL_LINEAR_SPEEDUP = {1: 3.0, 16: 2.5, 256: 2.5}  # fp32 time / ours sym, K = N = 4096
GOAL_LINEAR_ASYM = 1.05  # asym time / sym time, at most
GOAL_LINEAR_VS_INT8 = 1.0  # int8 baseline time / ours sym, at least


# ---------------------------------------------------------------------------
# Timing


@dataclass
class Config:
    repeat: int
    warmup: int
    repeat_given: bool = False  # --repeat on the command line (else sections may pick their own)


@dataclass
class Candidate:
    key: str
    fn: Callable[[], object]
    setup: Optional[Callable[[], None]] = None  # run before each call, not timed


def _quantiles(ts: Sequence[float]) -> Tuple[float, float, float]:
    if len(ts) < 2:
        return ts[0], ts[0], ts[0]
    q1, q2, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    return q1, statistics.median(ts), q3


def measure(cands: Sequence[Candidate], cfg: Config) -> Dict[str, List[float]]:
    """Time the candidates round-robin; returns key -> list of seconds."""
    times: Dict[str, List[float]] = {c.key: [] for c in cands}
    for c in cands:
        for _ in range(cfg.warmup):
            if c.setup:
                c.setup()
            c.fn()
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        clock = time.perf_counter
        for _ in range(cfg.repeat):
            for c in cands:
                if c.setup:
                    c.setup()
                t0 = clock()
                c.fn()  # the result is dropped here: freeing it is timed too
                t1 = clock()
                times[c.key].append(t1 - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


# ---------------------------------------------------------------------------
# Results


@dataclass
class Row:
    key: str
    label: str
    times: List[float]
    nbytes: Optional[int] = None  # bytes moved, for GB/s
    baseline: Optional[str] = None  # key of the row the ratio is taken against
    ratio: Optional[float] = None
    ratio_q1: Optional[float] = None  # IQR of the per-repetition ratios
    ratio_q3: Optional[float] = None
    bw_fraction: Optional[float] = None  # GB/s / copy GB/s
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None

    @property
    def iqr(self) -> Optional[float]:
        if not self.times:
            return None
        q1, _, q3 = _quantiles(self.times)
        return q3 - q1

    @property
    def gbps(self) -> Optional[float]:
        if self.nbytes is None or not self.times:
            return None
        return self.nbytes / self.median / 1e9

    def to_json(self) -> Dict[str, object]:
        q1, med, q3 = _quantiles(self.times) if self.times else (None, None, None)
        return {
            "key": self.key,
            "label": self.label,
            "median_s": med,
            "q1_s": q1,
            "q3_s": q3,
            "times_s": self.times,
            "bytes": self.nbytes,
            "gbps": self.gbps,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "ratio_per_rep_q1": self.ratio_q1,
            "ratio_per_rep_q3": self.ratio_q3,
            "bw_fraction_of_copy": self.bw_fraction,
            **self.extra,
        }


@dataclass
class Goal:
    name: str
    value: float
    threshold: float
    q1: Optional[float] = None
    q3: Optional[float] = None
    op: str = ">="  # passed when value >= threshold, or value <= threshold with "<="

    @property
    def passed(self) -> bool:
        if self.op == "<=":
            return self.value <= self.threshold
        return self.value >= self.threshold

    def to_json(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "threshold": self.threshold,
            "per_rep_q1": self.q1,
            "per_rep_q3": self.q3,
            "passed": self.passed,
        }


@dataclass
class SectionResult:
    name: str
    title: str
    ratio_meaning: str
    notes: List[str]
    rows: List[Row]
    goals: List[Goal] = field(default_factory=list)
    columns: Tuple[str, ...] = ("median ms", "IQR ms", "GB/s", "ratio", "vs")
    others: Optional[Tuple[float, float]] = None  # cores used by other processes, stolen


def _set_ratio(rows: Dict[str, Row], key: str, baseline: str, invert: bool = False) -> None:
    """ratio = baseline / this (speedup), or this / baseline with invert=True."""
    r, b = rows[key], rows[baseline]
    r.baseline = baseline
    if invert:
        r.ratio = r.median / b.median
        per_rep = [t / tb for t, tb in zip(r.times, b.times)]
    else:
        r.ratio = b.median / r.median
        per_rep = [tb / t for t, tb in zip(r.times, b.times)]
    r.ratio_q1, _, r.ratio_q3 = _quantiles(per_rep)


def _bw_fraction_per_rep(row: Row, copy: Row) -> Tuple[float, float]:
    """IQR of (row GB/s / copy GB/s) over the interleaved repetitions."""
    per_rep = [
        (row.nbytes / t) / (copy.nbytes / tc) for t, tc in zip(row.times, copy.times)
    ]
    q1, _, q3 = _quantiles(per_rep)
    return q1, q3


# ---------------------------------------------------------------------------
# Sections


def _section_per_tensor(cfg: Config) -> SectionResult:
    n = PER_TENSOR_NUMEL
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=gen)
    dst = torch.empty_like(x)
    s_sym, z_sym = tq.choose_qparams(x, "symmetric")
    s_asym, z_asym = tq.choose_qparams(x, "asymmetric")
    fs_sym, iz_sym = float(s_sym), int(z_sym)
    fs_asym, iz_asym = float(s_asym), int(z_asym)

    notes = []
    # Sanity: we must be timing the same computation as torch's.
    for mode, s, z, fs, iz, qdt in (
        ("symmetric", s_sym, z_sym, fs_sym, iz_sym, torch.qint8),
        ("asymmetric", s_asym, z_asym, fs_asym, iz_asym, torch.quint8),
    ):
        ours = tq.quantize(x, s, z, mode)
        theirs = torch.quantize_per_tensor(x, fs, iz, qdt).int_repr()
        same = torch.equal(ours, theirs)
        notes.append(
            f"check: ours == torch.quantize_per_tensor ({mode}): "
            + ("bit-exact" if same else "MISMATCH")
        )
        del ours, theirs

    # Quantize: ours vs torch vs the bandwidth ceiling.
    quant = [
        Candidate("copy", lambda: dst.copy_(x)),
        Candidate("clone", lambda: x.clone()),
        Candidate("alloc_fill", lambda: torch.empty(n, dtype=torch.int8).fill_(1)),
        Candidate("torch_q_qint8", lambda: torch.quantize_per_tensor(x, fs_sym, iz_sym, torch.qint8)),
        Candidate("ours_q_sym", lambda: tq.quantize(x, s_sym, z_sym, "symmetric")),
        Candidate("torch_q_quint8", lambda: torch.quantize_per_tensor(x, fs_asym, iz_asym, torch.quint8)),
        Candidate("ours_q_asym", lambda: tq.quantize(x, s_asym, z_asym, "asymmetric")),
    ]
    t = measure(quant, cfg)
    rows = {
        "copy": Row("copy", "fp32 dst.copy_(x), preallocated dst", t["copy"], 8 * n),
        "clone": Row("clone", "fp32 x.clone() (allocates its output)", t["clone"], 8 * n),
        "alloc_fill": Row(
            "alloc_fill", "int8 alloc + fill_, torch's allocator", t["alloc_fill"], 1 * n
        ),
        "torch_q_qint8": Row(
            "torch_q_qint8", "torch.quantize_per_tensor qint8", t["torch_q_qint8"], 5 * n
        ),
        "ours_q_sym": Row("ours_q_sym", "ours quantize symmetric -> int8", t["ours_q_sym"], 5 * n),
        "torch_q_quint8": Row(
            "torch_q_quint8", "torch.quantize_per_tensor quint8", t["torch_q_quint8"], 5 * n
        ),
        "ours_q_asym": Row(
            "ours_q_asym", "ours quantize asymmetric -> uint8", t["ours_q_asym"], 5 * n
        ),
    }
    _set_ratio(rows, "ours_q_sym", "torch_q_qint8")
    _set_ratio(rows, "ours_q_asym", "torch_q_quint8")
    copy = rows["copy"]

    # Dequantize.
    q_sym = tq.quantize(x, s_sym, z_sym, "symmetric")
    q_asym = tq.quantize(x, s_asym, z_asym, "asymmetric")
    tq_sym = torch.quantize_per_tensor(x, fs_sym, iz_sym, torch.qint8)
    tq_asym = torch.quantize_per_tensor(x, fs_asym, iz_asym, torch.quint8)
    deq = [
        Candidate("torch_dq_qint8", lambda: tq_sym.dequantize()),
        Candidate("ours_dq_int8", lambda: tq.dequantize(q_sym, s_sym, z_sym)),
        Candidate("torch_dq_quint8", lambda: tq_asym.dequantize()),
        Candidate("ours_dq_uint8", lambda: tq.dequantize(q_asym, s_asym, z_asym)),
    ]
    t = measure(deq, cfg)
    rows["torch_dq_qint8"] = Row(
        "torch_dq_qint8", "torch qint8 tensor .dequantize()", t["torch_dq_qint8"], 5 * n
    )
    rows["ours_dq_int8"] = Row("ours_dq_int8", "ours dequantize int8", t["ours_dq_int8"], 5 * n)
    rows["torch_dq_quint8"] = Row(
        "torch_dq_quint8", "torch quint8 tensor .dequantize()", t["torch_dq_quint8"], 5 * n
    )
    rows["ours_dq_uint8"] = Row("ours_dq_uint8", "ours dequantize uint8", t["ours_dq_uint8"], 5 * n)
    _set_ratio(rows, "ours_dq_int8", "torch_dq_qint8")
    _set_ratio(rows, "ours_dq_uint8", "torch_dq_quint8")
    del q_sym, q_asym, tq_sym, tq_asym

    # choose_qparams (a reduction) vs torch.aminmax.
    cqp = [
        Candidate("torch_aminmax", lambda: torch.aminmax(x)),
        Candidate("ours_cqp_sym", lambda: tq.choose_qparams(x, "symmetric")),
        Candidate("ours_cqp_asym", lambda: tq.choose_qparams(x, "asymmetric")),
    ]
    t = measure(cqp, cfg)
    rows["torch_aminmax"] = Row("torch_aminmax", "torch.aminmax(x)", t["torch_aminmax"], 4 * n)
    rows["ours_cqp_sym"] = Row(
        "ours_cqp_sym", "ours choose_qparams symmetric", t["ours_cqp_sym"], 4 * n
    )
    rows["ours_cqp_asym"] = Row(
        "ours_cqp_asym", "ours choose_qparams asymmetric", t["ours_cqp_asym"], 4 * n
    )
    _set_ratio(rows, "ours_cqp_sym", "torch_aminmax")
    _set_ratio(rows, "ours_cqp_asym", "torch_aminmax")

    for r in rows.values():
        if r.nbytes is not None:
            r.bw_fraction = r.gbps / copy.gbps

    goals = []
    for key, mode in (("ours_q_sym", "symmetric"), ("ours_q_asym", "asymmetric")):
        r = rows[key]
        q1, q3 = _bw_fraction_per_rep(r, copy)
        goals.append(Goal(f"quantize {mode}: our GB/s / copy GB/s", r.bw_fraction,
                          GOAL_BW_FRACTION, q1, q3))
    for key, mode in (("ours_q_sym", "symmetric"), ("ours_q_asym", "asymmetric")):
        r = rows[key]
        goals.append(Goal(f"quantize {mode}: torch.quantize_per_tensor time / ours",
                          r.ratio, GOAL_VS_TORCH, r.ratio_q1, r.ratio_q3))

    notes.append(
        "bytes per element: quantize/dequantize 5, fp32 copy/clone 8, choose_qparams/aminmax 4, "
        "alloc+fill 1; GB/s = 1e9 B/s"
    )
    notes.append(
        "our ops and torch's allocate their output on every call (timed, as is freeing it); "
        "the copy row writes into a preallocated tensor"
    )
    return SectionResult(
        "per_tensor",
        f"per-tensor ops on {n:,} float32 elements ({4 * n / 2**20:.0f} MiB in), "
        f"cpu isa {_C._cpu_isa()}",
        "ratio = baseline median time / our median time (>1: ours faster); "
        "BW/copy = effective GB/s / GB/s of the preallocated fp32 copy",
        notes,
        list(rows.values()),
        goals,
        ("median ms", "IQR ms", "GB/s", "BW/copy", "ratio", "vs"),
    )


def _torch_per_token_symmetric(x: torch.Tensor):
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = (amax / 127).clamp(min=FLT_EPSILON)
    q = (x / scale).round().clamp(-128, 127).to(torch.int8)
    return q, scale.squeeze(-1), torch.zeros_like(scale.squeeze(-1), dtype=torch.int32)


def _torch_per_token_asymmetric(x: torch.Tensor):
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    lo = lo.clamp(max=0)
    hi = hi.clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=FLT_EPSILON)
    zp = (-(lo / scale).round()).clamp(0, 255)
    q = ((x / scale).round() + zp).clamp(0, 255).to(torch.uint8)
    return q, scale.squeeze(-1), zp.squeeze(-1).to(torch.int32)


def _section_per_token(cfg: Config) -> SectionResult:
    rows_n, cols_n = PER_TOKEN_SHAPE
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows_n, cols_n, generator=gen)
    n = x.numel()

    notes = []
    for mode, ref in (("symmetric", _torch_per_token_symmetric),
                      ("asymmetric", _torch_per_token_asymmetric)):
        q, s, z = tq.quantize_per_token(x, mode)
        rq, rs, rz = ref(x)
        diff = (q.int() - rq.int()).abs().max().item()
        notes.append(
            f"check ({mode}): max |ours - composed| = {diff} code(s)"
            + (", scales equal" if torch.equal(s, rs) else f", max scale diff {(s - rs).abs().max().item():.3g}")
            + ("" if diff <= 1 else "  <-- UNEXPECTED")
        )
        del q, s, z, rq, rs, rz

    cands = [
        Candidate("torch_sym", lambda: _torch_per_token_symmetric(x)),
        Candidate("ours_sym", lambda: tq.quantize_per_token(x, "symmetric")),
        Candidate("torch_asym", lambda: _torch_per_token_asymmetric(x)),
        Candidate("ours_asym", lambda: tq.quantize_per_token(x, "asymmetric")),
    ]
    t = measure(cands, cfg)
    rows = {
        "torch_sym": Row("torch_sym", "composed torch ops, symmetric", t["torch_sym"], 5 * n),
        "ours_sym": Row("ours_sym", "ours quantize_per_token symmetric", t["ours_sym"], 5 * n),
        "torch_asym": Row("torch_asym", "composed torch ops, asymmetric", t["torch_asym"], 5 * n),
        "ours_asym": Row("ours_asym", "ours quantize_per_token asymmetric", t["ours_asym"], 5 * n),
    }
    _set_ratio(rows, "ours_sym", "torch_sym")
    _set_ratio(rows, "ours_asym", "torch_asym")
    goals = [
        Goal(f"quantize_per_token {m}: composed torch time / ours", rows[k].ratio,
             GOAL_PER_TOKEN, rows[k].ratio_q1, rows[k].ratio_q3)
        for k, m in (("ours_sym", "symmetric"), ("ours_asym", "asymmetric"))
    ]
    notes.append(
        "composed symmetric: amax(|x|, -1)/127, clamp_min 2^-23, x/scale, round, clamp, to(int8); "
        "asymmetric: aminmax(x, -1), (hi-lo)/255, zp = clamp(-round(lo/scale)), "
        "round(x/scale)+zp, clamp, to(uint8)"
    )
    notes.append("GB/s counts 5 bytes per element (4 read + 1 written), as if x were read once")
    return SectionResult(
        "per_token",
        f"quantize_per_token on a {rows_n}x{cols_n} float32 tensor, cpu isa {_C._cpu_isa()}",
        "ratio = composed-torch median time / our median time (>1: ours faster; goal >= 3)",
        notes,
        list(rows.values()),
        goals,
    )


def _section_isa(cfg: Config) -> SectionResult:
    isas = list(_C._supported_cpu_isas())
    _C._set_cpu_isa("best")
    best = _C._cpu_isa()
    n = PER_TENSOR_NUMEL
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, generator=gen)
    s, z = tq.choose_qparams(x, "symmetric")
    y = torch.randn(*PER_TOKEN_SHAPE, generator=gen)

    def use(isa: str) -> Callable[[], None]:
        return lambda: _C._set_cpu_isa(isa)

    ops = [
        ("quantize_sym", f"quantize per tensor symmetric ({n // 2**20}Mi elts)",
         lambda: tq.quantize(x, s, z, "symmetric"), 5 * n),
        ("per_token_sym", "quantize_per_token symmetric (4096x4096)",
         lambda: tq.quantize_per_token(y, "symmetric"), 5 * y.numel()),
        ("per_token_asym", "quantize_per_token asymmetric (4096x4096)",
         lambda: tq.quantize_per_token(y, "asymmetric"), 5 * y.numel()),
    ]
    rows: Dict[str, Row] = {}
    try:
        for op_key, op_label, fn, nbytes in ops:
            cands = [Candidate(f"{op_key}/{isa}", fn, use(isa)) for isa in isas]
            t = measure(cands, cfg)
            for isa in isas:
                k = f"{op_key}/{isa}"
                label = f"{op_label} [{isa}{' = best' if isa == best else ''}]"
                rows[k] = Row(k, label, t[k], nbytes, extra={"isa": isa, "op": op_key})
            for isa in isas:
                _set_ratio(rows, f"{op_key}/{isa}", f"{op_key}/{best}", invert=True)
    finally:
        _C._set_cpu_isa("best")
    return SectionResult(
        "isa",
        f"instruction sets: {', '.join(isas)} (best on this CPU: {best})",
        "ratio = this ISA's median time / the best ISA's median time (>1: slower than best)",
        ["GB/s counts 5 bytes per element (4 read + 1 written)",
         "absolute times can differ from the other sections: the output's allocation cost "
         "depends on what ran before (malloc state); compare the ratios"],
        list(rows.values()),
    )


# ---------------------------------------------------------------------------
# Linear


@dataclass
class _LinCand:
    key: str
    label: str
    fn: Callable[[], object]
    weight_bytes: int = 1  # bytes per weight element read by one call
    to_fp32: Optional[Callable[[object], torch.Tensor]] = None  # output -> y, for the check
    slow: bool = False  # may be very slow: fewer repetitions, skipped past the cap
    int8_baseline: Optional[str] = None  # short name, for the goal "ours vs this"


def _cycling(fn: Callable[..., object], args: Sequence[Tuple]) -> Callable[[], object]:
    """fn(*args[0]), fn(*args[1]), ... call by call, round and round."""
    it = itertools.cycle(args)
    return lambda: fn(*next(it))


def _spread(n: int, reps: int) -> List[int]:
    """n repetition indices out of range(reps), evenly spread."""
    if n >= reps:
        return list(range(reps))
    if n == 1:
        return [reps // 2]
    return [round(j * (reps - 1) / (n - 1)) for j in range(n)]


def _predict_call_s(hist: Dict[str, List[Tuple[int, int, int, float]]], key: str,
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
        return t * N * K / (n * k), f"N={n}"
    return None


def _measure_linear(cands: Sequence[_LinCand], reps: int, warmup: int,
                    predicted: Dict[str, Optional[Tuple[float, str]]]):
    """Warm up (the first call is timed and checked), then time round-robin.

    Returns ({key: {rep index: seconds}}, {key: (short skip reason, details)},
    {key: rel err},
    {key: first call seconds}). A slow candidate is skipped if its call is
    predicted (or its first call found) to take more than LINEAR_SLOW_CAP_S,
    and otherwise runs in about LINEAR_SLOW_BUDGET_S of repetitions spread
    evenly over the `reps` rounds.
    """
    clock = time.perf_counter
    plan: Dict[str, set] = {}
    skipped: Dict[str, str] = {}
    rel_err: Dict[str, float] = {}
    first: Dict[str, float] = {}
    y_ref = None
    for c in cands:
        pred = predicted.get(c.key)
        if c.slow and pred is not None and pred[0] > LINEAR_SLOW_CAP_S:
            skipped[c.key] = (f"too slow: >{LINEAR_SLOW_CAP_S:g} s",
                              f"~{pred[0]:.1f} s per call predicted from {pred[1]}")
            continue
        try:
            t0 = clock()
            out = c.fn()
            t1 = clock()
            y = c.to_fp32(out) if c.to_fp32 is not None else out
        except Exception as e:  # a baseline this torch cannot run
            skipped[c.key] = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        first[c.key] = t1 - t0
        if y_ref is None:
            y_ref = y.float()  # the first candidate (fp32 F.linear) is the reference
        else:
            rel_err[c.key] = float((y.float() - y_ref).norm() / y_ref.norm())
        del out, y
        if c.slow and t1 - t0 > LINEAR_SLOW_CAP_S:
            skipped[c.key] = (f"too slow: >{LINEAR_SLOW_CAP_S:g} s",
                              f"its first call took {t1 - t0:.1f} s")
            continue
        if not c.slow or t1 - t0 < 0.25:
            for _ in range(warmup - 1):
                c.fn()
        n = reps
        if c.slow:
            n = max(1, min(reps, int(LINEAR_SLOW_BUDGET_S / max(t1 - t0, 1e-9))))
        plan[c.key] = set(_spread(n, reps))
    times: Dict[str, Dict[int, float]] = {k: {} for k in plan}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for i in range(reps):
            for c in cands:
                if i in plan.get(c.key, ()):
                    t0 = clock()
                    c.fn()
                    t1 = clock()
                    times[c.key][i] = t1 - t0
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, skipped, rel_err, first


def _ratio_by_rep(num: Dict[int, float], den: Dict[int, float]) -> Tuple[float, float, float]:
    """(median(num) / median(den), q1 and q3 of num[i] / den[i] over shared repetitions)."""
    ratio = statistics.median(num.values()) / statistics.median(den.values())
    per_rep = [num[i] / den[i] for i in sorted(num) if i in den]
    q1, _, q3 = _quantiles(per_rep)
    return ratio, q1, q3


def _quiet(fn: Callable[[], object]) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _linear_module(w: torch.Tensor) -> nn.Linear:
    """An nn.Linear without bias whose weight is (a view of) w, without random init."""
    N, K = w.shape
    lin = nn.Linear(K, N, bias=False, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    return lin.eval()


def _kernel_peaks() -> Dict[str, float]:
    """Best of 5 single-core measurements of each instruction ceiling (ops/s)."""
    runs = [_C._kernel_peaks(0.1) for _ in range(5)]
    return {k: max(r[k] for r in runs) for k in runs[0]} if runs and runs[0] else {}


def _section_linear(cfg: Config) -> SectionResult:
    notes: List[str] = []
    copies = LINEAR_WEIGHT_COPIES

    # The machine's own ceilings, for context.
    n_bw = 64 * 2**20  # 256 MiB of float32
    src = torch.empty(n_bw).fill_(1.0)
    dst = torch.empty_like(src)
    t = measure([Candidate("copy", lambda: dst.copy_(src)), Candidate("sum", lambda: src.sum())],
                Config(repeat=7, warmup=1))
    copy_gbps = 8 * n_bw / statistics.median(t["copy"]) / 1e9
    read_gbps = 4 * n_bw / statistics.median(t["sum"]) / 1e9
    del src, dst
    peaks = _kernel_peaks()

    # Which baselines this torch (and environment) has.
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:
        quantize_dynamic = None
        notes.append(f"torch.ao.quantization.quantize_dynamic: skipped (not in this torch: {e})")
    has_int_mm = hasattr(torch, "_int_mm")
    if not has_int_mm:
        notes.append("torch._int_mm: skipped (not in this torch)")
    has_w8 = hasattr(torch.ops.aten, "_weight_int8pack_mm")
    if not has_w8:
        notes.append("aten._weight_int8pack_mm: skipped (not in this torch)")
    torchao_cfg = None
    if importlib.util.find_spec("torchao") is None:
        notes.append("torchao Int8DynamicActivationInt8WeightConfig (eager and torch.compile): "
                     "skipped (torchao is not installed)")
    else:
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            torchao_cfg = (quantize_, Int8DynamicActivationInt8WeightConfig)
        except Exception as e:
            notes.append(f"torchao Int8DynamicActivationInt8WeightConfig: skipped "
                         f"(import failed: {type(e).__name__}: {e})")

    gen = torch.Generator().manual_seed(3)
    rows: List[Row] = []
    by_shape: Dict[Tuple[int, int, int], Dict[str, Row]] = {}
    hist: Dict[str, List[Tuple[int, int, int, float]]] = {}
    raw: Dict[Tuple[int, int, int], Dict[str, Dict[int, float]]] = {}
    baselines: Dict[str, str] = {}  # key -> short name
    skipped_anywhere: List[str] = []

    for N, K in LINEAR_SHAPES:
        w = torch.randn(N, K, generator=gen)
        x_all = torch.randn(max(LINEAR_MS), K, generator=gen)
        w_scale, w_zp = tq.choose_qparams(w, "symmetric", axis=0)
        w_q = tq.quantize(w, w_scale, w_zp, "symmetric", axis=0)
        w_sum = w_q.sum(1, dtype=torch.int32)  # kept by the layer, as its weights are

        def clones(t: torch.Tensor) -> List[torch.Tensor]:
            # Normal tensors, not inference tensors, as the buffers of a model
            # converted before inference are: our kernels keep a packed copy
            # of such a weight (csrc/cpu/weight_cache.h), FBGEMM prepacks its.
            with torch.inference_mode(False):
                return [t.clone() for _ in range(copies)]

        # Independent weight copies per candidate (sharing them between two
        # candidates timed back to back would let the second hit the L3).
        w_f32 = clones(w)
        wq_sym, wq_asym, wq_int_mm, wq_w8 = (clones(w_q) for _ in range(4))
        built: Dict[str, object] = {}
        if quantize_dynamic is not None:
            for key, spec in (("qd_tensor", {nn.Linear}),
                              ("qd_channel", {nn.Linear: per_channel_dynamic_qconfig})):
                try:
                    built[key] = [
                        _quiet(lambda: quantize_dynamic(nn.Sequential(_linear_module(w)), spec,
                                                        dtype=torch.qint8, inplace=True))
                        for _ in range(copies)
                    ]
                except Exception as e:
                    built[key] = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")
        if torchao_cfg is not None:
            quantize_, ao_config = torchao_cfg
            for key in ("torchao_eager", "torchao_compiled"):
                try:
                    mods = []
                    for _ in range(copies):
                        lin = _linear_module(w.clone())
                        _quiet(lambda: quantize_(lin, ao_config()))
                        mods.append(lin)
                    built[key] = mods
                except Exception as e:
                    built[key] = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:100]}")

        for M in LINEAR_MS:
            reps = cfg.repeat if cfg.repeat_given else LINEAR_REPEAT[M]
            x = x_all[:M].contiguous()
            x_q, x_s, _ = tq.quantize_per_token(x, "symmetric")  # for torch._int_mm, untimed

            cands: List[_LinCand] = [
                _LinCand("fp32", "fp32 F.linear(x, w)",
                         _cycling(lambda wt: F.linear(x, wt), [(t,) for t in w_f32]), 4),
                _LinCand("ours_sym", "ours dynamic_quantized_linear symmetric",
                         _cycling(lambda wt: tq.dynamic_quantized_linear(
                             x, wt, w_scale, None, w_sum, "symmetric"), [(t,) for t in wq_sym])),
                _LinCand("ours_asym", "ours dynamic_quantized_linear asymmetric",
                         _cycling(lambda wt: tq.dynamic_quantized_linear(
                             x, wt, w_scale, None, w_sum, "asymmetric"), [(t,) for t in wq_asym])),
            ]
            unavailable: Dict[str, Tuple[str, Tuple[str, str]]] = {}  # key -> (label, reason)
            for key, label, short in (
                ("qd_tensor", "torch.ao quantize_dynamic, per-tensor w",
                 "quantize_dynamic per-tensor"),
                ("qd_channel", "torch.ao quantize_dynamic, per-channel w",
                 "quantize_dynamic per-channel"),
            ):
                if key not in built:
                    continue
                if isinstance(built[key], tuple):
                    unavailable[key] = (label, built[key])
                else:
                    cands.append(_LinCand(key, label,
                                          _cycling(lambda m: m(x), [(m,) for m in built[key]]),
                                          int8_baseline=short))
            if has_int_mm:
                cands.append(_LinCand(
                    "int_mm", "torch._int_mm(x_int8, w_int8.t()), int32 out",
                    _cycling(lambda wt: torch._int_mm(x_q, wt.t()), [(t,) for t in wq_int_mm]),
                    to_fp32=lambda acc: acc.float() * x_s[:, None] * w_scale[None, :],
                    slow=True, int8_baseline="torch._int_mm"))
            if has_w8:
                cands.append(_LinCand(
                    "w8pack", "aten._weight_int8pack_mm(x, w_int8, scales)",
                    _cycling(lambda wt: torch.ops.aten._weight_int8pack_mm(x, wt, w_scale),
                             [(t,) for t in wq_w8]),
                    slow=True, int8_baseline="aten._weight_int8pack_mm"))
            if torchao_cfg is not None:
                torch._dynamo.reset()
                for key, label, short in (
                    ("torchao_eager", "torchao int8 dyn-act/int8-w, eager", "torchao eager"),
                    ("torchao_compiled", "torchao int8 dyn-act/int8-w, torch.compile",
                     "torchao compiled"),
                ):
                    if isinstance(built[key], tuple):
                        unavailable[key] = (label, built[key])
                        continue
                    if key == "torchao_eager":
                        step = lambda m: m(x)  # noqa: E731
                    else:
                        compiled = torch.compile(lambda m, inp: m(inp), dynamic=False)
                        step = lambda m, c=compiled: c(m, x)  # noqa: E731
                    cands.append(_LinCand(key, label, _cycling(step, [(m,) for m in built[key]]),
                                          int8_baseline=short))

            predicted = {c.key: _predict_call_s(hist, c.key, M, N, K) for c in cands}
            times, skipped, rel_err, first = _measure_linear(cands, reps, cfg.warmup, predicted)
            for k, reason in unavailable.items():
                skipped[k] = reason
            raw[(M, N, K)] = times

            shape_rows: Dict[str, Row] = {}
            ops = 2 * M * N * K
            labels = {c.key: c.label for c in cands}
            labels.update({k: v[0] for k, v in unavailable.items()})
            wbytes = {c.key: c.weight_bytes for c in cands}
            for c in cands:
                if c.int8_baseline:
                    baselines[c.key] = c.int8_baseline
            for key in list(labels):
                label = f"M={M:<3} N={N:<5} {labels[key]}"
                if key in skipped:
                    label += f" -- skipped ({skipped[key][0]})"
                    skipped_anywhere.append(
                        f"M={M} N={N} {labels[key]}: {skipped[key][0]}: {skipped[key][1]}")
                ts = times.get(key, {})
                order = sorted(ts)
                r = Row(f"linear/M{M}/N{N}/K{K}/{key}", label, [ts[i] for i in order],
                        wbytes.get(key, 1) * N * K if M == 1 else None,
                        extra={"M": M, "N": N, "K": K, "ops": ops, "rep_index": order,
                               "rel_err": rel_err.get(key),
                               "skipped": ": ".join(skipped[key]) if key in skipped else None,
                               "first_call_s": first.get(key)})
                if ts:
                    r.extra["gops"] = ops / r.median / 1e9
                    hist.setdefault(key, []).append((M, N, K, r.median))
                elif key in first:  # skipped after its first call
                    hist.setdefault(key, []).append((M, N, K, first[key]))
                elif predicted.get(key) is not None:
                    # skipped on the prediction: so that a larger M is predicted from it
                    hist.setdefault(key, []).append((M, N, K, predicted[key][0]))
                if ts and key != "fp32" and "fp32" in times:
                    r.baseline = "fp32"
                    r.ratio, r.ratio_q1, r.ratio_q3 = _ratio_by_rep(times["fp32"], ts)
                shape_rows[key] = r
                rows.append(r)
            if times.get("ours_sym") and times.get("ours_asym"):
                a = shape_rows["ours_asym"]
                v, q1, q3 = _ratio_by_rep(times["ours_asym"], times["ours_sym"])
                a.extra.update(asym_over_sym=v, asym_over_sym_q1=q1, asym_over_sym_q3=q3)
            by_shape[(M, N, K)] = shape_rows
            del cands, x_q, x_s
        del w, w_f32, wq_sym, wq_asym, wq_int_mm, wq_w8, built

    # Goals.
    goals: List[Goal] = []
    for M in LINEAR_MS:
        r = by_shape.get((M, 4096, 4096), {}).get("ours_sym")
        if r is not None and r.ratio is not None:
            goals.append(Goal(f"linear sym W8A8 M={M} K=N=4096: fp32 F.linear time / ours",
                              r.ratio, GOAL_LINEAR_SPEEDUP[M], r.ratio_q1, r.ratio_q3))
    for (M, N, K), sr in by_shape.items():
        a = sr.get("ours_asym")
        if a is not None and a.extra.get("asym_over_sym") is not None:
            goals.append(Goal(f"linear M={M} N={N} K={K}: ours asymmetric time / symmetric",
                              a.extra["asym_over_sym"], GOAL_LINEAR_ASYM,
                              a.extra["asym_over_sym_q1"], a.extra["asym_over_sym_q3"], op="<="))
    for key, short in baselines.items():
        worst = None
        for (M, N, K), times in raw.items():
            if times.get(key) and times.get("ours_sym"):
                v = _ratio_by_rep(times[key], times["ours_sym"])
                if worst is None or v[0] < worst[0][0]:
                    worst = (v, M, N)
        if worst is not None:
            (v, q1, q3), M, N = worst
            n_shapes = sum(1 for t in raw.values() if t.get(key) and t.get("ours_sym"))
            goals.append(Goal(f"linear: {short} time / ours sym, worst of {n_shapes} shapes "
                              f"(M={M} N={N})", v, GOAL_LINEAR_VS_INT8, q1, q3))

    measured = [r for r in rows if r.times]
    best = max(measured, key=lambda r: r.extra["gops"])
    notes.insert(0, (
        f"machine ceilings, measured in this section: fp32 dst.copy_(src) of 256 MiB "
        f"{copy_gbps:.1f} GB/s (8 B/elt: 4 read + 4 written), src.sum() {read_gbps:.1f} GB/s "
        f"(read only); best GOP/s observed here: {best.extra['gops']:.1f} "
        f"({best.label.split(' -- ')[0]})"))
    if peaks:
        notes.insert(1, (
            "instruction ceilings, one core, data in L1 (best of 5 runs of _C._kernel_peaks): "
            f"fp32 FMA {peaks['fp32_fma'] / 1e9:.0f} GFLOP/s; our exact int8 panel kernel "
            f"{peaks['int8_exact'] / 1e9:.0f} GOP/s ({peaks['int8_exact'] / peaks['fp32_fma']:.2f}x "
            f"the FMA peak); the same loop without the sign move (vpmaddubsw on uint8, saturates "
            f"on 8-bit codes: what 7-bit-activation kernels such as FBGEMM's run) "
            f"{peaks['int8_u8s8'] / 1e9:.0f} GOP/s ({peaks['int8_u8s8'] / peaks['fp32_fma']:.2f}x). "
            "Where both sides are compute bound (large M), ours/fp32 cannot exceed about the "
            "first ratio by much: fp32 F.linear runs below its FMA peak, our kernel near its own"))
    notes.insert(1, (
        f"each candidate cycles through {copies} independent copies of its weights call by call, "
        f"so its weights are read from DRAM on every call: the int8 4096x4096 weight (16 MiB) "
        f"would otherwise stay in the {_l3_cache() or 'L3'} L3 between calls while the fp32 one "
        f"(64 MiB) cannot, which would inflate the int8 speedups at small M"))
    notes.extend([
        f"all candidates: no bias, {torch.get_num_threads()} threads, x float32 [M, K] "
        "(shared: it is hot in cache, as a layer's input is); a row's median is over its n "
        "interleaved repetitions; 'vs fp32' = fp32 F.linear median / this median (>1: faster), "
        "its per-rep IQR in the JSON; asym/sym = asymmetric median / symmetric median",
        "ours: w_q, w_scale from symmetric per-channel (axis=0) quantization, w_sum = "
        "w_q.sum(1, dtype=int32) precomputed; activations quantized per token inside the op; "
        "the weights are normal tensors (a converted model's buffers), so from M = 2 on the "
        "kernel packs each once, on its first (warm-up) call, and reuses the packed copy",
        f"quantize_dynamic: engine '{torch.backends.quantized.engine}', prepacked qint8 weights "
        "(per tensor, or per channel with per_channel_dynamic_qconfig), activations quantized "
        "per tensor (uint8, reduce_range) inside the op",
        "torch._int_mm gets x already quantized per token (untimed) and returns the int32 "
        "accumulator: its time leaves out quantizing x and scaling the output, ours includes both; "
        "_weight_int8pack_mm is weight-only int8 (fp32 x, per-channel scales)",
        f"slow baselines: about {LINEAR_SLOW_BUDGET_S:g} s of timed calls per shape (n column), "
        f"spread over the repetitions, and skipped when one call takes or would take "
        f">{LINEAR_SLOW_CAP_S:g} s (predicted from a smaller M, scaled by M)",
        "GOP/s = 2*M*N*K / median; W GB/s (M=1 only) = weight bytes per call / median: N*K for "
        "int8, 4*N*K for fp32; rel err = ||y - y_fp32|| / ||y_fp32|| from the first warm-up call",
    ])
    for s in skipped_anywhere:
        notes.append(f"skipped: {s}")
    return SectionResult(
        "linear",
        f"linear y = x w^T, K = {', '.join(sorted({str(k) for _, k in LINEAR_SHAPES}))}, "
        f"N in {{{', '.join(str(n) for n, _ in LINEAR_SHAPES)}}}, "
        f"M in {{{', '.join(map(str, LINEAR_MS))}}}, cpu isa {_C._cpu_isa()}",
        "vs fp32 = fp32 F.linear median time / this median time (>1: faster than fp32), "
        "measured in the same interleaved run",
        notes,
        rows,
        goals,
        ("median ms", "IQR ms", "n", "GOP/s", "W GB/s", "vs fp32", "asym/sym", "rel err"),
    )


def _l3_cache() -> Optional[str]:
    """The L3 size from sysfs, e.g. '32 MiB'; None if unknown."""
    for idx in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{idx}"
        if _read_first_line(f"{base}/level") == "3":
            size = _read_first_line(f"{base}/size") or ""
            if size.endswith("K") and size[:-1].isdigit():
                kib = int(size[:-1])
                return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"
            return size or None
    return None


def _section_cuda(cfg: Config) -> SectionResult:
    from torch_quant.bench_cuda import section  # imports this module

    # Parameters made in inference mode have no version counter, so the CUDA
    # ops would check their values (a device sync) on every call.
    with torch.inference_mode(False), torch.no_grad():
        return section(cfg)


@dataclass
class Section:
    name: str
    help: str
    run: Callable[[Config], SectionResult]


SECTIONS: List[Section] = [
    Section("per_tensor", "quantize/dequantize/choose_qparams per tensor vs torch and fp32 copy",
            _section_per_tensor),
    Section("per_token", "quantize_per_token vs the same quantizer composed of torch ops",
            _section_per_token),
    Section("isa", "per-tensor and per-token quantize with each supported ISA vs the best",
            _section_isa),
    Section("linear", "dynamic_quantized_linear (W8A8) vs fp32 F.linear and torch's int8 paths",
            _section_linear),
    Section("cuda", "the CUDA kernels vs a device copy and bf16 cuBLAS (skipped without a GPU)",
            lambda cfg: _section_cuda(cfg)),
]


# ---------------------------------------------------------------------------
# Output


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_first_line(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def _cpu_snapshot() -> Optional[Tuple[float, float, float, float]]:
    """(machine busy CPU s, stolen CPU s, this process's CPU s, wall s), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(vals) < 7:
        return None
    busy = (vals[0] + vals[1] + vals[2] + vals[5] + vals[6]) / hz  # user nice system irq softirq
    steal = vals[7] / hz if len(vals) > 7 else 0.0
    t = os.times()
    return busy, steal, t.user + t.system, time.perf_counter()


def _others_cores(a, b) -> Optional[Tuple[float, float]]:
    """CPU cores used on average by other processes, and stolen by the hypervisor,
    between two snapshots."""
    if a is None or b is None or b[3] <= a[3]:
        return None
    wall = b[3] - a[3]
    others = ((b[0] - a[0]) - (b[2] - a[2])) / wall
    return max(0.0, others), max(0.0, (b[1] - a[1]) / wall)


OTHERS_WARN_CORES = 0.2


def _format_others(o: Optional[Tuple[float, float]]) -> str:
    if o is None:
        return ""
    text = f"; other processes used {o[0]:.2f} cores on average"
    if o[1] >= 0.01:
        text += f", the hypervisor stole {o[1]:.2f}"
    if o[0] + o[1] > OTHERS_WARN_CORES:
        text += (" -- WARNING: the machine was not idle, times are inflated and noisy "
                 "(multi-threaded ops wait for a core); rerun on an idle machine")
    return text


def _loadavg() -> Optional[Tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def _environment() -> Dict[str, object]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "torch": torch.__version__,
        "torch_quant": getattr(tq, "__version__", "?"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus_available": affinity,
        "cpu_model": _cpu_model(),
        "cpu_isa": _C._cpu_isa(),
        "supported_isas": list(_C._supported_cpu_isas()),
        "transparent_hugepage": _read_first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "loadavg": _loadavg(),
    }


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _cell(row: Row, col: str) -> str:
    if col == "median us":
        return _fmt(None if row.median is None else row.median * 1e6, ".1f")
    if col == "IQR us":
        return _fmt(None if row.iqr is None else row.iqr * 1e6, ".1f")
    if col == "TOP/s":
        return _fmt(row.extra.get("tops"), ".1f")
    if col == "median ms":
        return _fmt(None if row.median is None else row.median * 1e3, ".2f")
    if col == "IQR ms":
        return _fmt(None if row.iqr is None else row.iqr * 1e3, ".2f")
    if col in ("GB/s", "W GB/s"):
        return _fmt(row.gbps, ".2f")
    if col == "GOP/s":
        return _fmt(row.extra.get("gops"), ".1f")
    if col == "asym/sym":
        return _fmt(row.extra.get("asym_over_sym"), ".2f")
    if col == "rel err":
        return _fmt(row.extra.get("rel_err"), ".1e")
    if col == "n":
        return str(len(row.times)) if row.times else "-"
    if col == "vs fp32":
        return _fmt(row.ratio, ".2f")
    if col == "BW/copy":
        return _fmt(row.bw_fraction, ".2f")
    if col == "ratio":
        return _fmt(row.ratio, ".2f")
    if col == "vs":
        return row.baseline or "-"
    raise KeyError(col)


def format_section(res: SectionResult) -> str:
    header = ("op",) + tuple(res.columns)
    body = [(r.label,) + tuple(_cell(r, c) for c in res.columns) for r in res.rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, w) in enumerate(zip(cells, widths)):
            # text columns (first and "vs") left-aligned, numbers right-aligned
            parts.append(c.ljust(w) if i == 0 or header[i] == "vs" else c.rjust(w))
        return "  ".join(parts).rstrip()

    if not res.rows:  # a section that measured nothing (e.g. cuda without a GPU)
        return "\n".join([f"== {res.name}: {res.title}"] + [f"   note: {n}" for n in res.notes])
    out = [f"== {res.name}: {res.title}", f"   {res.ratio_meaning}"]
    out += [line(header), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out += [f"   note: {n}" for n in res.notes]
    return "\n".join(out)


def format_goals(goals: Sequence[Goal]) -> str:
    out = ["== goals"]
    if not goals:
        return "\n".join(out + ["   (no section with goals was run)"])
    w = max(len(g.name) for g in goals)
    for g in goals:
        iqr = "" if g.q1 is None else f"  (per-rep IQR {g.q1:.2f}-{g.q3:.2f})"
        out.append(
            f"{'PASS' if g.passed else 'FAIL'}  {g.name.ljust(w)}  "
            f"{g.value:6.2f} {g.op} {g.threshold:.2f}{iqr}"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Main


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    names = [s.name for s in SECTIONS]
    p = argparse.ArgumentParser(
        prog="python -m torch_quant.bench",
        description="Speed of torch_quant's ops against PyTorch baselines, as ratios "
        "of medians measured in this run.",
        epilog="sections: " + "; ".join(f"{s.name}: {s.help}" for s in SECTIONS),
    )
    p.add_argument("--only", metavar="SECTION", action="append",
                   help=f"run only these sections ({', '.join(names)}); "
                   "repeat the flag or separate names with commas")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="timed repetitions per candidate (default 21; linear: 11 at M <= 16, "
                   "5 at M = 256, fewer for the slow baselines)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed calls per candidate first (default 3)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads(N) (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="also write all measurements as JSON")
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    selected = []
    for item in args.only or []:
        for name in filter(None, (s.strip() for s in item.split(","))):
            if name not in names:
                p.error(f"unknown section {name!r}; choose from {', '.join(names)}")
            if name not in selected:
                selected.append(name)
    args.sections = [s for s in SECTIONS if not selected or s.name in selected]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cfg = Config(repeat=21 if args.repeat is None else args.repeat, warmup=args.warmup,
                 repeat_given=args.repeat is not None)
    env = _environment()

    print("torch_quant bench")
    print(f"torch {env['torch']}, torch_quant {env['torch_quant']}, python {env['python']}")
    print(f"cpu: {env['cpu_model']} ({env['cpus_available']} cpus available), "
          f"threads: {env['threads']}")
    print(f"cpu isa: {env['cpu_isa']} (supported: {', '.join(env['supported_isas'])})")
    print(f"memory: transparent_hugepage {env['transparent_hugepage'] or '?'}, "
          f"THP_MEM_ALLOC_ENABLE={env['THP_MEM_ALLOC_ENABLE'] or 'unset'}")
    if env["loadavg"] is not None:
        # Another busy process makes the multi-threaded ops wait for a core.
        print("load average before the run: "
              + " / ".join(f"{v:.2f}" for v in env["loadavg"]) + " (1 / 5 / 15 min)")
    print(f"timing: median of {cfg.repeat} interleaved repetitions after {cfg.warmup} "
          f"warm-up calls; IQR = q3 - q1"
          + ("" if cfg.repeat_given or not any(s.name == "linear" for s in args.sections)
             else " (linear: 11 at M <= 16, 5 at M = 256, fewer for slow baselines)"))
    print(flush=True)

    results: List[SectionResult] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for sec in args.sections:
            t0 = time.perf_counter()
            snap0 = _cpu_snapshot()
            res = sec.run(cfg)
            res.others = _others_cores(snap0, _cpu_snapshot())
            results.append(res)
            print(format_section(res))
            print(f"   ({time.perf_counter() - t0:.1f} s{_format_others(res.others)})", flush=True)
            print()
    goals = [g for r in results for g in r.goals]
    print(format_goals(goals))
    total = time.perf_counter() - start
    load = _loadavg()
    print(f"\ntotal {total:.1f} s"
          + ("" if load is None else f", load average after: {load[0]:.2f} (1 min)"))

    if args.json:
        payload = {
            "environment": env,
            "config": {"repeat": cfg.repeat, "warmup": cfg.warmup,
                       "sections": [s.name for s in args.sections], "argv": sys.argv[1:]},
            "sections": [
                {"name": r.name, "title": r.title, "ratio_meaning": r.ratio_meaning,
                 "notes": r.notes, "rows": [row.to_json() for row in r.rows],
                 "goals": [g.to_json() for g in r.goals],
                 "other_processes_cores": None if r.others is None else r.others[0],
                 "steal_cores": None if r.others is None else r.others[1]}
                for r in results
            ],
            "goals": [g.to_json() for g in goals],
            "total_s": total,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
