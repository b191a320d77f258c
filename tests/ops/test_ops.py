"""Numerics of the torch_quant operators (docs/semantics.md, "Modes and rounding" and "Operators").

Oracles: ``torch.quantize_per_tensor`` / ``quantize_per_channel`` (see the note
on double rounding below), ``torch_quant.ops.reference`` and the formulas of docs/semantics.md
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

import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import (
    F32,
    f32,
    FLT_EPSILON,
    MODES,
    assert_same,
    data_for,
    double_rounding_points,
    qrange,
    random_scale,
    random_zero_point,
    torch_per_channel,
    torch_per_tensor,
)



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
