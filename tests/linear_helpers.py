"""Helpers of the linear-op tests: the int64 oracle, data makers, and the
``weight_form`` fixture that runs every test with the weight plain and packed
(import it into a test module to apply it there)."""

from __future__ import annotations

import math

import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import random_scale

ops = torch.ops.torch_quant
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_K = 65793  # (2^31 - 1) // (255 * 128)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------
# weight forms: every test of this file also runs with packed weights

_PLAIN_QL, _PLAIN_DQL = tq.quantized_linear, tq.dynamic_quantized_linear


def _packable(w_q, w_sum):
    """A valid plain weight whose w_sum (if given) is its true row sums: then
    the packed weight (which carries its own sums) must give the same result."""
    # (Not while torch.compile traces: the check reads data. The compile tests
    # see the plain form; test_opcheck and test_quantize_model cover packed.)
    return (not torch.compiler.is_compiling()
            and isinstance(w_q, torch.Tensor) and w_q.dtype == torch.int8 and w_q.dim() == 2
            and w_q.device.type == "cpu" and w_q.shape[1] <= MAX_K
            and (w_sum is None or torch.equal(w_sum.long(), w_q.long().sum(1))))


def _packed_ql(x_q, x_scale, x_zero_point, w_q, w_scale, bias=None, w_sum=None, out_dtype=None):
    if _packable(w_q, w_sum):
        w_q, w_sum = tq.pack_weight(w_q), None
    return _PLAIN_QL(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype)


def _packed_dql(x, w_q, w_scale, bias=None, w_sum=None, act_mode="symmetric", smooth=None,
                hadamard_block=0):
    if _packable(w_q, w_sum):
        w_q, w_sum = tq.pack_weight(w_q), None
    return _PLAIN_DQL(x, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block)


@pytest.fixture(autouse=True, params=["plain", "packed"])
def weight_form(request, monkeypatch):
    """Runs the test with tq.quantized_linear / tq.dynamic_quantized_linear
    given the weight as it is, or packed first."""
    if request.param == "packed":
        monkeypatch.setattr(tq, "quantized_linear", _packed_ql)
        monkeypatch.setattr(tq, "dynamic_quantized_linear", _packed_dql)
    return request.param


# ---------------------------------------------------------------------------
# oracle and data


def ref_dot(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """sum_k x_q[m, k] * w_q[n, k] in int64, x_q flattened to [M, K]."""
    K = w_q.shape[1]
    return x_q.reshape(math.prod(x_q.shape[:-1]), K).long() @ w_q.long().t()


def ref_linear(x_q, x_scale, x_zero_point, w_q, w_scale, bias=None, out_dtype=None, dot=None):
    """The docs/semantics.md ("Operators") formula (torch_quant.ops.reference); `dot` (from ref_dot) saves the GEMM."""
    return ref.quantized_linear(x_q, x_scale, x_zero_point, w_q, w_scale, bias,
                                out_dtype=out_dtype, dot=dot)


def codes(gen, shape, dtype):
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int32).to(dtype)


def x_params(gen, lead, dtype, per_token, zero_zp=False):
    """(x_scale, x_zero_point): 0-dim or shape `lead`, zero points over the
    code range of `dtype` (or all 0)."""
    shape = tuple(lead) if per_token else ()
    n = 1
    for s in shape:
        n *= s
    scale = random_scale(gen, n).reshape(shape) if per_token else random_scale(gen)
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    if zero_zp:
        zp = torch.zeros(shape, dtype=torch.int32)
    else:
        zp = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int32)
    return scale, zp


def w_params(gen, N, per_channel, with_bias):
    w_scale = random_scale(gen, N) if per_channel else random_scale(gen)
    bias = (torch.randn(N, generator=gen) * 100) if with_bias else None
    return w_scale, bias


def problem(gen, lead, K, N, xdtype, per_token=True):
    """A random quantized_linear input: (x_q [*lead, K] of xdtype, x_scale,
    x_zero_point (per token or per tensor), w_q [N, K], w_scale [N], bias [N])."""
    x_q = codes(gen, (*lead, K), xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    xs, xz = x_params(gen, lead, xdtype, per_token)
    ws, bias = w_params(gen, N, True, True)
    return x_q, xs, xz, w_q, ws, bias


def sym_weight(w: torch.Tensor):
    """Symmetric per-channel int8 weights (w_q, w_scale) of a float [N, K] weight."""
    s, z = tq.choose_qparams(w, "symmetric", axis=0)
    return tq.quantize(w, s, z, "symmetric", axis=0), s


def composite(x, w_q, w_scale, bias=None, w_sum=None, act_mode="symmetric"):
    """quantize_per_token followed by quantized_linear (what the fused op must equal)."""
    q, s, z = tq.quantize_per_token(x, act_mode)
    return tq.quantized_linear(q, s, z, w_q, w_scale, bias, w_sum, out_dtype=x.dtype)
