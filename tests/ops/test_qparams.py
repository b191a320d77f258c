"""Numerics of choose_qparams and quantize_per_token, non-finite and huge
values, bits 2..8, and independence of the thread count and instruction set
(docs/semantics.md, "Modes and rounding"); oracles as in test_ops.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import (
    BITS,
    F32,
    f32,
    FLT_EPSILON,
    MODES,
    SUPPORTED_ISAS,
    assert_same,
    num_threads,
    qrange,
    random_scale,
    random_zero_point,
    torch_per_tensor,
    using_isa,
)



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
