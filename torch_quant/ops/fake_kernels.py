"""Fake (meta) kernels of the ``torch.ops.torch_quant`` operators, for
``torch.compile``, ``torch.export`` and ``opcheck``: shapes and dtypes only.

Each one makes the checks of csrc/checks.cpp that need no data, with the same
messages word for word (tests/test_ops_errors.py and test_linear_errors.py run
every error case through both and compare the messages), so a rule changed on
one side and not the other fails a test. The numbers in the shape rules (the
largest K, the packed layout's groups) are read from the C++ module, not
restated. The fake kernels also serve as the Meta kernels, so the device checks
matter: a meta scale with a CPU x must fail here, not return an uninitialised
tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _C

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_LINEAR_K = _C.MAX_LINEAR_K  # 65793: the largest K whose int32 accumulator is exact


def packed_rows(K) -> int:
    """G of pack_weight's [N, G, 4]: ceil(K / 4) groups of four k, then each
    column's sum and flags (csrc/cpu/packed.h)."""
    return (K + _C.PACKED_GROUP_K - 1) // _C.PACKED_GROUP_K + _C.PACKED_TAIL_GROUPS


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


def _check_linear_weight(op: str, x: Tensor, w_q, w_scale, bias, w_sum) -> int:
    """The checks of csrc/checks.cpp:check_linear_weight that need no data."""
    torch._check(w_q.dtype == torch.int8, lambda: f"{op}: w_q must be int8 (symmetric), got {w_q.dtype}")
    torch._check(x.dim() >= 1, lambda: f"{op}: the activations must have shape [*, K], got a 0-dim tensor")
    K = x.shape[-1]
    N = w_q.shape[0] if w_q.dim() >= 1 else 0
    if w_q.dim() == 3:
        torch._check(
            w_q.shape[1] == packed_rows(K) and w_q.shape[2] == 4,
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
        K <= MAX_LINEAR_K,
        lambda: f"{op}: K = {K} is larger than {MAX_LINEAR_K}, the largest K whose int32 "
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
    K = x.shape[-1]
    torch._check(
        hadamard_block == 0 or (hadamard_block >= 2 and hadamard_block & (hadamard_block - 1) == 0
                                and K % hadamard_block == 0),
        lambda: f"{op}: hadamard_block must be 0 or a power of two >= 2 that divides K = {K}, "
        f"got {hadamard_block}")
    if smooth is not None:
        torch._check(smooth.is_floating_point(),
                     lambda: f"{op}: smooth must be a floating tensor, got {smooth.dtype}")
        torch._check(smooth.dim() == 1 and smooth.shape[0] == x.shape[-1],
                     lambda: f"{op}: smooth must have shape [K] = [{x.shape[-1]}] (one factor "
                     f"per input channel), got {list(smooth.shape)}")
        torch._check(smooth.device == x.device,
                     lambda: f"{op}: smooth must be on x's device ({x.device}), got {smooth.device}")
    return x.new_empty((*x.shape[:-1], N))


@torch.library.register_fake("torch_quant::pack_weight")
def _pack_weight_fake(w_q):
    op = "torch_quant.pack_weight"
    torch._check(w_q.dtype == torch.int8, lambda: f"{op}: w_q must be int8 (symmetric), got {w_q.dtype}")
    torch._check(w_q.dim() == 2, lambda: f"{op}: w_q must have shape [N, K], got {list(w_q.shape)}")
    N, K = w_q.shape
    torch._check(
        K <= MAX_LINEAR_K,
        lambda: f"{op}: K = {K} is larger than {MAX_LINEAR_K}, the largest K whose int32 "
        "accumulator is exact",
    )
    return w_q.new_empty((N, packed_rows(K), 4))


@torch.library.register_fake("torch_quant::unpack_weight")
def _unpack_weight_fake(w_packed, K):
    op = "torch_quant.unpack_weight"
    torch._check(w_packed.dtype == torch.int8, lambda: f"{op}: w_packed must be int8, got {w_packed.dtype}")
    torch._check(0 <= K <= MAX_LINEAR_K, lambda: f"{op}: K must be in [0, {MAX_LINEAR_K}], got {K}")
    torch._check(
        w_packed.dim() == 3 and w_packed.shape[1] == packed_rows(K) and w_packed.shape[2] == 4,
        lambda: f"{op}: w_packed must have shape [N, {packed_rows(K)}, 4] (pack_weight of an "
        f"[N, {K}] weight), got {list(w_packed.shape)}",
    )
    return w_packed.new_empty((w_packed.shape[0], K))
