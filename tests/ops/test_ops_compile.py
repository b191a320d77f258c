"""The ops work with torch.library.opcheck, torch.compile(fullgraph=True) and
torch.export (docs/semantics.md, "Operators": every op has a fake implementation)."""

from __future__ import annotations

import pytest
import torch

import torch_quant as tq

from conftest import assert_same

ops = torch.ops.torch_quant


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2 + 0.3).to(dtype)


def _samples():
    """(op, args) pairs covering per tensor / channel / token, half inputs,
    non-contiguous and empty tensors."""
    out = []
    x = _x((5, 33))
    xt = _x((33, 5)).t()  # non-contiguous
    for mode in ("symmetric", "asymmetric"):
        for xx, tag in ((x, "f32"), (x.half(), "f16"), (x.bfloat16(), "bf16"), (xt, "noncontig"),
                        (torch.empty(0, 4), "empty"), (_x((7,)), "1d")):
            out.append((f"choose_qparams-{mode}-{tag}", ops.choose_qparams.default,
                        (xx, mode, None, 8)))
            out.append((f"choose_qparams-ch-{mode}-{tag}", ops.choose_qparams.default,
                        (xx, mode, -1, 6)))
            s, z = tq.choose_qparams(xx, mode)
            out.append((f"quantize-tensor-{mode}-{tag}", ops.quantize.default,
                        (xx, s, z, mode, None, 8)))
            q = tq.quantize(xx, s, z, mode)
            out.append((f"dequantize-tensor-{mode}-{tag}", ops.dequantize.default,
                        (q, s, z, None, None)))
            sc, zc = tq.choose_qparams(xx, mode, axis=0, bits=4)
            out.append((f"quantize-channel-{mode}-{tag}", ops.quantize.default,
                        (xx, sc, zc, mode, 0, 4)))
            qc = tq.quantize(xx, sc, zc, mode, axis=0, bits=4)
            out.append((f"dequantize-channel-{mode}-{tag}", ops.dequantize.default,
                        (qc, sc, zc, 0, torch.bfloat16)))
            out.append((f"quantize_per_token-{mode}-{tag}", ops.quantize_per_token.default,
                        (xx, mode, 8)))
            qt, st, zt = tq.quantize_per_token(xx, mode, bits=7)
            out.append((f"quantize-token-{mode}-{tag}", ops.quantize.default,
                        (xx, st, zt, mode, None, 7)))
            out.append((f"dequantize-token-{mode}-{tag}", ops.dequantize.default,
                        (qt, st, zt, None, torch.float16)))
    return out


SAMPLES = _samples()


@pytest.mark.parametrize("op,args", [s[1:] for s in SAMPLES], ids=[s[0] for s in SAMPLES])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def _static_chain(x):
    s, z = tq.choose_qparams(x, "asymmetric")
    q = tq.quantize(x, s, z, "asymmetric")
    y = tq.dequantize(q, s, z)
    sc, zc = tq.choose_qparams(x, "symmetric", axis=0, bits=6)
    qc = tq.quantize(x, sc, zc, "symmetric", axis=0, bits=6)
    yc = tq.dequantize(qc, sc, zc, axis=0, dtype=torch.bfloat16)
    return y, q, yc


def _token_chain(x):
    q, s, z = tq.quantize_per_token(x, "asymmetric")
    y = tq.dequantize(q, s, z, dtype=x.dtype)
    q2, s2, z2 = tq.quantize_per_token(x * 2, "symmetric", bits=4)
    return y + tq.dequantize(q2, s2, z2, dtype=x.dtype), q, s, z


def _assert_outputs_same(a, b):
    assert len(a) == len(b)
    for ta, tb in zip(a, b):
        assert_same(ta, tb)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    x = _x((8, 65))
    x[1, 3] = float("nan")
    static = torch.compile(_static_chain, fullgraph=True, backend="inductor")
    token = torch.compile(_token_chain, fullgraph=True, backend="inductor")
    _assert_outputs_same(static(x), _static_chain(x))
    _assert_outputs_same(token(x), _token_chain(x))
    xh = _x((3, 5, 17), torch.float16, seed=1)
    _assert_outputs_same(token(xh), _token_chain(xh))


def test_compile_dynamic_shapes():
    torch._dynamo.reset()
    token = torch.compile(_token_chain, fullgraph=True, dynamic=True, backend="aot_eager")
    for shape in ((4, 9), (7, 33), (2, 3, 5)):
        x = _x(shape, seed=shape[0])
        _assert_outputs_same(token(x), _token_chain(x))


class _Chain(torch.nn.Module):
    def forward(self, x):
        y, q, yc = _static_chain(x)
        yt, qt, st, zt = _token_chain(x)
        return y, q, yc, yt, qt, st, zt


def test_export():
    x = _x((6, 40))
    ep = torch.export.export(_Chain(), (x,))
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("choose_qparams", "quantize", "dequantize", "quantize_per_token"):
        assert f"torch_quant.{op}.default" in names
    x2 = _x((6, 40), seed=5)
    _assert_outputs_same(ep.module()(x2), _Chain()(x2))
