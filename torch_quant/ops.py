"""Typed wrappers of the ``torch.ops.torch_quant`` operators, and their fake
(meta) kernels for ``torch.compile``, ``torch.export`` and ``opcheck``.

The schemas are in ``csrc/registration.cpp``; the semantics in docs/semantics.md
("Modes and rounding" and "Operators").
All arithmetic is float32. For b-bit codes:

* symmetric:  int8 codes in [-2^(b-1), 2^(b-1)-1], zero_point 0,
  ``scale = max|x| / qmax``
* asymmetric: uint8 codes in [0, 2^b-1],
  ``scale = (hi - lo) / (qmax - qmin)`` with ``lo = min(min x, 0)``, ``hi = max(max x, 0)``,
  ``zero_point = clamp(qmin - nearbyint(lo / scale), qmin, qmax)``

and always ``scale = max(scale, FLT_EPSILON)``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "choose_qparams",
    "quantize",
    "dequantize",
    "quantize_per_token",
    "quantized_linear",
    "dynamic_quantized_linear",
    "pack_weight",
    "unpack_weight",
    "is_packed_weight",
]

_ops = torch.ops.torch_quant
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def choose_qparams(
    x: Tensor, mode: str, axis: Optional[int] = None, bits: int = 8
) -> Tuple[Tensor, Tensor]:
    """Choose ``(scale, zero_point)`` from the finite values of ``x``.

    ``axis=None`` gives 0-dim tensors (per tensor); ``axis=k`` gives one pair per
    index along dim ``k``, shape ``[x.size(k)]`` (per channel). ``scale`` is
    float32, ``zero_point`` int32. NaN and ±inf are left out of the range.

    symmetric:  ``scale = max(max|x| / qmax, eps)``, ``zero_point = 0``;
    asymmetric: ``scale = max((hi - lo) / (qmax - qmin), eps)``,
    ``zero_point = clamp(qmin - nearbyint(lo / scale), qmin, qmax)``,
    where ``lo = min(min x, 0)``, ``hi = max(max x, 0)`` and eps = 2^-23.
    """
    return _ops.choose_qparams.default(x, mode, axis, bits)


def quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    mode: str,
    axis: Optional[int] = None,
    bits: int = 8,
) -> Tensor:
    """Quantize ``x``: ``q = clamp(nearbyint(x * inv_scale + zero_point), qmin, qmax)``.

    ``inv_scale = 1.0f / scale`` in float32; ``x * inv_scale + zero_point`` is
    rounded once (a fused multiply-add) and then to the nearest integer, half to
    even, so the codes are bit-identical to ``torch.quantize_per_tensor``.
    ``mode`` picks the code type: int8 (symmetric) or uint8 (asymmetric).
    ``scale``/``zero_point``: one element (per tensor), shape ``x.shape[:-1]``
    (per token, ``axis=None``) or ``[x.size(axis)]`` (per channel).
    NaN maps to ``zero_point``, +inf to qmax, -inf to qmin.
    """
    return _ops.quantize.default(x, scale, zero_point, mode, axis, bits)


def dequantize(
    q: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    axis: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Dequantize int8/uint8 codes: ``x = (float(q) - float(zero_point)) * scale``.

    Computed in float32 and returned as float32, or cast to ``dtype``
    (float16 / bfloat16). Parameter shapes as for :func:`quantize`.
    """
    return _ops.dequantize.default(q, scale, zero_point, axis, dtype)


def quantize_per_token(x: Tensor, mode: str, bits: int = 8) -> Tuple[Tensor, Tensor, Tensor]:
    """Quantize each row of the last dim of ``x`` with its own ``(scale, zero_point)``.

    Returns ``(q, scale, zero_point)``; ``scale`` (float32) and ``zero_point``
    (int32) have shape ``x.shape[:-1]``. Equal to :func:`choose_qparams` and
    :func:`quantize` applied row by row, in one pass that keeps the row in cache.
    """
    return _ops.quantize_per_token.default(x, mode, bits)


