"""Gradients of the linear ops and of QuantLinear (docs/semantics.md,
"Gradients"): x's is that of the float layer whose weight is the dequantized
one (its quantization straight through), the bias's the output's summed; none
for the integer weight. Compared with autograd through that float layer,
built here from torch's own ops; on CPU and, where one exists, on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_quant as tq
from torch_quant.hadamard import hadamard_matrix
from torch_quant.ops import reference as ref

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


def float_layer(x, w_q, w_scale, bias, smooth, block):
    """y of the float layer the op stands for: x smoothed, rotated by the
    block Hadamard matrix (a dense matrix here), times the dequantized weight."""
    t = x.float()
    if smooth is not None:
        t = t * smooth
    if block:
        k = t.shape[-1]
        h = torch.block_diag(*[hadamard_matrix(block).float()] * (k // block)).to(t.device)
        t = t @ h
    y = t @ (w_q.float() * w_scale[:, None]).t()
    return y + bias if bias is not None else y


def inputs(gen, shape, K, N, device, dtype, smooth, block, bias=True):
    x = (torch.randn(*shape, K, generator=gen) * 3).to(device, dtype).requires_grad_()
    w_q = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8).to(device)
    w_scale = (torch.rand(N, generator=gen) * 0.02 + 1e-3).to(device)
    b = torch.randn(N, generator=gen).to(device).requires_grad_() if bias else None
    s = (torch.rand(K, generator=gen) + 0.5).to(device) if smooth else None
    return x, w_q, w_scale, b, s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,K,N,smooth,block", [
    ((1,), 1, 1, False, 0), ((7,), 17, 5, True, 0), ((2, 3), 64, 33, False, 8),
    ((0,), 32, 7, True, 16), ((3,), 1025, 9, True, 0)])
def test_dynamic_linear_gradients_are_the_dequantized_float_layers(gen, device, dtype, shape, K, N,
                                                                   smooth, block):
    x, w_q, w_scale, bias, s = inputs(gen, shape, K, N, device, dtype, smooth, block)
    for w in ([w_q, tq.pack_weight(w_q)] if device == "cpu" else [w_q]):
        x.grad = bias.grad = None
        y = tq.dynamic_quantized_linear(x, w, w_scale, bias, None, "asymmetric", s, block)
        g = torch.randn(y.shape, generator=gen).to(device, dtype)
        y.backward(g)
        x2 = x.detach().clone().requires_grad_()
        b2 = bias.detach().clone().requires_grad_()
        float_layer(x2, w_q, w_scale, b2, s, block).backward(g.float())
        assert x.grad.dtype == dtype and bias.grad.dtype == torch.float32
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(x.grad, x2.grad.to(dtype), rtol=rtol, atol=atol)
        torch.testing.assert_close(bias.grad, b2.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_static_linear_gives_the_bias_its_gradient_and_x_q_none(gen, device):
    x_q = torch.randint(-128, 128, (4, 3, 10), generator=gen, dtype=torch.int8).to(device)
    w_q = torch.randint(-128, 128, (6, 10), generator=gen, dtype=torch.int8).to(device)
    bias = torch.randn(6, generator=gen).to(device).requires_grad_()
    one, zero = torch.tensor(0.5, device=device), torch.tensor(0, dtype=torch.int32, device=device)
    y = tq.quantized_linear(x_q, one, zero, w_q, torch.ones(6, device=device), bias)
    g = torch.randn(y.shape, generator=gen).to(device)
    y.backward(g)
    torch.testing.assert_close(bias.grad, g.sum((0, 1)))
    # nothing to differentiate: no autograd node, whatever the grad mode
    assert tq.quantized_linear(x_q, one, zero, w_q, torch.ones(6, device=device)).grad_fn is None


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
@pytest.mark.parametrize("block", [0, 16])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantlinear_gradients_match_the_float_layer_of_its_dequantized_weight(gen, granularity,
                                                                              block, dtype):
    lin = nn.Linear(32, 24)
    smooth = torch.rand(32, generator=gen) + 0.5
    kw = dict(input_scale=torch.tensor(0.05), input_zero_point=torch.tensor(0)) \
        if granularity == "per_tensor" else {}
    q = tq.QuantLinear.from_float(lin, "symmetric", granularity, smooth=smooth,
                                  hadamard_block=block, **kw)
    x = torch.randn(5, 32, generator=gen).to(dtype).requires_grad_()
    y = q(x)
    assert y.dtype == dtype
    g = torch.randn(y.shape, generator=gen).to(dtype)
    y.backward(g)
    x2 = x.detach().clone().requires_grad_()
    b2 = q.bias.detach().clone().requires_grad_()
    float_layer(x2, q.plain_weight(), q.weight_scale, b2, q.input_smooth, block).backward(g.float())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(x.grad, x2.grad.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(q.bias.grad, b2.grad, rtol=1e-5, atol=1e-5)
    assert q.weight.grad is None and not q.weight.requires_grad


def test_no_autograd_node_without_a_tensor_that_needs_one(gen):
    q = tq.QuantLinear.from_float(nn.Linear(8, 4))
    q.bias.requires_grad_(False)
    assert q(torch.randn(2, 8)).grad_fn is None
    q.bias.requires_grad_(True)
    with torch.no_grad():
        assert q(torch.randn(2, 8, requires_grad=True)).grad_fn is None
    assert q(torch.randn(2, 8)).grad_fn is not None  # the bias's


def test_grad_x_op_matches_its_formula_and_passes_opcheck(gen):
    x, w_q, w_scale, _, s = inputs(gen, (3,), 64, 12, "cpu", torch.float32, True, 8)
    g = torch.randn(3, 12, generator=gen)
    got = tq.ops.quantized_linear_grad_x(g, tq.pack_weight(w_q), w_scale, 64, s, 8)
    h = torch.block_diag(*[hadamard_matrix(8).float()] * 8)
    want = ((g @ (w_q.float() * w_scale[:, None])) @ h) * s
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, ref.quantized_linear_grad_x(g, w_q, w_scale, 64, s, 8),
                               rtol=1e-5, atol=1e-5)
    assert tq.ops.quantized_linear_grad_x(g, w_q, w_scale, 64, None, 0,
                                          torch.bfloat16).dtype == torch.bfloat16
    torch.library.opcheck(torch.ops.torch_quant.quantized_linear_grad_x.default,
                          (g, w_q, w_scale, 64, s, 8))
    # the linear ops' autograd formulas, as opcheck checks them
    torch.library.opcheck(torch.ops.torch_quant.dynamic_quantized_linear.default,
                          (x, w_q, w_scale, torch.randn(12, requires_grad=True), None,
                           "symmetric", s, 8))


@pytest.mark.parametrize("args,match", [
    (lambda g, w, s: (g.int(), w, s, 16), "grad_out must be float32, float16 or bfloat16"),
    (lambda g, w, s: (g, w.float(), s, 16), "w_q must be an int8"),
    (lambda g, w, s: (g, w, s, 15), "K must be >= 1 and the plain weight's width"),
    (lambda g, w, s: (g[:, :5], w, s, 16), "grad_out's last dim must be N = 6"),
    (lambda g, w, s: (g, w, s.double(), 16), "w_scale must be a float32 tensor of shape"),
    (lambda g, w, s: (g, w, s, 16, torch.ones(15)), "smooth must be a float32 tensor of shape"),
    (lambda g, w, s: (g, w, s, 16, None, 3), "hadamard_block must be 0 or a power of two"),
])
def test_grad_x_op_rejects_bad_arguments_naming_them(args, match):
    g, w, s = torch.randn(2, 6), torch.zeros(6, 16, dtype=torch.int8), torch.ones(6)
    with pytest.raises(RuntimeError, match=r"torch_quant\.quantized_linear_grad_x: " + match):
        tq.ops.quantized_linear_grad_x(*args(g, w, s))


@pytest.mark.parametrize("device", DEVICES)
def test_every_scale_and_factor_form_the_op_takes_has_its_gradient(gen, device):
    """The op takes w_scale of shape [], [1] or [N] in any float dtype and
    smooth in any float dtype; x non-contiguous, no bias; the backward takes
    what the forward took. Scales and factors that require grad get none."""
    K, N = 24, 10
    w_q = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8).to(device)
    base = torch.randn(K, 5, generator=gen).to(device)
    for w_scale, smooth in ((torch.tensor(0.02), None), (torch.tensor([0.03]), None),
                            (torch.rand(N, generator=gen, dtype=torch.float64) * 0.02 + 1e-3,
                             torch.rand(K, generator=gen, dtype=torch.float64) + 0.5)):
        w_scale = w_scale.to(device).requires_grad_()
        smooth = None if smooth is None else smooth.to(device).requires_grad_()
        x = base.t().requires_grad_()  # [5, K], not contiguous
        y = tq.dynamic_quantized_linear(x, w_q, w_scale, None, None, "symmetric", smooth, 8)
        g = torch.randn(N, 5, generator=gen).to(device).t()  # not contiguous either
        y.backward(g)
        x2 = base.t().clone().requires_grad_()
        s2 = None if smooth is None else smooth.detach().float()
        float_layer(x2, w_q, w_scale.detach().float().expand(N), None, s2, 8).backward(g)
        torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
        assert w_scale.grad is None and (smooth is None or smooth.grad is None)
