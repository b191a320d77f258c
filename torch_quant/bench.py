"""Speed of the torch_quant CPU operators against PyTorch baselines, as ratios.

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

The goals block at the end checks the project's targets for per-tensor
quantize (effective bandwidth >= 0.7 x copy bandwidth; at least as fast as
``torch.quantize_per_tensor``) and per-token quantize (>= 3x the composed
torch ops). ``--json PATH`` writes every measurement, raw times included.
"""

from __future__ import annotations

import argparse
import gc
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


# ---------------------------------------------------------------------------
# Timing


@dataclass
class Config:
    repeat: int
    warmup: int


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
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iqr(self) -> float:
        q1, _, q3 = _quantiles(self.times)
        return q3 - q1

    @property
    def gbps(self) -> Optional[float]:
        return None if self.nbytes is None else self.nbytes / self.median / 1e9

    def to_json(self) -> Dict[str, object]:
        q1, med, q3 = _quantiles(self.times)
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

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def to_json(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
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
    }


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _cell(row: Row, col: str) -> str:
    if col == "median ms":
        return _fmt(row.median * 1e3, ".2f")
    if col == "IQR ms":
        return _fmt(row.iqr * 1e3, ".2f")
    if col == "GB/s":
        return _fmt(row.gbps, ".2f")
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
            f"{g.value:6.2f} >= {g.threshold:.2f}{iqr}"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Main


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    names = [s.name for s in SECTIONS]
    p = argparse.ArgumentParser(
        prog="python -m torch_quant.bench",
        description="Speed of torch_quant's CPU ops against PyTorch baselines, as ratios "
        "of medians measured in this run.",
        epilog="sections: " + "; ".join(f"{s.name}: {s.help}" for s in SECTIONS),
    )
    p.add_argument("--only", metavar="SECTION", action="append",
                   help=f"run only these sections ({', '.join(names)}); "
                   "repeat the flag or separate names with commas")
    p.add_argument("--repeat", type=int, default=21, metavar="N",
                   help="timed repetitions per candidate (default 21)")
    p.add_argument("--warmup", type=int, default=3, metavar="N",
                   help="untimed calls per candidate first (default 3)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch.set_num_threads(N) (default: torch's default)")
    p.add_argument("--json", metavar="PATH", help="also write all measurements as JSON")
    args = p.parse_args(argv)
    if args.repeat < 1:
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
    cfg = Config(repeat=args.repeat, warmup=args.warmup)
    env = _environment()

    print("torch_quant bench")
    print(f"torch {env['torch']}, torch_quant {env['torch_quant']}, python {env['python']}")
    print(f"cpu: {env['cpu_model']} ({env['cpus_available']} cpus available), "
          f"threads: {env['threads']}")
    print(f"cpu isa: {env['cpu_isa']} (supported: {', '.join(env['supported_isas'])})")
    print(f"memory: transparent_hugepage {env['transparent_hugepage'] or '?'}, "
          f"THP_MEM_ALLOC_ENABLE={env['THP_MEM_ALLOC_ENABLE'] or 'unset'}")
    print(f"timing: median of {cfg.repeat} interleaved repetitions after {cfg.warmup} "
          f"warm-up calls; IQR = q3 - q1")
    print(flush=True)

    results: List[SectionResult] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for sec in args.sections:
            t0 = time.perf_counter()
            res = sec.run(cfg)
            results.append(res)
            print(format_section(res))
            print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
            print()
    goals = [g for r in results for g in r.goals]
    print(format_goals(goals))
    total = time.perf_counter() - start
    print(f"\ntotal {total:.1f} s")

    if args.json:
        payload = {
            "environment": env,
            "config": {"repeat": cfg.repeat, "warmup": cfg.warmup,
                       "sections": [s.name for s in args.sections], "argv": sys.argv[1:]},
            "sections": [
                {"name": r.name, "title": r.title, "ratio_meaning": r.ratio_meaning,
                 "notes": r.notes, "rows": [row.to_json() for row in r.rows],
                 "goals": [g.to_json() for g in r.goals]}
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
