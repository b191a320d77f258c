"""The ``linear`` section: y = x w^T (W8A8, no bias) against fp32 and torch's
int8 paths, at LLM shapes.

Shapes (N, K, M): K = 4096 with N in {4096, 11008} (an LLM MLP) at M in {1,
16, 256}, and SmolLM2-135M's: 576 -> 1536 and 1536 -> 576 (its MLP) at M in
{1, 512}, 576 -> 576 (attention) at M = 1. Ours is what a user runs:
``QuantLinear`` (weights packed once, at conversion, outside the timed calls),
symmetric and asymmetric; the op on a plain weight is a secondary row.
Candidates and timing: benchmarks/linear_peers.py. The machine's ceilings
(benchmarks/machine.py) frame the figures: the fraction of the int8 peak our
largest K = N = 4096 case reaches, and of the DRAM read bandwidth our M = 1,
K = 4096 weight streams reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

import torch_quant as tq
from torch_quant import _C

from . import machine
from .linear_peers import (PEER_LABELS, SLOW_BUDGET_S, SLOW_CAP_S, Weights, find_peers,
                           measure_linear, predict_call_s)
from .system import l3_cache
from .timing import Config, Goal, Row, SectionResult, ratio_by_rep

Shape = Tuple[int, int, Tuple[int, ...]]  # (N, K, Ms)
SHAPES: Tuple[Shape, ...] = (
    (4096, 4096, (1, 16, 256)),
    (11008, 4096, (1, 16, 256)),
    (1536, 576, (1, 512)),  # SmolLM2-135M MLP up / gate
    (576, 1536, (1, 512)),  # SmolLM2-135M MLP down
    (576, 576, (1,)),  # SmolLM2-135M attention q / o
)
QUICK_SHAPES: Tuple[Shape, ...] = ((256, 512, (1, 16)), (96, 64, (1,)))
# Goals (issue 12; AVX-512 VNNI CPUs, 2 threads), peer time / ours symmetric:
GOAL_VS_QDYN = 1.1  # quantize_dynamic (FBGEMM, its default per-tensor weights) at M = 16
#                     (K = 4096), M = 1 on SmolLM2's MLP shapes, and M in {256, 512}
GOAL_VS_QDYN_STREAM = 1.0  # at M = 1, K = 4096: both only stream the weights
GOAL_VS_INT_MM = 1.1  # torch._int_mm at M in {256, 512}
GOAL_STREAM = 0.9  # our weight stream / DRAM read bandwidth at M = 1, K = 4096
GOAL_PEAK = 0.9  # our GOP/s / the int8 peak at M = 256, K = N = 4096
GOAL_ASYM = 1.05  # asym time / sym time, at most
GOAL_VS_TORCHAO = 1.0  # torchao (eager and compiled) time / ours, every shape
# Plain [N, K] weights (issue 26), at K = 4096: ours on the plain weight against
# ours packed (QuantLinear) and fp32, per M: (most plain / packed time, most
# plain + w_sum / packed time, least fp32 / plain time)
GOAL_PLAIN = {1: (1.15, 1.25, 3.0), 16: (1.5, 1.5, 2.5), 256: (1.5, 1.5, 2.5)}


def default_repeat(M: int) -> int:
    return 11 if M <= 16 else 5


@dataclass
class LinearSizes:
    shapes: Tuple[Shape, ...] = SHAPES
    copies: int = 4  # weight copies per candidate, cycled call by call
    peak_shape: Tuple[int, int, int] = (256, 4096, 4096)  # (M, N, K) framed by the int8 peak
    stream_k: int = 4096  # M = 1 shapes of this K are framed by the DRAM read bandwidth
    torchao_compiled: bool = True


QUICK_SIZES = LinearSizes(QUICK_SHAPES, 2, (16, 256, 512), 512)


def section_linear(cfg: Config, sizes: Optional[LinearSizes] = None) -> SectionResult:
    sizes = sizes or (QUICK_SIZES if cfg.quick else LinearSizes())
    notes: List[str] = []
    peers = find_peers(notes, sizes.torchao_compiled)
    gen = torch.Generator().manual_seed(3)
    rows: List[Row] = []
    by_shape: Dict[Tuple[int, int, int], Dict[str, Row]] = {}
    hist: Dict[str, List[Tuple[int, int, int, float]]] = {}
    raw: Dict[Tuple[int, int, int], Dict[str, Dict[int, float]]] = {}
    skipped_anywhere: List[str] = []

    for N, K, Ms in sizes.shapes:
        w = torch.randn(N, K, generator=gen)
        x_all = torch.randn(max(Ms), K, generator=gen)
        weights = Weights(w, sizes.copies, peers)
        for M in Ms:
            reps = cfg.repeat if cfg.repeat_given else default_repeat(M)
            x = x_all[:M].contiguous()
            x_q, x_s, _ = tq.quantize_per_token(x, "symmetric")  # for torch._int_mm, untimed
            unavailable: Dict[str, Tuple[str, str]] = {}
            cands = weights.candidates(x, x_q, x_s, unavailable)
            predicted = {c.key: predict_call_s(hist, c.key, M, N, K) for c in cands}
            times, skipped, rel_err, first = measure_linear(cands, reps, cfg.warmup, predicted)
            skipped.update(unavailable)
            raw[(M, N, K)] = times
            ops = 2 * M * N * K
            wbytes = {c.key: c.weight_nbytes for c in cands}
            shape_rows: Dict[str, Row] = {}
            for key in [c.key for c in cands] + list(unavailable):
                label = f"M={M:<3} N={N:<5} K={K:<4} {PEER_LABELS[key][0]}"
                if key in skipped:
                    label += f" -- skipped ({skipped[key][0]})"
                    skipped_anywhere.append(f"M={M} N={N} K={K} {PEER_LABELS[key][0]}: "
                                            f"{skipped[key][0]}: {skipped[key][1]}")
                ts = times.get(key, {})
                order = sorted(ts)
                r = Row(f"linear/M{M}/N{N}/K{K}/{key}", label, [ts[i] for i in order],
                        wbytes.get(key) if M == 1 else None,
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
                if ts and key != "fp32" and times.get("fp32"):
                    r.baseline = "fp32"
                    r.ratio, r.ratio_q1, r.ratio_q3 = ratio_by_rep(times["fp32"], ts)
                for ours, col in (("ours_sym", "over_ours_sym"), ("ours_asym", "over_ours_asym")):
                    if ts and key != ours and times.get(ours):
                        v, q1, q3 = ratio_by_rep(ts, times[ours])
                        r.extra.update({col: v, f"{col}_q1": q1, f"{col}_q3": q3})
                shape_rows[key] = r
                rows.append(r)
            if times.get("ours_sym") and times.get("ours_asym"):
                v, q1, q3 = ratio_by_rep(times["ours_asym"], times["ours_sym"])
                shape_rows["ours_asym"].extra.update(asym_over_sym=v, asym_over_sym_q1=q1,
                                                     asym_over_sym_q3=q3)
            by_shape[(M, N, K)] = shape_rows
            del cands, x_q, x_s
        del w, weights

    fig = machine.figures(cfg)
    goals = _goals(sizes, by_shape, raw, fig)
    frames = _frame(sizes, by_shape, fig)
    measured = [r for r in rows if r.times]
    if measured:
        best = max(measured, key=lambda r: r.extra["gops"])
        notes.insert(0, f"best GOP/s observed here: {best.extra['gops']:.1f} "
                        f"({best.label.split(' -- ')[0]})")
    notes[:0] = frames
    notes.extend(_method_notes(sizes))
    notes.extend(f"skipped: {s}" for s in skipped_anywhere)
    ks = sorted({k for _, k, _ in sizes.shapes})
    return SectionResult(
        "linear",
        f"linear y = x w^T, NxK in {{{', '.join(f'{n}x{k}' for n, k, _ in sizes.shapes)}}}, "
        f"K in {ks}, cpu isa {_C._cpu_isa()}",
        "vs fp32 = fp32 F.linear median / this median (>1: faster than fp32); /ours sym, "
        "/ours asym = this median / ours' (>1: ours faster); all measured interleaved in this run",
        notes, rows, goals,
        ("median ms", "IQR ms", "n", "GOP/s", "W GB/s", "vs fp32", "/ours sym", "/ours asym",
         "rel err"),
        extra={"machine": {"int8_peak_ops": fig.peak.ops_per_s if fig.peak else None,
                           "int8_peak_concurrent": fig.peak.concurrent if fig.peak else None,
                           "int8_peak_implausible": fig.peak.implausible if fig.peak else None,
                           "dram_read_gbps": fig.read_gbps, "copy_gbps": fig.copy_gbps}},
    )


def _goals(sizes: LinearSizes, by_shape, raw, fig: machine.Figures) -> List[Goal]:
    goals: List[Goal] = []

    def vs(key: str, M: int, N: int, K: int, threshold: float, what: str) -> None:
        times = raw.get((M, N, K), {})
        if times.get(key) and times.get("ours_sym"):
            v, q1, q3 = ratio_by_rep(times[key], times["ours_sym"])
            goals.append(Goal(f"linear M={M} N={N} K={K}: {what} time / ours sym", v, threshold,
                              q1, q3))

    for (M, N, K) in by_shape:
        if M >= 256 or (M == 16 and K == sizes.stream_k) or (M == 1 and K != N and K < 4096):
            vs("qd_tensor", M, N, K, GOAL_VS_QDYN, "quantize_dynamic")
        if M == 1 and K == sizes.stream_k:
            vs("qd_tensor", M, N, K, GOAL_VS_QDYN_STREAM, "quantize_dynamic")
            r = by_shape[(M, N, K)].get("ours_sym")
            if r is not None and r.times and fig.read_gbps:
                goals.append(Goal(f"linear M=1 N={N} K={K}: ours sym weight stream / DRAM read "
                                  "bandwidth", r.gbps / fig.read_gbps, GOAL_STREAM))
        if M >= 256:
            vs("int_mm", M, N, K, GOAL_VS_INT_MM, "torch._int_mm")
        if K == sizes.stream_k and M in GOAL_PLAIN:
            most_plain, most_wsum, least_fp32 = GOAL_PLAIN[M]
            times = raw.get((M, N, K), {})
            for key, what, most in (("ours_plain", "plain w", most_plain),
                                    ("ours_plain_wsum", "plain w + w_sum", most_wsum)):
                if times.get(key) and times.get("ours_sym"):
                    v, q1, q3 = ratio_by_rep(times[key], times["ours_sym"])
                    goals.append(Goal(f"linear M={M} N={N} K={K}: ours {what} time / ours sym "
                                      "(packed)", v, most, q1, q3, op="<="))
            if times.get("fp32") and times.get("ours_plain"):
                v, q1, q3 = ratio_by_rep(times["fp32"], times["ours_plain"])
                goals.append(Goal(f"linear M={M} N={N} K={K}: fp32 time / ours on the plain w",
                                  v, least_fp32, q1, q3))
    r = by_shape.get(sizes.peak_shape, {}).get("ours_sym")
    if r is not None and r.times and fig.peak is not None and not fig.peak.implausible:
        M, N, K = sizes.peak_shape
        goals.append(Goal(f"linear M={M} N={N} K={K}: ours sym GOP/s / int8 peak",
                          r.extra["gops"] * 1e9 / fig.peak.ops_per_s, GOAL_PEAK))
    for (M, N, K), sr in by_shape.items():
        a = sr.get("ours_asym")
        if a is not None and a.extra.get("asym_over_sym") is not None:
            goals.append(Goal(f"linear M={M} N={N} K={K}: ours asymmetric time / symmetric",
                              a.extra["asym_over_sym"], GOAL_ASYM,
                              a.extra["asym_over_sym_q1"], a.extra["asym_over_sym_q3"], op="<="))
    for key in ("torchao_eager", "torchao_compiled"):
        worst = None
        for (M, N, K), times in raw.items():
            if times.get(key) and times.get("ours_sym"):
                v = ratio_by_rep(times[key], times["ours_sym"])
                if worst is None or v[0] < worst[0][0]:
                    worst = (v, M, N, K)
        if worst is not None:
            (v, q1, q3), M, N, K = worst
            goals.append(Goal(f"linear: {PEER_LABELS[key][1]} time / ours sym, worst shape "
                              f"(M={M} N={N} K={K})", v, GOAL_VS_TORCHAO, q1, q3))
    return goals


def _frame(sizes: LinearSizes, by_shape, fig: machine.Figures) -> List[str]:
    """Our figures as fractions of the machine's ceilings (also into the rows' JSON)."""
    out = []
    sr = by_shape.get(sizes.peak_shape, {})
    if fig.peak is not None:
        parts = []
        for key in ("ours_sym", "ours_asym"):
            r = sr.get(key)
            if r is not None and r.times:
                r.extra["of_int8_peak"] = r.extra["gops"] * 1e9 / fig.peak.ops_per_s
                parts.append(f"{key.split('_')[1]} {r.extra['gops']:.0f} GOP/s = "
                             f"{r.extra['of_int8_peak']:.2f}")
        M, N, K = sizes.peak_shape
        if parts:
            out.append(f"of the int8 peak ({fig.peak.ops_per_s / 1e9:.0f} GOP/s, "
                       f"{fig.peak.source}, {fig.peak.short}): ours at M={M} N={N} K={K}: " + ", ".join(parts))
            if fig.peak.implausible:
                out[-1] += " -- the peak is IMPLAUSIBLE (machine section), so is this fraction"
    parts = []
    for (M, N, K), sr in by_shape.items():
        if M != 1 or K != sizes.stream_k:
            continue
        for key in ("ours_sym", "ours_asym"):
            r = sr.get(key)
            if r is not None and r.times:
                r.extra["of_dram_read"] = r.gbps / fig.read_gbps
                parts.append(f"N={N} {key.split('_')[1]} {r.gbps:.1f} GB/s = "
                             f"{r.extra['of_dram_read']:.2f}")
    if parts:
        out.append(f"of the DRAM read bandwidth ({fig.read_gbps:.1f} GB/s, torch.sum of "
                   f"{fig.bw_bytes / 2**20:g} MiB, best of {len(fig.read_runs)}): ours' weight "
                   f"stream at M=1 K={sizes.stream_k}: " + "; ".join(parts))
    out.append(f"fp32 dst.copy_(src) of {fig.bw_bytes / 2**20:g} MiB: {fig.copy_gbps:.1f} GB/s "
               "(8 B/elt); see the machine section for every ceiling")
    return out


def _method_notes(sizes: LinearSizes) -> List[str]:
    return [
        f"each candidate cycles through {sizes.copies} independent copies of its weights call "
        f"by call, so that K = 4096 weights are read from DRAM on every call: the int8 "
        f"4096x4096 weight (16 MiB) would otherwise stay in the {l3_cache() or '?'} L3 between "
        f"calls while the fp32 one (64 MiB) cannot, which would inflate the int8 speedups at "
        f"small M (SmolLM2's small weights stay in cache, as they would in a model only if it "
        f"fit: it does not)",
        "bf16: F.linear on bf16 x and w (oneDNN; the x cast is untimed, as a bf16 model's "
        "activations are bf16 already); its rel err is that of bf16 arithmetic",
        f"all candidates: no bias, {torch.get_num_threads()} threads, x float32 [M, K] "
        "(shared: it is hot in cache, as a layer's input is); a row's median is over its n "
        "interleaved repetitions, default 11 at M <= 16 and 5 above; ratios are of medians, "
        "their per-repetition IQR in the JSON",
        "ours: tq.QuantLinear.from_float (symmetric per-channel int8 weights, packed once by "
        "tq.pack_weight at conversion, not in the timed call; activations quantized per token "
        "inside the op, int8 symmetric or uint8 asymmetric); 'plain w' is "
        "tq.dynamic_quantized_linear on the plain [N, K] weight, a secondary row ('+ w_sum': "
        "the same with the weight's row sums given, which the op checks on every call); "
        "'+ input_smooth' multiplies x by per-channel smoothing factors inside the op (the "
        "quantize-step path of smoothing; folded smoothing costs nothing), its cost is its "
        "/ours sym column",
        f"quantize_dynamic: engine '{torch.backends.quantized.engine}', prepacked qint8 weights "
        "(per tensor, or per channel with per_channel_dynamic_qconfig), activations quantized "
        "per tensor (uint8, reduce_range) inside the op",
        "torch._int_mm (oneDNN) gets x already quantized per token (untimed) and returns the "
        "int32 accumulator: its time leaves out quantizing x and scaling the output, ours "
        "includes both; _weight_int8pack_mm is weight-only int8 (fp32 x, per-channel scales); "
        "torchao: quantize_(Int8DynamicActivationInt8WeightConfig()), eager and "
        "torch.compile(dynamic=False)",
        f"slow peers: about {SLOW_BUDGET_S:g} s of timed calls per shape (n column), spread "
        f"over the repetitions, and skipped when one call takes or would take >{SLOW_CAP_S:g} s "
        "(predicted from a smaller M, scaled by M)",
        "GOP/s = 2*M*N*K / median; W GB/s (M=1 only) = weight bytes one call reads / median: "
        "N*K for int8, N*(K+8) rounded up for ours packed, 4*N*K for fp32; rel err = "
        "||y - y_fp32|| / ||y_fp32|| from the first warm-up call",
    ]

