"""Plain-PyTorch reference of every torch_quant op: the tests' oracle.

Written for clarity, not speed, from docs/semantics.md and its notes on
rounding; it shares no code with the C++ kernels. All arithmetic is float32,
except where a single rounding of ``x * inv_scale + zero_point`` is needed:
that product and sum are formed exactly in wider arithmetic and rounded once to
float32, which is what a fused multiply-add gives (see fused_scale_add).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..hadamard import hadamard_matrix, hadamard_rows  # noqa: F401  (the oracle's too: one definition)

FLT_EPSILON = 2.0**-23


def qrange(mode: str, bits: int = 8) -> Tuple[int, int]:
    """(qmin, qmax) of a b-bit code: signed for symmetric, unsigned for asymmetric."""
    if mode == "symmetric":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if mode == "asymmetric":
        return 0, 2**bits - 1
    raise ValueError(f"unknown mode {mode!r}")


def code_dtype(mode: str) -> torch.dtype:
    return torch.int8 if mode == "symmetric" else torch.uint8


def _params_from_range(lo: Tensor, hi: Tensor, mode: str, bits: int) -> Tuple[Tensor, Tensor]:
    qmin, qmax = qrange(mode, bits)
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    eps = torch.tensor(FLT_EPSILON, dtype=torch.float32)
    if mode == "symmetric":
        amax = torch.maximum(-lo, hi)
        scale = torch.maximum(amax / torch.tensor(float(qmax)), eps)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    levels = torch.tensor(float(qmax - qmin))
    scale = (hi - lo) / levels
    # hi - lo can overflow float32 although the scale is representable.
    scale = torch.where(torch.isfinite(scale), scale, hi / levels - lo / levels)
    scale = torch.maximum(scale, eps)
    zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zp.to(torch.int32)


def _finite_range(x: Tensor, dims) -> Tuple[Tensor, Tensor]:
    """min and max over `dims` of the finite values of x (0 where there are none)."""
    x = x.float()
    finite = torch.isfinite(x)
    if not dims:  # amin(dim=()) would reduce over every dim
        lo = torch.where(finite, x, torch.inf)
        hi = torch.where(finite, x, -torch.inf)
    elif x.numel() == 0:
        shape = [s for d, s in enumerate(x.shape) if d not in dims]
        lo = torch.zeros(shape)
        hi = torch.zeros(shape)
    else:
        lo = torch.where(finite, x, torch.inf).amin(dim=dims)
        hi = torch.where(finite, x, -torch.inf).amax(dim=dims)
    lo = torch.where(torch.isfinite(lo), lo, 0.0)
    hi = torch.where(torch.isfinite(hi), hi, 0.0)
    return lo, hi


def choose_qparams(
    x: Tensor, mode: str, axis: Optional[int] = None, bits: int = 8
) -> Tuple[Tensor, Tensor]:
    if axis is None:
        dims = tuple(range(x.dim()))
    else:
        axis = axis % x.dim()
        dims = tuple(d for d in range(x.dim()) if d != axis)
    lo, hi = _finite_range(x, dims)
    return _params_from_range(lo, hi, mode, bits)


def _broadcast(p: Tensor, x: Tensor, axis: Optional[int]) -> Tensor:
    """Shape a (scale or zero_point) tensor so that it broadcasts against x."""
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis % x.dim()] = -1
        return p.reshape(shape)
    if p.numel() == 1:
        return p.reshape([])
    return p.unsqueeze(-1)  # per token: shape x.shape[:-1]


def fused_scale_add(x: Tensor, inv_scale: Tensor, zero_point: Tensor) -> Tensor:
    """float32(x * inv_scale + zero_point) with one rounding, like fmaf.

    The product of two float32 values has at most 48 significant bits and is
    exact in float64, but adding a zero point up to 255 can need 56 bits, so the
    sum is formed in numpy's 64-bit-mantissa long double (x86) before the single
    rounding to float32. (Where long double is only float64 the sum can be
    rounded twice, which moves a code only within 2^-46 of a .5 tie.)
    """
    p = x.double().numpy() * inv_scale.double().numpy()  # exact
    exact = p.astype(np.longdouble) + zero_point.double().numpy().astype(np.longdouble)
    with np.errstate(over="ignore"):  # huge values become ±inf, as in float32
        return torch.from_numpy(np.asarray(exact, dtype=np.float32))


def quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    mode: str,
    axis: Optional[int] = None,
    bits: int = 8,
) -> Tensor:
    qmin, qmax = qrange(mode, bits)
    x = x.float()
    inv_scale = 1.0 / _broadcast(scale.float(), x, axis)  # float32 division
    zp = _broadcast(zero_point.to(torch.int32), x, axis).float()
    q = torch.round(fused_scale_add(x, inv_scale, zp))  # round half to even
    q = torch.clamp(q, qmin, qmax)  # +inf -> qmax, -inf -> qmin
    q = torch.where(torch.isnan(x), zp.expand_as(x), q)
    return q.to(code_dtype(mode))


def dequantize(
    q: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    axis: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    s = _broadcast(scale.float(), q, axis)
    zp = _broadcast(zero_point.to(torch.int32), q, axis).float()
    x = (q.float() - zp) * s
    return x.to(dtype or torch.float32)


def quantize_per_token(x: Tensor, mode: str, bits: int = 8) -> Tuple[Tensor, Tensor, Tensor]:
    lo, hi = _finite_range(x, (x.dim() - 1,))
    scale, zp = _params_from_range(lo, hi, mode, bits)
    return quantize(x, scale, zp, mode, None, bits), scale, zp


def quantized_linear(
    x_q: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    w_q: Tensor,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    w_sum: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
    dot: Optional[Tensor] = None,
) -> Tensor:
    """docs/semantics.md ("Operators"): acc = x_q @ w_q.T - x_zero_point * w_sum in int64 (checked to
    fit int32), y = float32(acc) * float32(x_scale * w_scale) (+ bias). `dot`,
    the int64 product x_q @ w_q.T as [M, N], may be passed to save recomputing it."""
    N, K = w_q.shape
    lead = x_q.shape[:-1]
    if dot is None:
        M = 1
        for size in lead:
            M *= size
        dot = x_q.reshape(M, K).long() @ w_q.long().t()
    sums = w_q.long().sum(1) if w_sum is None else w_sum.long()
    acc = dot - x_zero_point.long().reshape(-1, 1) * sums.reshape(1, -1)
    if acc.numel():
        assert -(2**31) <= int(acc.min()) and int(acc.max()) < 2**31, "acc overflows int32"
    scale = x_scale.float().reshape(-1, 1) * w_scale.float().reshape(1, -1)  # rounded once
    y = acc.to(torch.int32).float() * scale
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*lead, N).to(out_dtype or torch.float32)


def dynamic_quantized_linear(
    x: Tensor,
    w_q: Tensor,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    w_sum: Optional[Tensor] = None,
    act_mode: str = "symmetric",
    smooth: Optional[Tensor] = None,
    hadamard_block: int = 0,
) -> Tensor:
    """quantize_per_token(hadamard_rows(x * smooth), act_mode) then
    quantized_linear, in x's dtype."""
    xs = x if smooth is None else x.float() * smooth.float()
    if hadamard_block:
        xs = hadamard_rows(xs.float(), hadamard_block)
    x_q, scale, zp = quantize_per_token(xs, act_mode)
    return quantized_linear(x_q, scale, zp, w_q, w_scale, bias, w_sum, out_dtype=x.dtype)


