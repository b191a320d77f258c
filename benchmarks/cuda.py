"""The ``cuda`` section of ``python -m benchmarks``: our CUDA kernels
against a device copy and cuBLAS, measured in the same run on the same GPU.

On a machine without a CUDA device the section says so and measures nothing.
No GPU was available to this project: this section has only ever run on CPU
tensors with small sizes (tests/test_bench_cuda.py, which checks that it runs
end to end and that its arithmetic is right), never on a GPU. Its numbers are
for whoever has one.

Timing: CUDA events around ``calls`` back-to-back calls of one candidate (as
many as make about a millisecond, at most 100, so that launch latency and the
events' resolution do not dominate small ops), then a wait for the events.
Candidates are interleaved as in the CPU sections (repetition i times each of
them once, in turn); a table shows medians of ``--repeat`` repetitions.

Rows:

* copy: ``dst.copy_(x)`` of a 64 Mi-element float32 tensor (8 bytes per
  element moved): the bandwidth ceiling of an element-wise kernel, and the
  "device bandwidth" the goal refers to (a measured figure, not the data
  sheet's).
* quantize / dequantize (per tensor, 5 bytes per element), choose_qparams (4),
  and quantize_per_token of a 16384 x 4096 bfloat16 matrix (3 bytes per
  element, against the bfloat16 copy of it): GB/s and the fraction of the copy.
* linear, N = K = 4096, M in {1, 16, 256, 1024, 4096}: bfloat16 ``F.linear``
  (cuBLAS) against ``dynamic_quantized_linear`` (bfloat16 in and out,
  activations quantized per token inside the op; symmetric and asymmetric),
  ``quantized_linear`` on activations already quantized (the GEMM and
  epilogue alone) and ``torch._int_mm`` (cuBLASLt int8 -> int32, no epilogue;
  only where it accepts the shape). Every candidate cycles through 4 copies
  of its weights so that they come from DRAM, not from a 50 MB L2. The CUDA
  kernels read plain weights (``tq.pack_weight`` is the CPU kernels' layout),
  so ours gets the plain weight and its row sums here.

Goals (the issue's, on paper until measured): quantize at >= 0.8 x the copy's
bandwidth; symmetric W8A8 ``dynamic_quantized_linear`` >= 1.8 x bfloat16
cuBLAS at M >= 256.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

import torch_quant as tq
from .timing import (Candidate, Config, Goal, Row, SectionResult, bw_fraction_per_rep, cycling,
                     set_ratio)

GOAL_QUANTIZE_BW = 0.8  # our quantize GB/s / copy GB/s
GOAL_LINEAR = 1.8  # bf16 F.linear time / ours symmetric, at M >= GOAL_LINEAR_MIN_M
GOAL_LINEAR_MIN_M = 256
CALL_TARGET_S = 1e-3  # one repetition lasts about this long
MAX_CALLS = 100


@dataclass
class Sizes:
    copy_numel: int = 64 * 2**20
    per_token_shape: Tuple[int, int] = (16384, 4096)
    linear_nk: Tuple[int, int] = (4096, 4096)
    linear_ms: Tuple[int, ...] = (1, 16, 256, 1024, 4096)
    weight_copies: int = 4


QUICK_SIZES = Sizes(copy_numel=2**20, per_token_shape=(256, 1024), linear_nk=(1024, 1024),
                    linear_ms=(1, 256), weight_copies=2)  # --quick


def measure_device(cands: Sequence[Candidate], cfg: Config,
                   device: torch.device) -> Dict[str, List[float]]:
    """Seconds per call of each candidate, per repetition, round-robin."""
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    calls: Dict[str, int] = {}
    for c in cands:
        for _ in range(max(cfg.warmup, 1)):
            c.fn()
        sync()
        t0 = time.perf_counter()
        c.fn()
        sync()
        one = max(time.perf_counter() - t0, 1e-7)
        calls[c.key] = max(1, min(MAX_CALLS, int(CALL_TARGET_S / one)))
    times: Dict[str, List[float]] = {c.key: [] for c in cands}
    for _ in range(cfg.repeat):
        for c in cands:
            n = calls[c.key]
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(n):
                    c.fn()
                end.record()
                end.synchronize()
                times[c.key].append(start.elapsed_time(end) / 1e3 / n)
            else:
                t0 = time.perf_counter()
                for _ in range(n):
                    c.fn()
                times[c.key].append((time.perf_counter() - t0) / n)
    return times


def _elementwise(cfg: Config, device: torch.device, sizes: Sizes,
                 rows: List[Row], goals: List[Goal]) -> None:
    n = sizes.copy_numel
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, device=device, generator=g)
    dst = torch.empty_like(x)
    s, z = tq.choose_qparams(x, "symmetric")
    q = tq.quantize(x, s, z, "symmetric")
    xa = torch.randn(sizes.per_token_shape, device=device, generator=g).to(torch.bfloat16)
    dsta = torch.empty_like(xa)
    cands = [
        Candidate("copy", lambda: dst.copy_(x)),
        Candidate("quantize", lambda: tq.quantize(x, s, z, "symmetric")),
        Candidate("dequantize", lambda: tq.dequantize(q, s, z)),
        Candidate("choose_qparams", lambda: tq.choose_qparams(x, "symmetric")),
        Candidate("copy_bf16", lambda: dsta.copy_(xa)),
        Candidate("quantize_per_token", lambda: tq.quantize_per_token(xa, "symmetric")),
    ]
    times = measure_device(cands, cfg, device)
    r_tokens = xa.numel() // xa.shape[-1]
    spec = {  # key: (label, bytes moved, the copy it is compared with)
        "copy": ("copy float32 (dst.copy_)", 8 * n, None),
        "quantize": ("quantize per tensor, f32 -> int8", 5 * n, "copy"),
        "dequantize": ("dequantize per tensor, int8 -> f32", 5 * n, "copy"),
        "choose_qparams": ("choose_qparams per tensor", 4 * n, "copy"),
        "copy_bf16": (f"copy bf16 {tuple(xa.shape)}", 4 * xa.numel(), None),
        "quantize_per_token": ("quantize_per_token, bf16 -> int8",
                               3 * xa.numel() + 8 * r_tokens, "copy_bf16"),
    }
    by_key: Dict[str, Row] = {}
    for key, (label, nbytes, copy_key) in spec.items():
        row = Row(key=key, label=label, times=times[key], nbytes=nbytes)
        by_key[key] = row
        rows.append(row)
    for key, (_, _, copy_key) in spec.items():
        if copy_key is not None:
            row, copy = by_key[key], by_key[copy_key]
            row.bw_fraction = row.gbps / copy.gbps
            row.baseline = copy_key
            row.ratio = row.bw_fraction
    q1, q3 = bw_fraction_per_rep(by_key["quantize"], by_key["copy"])
    goals.append(Goal("cuda quantize GB/s / copy GB/s", by_key["quantize"].bw_fraction,
                      GOAL_QUANTIZE_BW, q1, q3))


def _linear(cfg: Config, device: torch.device, sizes: Sizes,
            rows: List[Row], goals: List[Goal]) -> None:
    N, K = sizes.linear_nk
    g = torch.Generator(device=device).manual_seed(1)
    w_q = [torch.randint(-127, 128, (N, K), device=device, generator=g, dtype=torch.int8)
           for _ in range(sizes.weight_copies)]
    w_scale = [torch.rand(N, device=device, generator=g) * 0.01 + 1e-3 for _ in w_q]
    w_bf16 = [(w.float() * s[:, None]).to(torch.bfloat16) for w, s in zip(w_q, w_scale)]
    ours = list(zip(w_q, w_scale))
    for M in sizes.linear_ms:
        x = torch.randn(M, K, device=device, generator=g).to(torch.bfloat16)
        q, qs, qz = tq.quantize_per_token(x, "symmetric")
        flops = 2 * M * N * K
        cands = [
            Candidate("bf16", cycling(lambda w: F.linear(x, w), [(w,) for w in w_bf16])),
            Candidate("sym", cycling(
                lambda w, s: tq.dynamic_quantized_linear(x, w, s, None, None, "symmetric"),
                ours)),
            Candidate("asym", cycling(
                lambda w, s: tq.dynamic_quantized_linear(x, w, s, None, None, "asymmetric"),
                ours)),
            Candidate("gemm", cycling(
                lambda w, s: tq.quantized_linear(q, qs, qz, w, s, None, None,
                                                 out_dtype=torch.bfloat16), ours)),
        ]
        if M > 16 and K % 8 == 0 and N % 8 == 0:  # what torch._int_mm accepts
            cands.append(Candidate("int_mm", cycling(lambda w: torch._int_mm(q, w.t()),
                                                      [(w,) for w in w_q])))
        times = measure_device(cands, cfg, device)
        labels = {
            "bf16": "bf16 F.linear (cuBLAS)",
            "sym": "ours W8A8 dynamic, symmetric",
            "asym": "ours W8A8 dynamic, asymmetric",
            "gemm": "ours quantized_linear (pre-quantized)",
            "int_mm": "torch._int_mm (int32 out, no epilogue)",
        }
        by_key = {}
        for c in cands:
            row = Row(key=f"M{M}_{c.key}", label=f"M={M:<5d} {labels[c.key]}", times=times[c.key])
            row.extra["tops"] = flops / row.median / 1e12
            by_key[row.key] = row
            rows.append(row)
        for c in cands[1:]:
            set_ratio(by_key, f"M{M}_{c.key}", f"M{M}_bf16")
        if M >= GOAL_LINEAR_MIN_M:
            sym = by_key[f"M{M}_sym"]
            goals.append(Goal(f"cuda W8A8 sym vs bf16 cuBLAS, M={M} N={N} K={K}", sym.ratio,
                              GOAL_LINEAR, sym.ratio_q1, sym.ratio_q3))


def section(cfg: Config, device: torch.device = None, sizes: Sizes = Sizes()) -> SectionResult:
    """The section's rows and goals; on the first CUDA device unless `device`
    is given (the tests pass a CPU device and small sizes)."""
    title = "CUDA kernels vs a device copy and bf16 cuBLAS"
    if device is None:
        if not (torch.cuda.is_available() and tq._C._built_with_cuda()):
            why = ("no CUDA device" if tq._C._built_with_cuda()
                   else "this build has no CUDA kernels")
            return SectionResult("cuda", f"{title}: skipped, {why}", "", [], [])
        device = torch.device("cuda", torch.cuda.current_device())
    rows: List[Row] = []
    goals: List[Goal] = []
    _elementwise(cfg, device, sizes, rows, goals)
    _linear(cfg, device, sizes, rows, goals)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else str(device))
    notes = [
        f"device: {name}; ratio: element-wise rows = GB/s / the copy's GB/s, "
        "linear rows = bf16 F.linear time / this time",
        "times are per call: CUDA events around back-to-back calls, medians of the repetitions",
    ]
    return SectionResult("cuda", title, "ratio > 1: faster than the baseline (vs)", notes, rows,
                         goals, columns=("median us", "IQR us", "GB/s", "TOP/s", "ratio", "vs"))


def section_cuda(cfg: Config) -> SectionResult:
    """The section as the command line runs it (inside torch.inference_mode)."""
    # Parameters made in inference mode have no version counter, so the CUDA
    # ops would check their values (a device sync) on every call.
    with torch.inference_mode(False), torch.no_grad():
        return section(cfg, sizes=QUICK_SIZES if cfg.quick else Sizes())
