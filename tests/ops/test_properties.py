"""Property tests (hypothesis) of the quantization ops: for any float32 values,
every mode and bits 2..8, on every CPU kernel path: the codes stay in range,
the round trip is within half a step, and choose_qparams / quantize /
dequantize / quantize_per_token equal torch_quant.ops.reference bit for bit
(docs/semantics.md, "Modes and rounding")."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import MODES, SUPPORTED_ISAS, assert_same, qrange, using_isa


finite_f32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False,
                       width=32)
any_f32 = st.floats(width=32)
PROPS = settings(max_examples=50, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])


def assert_within_half_step(x, d, scale):
    """|dequantized - x| <= scale / 2 (with float32 slack) for every element in range."""
    bound = scale.double() / 2 * (1 + 1e-4) + 1e-6 * x.double().abs() + 1e-30
    err = (d.double() - x.double()).abs()
    assert (err <= bound).all(), (err.max().item(), scale.max().item())


def _on_every_isa(x, mode, bits):
    """(scale, zero_point, codes) of x per tensor, once per CPU kernel path
    (inside using_isa), each checked against the reference and the code range."""
    qmin, qmax = qrange(mode, bits)
    rs, rz = ref.choose_qparams(x, mode, bits=bits)
    for name in SUPPORTED_ISAS:
        with using_isa(name):
            s, z = tq.choose_qparams(x, mode, bits=bits)
            assert_same(s, rs, name)
            assert_same(z, rz, name)
            q = tq.quantize(x, s, z, mode, bits=bits)
            assert_same(q, ref.quantize(x, s, z, mode, bits=bits), name)
            assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
            yield s, z, q


@PROPS
@given(values=st.lists(finite_f32, min_size=1, max_size=80), mode=st.sampled_from(MODES),
       bits=st.integers(2, 8))
def test_property_round_trip(values, mode, bits):
    x = torch.tensor(values, dtype=torch.float32)
    for s, z, q in _on_every_isa(x, mode, bits):
        assert_within_half_step(x, tq.dequantize(q, s, z), s)


@PROPS
@given(values=st.lists(any_f32, min_size=1, max_size=80), mode=st.sampled_from(MODES),
       bits=st.integers(2, 8))
def test_property_matches_reference_any_floats(values, mode, bits):
    x = torch.tensor(values, dtype=torch.float32)
    for s, z, q in _on_every_isa(x, mode, bits):
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
    assert_within_half_step(x, d, s.reshape(bshape))
    assert (q.int() >= qmin).all() and (q.int() <= qmax).all()
    qt, st_, zt = tq.quantize_per_token(x, mode, bits=bits)
    for a, b in zip((qt, st_, zt), ref.quantize_per_token(x, mode, bits=bits)):
        assert_same(a, b)
    assert_within_half_step(x, tq.dequantize(qt, st_, zt), st_.unsqueeze(-1))
