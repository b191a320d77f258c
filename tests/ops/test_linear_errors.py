"""Bad input to quantized_linear / dynamic_quantized_linear (docs/semantics.md, "Operators") raises a
RuntimeError whose message names the op and the argument; never a crash, never
a silent wrong result. The fake (meta) kernels reject the same metadata errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import torch_quant as tq
from conftest import assert_fake_raises_as_real, raises

QL = "torch_quant.quantized_linear"
DQL = "torch_quant.dynamic_quantized_linear"

M, K, N = 4, 6, 3
X = torch.randn(M, K)
XQ = torch.randint(-128, 128, (M, K), dtype=torch.int8)
XU = torch.randint(0, 256, (M, K), dtype=torch.uint8)
XS = torch.tensor(0.1)
XZ = torch.tensor(0, dtype=torch.int32)
WQ = torch.randint(-128, 128, (N, K), dtype=torch.int8)
WS = torch.full((N,), 0.02)
B = torch.zeros(N)
WSUM = WQ.int().sum(1, dtype=torch.int32)
KBIG = 65794


def _t(v, dtype=None):
    return torch.tensor(v, dtype=dtype)


def ql(x_q=XQ, x_scale=XS, x_zero_point=XZ, w_q=WQ, w_scale=WS, bias=None, w_sum=None,
       out_dtype=None):
    return tq.quantized_linear(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype)


def dql(x=X, w_q=WQ, w_scale=WS, bias=None, w_sum=None, act_mode="symmetric", smooth=None,
        hadamard_block=0):
    return tq.dynamic_quantized_linear(x, w_q, w_scale, bias, w_sum, act_mode, smooth,
                                       hadamard_block)


def test_valid_calls_do_not_raise():
    """The baseline of every case below is legal (so each case tests one thing)."""
    assert ql().shape == (M, N)
    assert ql(XU, x_zero_point=_t(255)).shape == (M, N)
    assert ql(bias=B, w_sum=WSUM, out_dtype=torch.float16).dtype == torch.float16
    assert dql(bias=B, w_sum=WSUM, act_mode="asymmetric").shape == (M, N)
    assert dql(hadamard_block=2).shape == (M, N)
    # edges of the legal ranges
    for x_q, zps in ((XQ, (-128, 127)), (XU, (0, 255))):
        for zp in zps:
            ql(x_q, x_zero_point=_t(zp, torch.int64))
            ql(x_q, XS.expand(M), _t(zp, torch.int64).expand(M))
    ql(x_scale=_t(2.0**-126), w_scale=_t(2.0**-126))
    ql(x_scale=XS.reshape(1, 1), x_zero_point=XZ.reshape(1, 1), w_scale=WS[:1])  # one element
    big = 65793
    ql(torch.zeros(1, big, dtype=torch.uint8), XS, XZ, torch.zeros(1, big, dtype=torch.int8),
       WS[:1])


CASES = [
    # --- x_q
    ("ql_xq_f32", lambda: ql(x_q=X), QL, "x_q"),
    ("ql_xq_i32", lambda: ql(x_q=XQ.int()), QL, "x_q"),
    ("ql_xq_i16", lambda: ql(x_q=XQ.short()), QL, "x_q"),
    ("ql_xq_bool", lambda: ql(x_q=XQ.bool()), QL, "x_q"),
    ("ql_xq_0dim", lambda: ql(x_q=_t(1, torch.int8), w_q=WQ[:, :1]), QL, "x_q"),
    # --- x_scale
    ("ql_xs_shape_K", lambda: ql(x_scale=XS.expand(K), x_zero_point=XZ.expand(K)), QL, "x_scale"),
    ("ql_xs_shape_2", lambda: ql(x_scale=XS.expand(2), x_zero_point=XZ.expand(2)), QL, "x_scale"),
    ("ql_xs_shape_M1", lambda: ql(x_scale=XS.expand(M, 1), x_zero_point=XZ.expand(M, 1)), QL,
     "x_scale"),
    ("ql_xs_shape_batch", lambda: ql(x_q=XQ.reshape(2, 2, K), x_scale=XS.expand(4),
                                     x_zero_point=XZ.expand(4)), QL, "x_scale"),
    ("ql_xs_empty", lambda: ql(x_scale=torch.empty(0), x_zero_point=torch.empty(0, dtype=torch.int32)),
     QL, "x_scale"),
    ("ql_xs_int", lambda: ql(x_scale=_t(1)), QL, "x_scale"),
    ("ql_xs_bool", lambda: ql(x_scale=_t(True)), QL, "x_scale"),
    ("ql_xs_0", lambda: ql(x_scale=_t(0.0)), QL, "x_scale"),
    ("ql_xs_neg0", lambda: ql(x_scale=_t(-0.0)), QL, "x_scale"),
    ("ql_xs_neg", lambda: ql(x_scale=_t(-0.1)), QL, "x_scale"),
    ("ql_xs_nan", lambda: ql(x_scale=_t(math.nan)), QL, "x_scale"),
    ("ql_xs_inf", lambda: ql(x_scale=_t(math.inf)), QL, "x_scale"),
    ("ql_xs_ninf", lambda: ql(x_scale=_t(-math.inf)), QL, "x_scale"),
    ("ql_xs_subnormal", lambda: ql(x_scale=_t(1e-45)), QL, "x_scale"),
    ("ql_xs_f64_to_inf", lambda: ql(x_scale=_t(1e60, torch.float64)), QL, "x_scale"),
    ("ql_xs_token_one_bad", lambda: ql(x_scale=_t([0.1, 0.2, math.nan, 0.3]),
                                       x_zero_point=XZ.expand(M)), QL, "x_scale"),
    ("ql_xs_token_one_neg", lambda: ql(x_scale=_t([0.1, 0.2, 0.3, -1.0]),
                                       x_zero_point=XZ.expand(M)), QL, "x_scale"),
    # --- x_zero_point
    ("ql_xz_float", lambda: ql(x_zero_point=_t(0.0)), QL, "x_zero_point"),
    ("ql_xz_bool", lambda: ql(x_zero_point=_t(False)), QL, "x_zero_point"),
    ("ql_xz_u8_256", lambda: ql(x_q=XU, x_zero_point=_t(256)), QL, "x_zero_point"),
    ("ql_xz_u8_neg", lambda: ql(x_q=XU, x_zero_point=_t(-1)), QL, "x_zero_point"),
    ("ql_xz_u8_wrap", lambda: ql(x_q=XU, x_zero_point=_t(2**32 + 3, torch.int64)), QL,
     "x_zero_point"),
    ("ql_xz_i8_128", lambda: ql(x_zero_point=_t(128)), QL, "x_zero_point"),
    ("ql_xz_i8_m129", lambda: ql(x_zero_point=_t(-129)), QL, "x_zero_point"),
    ("ql_xz_i8_u8_code", lambda: ql(x_zero_point=_t(200)), QL, "x_zero_point"),
    ("ql_xz_token_one_bad", lambda: ql(x_q=XU, x_scale=XS.expand(M),
                                       x_zero_point=_t([0, 5, 300, 1])), QL, "x_zero_point"),
    ("ql_xs_xz_shapes_differ", lambda: ql(x_scale=XS.expand(M)), QL, "x_zero_point"),
    ("ql_xs_xz_shapes_differ2", lambda: ql(x_zero_point=XZ.expand(M)), QL, "x_zero_point"),
    ("ql_xs_xz_shapes_differ3", lambda: ql(x_zero_point=XZ.reshape(1)), QL, "x_zero_point"),
    # --- w_q
    ("ql_wq_u8", lambda: ql(w_q=WQ.to(torch.uint8)), QL, "w_q"),
    ("ql_wq_f32", lambda: ql(w_q=WQ.float()), QL, "w_q"),
    ("ql_wq_i32", lambda: ql(w_q=WQ.int()), QL, "w_q"),
    ("ql_wq_1d", lambda: ql(w_q=WQ[0]), QL, "w_q"),
    ("ql_wq_3d", lambda: ql(w_q=WQ.reshape(1, N, K)), QL, "w_q"),
    ("ql_wq_0dim", lambda: ql(w_q=WQ[0, 0]), QL, "w_q"),
    ("ql_k_mismatch", lambda: ql(w_q=WQ[:, :5]), QL, "w_q"),
    ("ql_k_mismatch_transposed", lambda: ql(w_q=torch.zeros(K, N, dtype=torch.int8)), QL, "w_q"),
    ("ql_k_too_large", lambda: ql(x_q=torch.zeros(1, KBIG, dtype=torch.uint8),
                                  w_q=torch.zeros(1, KBIG, dtype=torch.int8), w_scale=WS[:1]),
     QL, "K"),
    ("ql_k_too_large_empty_m", lambda: ql(x_q=torch.zeros(0, KBIG, dtype=torch.int8),
                                          w_q=torch.zeros(1, KBIG, dtype=torch.int8),
                                          w_scale=WS[:1]), QL, "K"),
    # --- w_scale
    ("ql_ws_shape", lambda: ql(w_scale=torch.full((N + 1,), 0.1)), QL, "w_scale"),
    ("ql_ws_shape_2d", lambda: ql(w_scale=torch.full((N, 1), 0.1)), QL, "w_scale"),
    ("ql_ws_shape_K", lambda: ql(w_scale=torch.full((K,), 0.1)), QL, "w_scale"),
    ("ql_ws_empty", lambda: ql(w_scale=torch.empty(0)), QL, "w_scale"),
    ("ql_ws_int", lambda: ql(w_scale=_t([1, 1, 1])), QL, "w_scale"),
    ("ql_ws_0", lambda: ql(w_scale=_t(0.0)), QL, "w_scale"),
    ("ql_ws_neg", lambda: ql(w_scale=_t([0.1, -0.1, 0.1])), QL, "w_scale"),
    ("ql_ws_one_zero", lambda: ql(w_scale=_t([0.1, 0.1, 0.0])), QL, "w_scale"),
    ("ql_ws_nan", lambda: ql(w_scale=_t(math.nan)), QL, "w_scale"),
    ("ql_ws_inf", lambda: ql(w_scale=_t([0.1, math.inf, 0.1])), QL, "w_scale"),
    # --- bias
    ("ql_bias_shape", lambda: ql(bias=torch.zeros(N + 1)), QL, "bias"),
    ("ql_bias_shape_2d", lambda: ql(bias=torch.zeros(1, N)), QL, "bias"),
    ("ql_bias_0dim", lambda: ql(bias=_t(0.0)), QL, "bias"),
    ("ql_bias_int", lambda: ql(bias=torch.zeros(N, dtype=torch.int32)), QL, "bias"),
    ("ql_bias_int8", lambda: ql(bias=torch.zeros(N, dtype=torch.int8)), QL, "bias"),
    # --- w_sum
    ("ql_wsum_i64", lambda: ql(w_sum=WSUM.long()), QL, "w_sum"),
    ("ql_wsum_f32", lambda: ql(w_sum=WSUM.float()), QL, "w_sum"),
    ("ql_wsum_shape", lambda: ql(w_sum=torch.zeros(N + 1, dtype=torch.int32)), QL, "w_sum"),
    ("ql_wsum_shape_2d", lambda: ql(w_sum=WSUM.reshape(1, N)), QL, "w_sum"),
    ("ql_wsum_0dim", lambda: ql(w_sum=WSUM[0]), QL, "w_sum"),
    # --- out_dtype
    ("ql_out_i8", lambda: ql(out_dtype=torch.int8), QL, "out_dtype"),
    ("ql_out_i32", lambda: ql(out_dtype=torch.int32), QL, "out_dtype"),
    ("ql_out_f64", lambda: ql(out_dtype=torch.float64), QL, "out_dtype"),
    # --- devices (meta is the one other device every machine has)
    ("ql_dev_xs", lambda: ql(x_scale=XS.to("meta")), QL, "x_scale"),
    ("ql_dev_xz", lambda: ql(x_zero_point=XZ.to("meta")), QL, "x_zero_point"),
    ("ql_dev_wq", lambda: ql(w_q=WQ.to("meta")), QL, "w_q"),
    ("ql_dev_ws", lambda: ql(w_scale=WS.to("meta")), QL, "w_scale"),
    ("ql_dev_bias", lambda: ql(bias=B.to("meta")), QL, "bias"),
    ("ql_dev_wsum", lambda: ql(w_sum=WSUM.to("meta")), QL, "w_sum"),
    ("ql_dev_xq", lambda: ql(x_q=XQ.to("meta")), QL, "x_q|x_scale"),
    # --- dynamic: x
    ("dql_x_f64", lambda: dql(x=X.double()), DQL, "x"),
    ("dql_x_i8", lambda: dql(x=XQ), DQL, "x"),
    ("dql_x_i32", lambda: dql(x=XQ.int()), DQL, "x"),
    ("dql_x_0dim", lambda: dql(x=_t(1.0), w_q=WQ[:, :1]), DQL, "x"),
    # --- dynamic: act_mode (see also test_act_mode_error_names_the_argument)
    ("dql_mode", lambda: dql(act_mode="affine"), DQL, "act_mode"),
    ("dql_mode_case", lambda: dql(act_mode="Symmetric"), DQL, "act_mode"),
    ("dql_mode_empty", lambda: dql(act_mode=""), DQL, "act_mode"),
    # --- dynamic: weights
    ("dql_wq_u8", lambda: dql(w_q=WQ.to(torch.uint8)), DQL, "w_q"),
    ("dql_wq_f32", lambda: dql(w_q=WQ.float()), DQL, "w_q"),
    ("dql_wq_1d", lambda: dql(w_q=WQ[0]), DQL, "w_q"),
    ("dql_k_mismatch", lambda: dql(w_q=torch.zeros(N, K + 1, dtype=torch.int8)), DQL, "w_q"),
    ("dql_k_too_large", lambda: dql(x=torch.zeros(1, KBIG), w_q=torch.zeros(1, KBIG, dtype=torch.int8),
                                    w_scale=WS[:1]), DQL, "K"),
    ("dql_ws_shape", lambda: dql(w_scale=torch.full((N + 1,), 0.1)), DQL, "w_scale"),
    ("dql_ws_int", lambda: dql(w_scale=_t(1)), DQL, "w_scale"),
    ("dql_ws_0", lambda: dql(w_scale=_t([0.1, 0.0, 0.1])), DQL, "w_scale"),
    ("dql_ws_neg", lambda: dql(w_scale=_t(-1.0)), DQL, "w_scale"),
    ("dql_ws_nan", lambda: dql(w_scale=_t(math.nan)), DQL, "w_scale"),
    ("dql_bias_shape", lambda: dql(bias=torch.zeros(N - 1)), DQL, "bias"),
    ("dql_bias_int", lambda: dql(bias=torch.zeros(N, dtype=torch.int64)), DQL, "bias"),
    ("dql_wsum_i64", lambda: dql(w_sum=WSUM.long()), DQL, "w_sum"),
    ("dql_wsum_shape", lambda: dql(w_sum=WSUM[:2]), DQL, "w_sum"),
    ("dql_dev_wq", lambda: dql(w_q=WQ.to("meta")), DQL, "w_q"),
    ("dql_dev_ws", lambda: dql(w_scale=WS.to("meta")), DQL, "w_scale"),
    ("dql_dev_bias", lambda: dql(bias=B.to("meta")), DQL, "bias"),
    ("dql_dev_wsum", lambda: dql(w_sum=WSUM.to("meta")), DQL, "w_sum"),
    ("dql_dev_x", lambda: dql(x=X.to("meta")), DQL, "w_q"),
    # --- dynamic: smooth
    ("dql_smooth_shape", lambda: dql(smooth=torch.ones(K + 1)), DQL, "smooth"),
    ("dql_smooth_2d", lambda: dql(smooth=torch.ones(1, K)), DQL, "smooth"),
    ("dql_smooth_int", lambda: dql(smooth=torch.ones(K, dtype=torch.int32)), DQL, "smooth"),
    ("dql_smooth_0", lambda: dql(smooth=torch.ones(K).index_fill(0, _t([0]), 0.0)), DQL, "smooth"),
    ("dql_smooth_neg", lambda: dql(smooth=-torch.ones(K)), DQL, "smooth"),
    ("dql_smooth_inf", lambda: dql(smooth=torch.full((K,), math.inf)), DQL, "smooth"),
    ("dql_smooth_nan", lambda: dql(smooth=torch.full((K,), math.nan)), DQL, "smooth"),
    ("dql_dev_smooth", lambda: dql(smooth=torch.ones(K, device="meta")), DQL, "smooth"),
    # --- dynamic: hadamard_block (K = 6: only 2 is valid)
    ("dql_hadamard_not_dividing", lambda: dql(hadamard_block=4), DQL, "hadamard_block"),
    ("dql_hadamard_not_pow2", lambda: dql(hadamard_block=3), DQL, "hadamard_block"),
    ("dql_hadamard_one", lambda: dql(hadamard_block=1), DQL, "hadamard_block"),
    ("dql_hadamard_negative", lambda: dql(hadamard_block=-2), DQL, "hadamard_block"),
]


@pytest.mark.parametrize("fn,op,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises(fn, op, arg):
    with raises(op, "(" + arg + ")"):
        fn()


def test_messages_state_expectation():
    with pytest.raises(RuntimeError, match=r"torch_quant[.]quantized_linear: x_zero_point must be in "
                                           r"\[0, 255\], got 256"):
        ql(x_q=XU, x_zero_point=_t(256))
    with pytest.raises(RuntimeError, match=r"torch_quant[.]quantized_linear: x_zero_point must be in "
                                           r"\[-128, 127\], got 128"):
        ql(x_zero_point=_t(128))
    with pytest.raises(RuntimeError, match=r"torch_quant[.]quantized_linear: K = 65794 is larger "
                                           r"than 65793"):
        ql(x_q=torch.zeros(1, KBIG, dtype=torch.int8), w_q=torch.zeros(1, KBIG, dtype=torch.int8),
           w_scale=WS[:1])
    with pytest.raises(RuntimeError, match=r"torch_quant[.]quantized_linear: w_scale .* at index 1"):
        ql(w_scale=_t([0.1, -0.1, 0.1]))
    with pytest.raises(RuntimeError, match=r"torch_quant[.]dynamic_quantized_linear: x must be "
                                           r"float32, float16 or bfloat16"):
        dql(x=X.double())
    with pytest.raises(RuntimeError, match=r"'symmetric' or 'asymmetric', got 'foo'"):
        dql(act_mode="foo")


def test_act_mode_error_names_the_argument():
    """docs/semantics.md ("Operators"): the message names the argument. The schema's argument is
    `act_mode`; a message that says only "mode" names no argument of this op.
    Checked for the real and the fake kernel."""
    assert_fake_raises_as_real(lambda t: dql(t["x"], t["w_q"], t["w_scale"], act_mode="affine"),
                               dict(x=X, w_q=WQ, w_scale=WS), DQL, "act_mode")


def test_failed_call_leaves_inputs_untouched():
    x_q, w_q, w_sum = XQ.clone(), WQ.clone(), WSUM.clone()
    with pytest.raises(RuntimeError):
        ql(x_q=x_q, w_q=w_q, w_scale=_t([0.1, 0.1, -1.0]), w_sum=w_sum)
    assert torch.equal(x_q, XQ) and torch.equal(w_q, WQ) and torch.equal(w_sum, WSUM)
    # and the next valid call works
    assert ql(x_q=x_q, w_q=w_q).shape == (M, N)


# ---------------------------------------------------------------------------
# the fake kernels reject the same metadata errors (torch.compile / export)


def _fql(t, **kw):
    args = dict(x_q=t["xq"], x_scale=t["xs"], x_zero_point=t["xz"], w_q=t["wq"], w_scale=t["ws"])
    args.update(kw)
    return ql(**args)


def _fdql(t, **kw):
    args = dict(x=t["x"], w_q=t["wq"], w_scale=t["ws"])
    args.update(kw)
    return dql(**args)


# (id, fn(tensors) -> call, op, argument); tensors: x, xq, xu, xs, xz, wq, ws, b, wsum, big_*
FAKE_CASES = [
    ("ql_xq_f32", lambda t: _fql(t, x_q=t["x"]), QL, "x_q"),
    ("ql_xq_i32", lambda t: _fql(t, x_q=t["xq"].int()), QL, "x_q"),
    ("ql_xq_0dim", lambda t: _fql(t, x_q=t["xq"][0, 0], w_q=t["wq"][:, :1]), QL, "x_q"),
    ("ql_xs_shape", lambda t: _fql(t, x_scale=t["xs"].expand(K), x_zero_point=t["xz"].expand(K)),
     QL, "x_scale"),
    ("ql_xs_int", lambda t: _fql(t, x_scale=t["xz"]), QL, "x_scale"),
    ("ql_xz_float", lambda t: _fql(t, x_zero_point=t["xs"]), QL, "x_zero_point"),
    ("ql_xs_xz_shapes_differ", lambda t: _fql(t, x_scale=t["xs"].expand(M)), QL, "x_zero_point"),
    ("ql_wq_u8", lambda t: _fql(t, w_q=t["wq"].to(torch.uint8)), QL, "w_q"),
    ("ql_wq_f32", lambda t: _fql(t, w_q=t["wq"].float()), QL, "w_q"),
    ("ql_wq_1d", lambda t: _fql(t, w_q=t["wq"][0]), QL, "w_q"),
    ("ql_k_mismatch", lambda t: _fql(t, w_q=t["wq"][:, :5]), QL, "w_q"),
    ("ql_k_too_large", lambda t: _fql(t, x_q=t["big_xq"], w_q=t["big_wq"], w_scale=t["ws"][:1]),
     QL, "K"),
    ("ql_ws_shape", lambda t: _fql(t, w_scale=t["ws"].expand(2, N)), QL, "w_scale"),
    ("ql_ws_int", lambda t: _fql(t, w_scale=t["wsum"]), QL, "w_scale"),
    ("ql_bias_shape", lambda t: _fql(t, bias=t["b"][:2]), QL, "bias"),
    ("ql_bias_int", lambda t: _fql(t, bias=t["wsum"]), QL, "bias"),
    ("ql_wsum_i64", lambda t: _fql(t, w_sum=t["wsum"].long()), QL, "w_sum"),
    ("ql_wsum_shape", lambda t: _fql(t, w_sum=t["wsum"][:1]), QL, "w_sum"),
    ("ql_out_i8", lambda t: _fql(t, out_dtype=torch.int8), QL, "out_dtype"),
    ("ql_dev_xs", lambda t: _fql(t, x_scale=t["meta_s"]), QL, "x_scale"),
    ("ql_dev_wq", lambda t: _fql(t, w_q=t["meta_wq"]), QL, "w_q"),
    ("ql_dev_bias", lambda t: _fql(t, bias=t["meta_b"]), QL, "bias"),
    ("dql_x_f64", lambda t: _fdql(t, x=t["x"].double()), DQL, "x"),
    ("dql_x_i8", lambda t: _fdql(t, x=t["xq"]), DQL, "x"),
    ("dql_x_0dim", lambda t: _fdql(t, x=t["x"][0, 0], w_q=t["wq"][:, :1]), DQL, "x"),
    ("dql_mode", lambda t: _fdql(t, act_mode="nope"), DQL, "act_mode"),
    ("dql_wq_u8", lambda t: _fdql(t, w_q=t["wq"].to(torch.uint8)), DQL, "w_q"),
    ("dql_wq_3d", lambda t: _fdql(t, w_q=t["wq"].unsqueeze(0)), DQL, "w_q"),
    ("dql_k_mismatch", lambda t: _fdql(t, w_q=t["wq"][:, 1:]), DQL, "w_q"),
    ("dql_k_too_large", lambda t: _fdql(t, x=t["big_x"], w_q=t["big_wq"], w_scale=t["ws"][:1]),
     DQL, "K"),
    ("dql_ws_shape", lambda t: _fdql(t, w_scale=t["ws"][:2]), DQL, "w_scale"),
    ("dql_bias_shape", lambda t: _fdql(t, bias=t["b"].reshape(1, N)), DQL, "bias"),
    ("dql_wsum_i64", lambda t: _fdql(t, w_sum=t["wsum"].long()), DQL, "w_sum"),
    ("dql_dev_ws", lambda t: _fdql(t, w_scale=t["meta_s"]), DQL, "w_scale"),
    ("dql_hadamard", lambda t: _fdql(t, hadamard_block=4), DQL, "hadamard_block"),
]


def _tensors():
    return dict(x=X, xq=XQ, xs=XS, xz=XZ, wq=WQ, ws=WS, b=B, wsum=WSUM,
                big_x=torch.zeros(1, KBIG), big_xq=torch.zeros(1, KBIG, dtype=torch.int8),
                big_wq=torch.zeros(1, KBIG, dtype=torch.int8),
                meta_s=XS.to("meta"), meta_wq=WQ.to("meta"), meta_b=B.to("meta"))


@pytest.mark.parametrize("fn,op,arg", [c[1:] for c in FAKE_CASES], ids=[c[0] for c in FAKE_CASES])
def test_fake_kernels_raise(fn, op, arg):
    assert_fake_raises_as_real(fn, _tensors(), op, arg)


def test_fake_kernels_accept_valid_calls():
    """The fake kernels give the real kernels' shapes and dtypes on valid input."""
    real = _tensors()
    calls = [
        lambda t: _fql(t),
        lambda t: _fql(t, bias=t["b"], w_sum=t["wsum"], out_dtype=torch.bfloat16),
        lambda t: _fql(t, x_q=t["xq"].reshape(2, 2, K), x_scale=t["xs"].expand(2, 2),
                       x_zero_point=t["xz"].expand(2, 2)),
        lambda t: _fdql(t, x=t["x"].half(), bias=t["b"], act_mode="asymmetric"),
        lambda t: _fdql(t, hadamard_block=2),
        lambda t: _fdql(t, x=t["x"].reshape(2, 2, K).bfloat16(), w_scale=t["ws"][:1]),
    ]
    with FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) for k, v in real.items()}
        fakes = [c(fake) for c in calls]
    for c, f in zip(calls, fakes):
        r = c(real)
        assert f.shape == r.shape and f.dtype == r.dtype and f.device == r.device
