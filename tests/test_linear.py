"""Numerics of quantized_linear and dynamic_quantized_linear on CPU (docs/semantics.md, "Operators").

Oracle (written out here, not taken from the extension):

    acc[m, n] = sum_k x_q[m, k] * w_q[n, k] - x_zero_point[m] * w_sum[n]   in int64,
                checked to fit in int32,
    y[m, n]   = float32(acc) * float32(x_scale[m] * w_scale[n])   (+ bias[n], float32)

computed with separate torch float32 ops (no fused multiply-add) and then cast
to out_dtype, so every comparison is bit-exact (``assert_same``). Most tests
run once per CPU kernel path (the ``isa`` fixture), and every test runs twice:
with the weight as given (plain [N, K]) and with it packed by tq.pack_weight
(the ``weight_form`` fixture below).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import torch_quant as tq
from torch_quant import reference as ref

from conftest import MODES, SUPPORTED_ISAS, assert_same, num_threads, random_scale, using_isa

ops = torch.ops.torch_quant
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_K = 65793  # (2^31 - 1) // (255 * 128)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------
# weight forms: every test of this file also runs with packed weights

_PLAIN_QL, _PLAIN_DQL = tq.quantized_linear, tq.dynamic_quantized_linear


def _packable(w_q, w_sum):
    """A valid plain weight whose w_sum (if given) is its true row sums: then
    the packed weight (which carries its own sums) must give the same result."""
    # (Not while torch.compile traces: the check reads data. The compile tests
    # see the plain form; test_opcheck and test_quantize_model cover packed.)
    return (not torch.compiler.is_compiling()
            and isinstance(w_q, torch.Tensor) and w_q.dtype == torch.int8 and w_q.dim() == 2
            and w_q.device.type == "cpu" and w_q.shape[1] <= MAX_K
            and (w_sum is None or torch.equal(w_sum.long(), w_q.long().sum(1))))


def _packed_ql(x_q, x_scale, x_zero_point, w_q, w_scale, bias=None, w_sum=None, out_dtype=None):
    if _packable(w_q, w_sum):
        w_q, w_sum = tq.pack_weight(w_q), None
    return _PLAIN_QL(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype)


def _packed_dql(x, w_q, w_scale, bias=None, w_sum=None, act_mode="symmetric", smooth=None,
                hadamard_block=0):
    if _packable(w_q, w_sum):
        w_q, w_sum = tq.pack_weight(w_q), None
    return _PLAIN_DQL(x, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block)


@pytest.fixture(autouse=True, params=["plain", "packed"])
def weight_form(request, monkeypatch):
    """Runs the test with tq.quantized_linear / tq.dynamic_quantized_linear
    given the weight as it is, or packed first."""
    if request.param == "packed":
        monkeypatch.setattr(tq, "quantized_linear", _packed_ql)
        monkeypatch.setattr(tq, "dynamic_quantized_linear", _packed_dql)
    return request.param


# ---------------------------------------------------------------------------
# oracle and data


def ref_dot(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """sum_k x_q[m, k] * w_q[n, k] in int64, x_q flattened to [M, K]."""
    K = w_q.shape[1]
    return x_q.reshape(math.prod(x_q.shape[:-1]), K).long() @ w_q.long().t()


def ref_linear(x_q, x_scale, x_zero_point, w_q, w_scale, bias=None, out_dtype=None, dot=None):
    """The docs/semantics.md ("Operators") formula (torch_quant.reference); `dot` (from ref_dot) saves the GEMM."""
    return ref.quantized_linear(x_q, x_scale, x_zero_point, w_q, w_scale, bias,
                                out_dtype=out_dtype, dot=dot)


def codes(gen, shape, dtype):
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int32).to(dtype)


def x_params(gen, lead, dtype, per_token, zero_zp=False):
    """(x_scale, x_zero_point): 0-dim or shape `lead`, zero points over the
    code range of `dtype` (or all 0)."""
    shape = tuple(lead) if per_token else ()
    n = 1
    for s in shape:
        n *= s
    scale = random_scale(gen, n).reshape(shape) if per_token else random_scale(gen)
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    if zero_zp:
        zp = torch.zeros(shape, dtype=torch.int32)
    else:
        zp = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int32)
    return scale, zp


def w_params(gen, N, per_channel, with_bias):
    w_scale = random_scale(gen, N) if per_channel else random_scale(gen)
    bias = (torch.randn(N, generator=gen) * 100) if with_bias else None
    return w_scale, bias


def sym_weight(w: torch.Tensor):
    """Symmetric per-channel int8 weights (w_q, w_scale) of a float [N, K] weight."""
    s, z = tq.choose_qparams(w, "symmetric", axis=0)
    return tq.quantize(w, s, z, "symmetric", axis=0), s


def composite(x, w_q, w_scale, bias=None, w_sum=None, act_mode="symmetric"):
    """quantize_per_token followed by quantized_linear (what the fused op must equal)."""
    q, s, z = tq.quantize_per_token(x, act_mode)
    return tq.quantized_linear(q, s, z, w_q, w_scale, bias, w_sum, out_dtype=x.dtype)


# ---------------------------------------------------------------------------
# the oracle itself


def test_oracle_small_example():
    # x_q = [[1, 2], [3, 4]] (uint8, zp 1 / 2), w_q = [[5, -6]]:
    # dot = [-7, -9]; w_sum = -1; acc = [-7 + 1, -9 + 2] = [-6, -7]
    x_q = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8)
    xs = torch.tensor([0.5, 0.25])
    xz = torch.tensor([1, 2], dtype=torch.int32)
    w_q = torch.tensor([[5, -6]], dtype=torch.int8)
    ws = torch.tensor(2.0)
    bias = torch.tensor([0.125])
    expected = torch.tensor([[-6 * 1.0 + 0.125], [-7 * 0.5 + 0.125]])
    assert_same(ref_linear(x_q, xs, xz, w_q, ws, bias), expected, "oracle")
    assert_same(tq.quantized_linear(x_q, xs, xz, w_q, ws, bias), expected, "op")


# ---------------------------------------------------------------------------
# exact against the int64 reference

# Every value of M ∈ {1, 3, 7, 16, 129}, K ∈ {1, 17, 1025, 4096},
# N ∈ {1, 5, 33, 256} appears several times, with the largest combination.
SHAPES = [
    (1, 1, 1),
    (3, 17, 5),
    (7, 1025, 33),
    (16, 4096, 256),
    (129, 4096, 256),
    (129, 1, 5),
    (1, 4096, 33),
    (7, 17, 256),
    (16, 1025, 1),
    (3, 1, 33),
    (129, 17, 256),
    (1, 1025, 256),
    (7, 4096, 1),
    (129, 1025, 33),
    (16, 17, 5),
    (3, 4096, 256),
]


@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
def test_exact_vs_int64_reference(isa, gen, M, K, N, xdtype):
    x_q = codes(gen, (M, K), xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    dot = ref_dot(x_q, w_q)
    w_sum = w_q.int().sum(1, dtype=torch.int32)
    zero_zps = (True, False) if xdtype == torch.int8 else (False,)
    for per_token, per_channel, with_bias, give_sum, zero_zp in itertools.product(
        (False, True), (False, True), (False, True), (False, True), zero_zps
    ):
        xs, xz = x_params(gen, (M,), xdtype, per_token, zero_zp)
        ws, bias = w_params(gen, N, per_channel, with_bias)
        got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, w_sum if give_sum else None)
        exp = ref_linear(x_q, xs, xz, w_q, ws, bias, dot=dot)
        assert_same(got, exp, f"per_token={per_token} per_channel={per_channel} "
                              f"bias={with_bias} w_sum={give_sum} zero_zp={zero_zp}")


@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
@pytest.mark.parametrize("lead", [(2, 3), (2, 1, 3), (1, 5), ()], ids=str)
@pytest.mark.parametrize("K", [17, 1025])
def test_batch_dims(isa, gen, lead, K, xdtype):
    N = 7
    x_q = codes(gen, (*lead, K), xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    for per_token in (False, True):
        xs, xz = x_params(gen, lead, xdtype, per_token)
        ws, bias = w_params(gen, N, True, True)
        got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias)
        assert got.shape == (*lead, N) and got.is_contiguous()
        assert_same(got, ref_linear(x_q, xs, xz, w_q, ws, bias), f"per_token={per_token}")
        # the same as the flattened [M, K] problem
        flat = tq.quantized_linear(x_q.reshape(-1, K), xs.reshape(-1) if per_token else xs,
                                   xz.reshape(-1) if per_token else xz, w_q, ws, bias)
        assert_same(got.reshape(-1, N), flat, "batch vs flat")


def test_param_dtypes_converted_to_float32(isa, gen):
    """float64 / float16 scales and bias and int64 / uint8 zero points are read as
    float32 / int values (the oracle converts the same way)."""
    M, K, N = 5, 40, 6
    x_q = codes(gen, (M, K), torch.uint8)
    w_q = codes(gen, (N, K), torch.int8)
    xs = (torch.rand(M, generator=gen, dtype=torch.float64) + 0.01) / 7
    xz = torch.randint(0, 256, (M,), generator=gen)  # int64
    ws = (torch.rand(N, generator=gen) + 0.01).half()
    bias = torch.randn(N, generator=gen, dtype=torch.float64)
    got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias)
    assert_same(got, ref_linear(x_q, xs, xz, w_q, ws, bias), "f64/f16 params")
    got = tq.quantized_linear(x_q, xs, xz.to(torch.uint8), w_q, ws, bias.bfloat16())
    assert_same(got, ref_linear(x_q, xs, xz, w_q, ws, bias.bfloat16()), "uint8 zp, bf16 bias")


# ---------------------------------------------------------------------------
# extremes: no 16-bit saturation, exact at the largest K

# (x dtype, x value, x zero point): every pair with |x - zp| as large as allowed
X_EXTREMES = [
    (torch.int8, 127, 0), (torch.int8, -128, 0),
    (torch.int8, 127, -128), (torch.int8, -128, 127),
    (torch.int8, 127, 127), (torch.int8, -128, -128),
    (torch.uint8, 255, 0), (torch.uint8, 0, 0),
    (torch.uint8, 0, 255), (torch.uint8, 255, 255),
]


@pytest.mark.parametrize("K", [1, 2, 15, 16, 17, 63, 64, 65, 1023, 1024, 1025, 4097, MAX_K])
def test_extremes_exact(isa, K):
    M, N = 2, 3
    failures = []
    for (xdtype, xv, zp), wv in itertools.product(X_EXTREMES, (-128, 127)):
        x_q = torch.full((M, K), xv, dtype=xdtype)
        w_q = torch.full((N, K), wv, dtype=torch.int8)
        acc = K * (xv - zp) * wv  # exact Python int
        assert INT32_MIN <= acc <= INT32_MAX
        exp = torch.full((M, N), acc, dtype=torch.int64).to(torch.float32)
        for w_sum in (None, torch.full((N,), K * wv, dtype=torch.int32)):
            got = tq.quantized_linear(x_q, torch.tensor(1.0), torch.tensor(zp, dtype=torch.int32),
                                      w_q, torch.tensor(1.0), None, w_sum)
            if not torch.equal(got, exp):
                failures.append(f"x={xv} ({xdtype}) zp={zp} w={wv} w_sum={w_sum is not None}: "
                                f"expected {exp[0, 0].item()} got {got.flatten().tolist()}")
    assert not failures, f"K={K}: " + "; ".join(failures)


@pytest.mark.parametrize("K", [1025, MAX_K])
def test_extremes_mixed_rows(isa, gen, K):
    """Per-token zero points with rows at different extremes, and rows of
    random full-range codes, at the largest K: equal to the int64 oracle."""
    N = 3
    for xdtype in (torch.int8, torch.uint8):
        lo, hi = (-128, 127) if xdtype == torch.int8 else (0, 255)
        rows = [torch.full((K,), hi), torch.full((K,), lo), codes(gen, (K,), xdtype).int(),
                torch.full((K,), hi)]
        x_q = torch.stack(rows).to(xdtype)
        xz = torch.tensor([lo, hi, (lo + hi) // 2, hi], dtype=torch.int32)
        w_q = torch.stack([torch.full((K,), -128), torch.full((K,), 127),
                           codes(gen, (K,), torch.int8).int()]).to(torch.int8)
        xs = torch.tensor([1.0, 0.5, 2.0**-10, 4.0])
        ws = torch.tensor([1.0, 2.0**-3, 3.0])
        bias = torch.tensor([1.5, -2.0, 0.0])
        got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias)
        assert_same(got, ref_linear(x_q, xs, xz, w_q, ws, bias), f"{xdtype} K={K}")


def test_largest_k_dynamic(isa, gen):
    K = MAX_K
    x = torch.randn(2, K, generator=gen).abs()
    x[1] = -x[1]
    w_q = torch.stack([torch.full((K,), -128), torch.full((K,), 127),
                       codes(gen, (K,), torch.int8).int()]).to(torch.int8)
    ws = torch.tensor([1.0, 0.5, 0.25])
    for mode in MODES:
        assert_same(tq.dynamic_quantized_linear(x, w_q, ws, act_mode=mode),
                    composite(x, w_q, ws, act_mode=mode), mode)


# ---------------------------------------------------------------------------
# empty and degenerate shapes


@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_k_zero(isa, gen, xdtype):
    M, N = 5, 6
    x_q = torch.empty(M, 0, dtype=xdtype)
    w_q = torch.empty(N, 0, dtype=torch.int8)
    xs, xz = x_params(gen, (M,), xdtype, True)
    ws = random_scale(gen, N)
    bias = torch.randn(N, generator=gen)
    got = tq.quantized_linear(x_q, xs, xz, w_q, ws)
    assert_same(got, torch.zeros(M, N), "K=0 no bias")
    got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, torch.zeros(N, dtype=torch.int32))
    assert_same(got, bias.expand(M, N).contiguous(), "K=0 bias")
    got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, out_dtype=torch.bfloat16)
    assert_same(got, bias.expand(M, N).bfloat16(), "K=0 bias bf16")


@pytest.mark.parametrize("mode", MODES)
def test_k_zero_dynamic(isa, gen, mode):
    M, N = 4, 3
    w_q = torch.empty(N, 0, dtype=torch.int8)
    bias = torch.randn(N, generator=gen)
    for dtype in FLOATS:
        x = torch.empty(2, M, 0, dtype=dtype)
        got = tq.dynamic_quantized_linear(x, w_q, torch.tensor(0.5), bias, act_mode=mode)
        assert_same(got, bias.expand(2, M, N).to(dtype), f"K=0 {dtype}")
        assert_same(got, composite(x, w_q, torch.tensor(0.5), bias, act_mode=mode), "composite")
        got = tq.dynamic_quantized_linear(x, w_q, torch.tensor(0.5), act_mode=mode)
        assert_same(got, torch.zeros(2, M, N, dtype=dtype), f"K=0 no bias {dtype}")


EMPTY_CASES = [
    # (x_q shape, N, per_token)
    ((0, 9), 4, False),
    ((0, 9), 4, True),
    ((5, 9), 0, False),
    ((5, 9), 0, True),
    ((2, 0, 9), 4, True),
    ((0, 3, 9), 4, False),
    ((0, 0), 0, True),
    ((3, 9), 0, True),
]


@pytest.mark.parametrize("xshape,N,per_token", EMPTY_CASES, ids=[str(c) for c in EMPTY_CASES])
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_empty_shapes(isa, gen, xshape, N, per_token, xdtype):
    K = xshape[-1]
    x_q = codes(gen, xshape, xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    xs, xz = x_params(gen, xshape[:-1], xdtype, per_token)
    ws, bias = w_params(gen, N, True, True)
    for out_dtype in (None, torch.float16):
        got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, out_dtype=out_dtype)
        assert got.shape == (*xshape[:-1], N)
        assert got.dtype == (out_dtype or torch.float32)
        assert_same(got, ref_linear(x_q, xs, xz, w_q, ws, bias, out_dtype), "empty")
    for mode in MODES:
        x = torch.randn(xshape, generator=gen).bfloat16()
        got = tq.dynamic_quantized_linear(x, w_q, ws, bias, act_mode=mode)
        assert got.shape == (*xshape[:-1], N) and got.dtype == torch.bfloat16
        assert_same(got, composite(x, w_q, ws, bias, act_mode=mode), f"dynamic {mode}")


# ---------------------------------------------------------------------------
# layouts and output dtypes


def _strided(t: torch.Tensor, how: str) -> torch.Tensor:
    """A non-contiguous tensor equal to t."""
    if how == "transposed":
        assert t.dim() == 2
        return t.t().contiguous().t()
    if how == "sliced":  # every other element of the last dim
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        out = big[..., ::2]
        return out
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["transposed", "sliced"])
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_non_contiguous_inputs(isa, gen, how, xdtype):
    M, K, N = 9, 70, 11
    x_q = codes(gen, (M, K), xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    xs, xz = x_params(gen, (M,), xdtype, True)
    ws, bias = w_params(gen, N, True, True)
    w_sum = w_q.int().sum(1, dtype=torch.int32)
    exp = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, w_sum)
    assert_same(exp, ref_linear(x_q, xs, xz, w_q, ws, bias), "contiguous")
    nc = dict(x_q=_strided(x_q, how), w_q=_strided(w_q, how))
    for t in nc.values():
        assert not t.is_contiguous()
    params = dict(xs=_strided(xs, "sliced"), xz=_strided(xz, "sliced"), ws=_strided(ws, "sliced"),
                  bias=_strided(bias, "sliced"), w_sum=_strided(w_sum, "sliced"))
    for t in params.values():
        assert not t.is_contiguous()
    got = tq.quantized_linear(nc["x_q"], params["xs"], params["xz"], nc["w_q"], params["ws"],
                              params["bias"], params["w_sum"])
    assert got.is_contiguous()
    assert_same(got, exp, f"non-contiguous ({how})")
    # one at a time, too
    args = [x_q, xs, xz, w_q, ws, bias, w_sum]
    for i, t in enumerate([nc["x_q"], params["xs"], params["xz"], nc["w_q"], params["ws"],
                           params["bias"], params["w_sum"]]):
        a = list(args)
        a[i] = t
        assert_same(tq.quantized_linear(*a), exp, f"argument {i} non-contiguous ({how})")
    # expanded (stride 0) per-token parameters
    got = tq.quantized_linear(x_q, xs[:1].expand(M), xz[:1].expand(M), w_q, ws, bias)
    assert_same(got, tq.quantized_linear(x_q, xs[0], xz[0], w_q, ws, bias), "expanded params")
    # dynamic: non-contiguous x and weights
    for mode in MODES:
        x = torch.randn(M, K, generator=gen)
        exp = tq.dynamic_quantized_linear(x, w_q, ws, bias, act_mode=mode)
        got = tq.dynamic_quantized_linear(_strided(x, how), nc["w_q"], params["ws"],
                                          params["bias"], params["w_sum"], act_mode=mode)
        assert_same(got, exp, f"dynamic non-contiguous ({how}, {mode})")


def test_non_contiguous_batch_dims(isa, gen):
    K, N = 33, 5
    x_q = codes(gen, (3, K, 2), torch.uint8).permute(2, 0, 1)  # [2, 3, K], strided
    xs, xz = x_params(gen, (3, 2), torch.uint8, True)
    xs, xz = xs.t(), xz.t()  # [2, 3], strided
    w_q = codes(gen, (N, K), torch.int8)
    ws = random_scale(gen, N)
    got = tq.quantized_linear(x_q, xs, xz, w_q, ws)
    assert got.shape == (2, 3, N) and got.is_contiguous()
    assert_same(got, tq.quantized_linear(x_q.contiguous(), xs.contiguous(), xz.contiguous(),
                                         w_q, ws), "permuted batch")
    assert_same(got, ref_linear(x_q, xs, xz, w_q, ws), "permuted batch vs oracle")


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_out_dtype_is_float_result_cast(isa, gen, out_dtype, xdtype):
    M, K, N = 13, 300, 37
    x_q = codes(gen, (M, K), xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    for per_token, with_bias in itertools.product((False, True), (False, True)):
        xs, xz = x_params(gen, (M,), xdtype, per_token)
        ws, bias = w_params(gen, N, True, with_bias)
        ws[0] = 1.0
        ws[1] = 1e-30  # tiny results: subnormal / zero in float16
        if per_token:
            xs[0] = 64.0  # huge results: overflow to ±inf in float16
        f32 = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias)
        got = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, out_dtype=out_dtype)
        assert got.dtype == out_dtype
        assert_same(got, f32.to(out_dtype), f"per_token={per_token} bias={with_bias}")
        assert_same(got, ref_linear(x_q, xs, xz, w_q, ws, bias, out_dtype), "oracle")
    # an explicit float32 is the default
    assert_same(tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, out_dtype=torch.float32), f32,
                "explicit float32")


# ---------------------------------------------------------------------------
# threads and ISAs


@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_thread_count_does_not_change_results(isa, restore_threads, gen, xdtype):
    M, K, N = 130, 1000, 300
    x_q = codes(gen, (M, K), xdtype)
    w_q = codes(gen, (N, K), torch.int8)
    xs, xz = x_params(gen, (M,), xdtype, True)
    ws, bias = w_params(gen, N, True, True)
    x = torch.randn(M, K, generator=gen)
    mode = "symmetric" if xdtype == torch.int8 else "asymmetric"
    results = {}
    for n in (1, 2, 3):
        with num_threads(n):
            assert torch.get_num_threads() == n
            results[n] = (tq.quantized_linear(x_q, xs, xz, w_q, ws, bias),
                          tq.dynamic_quantized_linear(x, w_q, ws, bias, act_mode=mode))
    for n in (2, 3):
        assert_same(results[n][0], results[1][0], f"quantized_linear, {n} threads vs 1")
        assert_same(results[n][1], results[1][1], f"dynamic_quantized_linear, {n} threads vs 1")
    assert_same(results[1][0], ref_linear(x_q, xs, xz, w_q, ws, bias), "oracle")


# K % 64 != 0 (and % 16 != 0), M % 4 != 0, N % 4 != 0, tile edges (64), K blocks
TAIL_SHAPES = [(5, 63, 7), (9, 65, 3), (3, 2047, 130), (66, 127, 65), (130, 1030, 67),
               (1, 1, 1), (4, 16, 2), (67, 1040, 129), (2, 3000, 1)]


@pytest.mark.parametrize("M,K,N", TAIL_SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in TAIL_SHAPES])
def test_every_isa_matches_scalar(gen, M, K, N):
    data = []
    for xdtype in (torch.int8, torch.uint8):
        for per_token in (False, True):
            x_q = codes(gen, (M, K), xdtype)
            xs, xz = x_params(gen, (M,), xdtype, per_token, zero_zp=not per_token)
            w_q = codes(gen, (N, K), torch.int8)
            ws, bias = w_params(gen, N, per_token, True)
            data.append((x_q, xs, xz, w_q, ws, bias))
    x = torch.randn(M, K, generator=gen) * 3 + 0.5
    w_q = codes(gen, (N, K), torch.int8)
    ws = random_scale(gen, N)

    def run():
        return ([tq.quantized_linear(*d) for d in data]
                + [tq.dynamic_quantized_linear(x, w_q, ws, act_mode=m) for m in MODES])

    with using_isa("scalar"):
        expected = run()
    for i, d in enumerate(data):
        assert_same(expected[i], ref_linear(*d), f"scalar vs oracle, case {i}")
    for isa in SUPPORTED_ISAS:
        with using_isa(isa):
            got = run()
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{isa} vs scalar, case {i}")


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
        w_r = tq.nn.rotated_weight(w, block) if block else w
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