def quantized_linear(
    x_q: Tensor,
    x_scale: Tensor,
    x_zero_point: Tensor,
    w_q: Tensor,
    w_scale: Tensor,
    bias: Optional[Tensor] = None,
    w_sum: Optional[Tensor] = None,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """Linear layer on quantized activations and weights, with an exact int32 GEMM.

    ``acc[m, n] = sum_k x_q[m, k] * w_q[n, k] - x_zero_point[m] * w_sum[n]`` (exact),
    ``y[m, n] = float(acc[m, n]) * (x_scale[m] * w_scale[n]) + bias[n]``.

    ``x_q``: ``[*, K]`` int8 (symmetric) or uint8 (asymmetric); ``x_scale`` /
    ``x_zero_point``: one element or ``x_q.shape[:-1]`` (per token). ``w_q``:
    ``[N, K]`` int8 with zero point 0; ``w_scale``: one element or ``[N]``;
    ``w_sum[n] = sum_k w_q[n, k]`` as int32, computed when not given (pass it to
    save a pass over the weights). ``K`` may be at most 65793, the largest for
    which the int32 accumulator is exact. Returns ``[*, N]`` in ``out_dtype``
    (float32, float16 or bfloat16; default float32).
    """
    return _ops.quantized_linear.default(
        x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype
    )


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
    """``quantize_per_token(x, act_mode)`` followed by :func:`quantized_linear`, fused.

    Each row of ``x`` (float32, float16 or bfloat16, ``[*, K]``) is quantized
    once with its own scale and zero point, exactly as :func:`quantize_per_token`
    does, and fed to the int8 GEMM; the result has ``x``'s dtype. ``w_q`` may
    be plain or packed (:func:`pack_weight`), as for :func:`quantized_linear`.

    ``smooth`` (floating ``[K]``, every value finite and > 0): the rows are
    multiplied by it first, ``x.float() * smooth`` rounded to float32, and
    that product is what is quantized (activation smoothing: the weight's
    columns carry the inverse factors, see ``tq.QuantConfig(smoothing=)``).

    ``hadamard_block`` (0, or a power of two >= 2 dividing K): then each run
    of that many values of a (smoothed) row is multiplied by the Hadamard
    matrix of +-1 entries before it is quantized (:func:`torch_quant.reference.hadamard_rows`
    gives the exact order of operations); the weight must carry the same
    rotation divided by the block size (``QuantLinear.from_float(hadamard_block=)``).
    """
    return _ops.dynamic_quantized_linear.default(x, w_q, w_scale, bias, w_sum, act_mode, smooth,
                                                 hadamard_block)


def pack_weight(w_q: Tensor) -> Tensor:
    """The int8 weight ``w_q`` (``[N, K]``) in the layout the CPU GEMM kernels
    read, to pass as ``w_q`` to :func:`quantized_linear` and
    :func:`dynamic_quantized_linear` instead of the plain weight.

    The result is an int8 tensor of shape ``[N, ceil(K / 4) + 2, 4]`` (the
    same bytes as the plain weight plus 8 per column: its sum and flags),
    ordered in panels of 16 columns; see docs/semantics.md, "Packed weights".
    It is an ordinary tensor that the caller owns: nothing is cached. Treat
    it as a whole: it also holds each column's sum and flags (and the K it was
    packed with, checked on every call), so write a new weight by packing it
    (``w_packed.copy_(pack_weight(w))``) and do not slice it. One layout serves
    every CPU instruction set. The CUDA kernels read plain weights only.
    """
    return _ops.pack_weight.default(w_q)


def unpack_weight(w_packed: Tensor, K: int) -> Tensor:
    """The plain ``[N, K]`` int8 weight of ``w_packed`` (from :func:`pack_weight`):
    ``unpack_weight(pack_weight(w), w.shape[1])`` equals ``w``."""
    return _ops.unpack_weight.default(w_packed, K)


def is_packed_weight(w_q: Tensor) -> bool:
    """Whether ``w_q`` is a packed weight (3-d) rather than a plain ``[N, K]`` one."""
    return w_q.dim() == 3


# ---------------------------------------------------------------------------
# Fake kernels: shapes and dtypes only. They check what can be checked without
# data, with the same messages as the C++ kernels (csrc/checks.cpp). They
# also serve as the Meta kernels, so the device checks matter: a meta scale
# with a CPU x must fail here, not return an uninitialised tensor.


def _check_mode(op: str, mode: str, name: str = "mode") -> torch.dtype:
    torch._check(
        mode in ("symmetric", "asymmetric"),
        lambda: f"{op}: {name} must be 'symmetric' or 'asymmetric', got '{mode}'",
    )
    return torch.int8 if mode == "symmetric" else torch.uint8


def _check_bits(op: str, bits: int) -> None:
    torch._check(2 <= bits <= 8, lambda: f"{op}: bits must be in [2, 8], got {bits}")


def _check_float(op: str, name: str, x: Tensor) -> None:
    torch._check(
        x.dtype in _FLOATS,
        lambda: f"{op}: {name} must be float32, float16 or bfloat16, got {x.dtype}",
    )


def _normalize_axis(op: str, x: Tensor, axis: int) -> int:
    torch._check(
        -x.dim() <= axis < x.dim() and x.dim() > 0,
        lambda: f"{op}: axis {axis} is out of range for a tensor of {x.dim()} dimension(s)",
    )
    return axis % x.dim()


def _check_qparams(
    op: str,
    x_name: str,
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    axis,
    scale_name: str = "scale",
    zp_name: str = "zero_point",
):
    """The checks of csrc/checks.cpp:check_qparams that need no data."""
    torch._check(
        scale.dtype.is_floating_point,
        lambda: f"{op}: {scale_name} must be a floating-point tensor, got {scale.dtype}",
    )
    torch._check(
        not zero_point.dtype.is_floating_point
        and not zero_point.dtype.is_complex
        and zero_point.dtype != torch.bool,
        lambda: f"{op}: {zp_name} must be an integer tensor, got {zero_point.dtype}",
    )
    for name, t in ((scale_name, scale), (zp_name, zero_point)):
        torch._check(
            t.device == x.device,
            lambda: f"{op}: {name} is on {t.device} but {x_name} is on {x.device}",
        )
    torch._check(
        scale.shape == zero_point.shape,
        lambda: f"{op}: {scale_name} and {zp_name} must have the same shape, "
        f"got {list(scale.shape)} and {list(zero_point.shape)}",
    )
    if axis is not None:
        k = _normalize_axis(op, x, axis)
        torch._check(
            scale.dim() == 1 and scale.shape[0] == x.shape[k],
            lambda: f"{op}: with axis={axis} {scale_name} must have shape [{x.shape[k]}] "
            f"({x_name}.size({axis})), got {list(scale.shape)}",
        )
    elif scale.numel() != 1:
        torch._check(
            x.dim() >= 1 and scale.shape == x.shape[:-1],
            lambda: f"{op}: with axis=None {scale_name} must have one element (per tensor) or the "
            f"shape {x_name}.shape[:-1] (per token), got {list(scale.shape)} for {x_name} "
            f"of shape {list(x.shape)}",
        )


@torch.library.register_fake("torch_quant::choose_qparams")
def _choose_qparams_fake(x, mode, axis=None, bits=8):
    op = "torch_quant.choose_qparams"
    _check_mode(op, mode)
    _check_bits(op, bits)
    _check_float(op, "x", x)
    shape = [] if axis is None else [x.size(_normalize_axis(op, x, axis))]
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("torch_quant::quantize")
def _quantize_fake(x, scale, zero_point, mode, axis=None, bits=8):
    op = "torch_quant.quantize"
    dtype = _check_mode(op, mode)
    _check_bits(op, bits)
    _check_float(op, "x", x)
    _check_qparams(op, "x", x, scale, zero_point, axis)
    return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)


