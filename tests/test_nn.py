"""QuantLinear (docs/semantics.md, "Python API"): from_float against
``torch.quantize_per_channel``, the forward against the ops called directly,
Hugging Face Conv1D, torch.compile and inference mode."""

from __future__ import annotations


import pytest
import torch
from torch import nn

import torch_quant as tq
from torch_quant.nn import QuantLinear

from conftest import MODES, assert_same, torch_per_channel
from model_helpers import (rel_err, observer_qparams, relu_mlp, centred, quantized, _transformers, EPS, FLOATS, GRANULARITIES)


# ---------------------------------------------------------------------------
# 1. QuantLinear.from_float


def make_linear(gen, K, N, bias=True, std=1.0):
    lin = nn.Linear(K, N, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen) * std)
        if bias:
            lin.bias.copy_(torch.randn(N, generator=gen))
    return lin


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("K", [1, 17])
def test_from_float_buffers(gen, K, bias, granularity):
    N = 7
    lin = make_linear(gen, K, N, bias)
    kw = {}
    if granularity == "per_tensor":
        kw = dict(input_scale=torch.tensor(0.0375), input_zero_point=torch.tensor(3))
    q = QuantLinear.from_float(lin, "asymmetric", granularity, **kw)

    assert (q.in_features, q.out_features) == (K, N)
    # [N, K] int8 as nn.Linear's, held packed on CPU (tq.pack_weight), plain
    # through plain_weight()
    assert q.weight.dtype == torch.int8 and q.weight.shape == (N, K)
    assert isinstance(q.weight, nn.Parameter) and not q.weight.requires_grad
    assert q.weight.packed.shape == (N, (K + 3) // 4 + 2, 4)
    assert_same(q.weight.packed, tq.pack_weight(q.plain_weight()), "packed weight")
    assert q.plain_weight().shape == (N, K)
    assert q.weight_scale.dtype == torch.float32 and q.weight_scale.shape == (N,)
    assert q.weight_sum.dtype == torch.int32 and q.weight_sum.shape == (N,)
    # scale from docs/semantics.md ("Modes and rounding"), written out: max|w| / 127 per output channel
    w = lin.weight.detach()
    assert_same(q.weight_scale, (w.abs().amax(1) / 127.0).clamp(min=EPS), "weight_scale")
    # codes: torch's own per-channel quantizer with that scale, zero point 0
    expected = torch_per_channel(w, q.weight_scale, torch.zeros(N, dtype=torch.int32),
                                 "symmetric", 0)
    assert_same(q.plain_weight(), expected, "weight codes")
    assert int(q.plain_weight().abs().max()) == 127  # every row reaches max|code|
    assert_same(q.weight_sum, q.plain_weight().sum(1).to(torch.int32), "weight_sum")
    if bias:
        assert q.bias.dtype == torch.float32 and q.bias.shape == (N,)
        assert_same(q.bias, lin.bias.detach(), "bias")
    else:
        assert q.bias is None
    keys = set(q.state_dict())
    base = {"weight", "weight_scale", "weight_sum"} | ({"bias"} if bias else set())
    if granularity == "per_tensor":
        assert q.input_scale.shape == () and q.input_scale.dtype == torch.float32
        assert q.input_zero_point.shape == () and q.input_zero_point.dtype == torch.int32
        assert float(q.input_scale) == pytest.approx(0.0375) and int(q.input_zero_point) == 3
        assert keys == base | {"input_scale", "input_zero_point"}
    else:
        assert keys == base
    assert not any(b.requires_grad for b in q.buffers())
    # the float layer is left alone
    assert_same(lin.weight.detach(), w, "float weight untouched")


def test_from_float_half_linear(gen):
    lin = make_linear(gen, 17, 9).half()
    q = QuantLinear.from_float(lin)
    assert q.bias.dtype == torch.float32
    assert_same(q.bias, lin.bias.detach().float(), "bias to float32")
    x = torch.randn(5, 17, generator=gen).half()
    y = q(x)
    assert y.dtype == torch.float16
    assert rel_err(y, lin.float()(x.float())) < 2e-2


LEADS = [(), (1,), (7,), (0,), (2, 3), (3, 0), (2, 1, 5)]


def forward_cases(test):
    """Every activation mode x input dtype x leading shape (0 elements too)."""
    for name, values, ids in (("lead", LEADS, lambda s: "x".join(map(str, s)) or "1d"),
                              ("dtype", FLOATS, str), ("act_mode", MODES, None)):
        test = pytest.mark.parametrize(name, values, ids=ids)(test)
    return test


@forward_cases
def test_per_token_forward_is_the_fused_op(gen, act_mode, dtype, lead):
    K, N = 17, 9
    lin = make_linear(gen, K, N)
    q = QuantLinear.from_float(lin, act_mode)
    x = torch.randn(*lead, K, generator=gen).to(dtype)
    y = q(x)
    # the layer (packed weight) against the op on the plain weight
    expected = tq.dynamic_quantized_linear(x, q.plain_weight(), q.weight_scale, q.bias,
                                           q.weight_sum, act_mode)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert_same(y, expected, f"{act_mode} {dtype} {lead}")


@forward_cases
def test_per_tensor_forward_is_quantize_then_linear(gen, act_mode, dtype, lead):
    K, N = 17, 9
    lin = make_linear(gen, K, N)
    calib = torch.randn(11, K, generator=gen)
    s, z = observer_qparams(calib, act_mode)
    q = QuantLinear.from_float(lin, act_mode, "per_tensor", s, z)
    x = torch.randn(*lead, K, generator=gen).to(dtype)
    y = q(x)
    assert_same(q.input_scale, s, "input_scale")
    assert_same(q.input_zero_point, z, "input_zero_point")
    x_q = tq.quantize(x, q.input_scale, q.input_zero_point, act_mode)
    expected = tq.quantized_linear(x_q, q.input_scale, q.input_zero_point, q.plain_weight(),
                                   q.weight_scale, q.bias, q.weight_sum, out_dtype=dtype)
    assert y.dtype == dtype and y.shape == (*lead, N)
    assert_same(y, expected, f"{act_mode} {dtype} {lead}")


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("act_mode", MODES)
@pytest.mark.parametrize("K,bias", [(1, True), (17, False), (17, True), (129, True)])
def test_forward_close_to_float(gen, K, bias, act_mode, granularity):
    N = 7
    lin = make_linear(gen, K, N, bias)
    x = torch.randn(3, 5, K, generator=gen)  # 3-D input
    kw = {}
    if granularity == "per_tensor":
        s, z = observer_qparams(x, act_mode)
        kw = dict(input_scale=s, input_zero_point=z)
    q = QuantLinear.from_float(lin, act_mode, granularity, **kw)
    with torch.no_grad():
        ref = lin(x)
    for dtype in FLOATS:
        y = q(x.to(dtype))
        assert y.dtype == dtype
        tol = 2e-2 if dtype != torch.bfloat16 else 3e-2  # bf16 output rounding alone: 2^-9
        assert rel_err(y, ref) < tol, (dtype, rel_err(y, ref))


def test_extra_repr():
    lin = nn.Linear(17, 9)
    q = QuantLinear.from_float(lin, "asymmetric", "per_tensor", torch.tensor(0.1), torch.tensor(7))
    text = repr(q)
    assert "act_mode=asymmetric" in text and "act_granularity=per_tensor" in text
    assert "in_features=17" in text and "out_features=9" in text
    q = QuantLinear.from_float(lin)
    assert "act_mode=symmetric" in repr(q) and "act_granularity=per_token" in repr(q)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int8, torch.uint8, torch.bool],
                         ids=str)
