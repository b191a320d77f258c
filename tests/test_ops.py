"""Numerics of the torch_quant operators (docs/semantics.md, "Modes and rounding" and "Operators").

Oracles: ``torch.quantize_per_tensor`` / ``quantize_per_channel`` (see the note
on double rounding below), ``torch_quant.reference`` and the formulas of docs/semantics.md
written out here in numpy float32. Most tests run once per CPU kernel path
(the ``isa`` fixture).

Note on quantize's rounding: torch_quant computes
``nearbyint(fma(x, inv_scale, zero_point))`` (one rounding), bit-exact with
``torch.quantize_per_tensor``. ``torch.quantize_per_channel`` rounds
``x * inv_scale`` to float32 before adding the zero point, so with a nonzero
zero point it can differ from us, but only at the elements where that double
rounding changes the code (``double_rounding_points``); there we equal the
reference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_quant as tq
from torch_quant import reference as ref

from conftest import (
    FLT_EPSILON,
    MODES,
    SUPPORTED_ISAS,
    assert_same,
    data_for,
    double_rounding_points,
    num_threads,
    qrange,
    random_scale,
    random_zero_point,
    torch_per_channel,
    torch_per_tensor,
    using_isa,
)

BITS = list(range(2, 9))
F32 = np.float32


def f32(v) -> float:
    """A Python float holding the float32 nearest to v."""
    return float(np.float32(v))


# ---------------------------------------------------------------------------
# docs/semantics.md, "Modes and rounding": worked examples


def test_worked_example_symmetric(isa):
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    scale, zp = tq.choose_qparams(x, "symmetric")
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.shape == () and zp.shape == ()
    assert scale.item() == f32(F32(3) / F32(127))
    assert zp.item() == 0
    q = tq.quantize(x, scale, zp, "symmetric")
    assert q.dtype == torch.int8
    assert q.tolist() == [-85, -42, 0, 42, 127]
    q2, s2, z2 = tq.quantize_per_token(x, "symmetric")
    assert q2.tolist() == [-85, -42, 0, 42, 127]
    assert s2.item() == scale.item() and z2.item() == 0


def test_worked_example_asymmetric(isa):
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    scale, zp = tq.choose_qparams(x, "asymmetric")
    assert scale.item() == f32(F32(5) / F32(255))
    assert zp.item() == 102
    q = tq.quantize(x, scale, zp, "asymmetric")
    assert q.dtype == torch.uint8
    assert q.tolist() == [0, 51, 102, 153, 255]
    back = tq.dequantize(q, scale, zp)
    assert back.dtype == torch.float32
    assert (back - x).abs().max().item() <= 1e-6
    q2, s2, z2 = tq.quantize_per_token(x, "asymmetric")
    assert q2.tolist() == [0, 51, 102, 153, 255]
    assert s2.item() == scale.item() and z2.item() == 102


# ---------------------------------------------------------------------------
# quantize per tensor: bit-exact with torch.quantize_per_tensor

SIZES = [1, 7, 17, 1025, 65537, 1 << 20]
PER_TENSOR_ZPS = [("symmetric", 0), ("symmetric", 3), ("symmetric", -5),
                  ("asymmetric", 0), ("asymmetric", 101), ("asymmetric", 128),
                  ("asymmetric", 255)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("mode,zero_point", PER_TENSOR_ZPS)
def test_quantize_per_tensor_matches_torch(isa, gen, n, mode, zero_point):
    scale = random_scale(gen)
    x = data_for(gen, [n], scale.item())
    # Shift asymmetric data so that both ends of the code range are reached.
    if mode == "asymmetric":
        x = x + (128 - zero_point) * scale
    zp = torch.tensor(zero_point, dtype=torch.int32)
    q = tq.quantize(x, scale, zp, mode)
    expected = torch_per_tensor(x, scale, zp, mode)
    assert_same(q, expected, "vs torch.quantize_per_tensor")
    if n >= 1025:  # the data must actually exercise clamping at both ends
        qmin, qmax = qrange(mode)
        assert (q == qmin).any() and (q == qmax).any()
    if n <= 65537:
        assert_same(q, ref.quantize(x, scale, zp, mode), "vs reference")


@pytest.mark.parametrize("mode,zero_point", [("symmetric", 0), ("symmetric", 3),
                                             ("symmetric", -5), ("symmetric", 1),
                                             ("asymmetric", 101), ("asymmetric", 127),
                                             ("asymmetric", 1), ("asymmetric", 0)])
@pytest.mark.parametrize("scale", [0.5, 0.25, 2.0, 0.125, 1.0])
def test_quantize_exact_ties_round_half_to_even(isa, mode, zero_point, scale):
    # x * (1/scale) is exactly k + 0.5: the code must be round-half-even of
    # (k + 0.5 + zero_point), i.e. the zero point is added before rounding.
    qmin, qmax = qrange(mode)
    k = torch.arange(-300, 300, dtype=torch.float64)
    x = ((k + 0.5) * scale).float()
    assert torch.equal(x.double() / scale, k + 0.5)  # the ties are exact
    zp = torch.tensor(zero_point, dtype=torch.int32)
    s = torch.tensor(scale, dtype=torch.float32)
    q = tq.quantize(x, s, zp, mode)
    # Python's round() is round half to even.
    expected = [min(max(round(kk + 0.5 + zero_point), qmin), qmax) for kk in k.tolist()]
    assert q.tolist() == expected
    assert_same(q, torch_per_tensor(x, s, zp, mode), "vs torch.quantize_per_tensor")
    assert_same(q, ref.quantize(x, s, zp, mode), "vs reference")
    # Per channel, one channel: torch agrees here too (no double rounding at
    # exact ties).
    qc = tq.quantize(x[None], s[None], zp[None], mode, axis=0)
    assert_same(qc[0], q)
    assert_same(qc, torch_per_channel(x[None], s[None], zp[None], mode, 0))


def _near_ties(scale: torch.Tensor, zp: int, mode: str, ulps: int = 48) -> torch.Tensor:
    """float32 values within `ulps` ulps of every x with x/scale + zp = k + 0.5
    inside the code range: where a double rounding of x*inv_scale + zp would
    show."""
    qmin, qmax = qrange(mode)
    k = torch.arange(qmin - zp - 1, qmax - zp + 1, dtype=torch.float32)
    x0 = ((k + 0.5) * scale).float()
    steps = torch.arange(-ulps, ulps + 1, dtype=torch.int32)
    return (x0.view(torch.int32)[:, None] + steps[None, :]).view(torch.float32).reshape(-1)


@pytest.mark.parametrize("mode,zero_point,scale", [
    ("symmetric", 3, 0.0123), ("symmetric", -5, 0.7), ("symmetric", 0, 0.0123),
    ("asymmetric", 101, 0.0123), ("asymmetric", 250, 3.3e-3), ("asymmetric", 1, 0.37)])
def test_quantize_per_tensor_near_ties_match_torch(isa, mode, zero_point, scale):
    """Next to .5 ties torch.quantize_per_tensor rounds x*inv_scale + zp once
    (like an fma); so must we, on every kernel path."""
    s = torch.tensor(scale, dtype=torch.float32)
    zp = torch.tensor(zero_point, dtype=torch.int32)
    x = _near_ties(s, zero_point, mode)[:-3]  # length not a multiple of the vector width
    q = tq.quantize(x, s, zp, mode)
    assert_same(q, torch_per_tensor(x, s, zp, mode), "vs torch.quantize_per_tensor")
    assert_same(q, ref.quantize(x, s, zp, mode), "vs reference")
    if zero_point != 0:  # the data does contain points where double rounding differs
        assert double_rounding_points(x[None], s[None], zp[None], 0, mode).any()


@pytest.mark.parametrize("mode", MODES)
def test_quantize_per_tensor_chosen_params_match_torch(isa, gen, mode):
    x = torch.randn(4099, generator=gen) * 3 + (1.0 if mode == "asymmetric" else 0.0)
    scale, zp = tq.choose_qparams(x, mode)
    q = tq.quantize(x, scale, zp, mode)
    assert_same(q, torch_per_tensor(x, scale, zp, mode))


def test_quantize_param_dtypes_and_shapes_accepted(isa, gen):
    """scale may be any float dtype, zero_point any integer dtype; a
    one-element scale of shape [1] or [1, 1] means per tensor."""
    x = data_for(gen, [1031], 0.02)
    s32 = torch.tensor(0.02)
    z = torch.tensor(7, dtype=torch.int32)
    expected = tq.quantize(x, s32, z, "asymmetric")
    for s in (s32.double(), s32.reshape(1), s32.reshape(1, 1)):
        for zz in (z.long().reshape(s.shape), z.to(torch.uint8).reshape(s.shape),
                   z.to(torch.int16).reshape(s.shape)):
            assert_same(tq.quantize(x, s, zz, "asymmetric"), expected)
    # float64 scale is converted to float32 first
    s64 = torch.tensor(0.1, dtype=torch.float64)
    assert_same(tq.quantize(x, s64, z, "asymmetric"),
                tq.quantize(x, s64.float(), z, "asymmetric"))


# ---------------------------------------------------------------------------
# quantize per channel vs torch.quantize_per_channel

PER_CHANNEL_CASES = [
    ((64, 4096), 0),
    ((37, 129), 1),
    ((37, 129), -1),  # inner == 1
    ((5, 33, 19), 1),  # middle axis
    ((3, 4, 21), -1),
    ((3, 4, 21), 0),
    ((100003, 3), 1),  # few channels, many rows, inner == 1
    ((4, 65537), 0),  # few channels, long rows
    ((16, 1), 0),  # inner == 1, outer == 1
    ((1000, 1), 1),  # one channel, inner == 1
    ((1, 1000), 0),  # one channel
    ((17,), 0),  # 1-D: one channel per element
]


def _check_per_channel(x, s, z, mode, axis):
    q = tq.quantize(x, s, z, mode, axis=axis)
    assert q.shape == x.shape and q.is_contiguous()
    assert_same(q, ref.quantize(x, s, z, mode, axis=axis), "vs reference")
    t = torch_per_channel(x, s, z, mode, axis)
    mismatch = q != t
    if bool((z == 0).all()):
        assert not mismatch.any(), f"{int(mismatch.sum())} codes differ from torch"
    else:
        dr = double_rounding_points(x, s, z, axis)
        unexplained = mismatch & ~dr
        assert not unexplained.any(), (
            f"{int(unexplained.sum())} codes differ from torch.quantize_per_channel "
            "outside the double-rounding points"
        )
    return q


@pytest.mark.parametrize("shape,axis", PER_CHANNEL_CASES)
@pytest.mark.parametrize("params", ["symmetric_zp0", "symmetric_zp", "asymmetric_chosen",
                                    "asymmetric_random"])
def test_quantize_per_channel_matches_torch(isa, gen, shape, axis, params):
    c = shape[axis]
    s = random_scale(gen, c)
    bshape = [1] * len(shape)
    bshape[axis] = c
    x = torch.randn(shape, generator=gen) * (70.0 * s.reshape(bshape))
    if params == "symmetric_zp0":
        mode, z = "symmetric", torch.zeros(c, dtype=torch.int32)
    elif params == "symmetric_zp":
        mode, z = "symmetric", random_zero_point(gen, "symmetric", n=c)
    elif params == "asymmetric_chosen":
        mode = "asymmetric"
        x = x + 0.3 * x.abs().amax()
        s, z = tq.choose_qparams(x, mode, axis=axis)
    else:
        mode, z = "asymmetric", random_zero_point(gen, "asymmetric", n=c)
    _check_per_channel(x, s, z, mode, axis)


def test_per_channel_double_rounding_points_are_where_torch_differs(isa):
    """Construct x next to .5 ties of x*inv_scale + zp with an inexact
    1/scale: torch.quantize_per_channel differs from us exactly at the double
    rounding points, and there we equal the reference (single rounding)."""
    s = torch.tensor([0.0123, 0.7, 3.3e-3], dtype=torch.float32)
    z = torch.tensor([101, 3, 250], dtype=torch.int32)
    x = torch.stack([_near_ties(s[c], int(z[c]), "asymmetric", 64)[:30000] for c in range(3)])
    q = tq.quantize(x, s, z, "asymmetric", axis=0)
    r = ref.quantize(x, s, z, "asymmetric", axis=0)
    assert_same(q, r)
    dr = double_rounding_points(x, s, z, 0, "asymmetric")
    t = torch_per_channel(x, s, z, "asymmetric", 0)
    assert dr.sum() > 10  # the construction does hit such points
    assert torch.equal(q != t, dr)
    # ... and per tensor (one channel at a time) torch agrees everywhere.
    for c in range(3):
        assert_same(q[c], torch_per_tensor(x[c], s[c], z[c], "asymmetric"))


@pytest.mark.parametrize("shape,axis", [((6, 70), 0), ((6, 70), 1), ((3, 5, 9), 1)])
def test_per_channel_matches_per_tensor_slices(isa, gen, shape, axis):
    """Each channel quantized per channel equals that slice quantized per tensor."""
    c = shape[axis]
    s = random_scale(gen, c)
    z = random_zero_point(gen, "symmetric", n=c)
    x = torch.randn(shape, generator=gen) * 50 * s.mean()
    q = tq.quantize(x, s, z, "symmetric", axis=axis)
    for i in range(c):
        qi = tq.quantize(x.select(axis, i), s[i], z[i], "symmetric")
        assert_same(q.select(axis, i), qi)


# ---------------------------------------------------------------------------
# input dtypes, layouts, empty tensors


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_inputs_equal_float_of_them(isa, gen, dtype, mode):
    x = (torch.randn(13, 131, generator=gen) * 4 + 0.5).to(dtype)
    xf = x.float()
    for axis in (None, 0, 1, -1):
        s, z = tq.choose_qparams(x, mode, axis=axis)
        sf, zf = tq.choose_qparams(xf, mode, axis=axis)
        assert_same(s, sf)
        assert_same(z, zf)
        assert_same(tq.quantize(x, s, z, mode, axis=axis),
                    tq.quantize(xf, s, z, mode, axis=axis))
    s, z = tq.choose_qparams(xf.reshape(-1, 131), mode, axis=0)
    s, z = s.reshape(13), z.reshape(13)
    assert_same(tq.quantize(x, s, z, mode), tq.quantize(xf, s, z, mode))  # per token
    for a, b in zip(tq.quantize_per_token(x, mode), tq.quantize_per_token(xf, mode)):
        assert_same(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_non_finite(isa, dtype):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0, -3.0, 65504.0] * 3,
                     dtype=dtype)
    for mode in MODES:
        s, z = tq.choose_qparams(x, mode)
        assert_same(s, tq.choose_qparams(x.float(), mode)[0])
        assert_same(tq.quantize(x, s, z, mode), tq.quantize(x.float(), s, z, mode))
        assert_same(tq.quantize(x, s, z, mode), ref.quantize(x, s, z, mode))


def _non_contiguous_views(gen):
    base = torch.randn(24, 40, generator=gen) * 3
    return {
        "transposed": base.t(),
        "step_slice": base[:, ::3],
        "row_step": base[::2],
        "offset": base[3:17, 5:],
        "expanded": torch.randn(1, 40, generator=gen).expand(24, 40),
        "permuted3d": base.reshape(4, 6, 40).permute(2, 0, 1),
    }


@pytest.mark.parametrize("view", ["transposed", "step_slice", "row_step", "offset",
                                  "expanded", "permuted3d"])
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(isa, gen, view, mode):
    x = _non_contiguous_views(gen)[view]
    xc = x.contiguous()
    assert not x.is_contiguous() or view == "offset"
    for axis in (None, 0, -1):
        s, z = tq.choose_qparams(x, mode, axis=axis)
        sc, zc = tq.choose_qparams(xc, mode, axis=axis)
        assert_same(s, sc)
        assert_same(z, zc)
        q = tq.quantize(x, s, z, mode, axis=axis)
        assert q.is_contiguous()
        assert_same(q, tq.quantize(xc, s, z, mode, axis=axis))
        # non-contiguous codes
        qt = q.t() if q.dim() == 2 else q.transpose(0, -1)
        d = tq.dequantize(qt, s, z, axis=None if axis is None else (q.dim() - 1 - axis % q.dim()))
        assert d.is_contiguous()
        assert_same(d, tq.dequantize(qt.contiguous(), s, z,
                                     axis=None if axis is None else (q.dim() - 1 - axis % q.dim())))
    for a, b in zip(tq.quantize_per_token(x, mode), tq.quantize_per_token(xc, mode)):
        assert a.is_contiguous()
        assert_same(a, b)


def test_non_contiguous_params(isa, gen):
    x = torch.randn(10, 37, generator=gen)
    s_big = random_scale(gen, 20)
    z_big = random_zero_point(gen, "asymmetric", n=20)
    s, z = s_big[::2], z_big[1::2]
    assert not s.is_contiguous() and not z.is_contiguous()
    q = tq.quantize(x, s, z, "asymmetric", axis=0)
    assert_same(q, tq.quantize(x, s.contiguous(), z.contiguous(), "asymmetric", axis=0))
    assert_same(tq.dequantize(q, s, z, axis=0),
                tq.dequantize(q, s.contiguous(), z.contiguous(), axis=0))
    # per token with non-contiguous params
    qt = tq.quantize(x, s, z, "asymmetric")
    assert_same(qt, ref.quantize(x, s.contiguous(), z.contiguous(), "asymmetric"))


EMPTY_SHAPES = [(0,), (0, 4), (4, 0), (2, 0, 3)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_empty_inputs(isa, shape, mode):
    x = torch.empty(shape)
    code = torch.int8 if mode == "symmetric" else torch.uint8
    s, z = tq.choose_qparams(x, mode)
    assert s.shape == () and z.shape == ()
    assert s.item() == FLT_EPSILON and z.item() == 0
    q = tq.quantize(x, s, z, mode)
    assert q.shape == x.shape and q.dtype == code
    d = tq.dequantize(q, s, z)
    assert d.shape == x.shape and d.dtype == torch.float32
    for dt in (torch.float16, torch.bfloat16):
        assert tq.dequantize(q, s, z, dtype=dt).dtype == dt
    for axis in range(-len(shape), len(shape)):
        s, z = tq.choose_qparams(x, mode, axis=axis)
        c = shape[axis]
        assert s.shape == (c,) and z.shape == (c,)
        assert s.dtype == torch.float32 and z.dtype == torch.int32
        assert torch.all(s == FLT_EPSILON) and torch.all(z == 0)
        q = tq.quantize(x, s, z, mode, axis=axis)
        assert q.shape == x.shape and q.dtype == code
        d = tq.dequantize(q, s, z, axis=axis)
        assert d.shape == x.shape and d.dtype == torch.float32
    q, s, z = tq.quantize_per_token(x, mode)
    assert q.shape == x.shape and q.dtype == code
    assert s.shape == x.shape[:-1] and z.shape == x.shape[:-1]
    assert s.dtype == torch.float32 and z.dtype == torch.int32
    assert torch.all(s == FLT_EPSILON) and torch.all(z == 0)
    if s.numel() > 1:
        # per-token params on an empty tensor
        assert tq.quantize(x, s, z, mode).shape == x.shape
        assert tq.dequantize(q, s, z).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_empty_half_inputs(dtype):
    x = torch.empty(0, 5, dtype=dtype)
    q, s, z = tq.quantize_per_token(x, "asymmetric")
    assert q.shape == (0, 5) and s.shape == (0,)
    s1, z1 = tq.choose_qparams(x, "symmetric", axis=1)
    assert s1.shape == (5,)
    assert tq.quantize(x, s1, z1, "symmetric", axis=1).shape == (0, 5)


def test_zero_dim_input(isa):
    x = torch.tensor(-1.75)
    for mode in MODES:
        s, z = tq.choose_qparams(x, mode)
        q = tq.quantize(x, s, z, mode)
        assert q.shape == ()
        assert_same(q, ref.quantize(x, s, z, mode))
        assert_same(tq.dequantize(q, s, z), ref.dequantize(q, s, z))
        assert abs(tq.dequantize(q, s, z).item() + 1.75) <= s.item() / 2


# ---------------------------------------------------------------------------
# dequantize


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


# ---------------------------------------------------------------------------
# choose_qparams


def _formula_qparams(lo: float, hi: float, mode: str, bits: int):
    """docs/semantics.md ("Modes and rounding") in numpy float32 scalars (independent of torch)."""
    qmin, qmax = qrange(mode, bits)
    eps = F32(FLT_EPSILON)
    lo, hi = min(F32(lo), F32(0)), max(F32(hi), F32(0))
    if mode == "symmetric":
        amax = max(-lo, hi)
        return max(F32(amax) / F32(qmax), eps), 0
    scale = max(F32(hi - lo) / F32(qmax - qmin), eps)
    zp = F32(qmin) - np.rint(F32(lo) / scale)
    return scale, int(min(max(zp, qmin), qmax))


def _finite_minmax(v: torch.Tensor):
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        return math.inf, -math.inf
    return v.min().item(), v.max().item()


def _check_qparams(x, mode, axis, bits):
    s, z = tq.choose_qparams(x, mode, axis=axis, bits=bits)
    if axis is None or x.dim() > 1:
        # (reference.choose_qparams reduces over everything for a 1-D x with
        # axis=0, see test_reference_choose_qparams_1d_per_channel; the
        # formula check below covers that case)
        rs, rz = ref.choose_qparams(x, mode, axis=axis, bits=bits)
        assert_same(s, rs, "scale vs reference")
        assert_same(z, rz, "zero_point vs reference")
    xf = x.float()
    if axis is None:
        slices = [xf.reshape(-1)]
        assert s.shape == ()
    else:
        slices = [xf.select(axis, i).reshape(-1) for i in range(x.shape[axis])]
        assert s.shape == (x.shape[axis],)
    for i, v in enumerate(slices):
        fs, fz = _formula_qparams(*_finite_minmax(v), mode, bits)
        assert s.reshape(-1)[i].item() == float(fs), f"scale of slice {i}"
        assert z.reshape(-1)[i].item() == fz, f"zero_point of slice {i}"
    qmin, qmax = qrange(mode, bits)
    assert (z >= qmin).all() and (z <= qmax).all()
    assert (s >= FLT_EPSILON).all() and torch.isfinite(s).all()
    return s, z


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shift", [0.0, 2.5, -2.5])
def test_choose_qparams_per_tensor(isa, gen, mode, bits, shift):
    for n in (1, 7, 17, 1029):
        x = torch.randn(n, generator=gen) * 3 + shift
        _check_qparams(x, mode, None, bits)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape,axis", [((5, 67), 0), ((5, 67), 1), ((4, 6, 9), 1),
                                        ((4, 6, 9), -1), ((300, 3), 1), ((9,), 0)])
def test_choose_qparams_per_channel(isa, gen, mode, bits, shape, axis):
    x = torch.randn(shape, generator=gen) * 3
    # give channels different signs / offsets
    c = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = c
    x = x + torch.linspace(-6, 6, c).reshape(bshape)
    _check_qparams(x, mode, axis, bits)


def test_reference_choose_qparams_1d_per_channel():
    """The oracle itself: per channel on a 1-D tensor is one pair per element.
    (reference._finite_range reduces over dims=() which torch treats as
    'all dims', giving a 0-dim result.)"""
    x = torch.tensor([-1.0, 2.0, 0.5])
    s, z = ref.choose_qparams(x, "asymmetric", axis=0)
    ts, tz = tq.choose_qparams(x, "asymmetric", axis=0)
    assert ts.shape == (3,)
    assert_same(s, ts)
    assert_same(z, tz)


def test_choose_qparams_range_contains_zero(isa):
    x = torch.linspace(0.5, 8.0, 100)
    s, z = tq.choose_qparams(x, "asymmetric")
    # range widened to [0, 8]
    assert s.item() == f32(F32(8.0) / F32(255))
    assert z.item() == 0
    s, z = tq.choose_qparams(-x, "asymmetric")  # [-8, -0.5] -> [-8, 0]
    assert s.item() == f32(F32(8.0) / F32(255))
    assert z.item() == 255
    s, z = tq.choose_qparams(x, "symmetric")
    assert s.item() == f32(F32(8.0) / F32(127)) and z.item() == 0
    # zero is exactly representable
    for mode in MODES:
        s, z = tq.choose_qparams(x, mode)
        zero = tq.quantize(torch.zeros(3), s, z, mode)
        assert (tq.dequantize(zero, s, z) == 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bits", [2, 8])
def test_choose_qparams_all_zero(isa, mode, bits):
    for n in (1, 17, 1000):
        x = torch.zeros(n)
        s, z = tq.choose_qparams(x, mode, bits=bits)
        assert s.item() == 2.0**-23 and z.item() == 0
        s, z = tq.choose_qparams(x.reshape(-1, 1), mode, axis=0, bits=bits)
        assert (s == 2.0**-23).all() and (z == 0).all()
        q = tq.quantize(x, s.reshape(-1)[0], z.reshape(-1)[0], mode, bits=bits)
        assert (q == 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_choose_qparams_ignores_non_finite(isa, gen, mode, axis):
    x = torch.randn(11, 37, generator=gen) * 2 + 0.5
    specials = torch.tensor([math.nan, math.inf, -math.inf])
    mask = torch.rand(x.shape, generator=gen) < 0.2
    pick = torch.randint(0, 3, x.shape, generator=gen)
    xs = torch.where(mask, specials[pick], x)
    # 0 is always in the range, so replacing non-finite values by 0 cannot
    # change the result if they are ignored.
    s, z = tq.choose_qparams(xs, mode, axis=axis)
    s0, z0 = tq.choose_qparams(torch.where(torch.isfinite(xs), xs, 0.0), mode, axis=axis)
    assert_same(s, s0)
    assert_same(z, z0)
    assert torch.isfinite(s).all()
    _check_qparams(xs, mode, axis, 8)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 33])
def test_choose_qparams_non_finite_at_every_position(isa, n):
    """A single NaN / inf in the vector body or the tail is left out."""
    base = torch.linspace(-1.0, 2.0, n)
    for pos in range(n):
        for special in (math.nan, math.inf, -math.inf):
            x = base.clone()
            x[pos] = special
            for mode in MODES:
                s, z = tq.choose_qparams(x, mode)
                rs, rz = ref.choose_qparams(x, mode)
                assert_same(s, rs, f"pos {pos} {special}")
                assert_same(z, rz)


@pytest.mark.parametrize("mode", MODES)
def test_choose_qparams_all_non_finite(isa, mode):
    x = torch.tensor([math.nan, math.inf, -math.inf] * 7)
    s, z = tq.choose_qparams(x, mode)
    assert s.item() == FLT_EPSILON and z.item() == 0
    s, z = tq.choose_qparams(x.reshape(3, 7), mode, axis=1)
    assert (s == FLT_EPSILON).all() and (z == 0).all()
    q, s, z = tq.quantize_per_token(x.reshape(7, 3), mode)
    assert (s == FLT_EPSILON).all() and (z == 0).all()
    assert_same(q, ref.quantize_per_token(x.reshape(7, 3), mode)[0])


# ---------------------------------------------------------------------------
# quantize_per_token


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 17), (3, 5, 1025), (0, 4), (4, 0), (33,)])
def test_quantize_per_token(isa, gen, mode, bits, shape):
    x = torch.randn(shape, generator=gen) * 2
    if len(shape) > 1 and x.numel():
        x = x + torch.linspace(-3, 3, shape[-2]).unsqueeze(-1)  # different rows, offsets
    q, s, z = tq.quantize_per_token(x, mode, bits=bits)
    rq, rs, rz = ref.quantize_per_token(x, mode, bits=bits)
    assert_same(q, rq, "q vs reference")
    assert_same(s, rs, "scale vs reference")
    assert_same(z, rz, "zero_point vs reference")
    assert s.shape == x.shape[:-1] and z.shape == x.shape[:-1]
    # = choose_qparams + quantize, row by row
    k = x.shape[-1]
    n_rows = math.prod(x.shape[:-1])
    rows, q_rows = x.reshape(n_rows, k), q.reshape(n_rows, k)
    for r in range(n_rows):
        rs_, rz_ = tq.choose_qparams(rows[r], mode, bits=bits)
        assert s.reshape(-1)[r].item() == rs_.item()
        assert z.reshape(-1)[r].item() == rz_.item()
        assert_same(q_rows[r], tq.quantize(rows[r], rs_, rz_, mode, bits=bits))
    # = quantize with per-token params
    if x.numel():
        assert_same(tq.quantize(x, s, z, mode, bits=bits), q)


@pytest.mark.parametrize("mode", MODES)
def test_quantize_per_token_non_finite(isa, gen, mode):
    x = torch.randn(6, 41, generator=gen)
    x[0, 3] = math.nan
    x[1, 40] = math.inf
    x[2, 0] = -math.inf
    x[3, :] = math.nan
    x[4, 8:16] = math.inf
    q, s, z = tq.quantize_per_token(x, mode)
    rq, rs, rz = ref.quantize_per_token(x, mode)
    assert_same(q, rq)
    assert_same(s, rs)
    assert_same(z, rz)
    assert torch.isfinite(s).all()
    qmin, qmax = qrange(mode)
    assert q[1, 40] == qmax and q[2, 0] == qmin and q[0, 3] == z[0]
    assert (q[3] == z[3]).all()


# ---------------------------------------------------------------------------
# non-finite and huge values, bits 2..8


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_quantize_non_finite_and_huge(isa, gen, mode, bits):
    qmin, qmax = qrange(mode, bits)
    specials = [math.nan, math.inf, -math.inf, 3e38, -3e38, 1e30, -1e30, 0.0, -0.0]
    # put the specials at every offset of a 19-element vector (body and tail)
    x = torch.randn(19 * len(specials), generator=gen)
    for i, v in enumerate(specials):
        x[i * 19 + i % 19] = v
        x[i * 19 + (i + 9) % 19] = v
    for scale in (torch.tensor(0.05), torch.tensor(FLT_EPSILON), torch.tensor(3e37)):
        z = random_zero_point(gen, mode, bits)
        q = tq.quantize(x, scale, z, mode, bits=bits)
        assert_same(q, ref.quantize(x, scale, z, mode, bits=bits))
        assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
        assert (q[torch.isnan(x)] == z.item()).all()
        assert (q[x == math.inf] == qmax).all()
        assert (q[x == -math.inf] == qmin).all()
        if scale.item() < 1:
            assert (q[x >= 1e30] == qmax).all()
            assert (q[x <= -1e30] == qmin).all()
        assert (q[x == 0] == z.item()).all()
    # per channel (quantize_pc path when the channel is the last dim)
    xc = x.reshape(9, 19)
    for axis in (0, 1):
        c = xc.shape[axis]
        s = random_scale(gen, c)
        z = random_zero_point(gen, mode, bits, n=c)
        q = tq.quantize(xc, s, z, mode, axis=axis, bits=bits)
        assert_same(q, ref.quantize(xc, s, z, mode, axis=axis, bits=bits))
        assert (q.int() >= qmin).all() and (q.int() <= qmax).all()


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("mode", MODES)
def test_quantize_bits_match_reference(isa, gen, mode, bits):
    qmin, qmax = qrange(mode, bits)
    x = torch.randn(4, 1037, generator=gen) * 2
    s, z = tq.choose_qparams(x, mode, bits=bits)
    q = tq.quantize(x, s, z, mode, bits=bits)
    assert_same(q, ref.quantize(x, s, z, mode, bits=bits))
    # the extreme of the data maps to the end of the b-bit range
    if mode == "symmetric":
        assert q.int().abs().max() == qmax
    else:
        assert q.int().min() == qmin and q.int().max() == qmax
    assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
    # larger values clamp to the b-bit range, not the 8-bit one
    q = tq.quantize(x * 10, s, z, mode, bits=bits)
    assert q.int().min() == qmin and q.int().max() == qmax
    assert_same(q, ref.quantize(x * 10, s, z, mode, bits=bits))
    sc, zc = tq.choose_qparams(x, mode, axis=1, bits=bits)
    qc = tq.quantize(x, sc, zc, mode, axis=1, bits=bits)
    assert_same(qc, ref.quantize(x, sc, zc, mode, axis=1, bits=bits))


# ---------------------------------------------------------------------------
# thread count and instruction set do not change results


def _run_all_ops(x, mode):
    out = {}
    out["qp_tensor"] = tq.choose_qparams(x, mode)
    out["qp_ch0"] = tq.choose_qparams(x, mode, axis=0)
    out["qp_ch_last"] = tq.choose_qparams(x, mode, axis=-1)
    s, z = out["qp_tensor"]
    out["q_tensor"] = tq.quantize(x, s, z, mode)
    out["dq_tensor"] = tq.dequantize(out["q_tensor"], s, z)
    for key, axis in (("ch0", 0), ("ch_last", -1)):
        s, z = out["qp_" + key]
        out["q_" + key] = tq.quantize(x, s, z, mode, axis=axis)
        out["dq_" + key] = tq.dequantize(out["q_" + key], s, z, axis=axis)
        out["dq16_" + key] = tq.dequantize(out["q_" + key], s, z, axis=axis,
                                           dtype=torch.bfloat16)
    out["per_token"] = tq.quantize_per_token(x, mode)
    q, s, z = out["per_token"]
    out["dq_token"] = tq.dequantize(q, s, z, dtype=torch.float16)
    return out


def _assert_same_outputs(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            va, vb = (va,), (vb,)
        for ta, tb in zip(va, vb):
            assert_same(ta, tb, f"{what}: {key}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1 << 20,), (256, 4099), (3, 300007), (150001, 7)])
def test_thread_count_does_not_change_results(restore_threads, gen, mode, shape):
    x = torch.randn(shape, generator=gen) * 3 + (0.5 if mode == "asymmetric" else 0.0)
    x.view(-1)[::1009] = math.nan
    with num_threads(1):
        one = _run_all_ops(x, mode)
    for n in (2, 3):
        with num_threads(n):
            _assert_same_outputs(_run_all_ops(x, mode), one, f"{n} threads vs 1")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_long_rows(isa, restore_threads, gen, mode, dtype, threads):
    """Rows of 1Mi elements and more (one task per row when single-threaded,
    pieces of a row starting at unaligned addresses, outputs of 4 MiB and
    more) give the same codes as the reference and torch."""
    torch.set_num_threads(threads)
    n = (2 << 20) + 26  # with 2 threads: two pieces of 1Mi + 13, the second unaligned
    x = (torch.randn(n, generator=gen) * 3 + 0.5).to(dtype)
    x[n // 2 + 5] = math.nan
    s, z = tq.choose_qparams(x, mode)
    z = z + (3 if mode == "symmetric" else 0)
    q = tq.quantize(x, s, z, mode)
    assert_same(q, ref.quantize(x, s, z, mode), "per tensor vs reference")
    finite = torch.isfinite(x)
    assert_same(q[finite], torch_per_tensor(x[finite], s, z, mode), "per tensor vs torch")
    # per channel / per token: rows of 1Mi + 3 elements, the second row unaligned
    xr = x[: 2 * ((1 << 20) + 3)].reshape(2, -1)
    sc, zc = tq.choose_qparams(xr, mode, axis=0)
    assert_same(tq.quantize(xr, sc, zc, mode, axis=0), ref.quantize(xr, sc, zc, mode, axis=0))
    qt, st, zt = tq.quantize_per_token(xr, mode)
    assert_same(qt, ref.quantize(xr, st, zt, mode), "per token vs reference")
    assert_same(tq.dequantize(qt, st, zt), ref.dequantize(qt, st, zt))


def test_large_outputs_are_ordinary_tensors(gen):
    """Outputs of 4 MiB and more (a different allocator) behave like any
    tensor: resize, clone, save/load, shared memory, numpy, free."""
    import io

    x = torch.randn((4 << 20) + 7, generator=gen)
    s, z = torch.tensor(0.02), torch.tensor(3, dtype=torch.int32)
    q = tq.quantize(x, s, z, "symmetric")
    expected = torch_per_tensor(x, s, z, "symmetric")
    assert_same(q, expected)
    q.resize_(2 * q.numel())
    assert_same(q[: x.numel()], expected)
    buf = io.BytesIO()
    torch.save(q[: x.numel()].clone(), buf)
    buf.seek(0)
    assert_same(torch.load(buf), expected)
    d = tq.dequantize(expected, s, z)
    assert_same(d, ref.dequantize(expected, s, z))
    d.share_memory_()
    assert_same(d, ref.dequantize(expected, s, z))
    assert int(np.asarray(expected).astype(np.int64).sum()) == int(expected.long().sum())
    del q, d


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_every_isa_matches_scalar(gen, dtype, mode):
    sizes = [(1,), (7,), (8,), (9,), (15,), (16,), (17,), (31,), (32,), (33,), (63,), (64,),
             (65,), (95,), (1023,), (1025,), (3, 37), (13, 9), (5, 1, 23), (2, 70)]
    for shape in sizes:
        x = (torch.randn(shape, generator=gen) * 3 + 0.25).to(dtype)
        if x.numel() > 4:
            x.view(-1)[x.numel() // 2] = math.nan
            x.view(-1)[-1] = math.inf
        with using_isa("scalar"):
            expected = _run_all_ops(x, mode)
        for name in SUPPORTED_ISAS:
            with using_isa(name):
                _assert_same_outputs(_run_all_ops(x, mode), expected,
                                     f"{name} vs scalar, shape {shape}")


def test_set_cpu_isa():
    assert "scalar" in SUPPORTED_ISAS
    best = tq._C._cpu_isa()
    assert best == SUPPORTED_ISAS[-1]
    with pytest.raises(RuntimeError, match="isa"):
        tq._C._set_cpu_isa("sse9")
    assert tq._C._cpu_isa() == best
    for name in ("scalar", "avx2", "avx512"):
        if name not in SUPPORTED_ISAS:
            with pytest.raises(RuntimeError):
                tq._C._set_cpu_isa(name)
    tq._C._set_cpu_isa("best")
    assert tq._C._cpu_isa() == best


# ---------------------------------------------------------------------------
# property tests

finite_f32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False,
                       width=32)
any_f32 = st.floats(width=32)
PROPS = settings(max_examples=50, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(values=st.lists(finite_f32, min_size=1, max_size=80), mode=st.sampled_from(MODES),
       bits=st.integers(2, 8))
def test_property_round_trip(values, mode, bits):
    x = torch.tensor(values, dtype=torch.float32)
    qmin, qmax = qrange(mode, bits)
    for name in SUPPORTED_ISAS:
        with using_isa(name):
            s, z = tq.choose_qparams(x, mode, bits=bits)
            q = tq.quantize(x, s, z, mode, bits=bits)
            d = tq.dequantize(q, s, z)
        assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
        err = (d.double() - x.double()).abs()
        sc = s.item()
        bound = sc / 2 * (1 + 1e-4) + 1e-6 * x.double().abs() + 1e-30
        assert (err <= bound).all(), (err.max().item(), sc)
        assert_same(q, ref.quantize(x, s, z, mode, bits=bits))


@PROPS
@given(values=st.lists(any_f32, min_size=1, max_size=80), mode=st.sampled_from(MODES),
       bits=st.integers(2, 8))
def test_property_matches_reference_any_floats(values, mode, bits):
    x = torch.tensor(values, dtype=torch.float32)
    qmin, qmax = qrange(mode, bits)
    for name in SUPPORTED_ISAS:
        with using_isa(name):
            s, z = tq.choose_qparams(x, mode, bits=bits)
            assert_same(s, ref.choose_qparams(x, mode, bits=bits)[0])
            assert_same(z, ref.choose_qparams(x, mode, bits=bits)[1])
            q = tq.quantize(x, s, z, mode, bits=bits)
            assert_same(q, ref.quantize(x, s, z, mode, bits=bits))
            assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
            assert_same(tq.dequantize(q, s, z), ref.dequantize(q, s, z))
            for a, b in zip(tq.quantize_per_token(x, mode, bits=bits),
                            ref.quantize_per_token(x, mode, bits=bits)):
                assert_same(a, b)


@PROPS
@given(data=st.data(), mode=st.sampled_from(MODES), bits=st.integers(2, 8),
       rows=st.integers(1, 6), cols=st.integers(1, 40), axis=st.sampled_from([0, 1, -1]))
def test_property_per_channel_and_token(data, mode, bits, rows, cols, axis):
    values = data.draw(st.lists(finite_f32, min_size=rows * cols, max_size=rows * cols))
    x = torch.tensor(values, dtype=torch.float32).reshape(rows, cols)
    qmin, qmax = qrange(mode, bits)
    s, z = tq.choose_qparams(x, mode, axis=axis, bits=bits)
    rs, rz = ref.choose_qparams(x, mode, axis=axis, bits=bits)
    assert_same(s, rs)
    assert_same(z, rz)
    q = tq.quantize(x, s, z, mode, axis=axis, bits=bits)
    assert_same(q, ref.quantize(x, s, z, mode, axis=axis, bits=bits))
    d = tq.dequantize(q, s, z, axis=axis)
    bshape = [1, 1]
    bshape[axis] = -1
    bound = s.reshape(bshape).double() / 2 * (1 + 1e-4) + 1e-6 * x.double().abs() + 1e-30
    assert ((d.double() - x.double()).abs() <= bound).all()
    assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
    qt, st_, zt = tq.quantize_per_token(x, mode, bits=bits)
    for a, b in zip((qt, st_, zt), ref.quantize_per_token(x, mode, bits=bits)):
        assert_same(a, b)
    dt = tq.dequantize(qt, st_, zt)
    bound = st_.unsqueeze(-1).double() / 2 * (1 + 1e-4) + 1e-6 * x.double().abs() + 1e-30
    assert ((dt.double() - x.double()).abs() <= bound).all()


def test_choose_qparams_asymmetric_range_wider_than_float_max(isa):
    # hi - lo overflows float32 here; the scale (hi - lo) / 255 does not.
    x = torch.tensor([3.4e38, -3.4e38, 1.0])
    scale, zp = tq.choose_qparams(x, "asymmetric")
    assert torch.isfinite(scale) and scale > 0
    expected = torch.tensor(3.4e38) / 255 - torch.tensor(-3.4e38) / 255
    assert scale.item() == expected.item()
    ref_scale, ref_zp = ref.choose_qparams(x, "asymmetric")
    assert torch.equal(scale, ref_scale) and torch.equal(zp, ref_zp)
    q = tq.quantize(x, scale, zp, "asymmetric")
    assert q.tolist() == [255, 0, zp.item()]