@torch.library.register_fake("torch_quant::dequantize")
def _dequantize_fake(q, scale, zero_point, axis=None, dtype=None):
    op = "torch_quant.dequantize"
    torch._check(
        q.dtype in (torch.int8, torch.uint8),
        lambda: f"{op}: q must be int8 (symmetric) or uint8 (asymmetric), got {q.dtype}",
    )
    out = torch.float32 if dtype is None else dtype
    torch._check(
        out in _FLOATS, lambda: f"{op}: dtype must be float32, float16 or bfloat16, got {out}"
    )
    _check_qparams(op, "q", q, scale, zero_point, axis)
    return torch.empty_like(q, dtype=out, memory_format=torch.contiguous_format)


@torch.library.register_fake("torch_quant::quantize_per_token")
def _quantize_per_token_fake(x, mode, bits=8):
    op = "torch_quant.quantize_per_token"
    dtype = _check_mode(op, mode)
    _check_bits(op, bits)
    _check_float(op, "x", x)
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have at least 1 dimension, got a 0-dim tensor")
    rows = x.shape[:-1]
    return (
        torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format),
        x.new_empty(rows, dtype=torch.float32),
        x.new_empty(rows, dtype=torch.int32),
    )


def _packed_groups(K) -> int:
    return (K + 3) // 4


