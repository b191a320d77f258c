"""dynamic_quantized_linear (docs/semantics.md, "Operators"): equal to
quantize_per_token + quantized_linear, smoothing and rotation, accuracy
against float, opcheck / torch.compile / torch.export; oracles as in
test_linear.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import MODES, assert_same, random_scale, using_isa
from linear_helpers import (FLOATS, codes, composite, ops, ref_linear, sym_weight, w_params,
                            weight_form, x_params)  # noqa: F401  (weight_form: autouse fixture)



# ---------------------------------------------------------------------------
# dynamic_quantized_linear == quantize_per_token + quantized_linear


def _special_rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., R, K] with row 0 all zero, row 1 with NaN, row 2 with ±inf,
    row 3 all NaN, row 4 constant negative, row 5 huge values of both signs
    (rows taken from the flattened view)."""
    x = x.clone()
    v = x.view(-1, x.shape[-1])
    K = v.shape[1]
    if v.shape[0] >= 5 and K >= 3:
        v[0] = 0
        v[1, 1] = float("nan")
        v[2, 0] = float("inf")
        v[2, K - 1] = -float("inf")
        v[3] = float("nan")
        v[4] = -2.5
    if v.shape[0] >= 6 and K >= 3:
        big = torch.finfo(x.dtype).max / 4  # hi - lo stays finite in float32
        v[5, 0] = big
        v[5, 2] = -big
    return x


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(6, 37), (2, 3, 70), (8, 1025), (1, 5), (3,)], ids=str)
def test_dynamic_equals_composite(isa, gen, shape, dtype, mode):
    K = shape[-1]
    N = 19
    x = _special_rows((torch.randn(shape, generator=gen) * 4).to(dtype))
    w_q = codes(gen, (N, K), torch.int8)
    ws, bias = w_params(gen, N, True, True)
    w_sum = w_q.int().sum(1, dtype=torch.int32)
    for b, s, w_scale in ((None, None, ws), (bias, None, ws), (bias, w_sum, ws[0])):
        got = tq.dynamic_quantized_linear(x, w_q, w_scale, b, s, act_mode=mode)
        assert got.dtype == dtype and got.shape == (*shape[:-1], N)
        exp = composite(x, w_q, w_scale, b, s, act_mode=mode)
        assert_same(got, exp, f"bias={b is not None} w_sum={s is not None}")
        # and the composite itself equals the oracle on the quantized codes
        q, qs, qz = tq.quantize_per_token(x, mode)
        assert_same(exp, ref_linear(q, qs, qz, w_q, w_scale, b, dtype), "composite vs oracle")
    assert not torch.isnan(got).any()  # NaN inputs are mapped to the zero point
    if x.dim() == 2 and x.shape[0] >= 5:
        # an all-zero row gives bias exactly
        assert_same(got[0], bias.to(dtype), "zero row")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f16", "bf16"])
def test_dynamic_rows_with_overflowing_range(isa, dtype, mode):
    """A row holding +max and -max of its dtype: for float32 / bfloat16 x,
    hi - lo overflows float32. The fused op must still equal the composite:
    the same result, or the same error when the composite raises (docs/semantics.md ("Operators"):
    never a silent wrong result)."""
    fmax = torch.finfo(dtype).max
    x = torch.tensor([[fmax, -fmax, 1.0, 0.0], [1.0, -2.0, 3.0, 0.5]], dtype=dtype)
    w_q = torch.tensor([[1, 1, 0, 0], [1, -1, 2, 0], [-128, 127, 5, 1]], dtype=torch.int8)
    ws = torch.tensor([0.5, 0.25, 2.0**-20])
    try:
        exp = composite(x, w_q, ws, act_mode=mode)
    except RuntimeError as e:
        with pytest.raises(RuntimeError):
            got = tq.dynamic_quantized_linear(x, w_q, ws, act_mode=mode)
            pytest.fail(f"composite raises ({str(e).splitlines()[0]}) but the fused op "
                        f"returns {got.tolist()}")
    else:
        assert_same(tq.dynamic_quantized_linear(x, w_q, ws, act_mode=mode), exp, "huge row")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape", [(6, 37), (2, 3, 70), (9, 1025), (1, 1), (0, 17)], ids=str)