def test_non_float_input_raises_type_error(dtype, granularity):
    q = QuantLinear.from_float(nn.Linear(5, 3), "symmetric", granularity,
                               torch.tensor(0.1), torch.tensor(0))
    with pytest.raises(TypeError, match=r"QuantLinear.*" + str(dtype).replace(".", r"\.")):
        q(torch.ones(2, 5).to(dtype))


def test_from_float_bad_settings():
    lin = nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"QuantLinear.*act_mode.*'int4'"):
        QuantLinear.from_float(lin, act_mode="int4")
    with pytest.raises(ValueError, match=r"QuantLinear.*act_granularity.*'per_row'"):
        QuantLinear.from_float(lin, act_granularity="per_row")
    with pytest.raises(ValueError, match=r"QuantLinear.*act_mode"):
        QuantLinear.from_float(lin, act_mode="auto")  # only quantize_model knows "auto"
    with pytest.raises(ValueError, match=r"QuantLinear.*act_mode.*None"):
        QuantLinear(5, 3, act_mode=None)
    with pytest.raises(ValueError, match=r"from_float.*input_scale"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor")
    with pytest.raises(ValueError, match=r"from_float.*input_zero_point"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor", input_scale=torch.tensor(0.1))


def test_from_float_bad_module_or_weight():
    with pytest.raises(TypeError, match=r"from_float.*Conv2d"):
        QuantLinear.from_float(nn.Conv2d(3, 3, 1))
    lin = nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"from_float.*NaN"):
        QuantLinear.from_float(lin)


# ---------------------------------------------------------------------------
# 2. Hugging Face Conv1D (weight stored [in, out])


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_conv1d_from_float(gen, granularity):
    Conv1D = _transformers().pytorch_utils.Conv1D
    nx, nf = 17, 9
    conv = Conv1D(nf, nx)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(nx, nf, generator=gen))
        conv.bias.copy_(torch.randn(nf, generator=gen))
    x = torch.randn(2, 7, nx, generator=gen)
    kw = {}
    if granularity == "per_tensor":
        s, z = observer_qparams(x, "asymmetric")
        kw = dict(input_scale=s, input_zero_point=z)
    q = QuantLinear.from_float(conv, "asymmetric", granularity, **kw)
    assert (q.in_features, q.out_features) == (nx, nf)
    assert q.plain_weight().shape == (nf, nx)
    w = conv.weight.detach().t()
    deq = q.dequantized_weight()
    assert deq.shape == w.shape
    # round to nearest: each weight within half a step of its row's scale
    assert ((deq - w).abs() <= q.weight_scale[:, None] * (0.5 + 1e-5)).all()
    assert_same(q.plain_weight(),
                torch_per_channel(w, q.weight_scale, torch.zeros(nf, dtype=torch.int32),
                                  "symmetric", 0), "codes of the transposed weight")
    assert_same(q.bias, conv.bias.detach(), "bias")
    with torch.no_grad():
        ref = conv(x)
    y = q(x)
    assert y.shape == ref.shape
    assert rel_err(y, ref) < 2e-2