def _check_linear_weight(op: str, x: Tensor, w_q, w_scale, bias, w_sum) -> int:
    """The checks of csrc/checks.cpp:check_linear_weight that need no data."""
    torch._check(w_q.dtype == torch.int8, lambda: f"{op}: w_q must be int8 (symmetric), got {w_q.dtype}")
    torch._check(x.dim() >= 1, lambda: f"{op}: the activations must have shape [*, K], got a 0-dim tensor")
    K = x.shape[-1]
    N = w_q.shape[0] if w_q.dim() >= 1 else 0
    if w_q.dim() == 3:
        torch._check(
            w_q.shape[1] == _packed_groups(K) + 2 and w_q.shape[2] == 4,
            lambda: f"{op}: K mismatch: the packed w_q has shape {list(w_q.shape)} (from "
            "pack_weight of an [N, K] weight: [N, ceil(K / 4) + 2, 4]) but the activations have "
            f"shape {list(x.shape)}",
        )
        torch._check(
            w_sum is None,
            lambda: f"{op}: w_sum must be None with a packed w_q (it holds its own column sums)",
        )
        torch._check(
            x.device.type in ("cpu", "meta"),
            lambda: f"{op}: a packed w_q (pack_weight) is a CPU layout; on {w_q.device} pass the "
            "plain [N, K] weight (unpack_weight; QuantLinear.to() converts its own)",
        )
    else:
        torch._check(
            w_q.dim() == 2,
            lambda: f"{op}: w_q must have shape [N, K] or be packed by pack_weight, got "
            f"{list(w_q.shape)}",
        )
        torch._check(
            w_q.shape[1] == K,
            lambda: f"{op}: K mismatch: w_q has shape {list(w_q.shape)} but the activations have "
            f"shape {list(x.shape)}",
        )
    torch._check(
        K <= _MAX_LINEAR_K,
        lambda: f"{op}: K = {K} is larger than {_MAX_LINEAR_K}, the largest K whose int32 "
        "accumulator is exact",
    )
    named = [("w_q", w_q), ("w_scale", w_scale), ("bias", bias), ("w_sum", w_sum)]
    for name, t in named:
        if t is not None:
            torch._check(
                t.device == x.device,
                lambda: f"{op}: {name} is on {t.device} but the activations are on {x.device}",
            )
    torch._check(
        w_scale.dtype.is_floating_point,
        lambda: f"{op}: w_scale must be a floating-point tensor, got {w_scale.dtype}",
    )
    torch._check(
        w_scale.numel() == 1 or (w_scale.dim() == 1 and w_scale.shape[0] == N),
        lambda: f"{op}: w_scale must have one element or shape [{N}], got {list(w_scale.shape)}",
    )
    if bias is not None:
        torch._check(
            bias.dtype.is_floating_point,
            lambda: f"{op}: bias must be a floating-point tensor, got {bias.dtype}",
        )
        torch._check(
            bias.dim() == 1 and bias.shape[0] == N,
            lambda: f"{op}: bias must have shape [{N}], got {list(bias.shape)}",
        )
    if w_sum is not None:
        torch._check(w_sum.dtype == torch.int32, lambda: f"{op}: w_sum must be int32, got {w_sum.dtype}")
        torch._check(
            w_sum.dim() == 1 and w_sum.shape[0] == N,
            lambda: f"{op}: w_sum must have shape [{N}], got {list(w_sum.shape)}",
        )
    return N


_MAX_LINEAR_K = (2**31 - 1) // (255 * 128)  # 65793, as kMaxLinearK in csrc/checks.h


