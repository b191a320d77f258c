"""Typed wrappers of the ``torch.ops.torch_quant`` operators.

The schemas are in ``csrc/registration.cpp``; the semantics in docs/semantics.md
("Modes and rounding" and "Operators"); the fake kernels in ``fake_kernels.py``.
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

from . import fake_kernels  # noqa: F401  (registers them)

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
    "quantized_linear_grad_x",
]

_ops = torch.ops.torch_quant


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
    ``w_sum[n] = sum_k w_q[n, k]`` as int32, computed when not given; a given one
    must hold exactly those sums and is checked on every call (on the CPU against
    the sums the kernel takes in its own pass over the weight, so it costs no
    extra pass; a packed weight holds its sums and takes none). ``K`` may be at
    most 65793, the largest for which the int32 accumulator is exact. Returns
    ``[*, N]`` in ``out_dtype`` (float32, float16 or bfloat16; default float32).
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
    matrix of +-1 entries before it is quantized (:func:`torch_quant.hadamard.hadamard_rows`
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


def quantized_linear_grad_x(grad_out: Tensor, w_q: Tensor, w_scale: Tensor, K: int,
                            smooth: Optional[Tensor] = None, hadamard_block: int = 0,
                            out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """The gradient of a quantized linear's output ``grad_out`` (``[*, N]``)
    with respect to its float input (``[*, K]``), its quantization taken as
    the identity (straight through): ``grad_out @ (w_q * w_scale[:, None])``,
    rotated run by run by the Hadamard matrix when ``hadamard_block`` > 0,
    times ``smooth`` when given; computed in float32, returned in
    ``out_dtype`` (default ``grad_out``'s). ``w_q`` plain or packed. What the
    autograd formulas of :func:`dynamic_quantized_linear` (and QuantLinear's
    static layers) give x; docs/semantics.md, "Gradients"."""
    return _ops.quantized_linear_grad_x.default(grad_out, w_q, w_scale, K, smooth, hadamard_block,
                                                out_dtype)


def is_packed_weight(w_q: Tensor) -> bool:
    """Whether ``w_q`` is a packed weight (3-d) rather than a plain ``[N, K]`` one."""
    return w_q.dim() == 3