def quantized_linear_grad_x(grad_out: Tensor, w_q: Tensor, w_scale: Tensor, K: int,
                            smooth: Optional[Tensor] = None, hadamard_block: int = 0,
                            out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """docs/semantics.md, "Gradients": grad_out times the dequantized weight,
    times the block-diagonal Hadamard matrix (dense, float64), times smooth."""
    w = unpack_weight(w_q, K) if w_q.dim() == 3 else w_q
    g = grad_out.double() @ (w.double() * w_scale.double()[:, None])
    if hadamard_block:
        h = torch.block_diag(*[hadamard_matrix(hadamard_block)] * (K // hadamard_block))
        g = g @ h.to(g.device)
    if smooth is not None:
        g = g * smooth.double()
    return g.to(out_dtype or grad_out.dtype)


# ---------------------------------------------------------------------------
# Packed weights (docs/semantics.md, "Packed weights")

PANEL_COLS = 16


def _column_words(w_q: Tensor) -> Tensor:
    """[N, G, 4] int8: per column its groups of four weights (zero padded),
    then its sum and its flags (bit 0: holds -128; bits 8+: K) as
    little-endian int32 bytes."""
    N, K = w_q.shape
    kg = (K + 3) // 4
    groups = torch.zeros(N, kg * 4, dtype=torch.int8)
    groups[:, :K] = w_q
    sums = w_q.long().sum(1) if K else torch.zeros(N, dtype=torch.int64)
    has_min = (w_q == -128).any(1).long() if K else torch.zeros(N, dtype=torch.int64)
    flags = has_min | (K << 8)
    words = torch.stack([sums, flags], 1).to(torch.int32).numpy().astype("<i4")
    tail = torch.from_numpy(words.view(np.int8).reshape(N, 2, 4).copy())
    return torch.cat([groups.reshape(N, kg, 4), tail], 1)


def pack_weight(w_q: Tensor) -> Tensor:
    """The packed layout of ``w_q`` ([N, K] int8): columns in panels of 16, a
    panel's bytes ordered group by group (group q of its column j at
    ``q * 4 * cols + 4 * j``)."""
    cols = _column_words(w_q)
    N, G = cols.shape[0], cols.shape[1]
    out = []
    for p0 in range(0, N, PANEL_COLS):
        out.append(cols[p0:p0 + PANEL_COLS].permute(1, 0, 2).reshape(-1))
    flat = torch.cat(out) if out else torch.empty(0, dtype=torch.int8)
    return flat.reshape(N, G, 4)


def unpack_weight(w_packed: Tensor, K: int) -> Tensor:
    """The inverse of :func:`pack_weight`: the plain [N, K] weight."""
    N, G = w_packed.shape[0], w_packed.shape[1]
    flat = w_packed.reshape(-1)
    cols = []
    for p0 in range(0, N, PANEL_COLS):
        c = min(PANEL_COLS, N - p0)
        block = flat[p0 * G * 4:(p0 + c) * G * 4].reshape(G, c, 4).permute(1, 0, 2)
        cols.append(block.reshape(c, G * 4)[:, :K])
    return torch.cat(cols) if cols else torch.empty(0, K, dtype=torch.int8)
