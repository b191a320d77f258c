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

import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import MODES, SUPPORTED_ISAS, assert_same, num_threads, random_scale, using_isa
from linear_helpers import (FLOATS, INT32_MAX, INT32_MIN, MAX_K, codes, composite, problem,
                            ref_dot, ref_linear, w_params, weight_form, x_params)  # noqa: F401  (weight_form: autouse fixture)

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
    x_q, xs, xz, w_q, ws, bias = problem(gen, xshape[:-1], xshape[-1], N, xdtype, per_token)
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
    x_q, xs, xz, w_q, ws, bias = problem(gen, (M,), K, N, xdtype)
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
    x_q, xs, xz, w_q, ws, bias = problem(gen, (M,), K, N, xdtype)
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


# Row counts on both sides of where a plain weight stops being read as it is
# and is packed for the call (80 rows for AVX-512 VNNI, 128 for AVX2;
# docs/design.md, "Plain weights"), with K past a 64-byte step and past the
# AVX2 kernel's K block, N past a task's 64 columns and not a multiple of 4.
CROSSOVER_M = [1, 5, 79, 80, 127, 128, 300]


@pytest.mark.parametrize("M", CROSSOVER_M)
def test_plain_kernel_and_per_call_packing_agree(isa, gen, M):
    K, N = 1030, 67
    w_q = codes(gen, (N, K), torch.int8)
    w_q[3, 5] = -128  # a column holding -128 (the AVX2 panel kernel's other path)
    w_sum = w_q.sum(1, dtype=torch.int32)
    x = torch.randn(M, K, generator=gen) * 2 - 0.3
    ws, bias = w_params(gen, N, True, True)
    for xdtype in (torch.int8, torch.uint8):
        x_q = codes(gen, (M, K), xdtype)
        xs, xz = x_params(gen, (M,), xdtype, True, False)
        dot = ref_dot(x_q, w_q)
        for s in (None, w_sum):
            assert_same(tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, s),
                        ref_linear(x_q, xs, xz, w_q, ws, bias, dot=dot), f"{xdtype} w_sum={s is not None}")
    for mode in MODES:
        assert_same(tq.dynamic_quantized_linear(x, w_q, ws, bias, w_sum, mode),
                    ref.dynamic_quantized_linear(x, w_q, ws, bias, None, mode), mode)
