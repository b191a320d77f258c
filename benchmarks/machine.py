"""The machine's ceilings, measured in the same run as the ops they frame.

* int8 compute peak: ``_C._vnni_peak(seconds)`` (ops/s of a plain vpdpbusd
  loop, data in registers) run at once in ``torch.get_num_threads()`` Python
  threads, summed, best of three runs. The function must release the GIL for
  the threads to overlap; whether they did is checked from the wall time
  (overlapping calls end after about ``seconds``, serialised ones after
  ``threads x seconds``). If they did not, the figure is the best single
  thread's and says so: nothing is extrapolated from one thread. Without
  AVX512-VNNI the same is done with the exact AVX2 int8 kernel of
  ``_C._kernel_peaks`` (its ``int8_exact`` entry).
* DRAM read bandwidth: ``torch.sum`` of a 256 MiB float32 tensor (larger than
  any L3 here; a read-only stream, 4 bytes per element, a negligible result)
  on torch's threads, best of three calls.
* fp32 copy bandwidth: ``dst.copy_(src)`` of the same 256 MiB (8 bytes per
  element: 4 read, 4 written), best of three.
* single-core instruction ceilings of ``_C._kernel_peaks`` (fp32 FMA, exact
  AVX2 int8, saturating u8s8), best of five, for context.

``figures(cfg)`` measures them once per process and size (the ``linear``
section reads the same numbers as the ``machine`` section prints).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from torch_quant import _C

from .timing import Config, Row, SectionResult

BW_BYTES = 256 * 2**20
QUICK_BW_BYTES = 16 * 2**20
PEAK_SECONDS = 0.2
QUICK_PEAK_SECONDS = 0.02
RUNS = 3
PLAUSIBLE_OVER_U8S8 = 8  # int8 peak per thread / single-core AVX2 u8s8 loop, at most


@dataclass
class Peak:
    ops_per_s: float  # total over the threads that ran at once (or one thread, see concurrent)
    threads: int  # threads whose results are summed in ops_per_s
    requested: int  # torch.get_num_threads()
    concurrent: bool  # whether the threads' calls overlapped (the GIL was released)
    source: str  # "_C._vnni_peak" or "_C._kernel_peaks int8_exact"
    runs: List[float] = field(default_factory=list)  # total ops/s of each run
    implausible: Optional[str] = None  # why the figure cannot be a real peak, if it cannot

    @property
    def short(self) -> str:
        t = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return t if self.concurrent or self.requested == 1 else t + ", GIL held: not the total"

    @property
    def label(self) -> str:
        if self.concurrent or self.requested == 1:
            how = f"{self.threads} thread{'s' if self.threads > 1 else ''} at once"
        else:
            how = (f"1 thread only: {self.source} holds the GIL, so {self.requested} Python "
                   f"threads ran one after another; not the {self.requested}-thread peak")
        bad = ", IMPLAUSIBLE, see the notes" if self.implausible else ""
        return f"int8 peak ({self.source}, {how}, best of {len(self.runs)}{bad})"


@dataclass
class Figures:
    peak: Optional[Peak]
    read_gbps: float
    read_runs: List[float]
    copy_gbps: float
    copy_runs: List[float]
    bw_bytes: int
    kernel_peaks: Dict[str, float]


def _peak_fn() -> Optional[tuple]:
    if _C._vnni_peak(0.001) > 0:
        return _C._vnni_peak, "_C._vnni_peak"
    if _C._kernel_peaks(0.001):
        return (lambda s: _C._kernel_peaks(s)["int8_exact"]), "_C._kernel_peaks int8_exact"
    return None


def threaded_peak(fn: Callable[[float], float], seconds: float, threads: int,
                  runs: int = RUNS, source: str = "?") -> Peak:
    """fn(seconds) in `threads` Python threads started together; best total of `runs`."""
    totals: List[float] = []
    best_single = 0.0
    concurrent = True
    for _ in range(runs):
        results = [0.0] * threads
        barrier = threading.Barrier(threads)

        def work(i: int) -> None:
            barrier.wait()
            results[i] = fn(seconds)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        # Overlapping calls take about `seconds`; serialised ones threads x seconds.
        if threads > 1 and wall > seconds * (1 + 0.5 * (threads - 1)):
            concurrent = False
        totals.append(sum(results))
        best_single = max(best_single, max(results))
    if concurrent:
        return Peak(max(totals), threads, threads, True, source, totals)
    return Peak(best_single, 1, threads, False, source, totals)


def best_gbps(fn: Callable[[], object], nbytes: int, runs: int = RUNS) -> List[float]:
    out = []
    fn()  # maps the pages, starts the thread pool
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(nbytes / (time.perf_counter() - t0) / 1e9)
    return out


def measure_figures(bw_bytes: int, peak_seconds: float) -> Figures:
    n = bw_bytes // 4
    src = torch.ones(n)
    read = best_gbps(lambda: torch.sum(src), 4 * n)
    dst = torch.empty_like(src)
    copy = best_gbps(lambda: dst.copy_(src), 8 * n)
    del src, dst
    pf = _peak_fn()
    peak = None
    if pf is not None:
        peak = threaded_peak(pf[0], peak_seconds, torch.get_num_threads(), source=pf[1])
    kp = [_C._kernel_peaks(peak_seconds / 2) for _ in range(5)]
    kernel = {k: max(r[k] for r in kp) for k in kp[0]} if kp and kp[0] else {}
    if peak is not None and kernel.get("int8_u8s8"):
        # A 512-bit vpdpbusd does at most 4x the work of a 256-bit vpmaddubsw per
        # cycle (twice the width, the add fused); far above that, the loop was
        # optimised away (constant inputs folded) or the timing is wrong.
        per_thread = peak.ops_per_s / peak.threads
        if per_thread > PLAUSIBLE_OVER_U8S8 * kernel["int8_u8s8"]:
            peak.implausible = (
                f"{per_thread / 1e9:.4g} GOP/s per thread is {per_thread / kernel['int8_u8s8']:.0f}x "
                f"the single-core AVX2 u8s8 loop ({kernel['int8_u8s8'] / 1e9:.0f} GOP/s); at most "
                f"~{PLAUSIBLE_OVER_U8S8}x is possible, so {peak.source} does not measure the "
                "instruction (is its loop folded by the compiler?); fractions of it are meaningless")
    return Figures(peak, max(read), read, max(copy), copy, bw_bytes, kernel)


_cache: Dict[tuple, Figures] = {}


def figures(cfg: Config) -> Figures:
    """The machine figures for this configuration, measured on first use."""
    key = (cfg.quick, torch.get_num_threads())
    if key not in _cache:
        _cache[key] = measure_figures(QUICK_BW_BYTES if cfg.quick else BW_BYTES,
                                      QUICK_PEAK_SECONDS if cfg.quick else PEAK_SECONDS)
    return _cache[key]


def _row(key: str, label: str, best: float, unit: str, runs: List[float]) -> Row:
    return Row(key, label, [], extra={"best": best, "unit": unit,
                                      "runs": " ".join(f"{r:.4g}" for r in runs),
                                      "runs_list": runs})


def section_machine(cfg: Config) -> SectionResult:
    f = figures(cfg)
    mib = f.bw_bytes / 2**20
    th = torch.get_num_threads()
    rows = []
    if f.peak is not None:
        rows.append(_row("int8_peak", f.peak.label, f.peak.ops_per_s / 1e9, "GOP/s",
                         [r / 1e9 for r in f.peak.runs]))
        rows[-1].extra.update(threads=f.peak.threads, concurrent=f.peak.concurrent)
    rows.append(_row("dram_read", f"DRAM read: torch.sum of {mib:g} MiB float32, {th} threads",
                     f.read_gbps, "GB/s", f.read_runs))
    rows.append(_row("copy", f"fp32 dst.copy_(src) of {mib:g} MiB (4 B read + 4 written), "
                     f"{th} threads", f.copy_gbps, "GB/s", f.copy_runs))
    names = {"fp32_fma": "fp32 FMA", "int8_exact": "exact AVX2 int8 kernel (L1)",
             "int8_u8s8": "saturating u8s8 vpmaddubsw loop"}
    for k, v in f.kernel_peaks.items():
        rows.append(_row(f"core_{k}", f"one core: {names.get(k, k)}, best of 5", v / 1e9,
                         "GOP/s", []))
    notes = ["GOP/s count a multiply-add as 2 ops; GB/s = 1e9 B/s; 'runs' lists every run",
             "the DRAM read figure is the ceiling of the weight stream of a linear at M = 1"]
    if f.peak is None:
        notes.append("no int8 peak: this CPU has neither AVX512-VNNI nor AVX2")
    if f.peak is not None and f.peak.implausible:
        notes.append(f"WARNING: int8 peak implausible: {f.peak.implausible}")
    if f.peak is not None and not f.peak.concurrent and th > 1:
        notes.append("WARNING: the int8 peak is one thread's: the extension's peak function "
                     "does not release the GIL (pybind11 gil_scoped_release would fix it)")
    if cfg.quick:
        notes.append(f"--quick: {mib:g} MiB may fit in a cache, so 'DRAM' overstates DRAM")
    return SectionResult("machine", f"machine ceilings ({th} threads, cpu isa {_C._cpu_isa()})",
                         "best = the best of the runs", notes, rows,
                         columns=("best", "unit", "runs"))
