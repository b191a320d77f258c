"""Bad input (docs/semantics.md, "Operators") raises a RuntimeError (or ValueError) whose message
names the op and the argument; never a crash, never a silent wrong result."""

from __future__ import annotations

import math

import pytest
import torch

import torch_quant as tq
from conftest import assert_fake_raises_as_real, raises

QZ = "torch_quant.quantize"
DQ = "torch_quant.dequantize"
CQ = "torch_quant.choose_qparams"
PT = "torch_quant.quantize_per_token"

X = torch.randn(4, 6)
S = torch.tensor(0.1)
Z = torch.tensor(0, dtype=torch.int32)
Q8 = torch.zeros(4, 6, dtype=torch.int8)
QU8 = torch.zeros(4, 6, dtype=torch.uint8)


def _t(v, dtype=None):
    return torch.tensor(v, dtype=dtype)


# (id, callable, op, argument named in the message)
CASES = [
    # --- input dtypes
    ("cq_x_f64", lambda: tq.choose_qparams(X.double(), "symmetric"), CQ, "x"),
    ("cq_x_i32", lambda: tq.choose_qparams(X.int(), "symmetric"), CQ, "x"),
    ("qz_x_f64", lambda: tq.quantize(X.double(), S, Z, "symmetric"), QZ, "x"),
    ("qz_x_i32", lambda: tq.quantize(X.int(), S, Z, "symmetric"), QZ, "x"),
    ("qz_x_int8", lambda: tq.quantize(Q8, S, Z, "symmetric"), QZ, "x"),
    ("pt_x_f64", lambda: tq.quantize_per_token(X.double(), "symmetric"), PT, "x"),
    ("pt_x_i32", lambda: tq.quantize_per_token(X.int(), "asymmetric"), PT, "x"),
    ("dq_q_f32", lambda: tq.dequantize(X, S, Z), DQ, "q"),
    ("dq_q_i32", lambda: tq.dequantize(Q8.int(), S, Z), DQ, "q"),
    ("dq_q_i16", lambda: tq.dequantize(Q8.short(), S, Z), DQ, "q"),
    ("dq_q_bool", lambda: tq.dequantize(Q8.bool(), S, Z), DQ, "q"),
    ("dq_dtype_f64", lambda: tq.dequantize(Q8, S, Z, dtype=torch.float64), DQ, "dtype"),
    ("dq_dtype_i32", lambda: tq.dequantize(Q8, S, Z, dtype=torch.int32), DQ, "dtype"),
    ("dq_dtype_i8", lambda: tq.dequantize(Q8, S, Z, dtype=torch.int8), DQ, "dtype"),
    # --- axis out of range
    ("cq_axis_pos", lambda: tq.choose_qparams(X, "symmetric", axis=2), CQ, "axis"),
    ("cq_axis_neg", lambda: tq.choose_qparams(X, "symmetric", axis=-3), CQ, "axis"),
    ("cq_axis_huge", lambda: tq.choose_qparams(X, "symmetric", axis=2**40), CQ, "axis"),
    ("cq_axis_huge_neg", lambda: tq.choose_qparams(X, "symmetric", axis=-(2**62)), CQ, "axis"),
    ("cq_axis_0dim", lambda: tq.choose_qparams(_t(1.0), "symmetric", axis=0), CQ, "axis"),
    ("cq_axis_0dim_neg", lambda: tq.choose_qparams(_t(1.0), "symmetric", axis=-1), CQ, "axis"),
    ("qz_axis_pos", lambda: tq.quantize(X, S.expand(4), Z.expand(4), "symmetric", axis=2),
     QZ, "axis"),
    ("qz_axis_neg", lambda: tq.quantize(X, S.expand(4), Z.expand(4), "symmetric", axis=-3),
     QZ, "axis"),
    ("qz_axis_0dim", lambda: tq.quantize(_t(1.0), S.reshape(1), Z.reshape(1), "symmetric",
                                         axis=0), QZ, "axis"),
    ("dq_axis_pos", lambda: tq.dequantize(Q8, S.expand(6), Z.expand(6), axis=2), DQ, "axis"),
    ("dq_axis_neg", lambda: tq.dequantize(Q8, S.expand(4), Z.expand(4), axis=-3), DQ, "axis"),
    ("dq_axis_0dim", lambda: tq.dequantize(_t(1, torch.int8), S.reshape(1), Z.reshape(1),
                                           axis=0), DQ, "axis"),
    # --- mode
    ("cq_mode", lambda: tq.choose_qparams(X, "affine"), CQ, "mode"),
    ("cq_mode_case", lambda: tq.choose_qparams(X, "Symmetric"), CQ, "mode"),
    ("qz_mode", lambda: tq.quantize(X, S, Z, "asym"), QZ, "mode"),
    ("pt_mode", lambda: tq.quantize_per_token(X, ""), PT, "mode"),
    # --- bits
    ("cq_bits1", lambda: tq.choose_qparams(X, "symmetric", bits=1), CQ, "bits"),
    ("cq_bits9", lambda: tq.choose_qparams(X, "asymmetric", bits=9), CQ, "bits"),
    ("cq_bits0", lambda: tq.choose_qparams(X, "asymmetric", bits=0), CQ, "bits"),
    ("qz_bits1", lambda: tq.quantize(X, S, Z, "symmetric", bits=1), QZ, "bits"),
    ("qz_bits9", lambda: tq.quantize(X, S, Z, "asymmetric", bits=9), QZ, "bits"),
    ("qz_bits_neg", lambda: tq.quantize(X, S, Z, "asymmetric", bits=-8), QZ, "bits"),
    ("pt_bits1", lambda: tq.quantize_per_token(X, "symmetric", bits=1), PT, "bits"),
    ("pt_bits9", lambda: tq.quantize_per_token(X, "asymmetric", bits=9), PT, "bits"),
    # --- scale values
    ("qz_scale_0", lambda: tq.quantize(X, _t(0.0), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_neg0", lambda: tq.quantize(X, _t(-0.0), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_neg", lambda: tq.quantize(X, _t(-0.5), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_nan", lambda: tq.quantize(X, _t(math.nan), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_inf", lambda: tq.quantize(X, _t(math.inf), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_ninf", lambda: tq.quantize(X, _t(-math.inf), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_subnormal", lambda: tq.quantize(X, _t(1e-45), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_f64_to_0", lambda: tq.quantize(X, _t(1e-60, torch.float64), Z, "symmetric"),
     QZ, "scale"),
    ("qz_scale_f64_to_inf", lambda: tq.quantize(X, _t(1e60, torch.float64), Z, "symmetric"),
     QZ, "scale"),
    ("qz_scale_ch_one_bad", lambda: tq.quantize(X, _t([0.1, 0.2, 0.0, 0.3]),
                                                torch.zeros(4, dtype=torch.int32),
                                                "symmetric", axis=0), QZ, "scale"),
    ("qz_scale_token_nan", lambda: tq.quantize(X, _t([0.1, math.nan, 0.2, 0.3]),
                                               torch.zeros(4, dtype=torch.int32),
                                               "symmetric"), QZ, "scale"),
    ("dq_scale_0", lambda: tq.dequantize(Q8, _t(0.0), Z), DQ, "scale"),
    ("dq_scale_neg", lambda: tq.dequantize(Q8, _t(-1.0), Z), DQ, "scale"),
    ("dq_scale_nan", lambda: tq.dequantize(Q8, _t(math.nan), Z), DQ, "scale"),
    ("dq_scale_inf", lambda: tq.dequantize(Q8, _t(math.inf), Z), DQ, "scale"),
    # --- zero point values
    ("qz_zp_sym_hi", lambda: tq.quantize(X, S, _t(128, torch.int32), "symmetric"), QZ,
     "zero_point"),
    ("qz_zp_sym_lo", lambda: tq.quantize(X, S, _t(-129, torch.int32), "symmetric"), QZ,
     "zero_point"),
    ("qz_zp_asym_neg", lambda: tq.quantize(X, S, _t(-1, torch.int32), "asymmetric"), QZ,
     "zero_point"),
    ("qz_zp_asym_hi", lambda: tq.quantize(X, S, _t(256, torch.int32), "asymmetric"), QZ,
     "zero_point"),
    ("qz_zp_bits4_asym", lambda: tq.quantize(X, S, _t(16, torch.int32), "asymmetric", bits=4),
     QZ, "zero_point"),
    ("qz_zp_bits4_sym", lambda: tq.quantize(X, S, _t(-9, torch.int32), "symmetric", bits=4),
     QZ, "zero_point"),
    ("qz_zp_bits2_sym", lambda: tq.quantize(X, S, _t(2, torch.int32), "symmetric", bits=2),
     QZ, "zero_point"),
    ("qz_zp_int64_wrap", lambda: tq.quantize(X, S, _t(2**32, torch.int64), "asymmetric"), QZ,
     "zero_point"),
    ("qz_zp_int64_wrap5", lambda: tq.quantize(X, S, _t(2**32 + 5, torch.int64), "symmetric"),
     QZ, "zero_point"),
    ("qz_zp_int64_neg_wrap", lambda: tq.quantize(X, S, _t(-(2**32) + 3, torch.int64),
                                                 "asymmetric"), QZ, "zero_point"),
    ("qz_zp_ch_one_bad", lambda: tq.quantize(X, S.expand(4), _t([0, 1, 300, 2], torch.int32),
                                             "asymmetric", axis=0), QZ, "zero_point"),
    ("dq_zp_int8_hi", lambda: tq.dequantize(Q8, S, _t(128, torch.int32)), DQ, "zero_point"),
    ("dq_zp_uint8_neg", lambda: tq.dequantize(QU8, S, _t(-1, torch.int32)), DQ, "zero_point"),
    ("dq_zp_uint8_hi", lambda: tq.dequantize(QU8, S, _t(256, torch.int32)), DQ, "zero_point"),
    ("dq_zp_int64_wrap", lambda: tq.dequantize(QU8, S, _t(2**32 + 7, torch.int64)), DQ,
     "zero_point"),
    # --- scale / zero point shapes and dtypes
    ("qz_scale_shape_ch", lambda: tq.quantize(X, S.expand(3), Z.expand(3), "symmetric",
                                              axis=0), QZ, "scale"),
    ("qz_scale_shape_ch_2d", lambda: tq.quantize(X, S.expand(4, 1), Z.expand(4, 1),
                                                 "symmetric", axis=0), QZ, "scale"),
    ("qz_scale_shape_ch_0dim", lambda: tq.quantize(X, S, Z, "symmetric", axis=1), QZ,
     "scale"),
    ("qz_scale_shape_tensor", lambda: tq.quantize(X, S.expand(6), Z.expand(6), "symmetric"),
     QZ, "scale"),
    ("qz_scale_shape_tensor2", lambda: tq.quantize(X, S.expand(2), Z.expand(2), "symmetric"),
     QZ, "scale"),
    ("qz_scale_shape_token_3d", lambda: tq.quantize(torch.randn(2, 3, 5), S.expand(2, 5),
                                                    Z.expand(2, 5), "symmetric"), QZ, "scale"),
    ("qz_scale_zp_shapes_differ", lambda: tq.quantize(X, S.expand(4), Z, "symmetric",
                                                      axis=0), QZ, "zero_point"),
    ("qz_scale_zp_shapes_differ2", lambda: tq.quantize(X, S, Z.expand(1), "symmetric"), QZ,
     "zero_point"),
    ("qz_scale_int", lambda: tq.quantize(X, _t(1), Z, "symmetric"), QZ, "scale"),
    ("qz_scale_bool", lambda: tq.quantize(X, _t(True), Z, "symmetric"), QZ, "scale"),
    ("qz_zp_float", lambda: tq.quantize(X, S, _t(0.0), "symmetric"), QZ, "zero_point"),
    ("qz_zp_bool", lambda: tq.quantize(X, S, _t(False), "symmetric"), QZ, "zero_point"),
    ("qz_scale_empty", lambda: tq.quantize(X, torch.empty(0), torch.empty(0, dtype=torch.int32),
                                           "symmetric"), QZ, "scale"),
    ("qz_scale_empty_ch", lambda: tq.quantize(X, torch.empty(0),
                                              torch.empty(0, dtype=torch.int32), "symmetric",
                                              axis=0), QZ, "scale"),
    ("dq_scale_shape_ch", lambda: tq.dequantize(Q8, S.expand(4), Z.expand(4), axis=1), DQ,
     "scale"),
    ("dq_scale_shape_tensor", lambda: tq.dequantize(Q8, S.expand(3), Z.expand(3)), DQ,
     "scale"),
    ("dq_scale_zp_shapes_differ", lambda: tq.dequantize(Q8, S.expand(4), Z.expand(1, 4),
                                                        axis=0), DQ, "zero_point"),
    ("dq_scale_int", lambda: tq.dequantize(Q8, _t(2), Z), DQ, "scale"),
    ("dq_zp_float", lambda: tq.dequantize(Q8, S, _t(1.0)), DQ, "zero_point"),
    ("dq_scale_empty", lambda: tq.dequantize(Q8, torch.empty(0),
                                             torch.empty(0, dtype=torch.int32)), DQ, "scale"),
    # --- quantize_per_token needs a dimension
    ("pt_0dim", lambda: tq.quantize_per_token(_t(1.0), "symmetric"), PT, "x"),
]


@pytest.mark.parametrize("fn,op,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises(fn, op, arg):
    with raises(op, arg):
        fn()


def test_errors_are_runtime_errors_naming_expectation():
    with pytest.raises(RuntimeError, match=r"torch_quant[.]quantize: bits must be in \[2, 8\], got 9"):
        tq.quantize(X, S, Z, "symmetric", bits=9)
    with pytest.raises(RuntimeError,
                       match=r"torch_quant[.]quantize: zero_point must be in \[0, 255\], got 4294967296"):
        tq.quantize(X, S, _t(2**32, torch.int64), "asymmetric")
    with pytest.raises(RuntimeError, match=r"torch_quant[.]choose_qparams: mode must be "
                                           r"'symmetric' or 'asymmetric', got 'foo'"):
        tq.choose_qparams(X, "foo")
    with pytest.raises(RuntimeError, match=r"torch_quant[.]quantize: scale .* at index 2"):
        tq.quantize(X, _t([0.1, 0.2, -1.0, 0.3]), torch.zeros(4, dtype=torch.int32),
                    "symmetric", axis=0)


def test_valid_edge_parameters_do_not_raise():
    # the ends of the zero point range and the smallest scale with a finite
    # reciprocal are legal
    for mode, zps in (("symmetric", (-128, 127)), ("asymmetric", (0, 255))):
        for zp in zps:
            tq.quantize(X, S, _t(zp, torch.int64), mode)
    tq.quantize(X, _t(2.0**-126), Z, "symmetric")
    tq.quantize(X, _t(2.0**-23), Z, "symmetric", bits=2)
    # empty x with empty per-channel params
    x = torch.empty(0, 3)
    assert tq.quantize(x, torch.empty(0), torch.empty(0, dtype=torch.int32), "symmetric",
                       axis=0).shape == (0, 3)


@pytest.mark.parametrize("which", ["scale", "zero_point"])
def test_params_on_other_device_raise(which):
    """scale / zero_point on another device than x must raise, not return an
    uninitialised tensor. (Only the meta device is available on every machine.)"""
    s = S.to("meta") if which == "scale" else S
    z = Z.to("meta") if which == "zero_point" else Z
    with raises(QZ, which):
        tq.quantize(X, s, z, "symmetric")
    with raises(DQ, which):
        tq.dequantize(Q8, s, z)


def test_failed_call_leaves_isa_and_inputs_untouched():
    x = X.clone()
    with pytest.raises(RuntimeError):
        tq.quantize(x, _t(-1.0), Z, "symmetric")
    assert torch.equal(x, X)


# ---------------------------------------------------------------------------
# the fake kernels reject the same metadata errors (torch.compile / export)

FAKE_CASES = [
    ("cq_mode", lambda x, s, z, q: tq.choose_qparams(x, "affine"), CQ, "mode"),
    ("cq_bits", lambda x, s, z, q: tq.choose_qparams(x, "symmetric", bits=9), CQ, "bits"),
    ("cq_x_dtype", lambda x, s, z, q: tq.choose_qparams(x.double(), "symmetric"), CQ, "x"),
    ("cq_axis", lambda x, s, z, q: tq.choose_qparams(x, "symmetric", axis=2), CQ, "axis"),
    ("cq_axis_neg", lambda x, s, z, q: tq.choose_qparams(x, "symmetric", axis=-3), CQ, "axis"),
    ("qz_mode", lambda x, s, z, q: tq.quantize(x, s, z, "x"), QZ, "mode"),
    ("qz_bits", lambda x, s, z, q: tq.quantize(x, s, z, "symmetric", bits=1), QZ, "bits"),
    ("qz_x_dtype", lambda x, s, z, q: tq.quantize(x.int(), s, z, "symmetric"), QZ, "x"),
    ("qz_axis", lambda x, s, z, q: tq.quantize(x, s.expand(4), z.expand(4), "symmetric",
                                               axis=2), QZ, "axis"),
    ("qz_scale_shape", lambda x, s, z, q: tq.quantize(x, s.expand(3), z.expand(3),
                                                      "symmetric", axis=0), QZ, "scale"),
    ("qz_scale_int", lambda x, s, z, q: tq.quantize(x, z, z, "symmetric"), QZ, "scale"),
    ("qz_zp_float", lambda x, s, z, q: tq.quantize(x, s, s, "symmetric"), QZ, "zero_point"),
    ("dq_q_dtype", lambda x, s, z, q: tq.dequantize(x, s, z), DQ, "q"),
    ("dq_dtype", lambda x, s, z, q: tq.dequantize(q, s, z, dtype=torch.float64), DQ, "dtype"),
    ("dq_axis", lambda x, s, z, q: tq.dequantize(q, s.expand(4), z.expand(4), axis=-3), DQ,
     "axis"),
    ("dq_scale_shape", lambda x, s, z, q: tq.dequantize(q, s.expand(5), z.expand(5)), DQ,
     "scale"),
    ("pt_0dim", lambda x, s, z, q: tq.quantize_per_token(x[0, 0], "symmetric"), PT, "x"),
    ("pt_mode", lambda x, s, z, q: tq.quantize_per_token(x, "nope"), PT, "mode"),
    ("pt_bits", lambda x, s, z, q: tq.quantize_per_token(x, "symmetric", bits=0), PT, "bits"),
]


@pytest.mark.parametrize("fn,op,arg", [c[1:] for c in FAKE_CASES], ids=[c[0] for c in FAKE_CASES])
def test_fake_kernels_raise(fn, op, arg):
    assert_fake_raises_as_real(lambda t: fn(t["x"], t["s"], t["z"], t["q"]),
                               dict(x=X, s=S, z=Z, q=Q8), op, arg)