# ---------------------------------------------------------------------------
# 7. torch.compile


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_compile_fullgraph_matches_eager(gen, granularity):
    x = centred(gen, 10)
    # the first layer symmetric, the others asymmetric (a second call converts what is left)
    model = tq.quantize_model(relu_mlp(), "symmetric", granularity, [x], skip=["2", "4"],
                              smoothing=None, progress=False)
    model = tq.quantize_model(model, "asymmetric", granularity, [x], smoothing=None, progress=False)
    modes = {m.act_mode for m in quantized(model).values()}
    assert modes == set(MODES)  # both kernels in one graph
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, fullgraph=True)
        for inp in (x, torch.randn(3, 7, 17, generator=gen)):
            torch.testing.assert_close(compiled(inp), model(inp), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# 8. inference mode


def test_from_float_under_inference_mode_makes_normal_tensors(gen):
    lin = make_linear(gen, 17, 9)
    with torch.inference_mode():
        q = QuantLinear.from_float(lin, "asymmetric", "per_tensor", torch.tensor(0.05),
                                   torch.tensor(120))
        model = tq.quantize_model(relu_mlp(), progress=False)
    for name, b in [*q.named_buffers(), *model.named_buffers()]:
        assert not b.is_inference(), name
    assert not q.weight.is_inference()


def test_from_float_checks_the_parameters_it_is_given():
    """Static parameters are checked where the layer is made, as load_state_dict
    checks them (a symmetric layer's zero point is 0)."""
    lin = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="from_float: input_scale must be finite and > 0"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor", input_scale=torch.tensor(0.0),
                               input_zero_point=torch.tensor(0))
    with pytest.raises(ValueError, match=r"from_float: input_zero_point must be in \[0, 0\]"):
        QuantLinear.from_float(lin, "symmetric", "per_tensor", input_scale=torch.tensor(0.1),
                               input_zero_point=torch.tensor(3))