@torch.library.register_fake("torch_quant::quantized_linear")
def _quantized_linear_fake(x_q, x_scale, x_zero_point, w_q, w_scale, bias=None, w_sum=None, out_dtype=None):
    op = "torch_quant.quantized_linear"
    torch._check(
        x_q.dtype in (torch.int8, torch.uint8),
        lambda: f"{op}: x_q must be int8 (symmetric) or uint8 (asymmetric), got {x_q.dtype}",
    )
    torch._check(x_q.dim() >= 1, lambda: f"{op}: x_q must have shape [*, K], got a 0-dim tensor")
    _check_qparams(op, "x_q", x_q, x_scale, x_zero_point, None, "x_scale", "x_zero_point")
    N = _check_linear_weight(op, x_q, w_q, w_scale, bias, w_sum)
    out = torch.float32 if out_dtype is None else out_dtype
    torch._check(
        out in _FLOATS, lambda: f"{op}: out_dtype must be float32, float16 or bfloat16, got {out}"
    )
    return x_q.new_empty((*x_q.shape[:-1], N), dtype=out)


@torch.library.register_fake("torch_quant::dynamic_quantized_linear")
def _dynamic_quantized_linear_fake(x, w_q, w_scale, bias=None, w_sum=None, act_mode="symmetric",
                                   smooth=None, hadamard_block=0):
    op = "torch_quant.dynamic_quantized_linear"
    _check_mode(op, act_mode, "act_mode")
    _check_float(op, "x", x)
    torch._check(x.dim() >= 1, lambda: f"{op}: x must have shape [*, K], got a 0-dim tensor")
    N = _check_linear_weight(op, x, w_q, w_scale, bias, w_sum)
    if smooth is not None:
        torch._check(smooth.is_floating_point(),
                     lambda: f"{op}: smooth must be a floating tensor, got {smooth.dtype}")
        torch._check(smooth.dim() == 1 and smooth.shape[0] == x.shape[-1],
                     lambda: f"{op}: smooth must have shape [K] = [{x.shape[-1]}] (one factor "
                     f"per input channel), got {list(smooth.shape)}")
        torch._check(smooth.device == x.device,
                     lambda: f"{op}: smooth must be on x's device ({x.device}), got {smooth.device}")
    K = x.shape[-1]
    torch._check(
        hadamard_block == 0 or (hadamard_block >= 2 and hadamard_block & (hadamard_block - 1) == 0
                                and K % hadamard_block == 0),
        lambda: f"{op}: hadamard_block must be 0 or a power of two >= 2 that divides K = {K}, "
        f"got {hadamard_block}")
    return x.new_empty((*x.shape[:-1], N))


@torch.library.register_fake("torch_quant::pack_weight")
def _pack_weight_fake(w_q):
    op = "torch_quant.pack_weight"
    torch._check(w_q.dtype == torch.int8, lambda: f"{op}: w_q must be int8 (symmetric), got {w_q.dtype}")
    torch._check(w_q.dim() == 2, lambda: f"{op}: w_q must have shape [N, K], got {list(w_q.shape)}")
    N, K = w_q.shape
    torch._check(
        K <= _MAX_LINEAR_K,
        lambda: f"{op}: K = {K} is larger than {_MAX_LINEAR_K}, the largest K whose int32 "
        "accumulator is exact",
    )
    return w_q.new_empty((N, _packed_groups(K) + 2, 4))


@torch.library.register_fake("torch_quant::unpack_weight")
def _unpack_weight_fake(w_packed, K):
    op = "torch_quant.unpack_weight"
    torch._check(w_packed.dtype == torch.int8, lambda: f"{op}: w_packed must be int8, got {w_packed.dtype}")
    torch._check(0 <= K <= _MAX_LINEAR_K, lambda: f"{op}: K must be in [0, {_MAX_LINEAR_K}], got {K}")
    torch._check(
        w_packed.dim() == 3 and w_packed.shape[1] == _packed_groups(K) + 2 and w_packed.shape[2] == 4,
        lambda: f"{op}: w_packed must have shape [N, {_packed_groups(K) + 2}, 4] (pack_weight of an "
        f"[N, {K}] weight), got {list(w_packed.shape)}",
    )
    return w_packed.new_empty((w_packed.shape[0], K))
