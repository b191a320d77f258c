"""Timing and results: what every section shares.

``measure`` times candidates round-robin (repetition i runs each of them once,
in turn) with garbage collection off; ``Row`` holds one candidate's times and
derived figures, ``Goal`` one checked target, ``SectionResult`` a section's
table. Ratios are ratios of medians; the per-repetition ratios (repetition i of
two candidates ran back to back) give their IQR.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple


@dataclass
class Config:
    repeat: int
    warmup: int
    repeat_given: bool = False  # --repeat on the command line (else sections may pick their own)
    quick: bool = False  # --quick: tiny sizes, a smoke test of the code, not a measurement


@dataclass
class Candidate:
    key: str
    fn: Callable[[], object]
    setup: Optional[Callable[[], None]] = None  # run before each call, not timed


def quantiles(ts: Sequence[float]) -> Tuple[float, float, float]:
    """(q1, median, q3); a single value is all three."""
    if len(ts) < 2:
        return ts[0], ts[0], ts[0]
    q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
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


def cycling(fn: Callable[..., object], args: Sequence[Tuple]) -> Callable[[], object]:
    """fn(*args[0]), fn(*args[1]), ... call by call, round and round."""
    it = itertools.cycle(args)
    return lambda: fn(*next(it))


def spread(n: int, reps: int) -> List[int]:
    """n repetition indices out of range(reps), evenly spread."""
    if n >= reps:
        return list(range(reps))
    if n == 1:
        return [reps // 2]
    return [round(j * (reps - 1) / (n - 1)) for j in range(n)]


def ratio_by_rep(num: Dict[int, float], den: Dict[int, float]) -> Tuple[float, float, float]:
    """(median(num) / median(den), q1 and q3 of num[i] / den[i] over shared repetitions)."""
    ratio = statistics.median(num.values()) / statistics.median(den.values())
    per_rep = [num[i] / den[i] for i in sorted(num) if i in den]
    q1, _, q3 = quantiles(per_rep) if per_rep else (None, None, None)
    return ratio, q1, q3


def quiet(fn: Callable[[], object]) -> object:
    """fn() with its warnings silenced (deprecation notices of the baselines)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


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
        q1, _, q3 = quantiles(self.times)
        return q3 - q1

    @property
    def gbps(self) -> Optional[float]:
        if self.nbytes is None or not self.times:
            return None
        return self.nbytes / self.median / 1e9

    def to_json(self) -> Dict[str, object]:
        q1, med, q3 = quantiles(self.times) if self.times else (None, None, None)
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
    extra: Dict[str, object] = field(default_factory=dict)  # section-wide figures, for JSON


def set_ratio(rows: Dict[str, Row], key: str, baseline: str, invert: bool = False) -> None:
    """ratio = baseline / this (speedup), or this / baseline with invert=True."""
    r, b = rows[key], rows[baseline]
    r.baseline = baseline
    if invert:
        r.ratio = r.median / b.median
        per_rep = [t / tb for t, tb in zip(r.times, b.times)]
    else:
        r.ratio = b.median / r.median
        per_rep = [tb / t for t, tb in zip(r.times, b.times)]
    r.ratio_q1, _, r.ratio_q3 = quantiles(per_rep)


def bw_fraction_per_rep(row: Row, copy: Row) -> Tuple[float, float]:
    """IQR of (row GB/s / copy GB/s) over the interleaved repetitions."""
    per_rep = [
        (row.nbytes / t) / (copy.nbytes / tc) for t, tc in zip(row.times, copy.times)
    ]
    q1, _, q3 = quantiles(per_rep)
    return q1, q3
