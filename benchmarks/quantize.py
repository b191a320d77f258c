"""The element-wise sections: per-tensor quantize / dequantize / choose_qparams
against torch's quantized tensors and the fp32 copy, ``quantize_per_token``
against the same quantizer composed of torch ops, and both with each
instruction set this CPU supports."""

from __future__ import annotations

import warnings
from typing import Callable, Dict

import torch

import torch_quant as tq
from torch_quant import _C

from .timing import (Candidate, Config, Goal, Row, SectionResult, bw_fraction_per_rep, measure,
                     set_ratio)

# torch.quantize_per_tensor warns that quantized dtypes are deprecated; the
# baseline is still what users have today, so measure it quietly.
warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated.*")
warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")

PER_TENSOR_NUMEL = 32 * 2**20
PER_TOKEN_SHAPE = (4096, 4096)
QUICK_PER_TENSOR_NUMEL = 2**20  # --quick
QUICK_PER_TOKEN_SHAPE = (256, 1024)
FLT_EPSILON = 2.0**-23

GOAL_BW_FRACTION = 0.7  # our quantize GB/s / fp32 copy GB/s
GOAL_VS_TORCH = 1.0  # torch.quantize_per_tensor time / our time
GOAL_PER_TOKEN = 3.0  # composed torch per-token time / our time


def per_tensor_numel(cfg: Config) -> int:
    return QUICK_PER_TENSOR_NUMEL if cfg.quick else PER_TENSOR_NUMEL


def per_token_shape(cfg: Config):
    return QUICK_PER_TOKEN_SHAPE if cfg.quick else PER_TOKEN_SHAPE


def section_per_tensor(cfg: Config) -> SectionResult:
    n = per_tensor_numel(cfg)
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
    set_ratio(rows, "ours_q_sym", "torch_q_qint8")
    set_ratio(rows, "ours_q_asym", "torch_q_quint8")
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
    set_ratio(rows, "ours_dq_int8", "torch_dq_qint8")
    set_ratio(rows, "ours_dq_uint8", "torch_dq_quint8")
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
    set_ratio(rows, "ours_cqp_sym", "torch_aminmax")
    set_ratio(rows, "ours_cqp_asym", "torch_aminmax")

    for r in rows.values():
        if r.nbytes is not None:
            r.bw_fraction = r.gbps / copy.gbps

    goals = []
    for key, mode in (("ours_q_sym", "symmetric"), ("ours_q_asym", "asymmetric")):
        r = rows[key]
        q1, q3 = bw_fraction_per_rep(r, copy)
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


def section_per_token(cfg: Config) -> SectionResult:
    rows_n, cols_n = per_token_shape(cfg)
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
    set_ratio(rows, "ours_sym", "torch_sym")
    set_ratio(rows, "ours_asym", "torch_asym")
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


def section_isa(cfg: Config) -> SectionResult:
    isas = list(_C._supported_cpu_isas())
    _C._set_cpu_isa("best")
    best = _C._cpu_isa()
    n = per_tensor_numel(cfg)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, generator=gen)
    s, z = tq.choose_qparams(x, "symmetric")
    y = torch.randn(*per_token_shape(cfg), generator=gen)
    yshape = 'x'.join(map(str, y.shape))

    def use(isa: str) -> Callable[[], None]:
        return lambda: _C._set_cpu_isa(isa)

    ops = [
        ("quantize_sym", f"quantize per tensor symmetric ({n / 2**20:g}Mi elts)",
         lambda: tq.quantize(x, s, z, "symmetric"), 5 * n),
        ("per_token_sym", f"quantize_per_token symmetric ({yshape})",
         lambda: tq.quantize_per_token(y, "symmetric"), 5 * y.numel()),
        ("per_token_asym", f"quantize_per_token asymmetric ({yshape})",
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
                set_ratio(rows, f"{op_key}/{isa}", f"{op_key}/{best}", invert=True)
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
