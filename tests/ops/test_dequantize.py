"""Numerics of dequantize (docs/semantics.md, "Modes and rounding"):
``(float(q) - zero_point) * scale`` against torch's dequantize and the
reference; oracles as in test_ops.py."""

from __future__ import annotations

import math

import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import assert_same, random_scale, random_zero_point


def _bcast(p, q, axis):
    if axis is not None:
        shape = [1] * q.dim()
        shape[axis] = -1
        return p.reshape(shape)
    if p.numel() == 1:
        return p.reshape(())
    return p.unsqueeze(-1)


def _dequant_formula(q, s, z, axis):
    return (q.float() - _bcast(z, q, axis).float()) * _bcast(s, q, axis).float()


def _ulp(a: torch.Tensor) -> torch.Tensor:
    a = a.abs()
    return torch.nextafter(a, torch.full_like(a, math.inf)) - a


def _random_codes(gen, shape, code):
    lo, hi = (-128, 128) if code == torch.int8 else (0, 256)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int32).to(code)


@pytest.mark.parametrize("code", [torch.int8, torch.uint8])
@pytest.mark.parametrize("shape", [(1,), (7,), (33,), (1025,), (9, 131), (3, 5, 17)])
def test_dequantize_per_tensor(isa, gen, code, shape):
    mode = "symmetric" if code == torch.int8 else "asymmetric"
    q = _random_codes(gen, shape, code)
    s = random_scale(gen)
    z = random_zero_point(gen, mode)
    d = tq.dequantize(q, s, z)
    assert d.dtype == torch.float32 and d.shape == q.shape
    assert_same(d, _dequant_formula(q, s, z, None), "vs formula")
    assert_same(d, ref.dequantize(q, s, z), "vs reference")
    tq_t = torch._make_per_tensor_quantized_tensor(q, float(s.item()), int(z.item()))
    theirs = tq_t.dequantize()
    assert ((d.double() - theirs.double()).abs() <= _ulp(theirs).double()).all()


@pytest.mark.parametrize("code", [torch.int8, torch.uint8])
@pytest.mark.parametrize("shape,axis", [((8, 33), 0), ((9, 131), 1), ((3, 5, 17), 1),
                                        ((3, 5, 17), 2), ((100, 3), 1), ((5,), 0)])
def test_dequantize_per_channel(isa, gen, code, shape, axis):
    mode = "symmetric" if code == torch.int8 else "asymmetric"
    q = _random_codes(gen, shape, code)
    c = shape[axis]
    s = random_scale(gen, c)
    z = random_zero_point(gen, mode, n=c)
    d = tq.dequantize(q, s, z, axis=axis)
    assert_same(d, _dequant_formula(q, s, z, axis), "vs formula")
    assert_same(d, ref.dequantize(q, s, z, axis=axis), "vs reference")
    assert_same(tq.dequantize(q, s, z, axis=axis - q.dim()), d, "negative axis")
    theirs = torch._make_per_channel_quantized_tensor(q, s.double(), z.long(), axis).dequantize()
    assert ((d.double() - theirs.double()).abs() <= _ulp(theirs).double()).all()


@pytest.mark.parametrize("code", [torch.int8, torch.uint8])
@pytest.mark.parametrize("shape", [(4, 1), (7, 17), (3, 5, 33), (2, 1025)])
def test_dequantize_per_token(isa, gen, code, shape):
    mode = "symmetric" if code == torch.int8 else "asymmetric"
    q = _random_codes(gen, shape, code)
    rows = shape[:-1]
    s = random_scale(gen, math.prod(rows)).reshape(rows)
    z = random_zero_point(gen, mode, n=math.prod(rows)).reshape(rows)
    d = tq.dequantize(q, s, z)
    assert_same(d, _dequant_formula(q, s, z, None), "vs formula")
    assert_same(d, ref.dequantize(q, s, z), "vs reference")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "token"])
def test_dequantize_half_output_is_float_result_cast(isa, gen, dtype, granularity):
    q = _random_codes(gen, (6, 77), torch.uint8)
    # Scales chosen to hit round-to-nearest-even ties of the half formats,
    # subnormals (1e-7, 2**-20) and overflow (1000) as well as random ones.
    special = torch.tensor([1 + 2**-8, 1 + 2**-11, 3 * 2**-9, 1e-7, 2**-20, 1000.0])
    if granularity == "tensor":
        cases = [(s, torch.tensor(z, dtype=torch.int32), None)
                 for s, z in zip(special, [0, 3, 128, 1, 255, 7])]
        cases.append((random_scale(gen), random_zero_point(gen, "asymmetric"), None))
    elif granularity == "channel":
        cases = [(special, random_zero_point(gen, "asymmetric", n=6), 0),
                 (random_scale(gen, 77), random_zero_point(gen, "asymmetric", n=77), 1)]
    else:
        cases = [(special, random_zero_point(gen, "asymmetric", n=6), None)]
    for s, z, axis in cases:
        full = tq.dequantize(q, s, z, axis=axis)
        half = tq.dequantize(q, s, z, axis=axis, dtype=dtype)
        assert half.dtype == dtype
        assert_same(half, full.to(dtype))
        assert_same(tq.dequantize(q, s, z, axis=axis, dtype=torch.float32), full)