def test_dynamic_smooth_quantizes_the_product(isa, gen, shape, dtype, mode):
    """smooth: the op quantizes x.float() * smooth per token (the contract's
    quantize_per_token applied to that float32 product), bit for bit."""
    K, N = shape[-1], 23
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    smooth = torch.rand(K, generator=gen) * 8 + 0.05
    w_q = codes(gen, (N, K), torch.int8)
    ws, bias = w_params(gen, N, True, True)
    got = tq.dynamic_quantized_linear(x, w_q, ws, bias, None, mode, smooth)
    assert got.dtype == dtype and got.shape == (*shape[:-1], N)
    xs = x.float() * smooth
    q, qs, qz = tq.quantize_per_token(xs, mode)
    assert_same(got, ref_linear(q, qs, qz, w_q, ws, bias, dtype), "vs quantize_per_token of x*smooth")
    assert_same(got, ref.dynamic_quantized_linear(x, w_q, ws, bias, None, mode, smooth), "vs reference")
    if x.numel() and K > 1:  # the factors matter: without them the result differs
        assert not torch.equal(got, tq.dynamic_quantized_linear(x, w_q, ws, bias, None, mode))


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_smooth_of_ones_changes_nothing(isa, gen, mode):
    x = torch.randn(5, 3, 40, generator=gen)[:, 1]  # non-contiguous
    w_q = codes(gen, (9, 40), torch.int8)
    ws = random_scale(gen, 9)
    assert_same(tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode, torch.ones(40)),
                tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode), "ones")
    # a float16 smooth is used as float32
    sm = (torch.rand(40, generator=gen) + 0.5).half()
    assert_same(tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode, sm),
                tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode, sm.float()), "f16 smooth")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("smoothed", [False, True], ids=["plain", "smooth"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("shape,block", [((6, 32), 32), ((2, 3, 96), 32), ((9, 1024), 1024),
                                         ((7, 1024), 2), ((1, 2), 2), ((0, 16), 8),
                                         ((3, 4096), 2048), ((2, 512), 16), ((4, 48), 16)], ids=str)
def test_dynamic_hadamard_quantizes_the_rotated_rows(isa, gen, shape, block, dtype, smoothed, mode):
    """hadamard_block: the op quantizes hadamard_rows(x.float() * smooth) per
    token (reference.py's butterfly order), bit for bit, on every ISA."""
    K, N = shape[-1], 19
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    if x.numel():
        x[..., 1] *= 40  # an outlier channel
    smooth = torch.rand(K, generator=gen) * 4 + 0.1 if smoothed else None
    w_q = codes(gen, (N, K), torch.int8)
    ws, bias = w_params(gen, N, True, True)
    got = tq.dynamic_quantized_linear(x, w_q, ws, bias, None, mode, smooth, block)
    assert got.dtype == dtype and got.shape == (*shape[:-1], N)
    xs = x.float() if smooth is None else x.float() * smooth
    q, qs, qz = tq.quantize_per_token(ref.hadamard_rows(xs, block), mode)
    assert_same(got, ref_linear(q, qs, qz, w_q, ws, bias, dtype), "vs quantize_per_token of H x")
    assert_same(got, ref.dynamic_quantized_linear(x, w_q, ws, bias, None, mode, smooth, block),
                "vs reference")
    if x.numel():  # the rotation matters
        assert not torch.equal(got, tq.dynamic_quantized_linear(x, w_q, ws, bias, None, mode, smooth))


@pytest.mark.parametrize("K,block", [(2, 2), (64, 8), (96, 32), (512, 512)])
def test_hadamard_rows_is_the_block_hadamard_product(gen, K, block):
    """The butterfly equals x times the block-diagonal Sylvester Hadamard
    matrix built independently (Kronecker products of [[1, 1], [1, -1]])."""
    x = torch.randn(5, K, generator=gen, dtype=torch.float64)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.kron(h2, h)
    want = x @ torch.block_diag(*[h] * (K // block)).t()
    torch.testing.assert_close(ref.hadamard_rows(x, block), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(ref.hadamard_matrix(block), h)


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_hadamard_with_rotated_weight_keeps_the_product(gen, mode):
    """With the weight rotated as QuantLinear does (W H / b), the op's result
    stays the float product; the rotation flattens an outlier channel, so it
    is closer to it than without."""
    K, N = 256, 48
    x = torch.randn(64, K, generator=gen)
    x[torch.arange(64), torch.randint(0, K, (64,), generator=gen)] *= 60  # one outlier per row
    w = torch.randn(N, K, generator=gen)
    want = x @ w.t()
    errs = {}
    for block in (0, 256):
        w_r = tq.hadamard.rotated_weight(w, block) if block else w
        s, z = tq.choose_qparams(w_r, "symmetric", axis=0)
        w_q = tq.quantize(w_r, s, z, "symmetric", axis=0)
        y = tq.dynamic_quantized_linear(x, w_q, s, None, None, mode, None, block)
        errs[block] = float((y - want).norm() / want.norm())
    assert errs[256] < 0.5 * errs[0], errs
    assert errs[256] < 0.01, errs


def test_dynamic_default_mode_is_symmetric(gen):
    x = torch.randn(4, 50, generator=gen)
    w_q = codes(gen, (6, 50), torch.int8)
    ws = random_scale(gen, 6)
    got = tq.dynamic_quantized_linear(x, w_q, ws)
    assert_same(got, composite(x, w_q, ws, act_mode="symmetric"), "default")
    assert not torch.equal(got, composite(x, w_q, ws, act_mode="asymmetric"))


# ---------------------------------------------------------------------------
# accuracy against float


def _rel_err(y, y_ref):
    return ((y.float() - y_ref).norm() / y_ref.norm()).item()


@pytest.mark.parametrize("mode", MODES)
def test_accuracy_vs_float_linear(isa, mode):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(16, 512, generator=g)
    w = torch.randn(256, 512, generator=g)
    bias = torch.randn(256, generator=g)
    w_q, w_scale = sym_weight(w)
    y_fp = F.linear(x, w, bias)
    y = tq.dynamic_quantized_linear(x, w_q, w_scale, bias, act_mode=mode)
    err = _rel_err(y, y_fp)
    assert err < 0.02, f"{mode}: relative error {err:.4f}"
    # fp16 / bf16 activations: the output precision adds a little
    for dtype, tol in ((torch.float16, 0.02), (torch.bfloat16, 0.025)):
        yh = tq.dynamic_quantized_linear(x.to(dtype), w_q, w_scale, bias, act_mode=mode)
        assert yh.dtype == dtype
        err = _rel_err(yh, F.linear(x.to(dtype).float(), w, bias))
        assert err < tol, f"{mode} {dtype}: relative error {err:.4f}"


def test_asymmetric_beats_symmetric_on_relu_inputs(isa):
    g = torch.Generator().manual_seed(99)
    x = torch.relu(torch.randn(32, 512, generator=g))
    w = torch.randn(128, 512, generator=g)
    w_q, w_scale = sym_weight(w)
    w_deq = tq.dequantize(w_q, w_scale, torch.zeros(128, dtype=torch.int32), axis=0)
    sym = tq.dynamic_quantized_linear(x, w_q, w_scale, act_mode="symmetric")
    asym = tq.dynamic_quantized_linear(x, w_q, w_scale, act_mode="asymmetric")
    # activation error alone (against the dequantized weights): asymmetric uses
    # all 256 codes on [0, max] instead of 128, so about half the error
    ref = F.linear(x, w_deq)
    e_sym, e_asym = _rel_err(sym, ref), _rel_err(asym, ref)
    assert e_asym < 0.8 * e_sym, f"asymmetric {e_asym:.5f} vs symmetric {e_sym:.5f}"
    # and against the float weights, still strictly better
    ref = F.linear(x, w)
    e_sym, e_asym = _rel_err(sym, ref), _rel_err(asym, ref)
    assert e_asym < e_sym, f"asymmetric {e_asym:.5f} vs symmetric {e_sym:.5f}"


# ---------------------------------------------------------------------------
# opcheck, torch.compile, torch.export


def _opcheck_samples():
    g = torch.Generator().manual_seed(7)
    out = []
    K, N = 40, 6
    w_q = codes(g, (N, K), torch.int8)
    ws = random_scale(g, N)
    bias = torch.randn(N, generator=g)
    w_sum = w_q.int().sum(1, dtype=torch.int32)
    for xdtype in (torch.int8, torch.uint8):
        tag = "int8" if xdtype == torch.int8 else "uint8"
        x_q = codes(g, (5, K), xdtype)
        xs, xz = x_params(g, (), xdtype, False)
        out.append((f"ql-tensor-{tag}", ops.quantized_linear.default,
                    (x_q, xs, xz, w_q, ws[0], None, None, None)))
        xs, xz = x_params(g, (5,), xdtype, True)
        out.append((f"ql-token-{tag}", ops.quantized_linear.default,
                    (x_q, xs, xz, w_q, ws, bias, None, None)))
        out.append((f"ql-token-wsum-f16-{tag}", ops.quantized_linear.default,
                    (x_q, xs, xz, w_q, ws, bias, w_sum, torch.float16)))
        xb = codes(g, (2, 3, K), xdtype)
        xs, xz = x_params(g, (2, 3), xdtype, True)
        out.append((f"ql-batch-bf16-{tag}", ops.quantized_linear.default,
                    (xb, xs, xz, w_q, ws, bias, w_sum, torch.bfloat16)))
        out.append((f"ql-empty-{tag}", ops.quantized_linear.default,
                    (codes(g, (0, K), xdtype), xs[0, 0], xz[0, 0], w_q, ws, None, None, None)))
    for mode in MODES:
        for dtype, dt in ((torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")):
            x = (torch.randn(5, K, generator=g) * 2).to(dtype)
            out.append((f"dql-{mode}-{dt}", ops.dynamic_quantized_linear.default,
                        (x, w_q, ws, bias, None, mode)))
        xb = torch.randn(2, 3, K, generator=g).half()
        out.append((f"dql-{mode}-batch-wsum", ops.dynamic_quantized_linear.default,
                    (xb, w_q, ws[0], None, w_sum, mode)))
        out.append((f"dql-{mode}-noncontig", ops.dynamic_quantized_linear.default,
                    (torch.randn(K, 5, generator=g).t(), w_q, ws, bias, w_sum, mode)))
        out.append((f"dql-{mode}-packed", ops.dynamic_quantized_linear.default,
                    (torch.randn(2, 3, K, generator=g), tq.pack_weight(w_q), ws, bias, None, mode)))
        out.append((f"dql-{mode}-smooth", ops.dynamic_quantized_linear.default,
                    (torch.randn(2, 3, K, generator=g).bfloat16(), tq.pack_weight(w_q), ws, bias,
                     None, mode, torch.rand(K, generator=g) + 0.5)))
        out.append((f"dql-{mode}-hadamard", ops.dynamic_quantized_linear.default,
                    (torch.randn(2, 3, K, generator=g), tq.pack_weight(w_q), ws, bias,
                     None, mode, torch.rand(K, generator=g) + 0.5, 8)))
    x_q = codes(g, (5, K), torch.uint8)
    xs, xz = x_params(g, (5,), torch.uint8, True)
    out.append(("ql-packed", ops.quantized_linear.default,
                (x_q, xs, xz, tq.pack_weight(w_q), ws, bias, None, torch.bfloat16)))
    for wk in (w_q, codes(g, (17, 1), torch.int8), codes(g, (0, 5), torch.int8)):
        out.append((f"pack-{wk.shape[0]}x{wk.shape[1]}", ops.pack_weight.default, (wk,)))
        out.append((f"unpack-{wk.shape[0]}x{wk.shape[1]}", ops.unpack_weight.default,
                    (tq.pack_weight(wk), wk.shape[1])))
    return out


OPCHECK = _opcheck_samples()


@pytest.mark.parametrize("op,args", [s[1:] for s in OPCHECK], ids=[s[0] for s in OPCHECK])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def _two_linears(x, x_q, x_scale, x_zp, w_q, w_scale, bias, w_sum):
    a = tq.quantized_linear(x_q, x_scale, x_zp, w_q, w_scale, bias, w_sum)
    b = tq.quantized_linear(x_q, x_scale, x_zp, w_q, w_scale, out_dtype=torch.bfloat16)
    c = tq.dynamic_quantized_linear(x, w_q, w_scale, bias, act_mode="asymmetric")
    d = tq.dynamic_quantized_linear(x.half(), w_q, w_scale, None, w_sum)
    return a, b, c, d


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(3)
    K, N = 48, 10
    x = torch.randn(2, 7, K, generator=g)
    x[0, 1, 3] = float("nan")
    x_q = codes(g, (2, 7, K), torch.uint8)
    xs, xz = x_params(g, (2, 7), torch.uint8, True)
    w_q = codes(g, (N, K), torch.int8)
    ws = random_scale(g, N)
    bias = torch.randn(N, generator=g)
    w_sum = w_q.int().sum(1, dtype=torch.int32)
    args = (x, x_q, xs, xz, w_q, ws, bias, w_sum)
    compiled = torch.compile(_two_linears, fullgraph=True, backend="inductor")
    got, exp = compiled(*args), _two_linears(*args)
    assert len(got) == len(exp) == 4
    for i, (a, b) in enumerate(zip(got, exp)):
        assert_same(a, b, f"output {i}")


def test_compile_dynamic_shapes():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(4)
    N = 9

    def f(x, x_q, x_scale, x_zp, w_q, w_scale):
        return (tq.quantized_linear(x_q, x_scale, x_zp, w_q, w_scale, out_dtype=torch.float16),
                tq.dynamic_quantized_linear(x, w_q, w_scale, act_mode="asymmetric"))

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for lead, K in (((4,), 20), ((7,), 33), ((2, 3), 20), ((5,), 1025)):
        x = torch.randn(*lead, K, generator=g)
        x_q = codes(g, (*lead, K), torch.int8)
        xs, xz = x_params(g, lead, torch.int8, True)
        w_q = codes(g, (N, K), torch.int8)
        ws = random_scale(g, N)
        got, exp = compiled(x, x_q, xs, xz, w_q, ws), f(x, x_q, xs, xz, w_q, ws)
        for i, (a, b) in enumerate(zip(got, exp)):
            assert_same(a, b, f"{lead} K={K} output {i}")


class _DynLinear(torch.nn.Module):
    def __init__(self, w: torch.Tensor, bias: torch.Tensor, act_mode: str):
        super().__init__()
        w_q, w_scale = sym_weight(w)
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_sum", w_q.int().sum(1, dtype=torch.int32))
        self.register_buffer("bias", bias)
        self.act_mode = act_mode

    def forward(self, x):
        return tq.dynamic_quantized_linear(x, self.w_q, self.w_scale, self.bias, self.w_sum,
                                           self.act_mode)


@pytest.mark.parametrize("mode", MODES)
def test_export(mode):
    g = torch.Generator().manual_seed(11)
    m = _DynLinear(torch.randn(12, 40, generator=g), torch.randn(12, generator=g), mode)
    x = torch.randn(3, 5, 40, generator=g)
    ep = torch.export.export(m, (x,))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "torch_quant.dynamic_quantized_linear.default" in targets
    x2 = torch.randn(3, 5, 40, generator=g) * 3
    with torch.no_grad():
        assert_same(ep.module()(x2), m(x2), "exported vs eager")


# The AVX2 kernel for many rows (csrc/cpu/gemm_avx2.cpp, M >= 48 per tile)
# relies on weights in [-127, 127] to avoid int16 saturation and falls back to
# the row kernel when a weight block holds -128; both paths must stay exact.
PANEL_M = 50


@pytest.mark.parametrize("x_dtype,x_val,zp", [(torch.int8, 127, 0), (torch.int8, -128, 0),
                                              (torch.int8, -128, 127), (torch.uint8, 255, 0),
                                              (torch.uint8, 0, 255), (torch.uint8, 255, 255)])
@pytest.mark.parametrize("w_val", [127, -127, -128])
@pytest.mark.parametrize("K", [4099, 65793])
def test_many_rows_extremes_exact(isa, x_dtype, x_val, zp, w_val, K):
    N = 5
    x_q = torch.full((PANEL_M, K), x_val, dtype=x_dtype)
    w_q = torch.full((N, K), w_val, dtype=torch.int8)
    x_scale, x_zp = torch.tensor(1.0), torch.tensor(zp, dtype=torch.int32)
    w_scale = torch.ones(N)
    y = tq.quantized_linear(x_q, x_scale, x_zp, w_q, w_scale)
    assert_same(y, ref_linear(x_q, x_scale, x_zp, w_q, w_scale))


@pytest.mark.parametrize("x_dtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("with_min", [False, True])
@pytest.mark.parametrize("K", [1, 3, 4, 17, 1027])
def test_many_rows_random_exact(isa, gen, x_dtype, with_min, K):
    M, N = 2 * PANEL_M + 3, 37
    x_q = codes(gen, (M, K), x_dtype)
    w_q = torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int32).to(torch.int8)
    if with_min:
        w_q[N // 2, K // 2] = -128  # one -128 sends the block to the row kernel
    x_scale, x_zp = x_params(gen, (M,), x_dtype, per_token=True)
    w_scale = random_scale(gen, N)
    y = tq.quantized_linear(x_q, x_scale, x_zp, w_q, w_scale)
    assert_same(y, ref_linear(x_q, x_scale, x_zp, w_q, w_scale))
    with using_isa("scalar"):
        assert_same(tq.quantized_linear(x_q, x_scale, x_zp, w_q, w_scale), y)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dynamic_matches_reference(isa, gen, mode, dtype):
    x = torch.randn(5, 3, 67, generator=gen).to(dtype)
    w_q = codes(gen, (19, 67), torch.int8)
    w_scale, bias = random_scale(gen, 19), torch.randn(19, generator=gen)
    y = tq.dynamic_quantized_linear(x, w_q, w_scale, bias, None, mode)
    assert_same(y, ref.dynamic_quantized_linear(x, w_q, w_scale, bias, None, mode))
