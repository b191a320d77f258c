"""Exact ties at every rounding site, on every CPU path: the zero point
(``qmin - nearbyint(lo / scale)``), quantize (``nearbyint(fma(x, 1/scale, zp))``)
and the per-token quantization inside quantize_per_token and the fused linear.
Every tie must go to the even integer, as PyTorch rounds (docs/semantics.md,
"Rounding"); a kernel that rounds half away from zero (``roundf``) fails here.
The oracles are PyTorch's own: ``MinMaxObserver`` for the parameters and
``torch.quantize_per_tensor`` for the codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import assert_same


def _zero_point_ties(bits: int, count: int = 24):
    """(lo, hi) pairs, multiples of 1/64, for which lo / scale (float32, scale
    = (hi - lo) / (2^bits - 1)) is exactly k + 0.5, with k even and odd."""
    f = np.float32
    levels = f(2**bits - 1)
    even, odd = [], []
    for a in range(1, 300):
        for b in range(1, 300, 7):
            lo, hi = f(-a / 64), f(b / 64)
            r = lo / ((hi - lo) / levels)
            if r == np.floor(r) + f(0.5):
                (even if int(np.floor(r)) % 2 == 0 else odd).append((float(lo), float(hi)))
    assert len(even) >= count // 2 and len(odd) >= count // 2
    return even[: count // 2] + odd[: count // 2]


def _observer(lo: float, hi: float, bits: int):
    o = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                       quant_min=0, quant_max=2**bits - 1)
    o(torch.tensor([lo, hi]))
    return o.calculate_qparams()


def test_the_worked_tie():
    """[-0.25, 1.25] asymmetric: lo / scale = -42.5 exactly, zero point 42
    (half to even; half away from zero would give 43)."""
    scale, zp = tq.choose_qparams(torch.tensor([-0.25, 1.25]), "asymmetric")
    assert float(torch.tensor(-0.25) / scale) == -42.5
    assert int(zp) == 42


@pytest.mark.parametrize("bits", [8, 5, 2])
def test_zero_point_ties_every_granularity(isa, bits):
    """Per tensor, per channel (axis 0 and 1) and per token, every tie gives
    MinMaxObserver's zero point and scale."""
    ties = _zero_point_ties(bits)
    want = [_observer(lo, hi, bits) for lo, hi in ties]
    want_scale = torch.cat([s for s, _ in want])
    want_zp = torch.cat([z for _, z in want])
    # rows of 37 values spanning [lo, hi] (ends included; the middle values
    # are inside the range): per tensor one row at a time, per channel and
    # per token all rows at once
    rows = torch.stack([torch.linspace(lo, hi, 37) for lo, hi in ties])
    rows[:, 0], rows[:, -1] = torch.tensor([t[0] for t in ties]), torch.tensor([t[1] for t in ties])
    for i, row in enumerate(rows):
        s, z = tq.choose_qparams(row, "asymmetric", bits=bits)
        assert (float(s), int(z)) == (float(want_scale[i]), int(want_zp[i])), ties[i]
    s, z = tq.choose_qparams(rows, "asymmetric", axis=0, bits=bits)
    assert_same(s, want_scale)
    assert_same(z, want_zp)
    s, z = tq.choose_qparams(rows.t().contiguous(), "asymmetric", axis=1, bits=bits)
    assert_same(s, want_scale)
    assert_same(z, want_zp)
    q, s, z = tq.quantize_per_token(rows, "asymmetric", bits=bits)
    assert_same(s, want_scale)
    assert_same(z, want_zp)


def _code_ties(scale: float, zp: int, qmin: int, qmax: int) -> torch.Tensor:
    """Every x for which x / scale + zp is exactly k + 0.5 inside [qmin, qmax]."""
    k = torch.arange(qmin, qmax, dtype=torch.float64)
    return ((k + 0.5 - zp) * scale).float()


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("scale", [1.0, 0.25, 2.0**-7])
@pytest.mark.parametrize("n", [1, 7, 17, 67, 1025])
def test_quantize_ties_match_torch(isa, mode, scale, n):
    """quantize on ties (vector bodies and tails: n values, with and without a
    zero point) equals torch.quantize_per_tensor and per_channel."""
    qmin, qmax = ref.qrange(mode)
    zps = [0] if mode == "symmetric" else [0, 3, 128, 255]
    torch_dtype = torch.qint8 if mode == "symmetric" else torch.quint8
    for zp in zps:
        ties = _code_ties(scale, zp, qmin, qmax)
        x = ties.repeat((n + len(ties) - 1) // len(ties))[:n]
        x = x[torch.randperm(n, generator=torch.Generator().manual_seed(n))]
        s, z = torch.tensor(scale), torch.tensor(zp, dtype=torch.int32)
        got = tq.quantize(x, s, z, mode)
        want = torch.quantize_per_tensor(x, scale, zp, torch_dtype).int_repr()
        assert_same(got, want)
        assert (got.int() % 2 == 0).all()  # every value of x was a tie
        xc = x.reshape(1, n).expand(3, n).contiguous()
        sc, zc = s.expand(3).contiguous(), z.expand(3).contiguous()
        got = tq.quantize(xc, sc, zc, mode, axis=0)
        want = torch.quantize_per_channel(xc, sc.double(), zc.long(), 0, torch_dtype).int_repr()
        assert_same(got, want)


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("K", [2, 8, 33, 130])
def test_per_token_and_fused_linear_ties(isa, gen, mode, K):
    """Rows built so that their per-token scale is exactly 1 (symmetric: max
    |x| = 127; asymmetric: [0, 255]) and every other value is a tie: the codes
    of quantize_per_token equal torch.quantize_per_tensor's, and the fused
    dynamic_quantized_linear (which quantizes inside its own kernels) equals
    quantized_linear of those codes, exactly."""
    M, N = 5, 19
    qmin, qmax = ref.qrange(mode)
    ties = _code_ties(1.0, 0, max(qmin, -127), qmax)  # |x| <= 127: the scale stays 1
    x = ties[torch.randint(0, len(ties), (M, K), generator=gen)]
    x[:, 0] = 127.0 if mode == "symmetric" else 0.0
    x[:, 1] = -127.0 if mode == "symmetric" else 255.0
    x = x[:, torch.randperm(K, generator=gen)]
    q, s, z = tq.quantize_per_token(x, mode)
    assert (s == 1.0).all() and (z == 0).all()
    torch_dtype = torch.qint8 if mode == "symmetric" else torch.quint8
    want = torch.stack([torch.quantize_per_tensor(r, 1.0, 0, torch_dtype).int_repr() for r in x])
    assert_same(q, want)
    w = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8)
    ws = torch.rand(N, generator=gen) + 0.01
    exact = ref.quantized_linear(want, s, z, w, ws)
    for weight in (w, tq.pack_weight(w)):
        assert_same(tq.dynamic_quantized_linear(x, weight, ws, None, None, mode), exact)
