"""A bounded fuzz run of the ops, the files and the conversion (fixed seed).

Each category draws random cases until its share of the time is spent:

* ``linear``: quantized_linear and dynamic_quantized_linear on random shapes
  (0, 1, awkward and vector-sized M, K, N), modes, parameter layouts, plain
  or packed weights, non-contiguous inputs, smoothing and rotation, on a
  random CPU path and thread count; equal to the int64 reference, exactly.
* ``quantize``: choose_qparams + quantize + dequantize and quantize_per_token
  on random shapes, axes, modes and bit widths; equal to the reference (and
  to ``torch.quantize_per_tensor`` for 8 bits).
* ``bad_args``: a valid linear or quantize call with one argument corrupted
  (bad scale or zero point values, dtypes, shapes, modes, bits, w_sum,
  hadamard_block); a ``RuntimeError`` naming the op and the argument.
* ``files``: a saved model whose file is corrupted (flipped or cut bytes, a
  tensor value made invalid); ``tq.load`` either loads it (the corruption
  was a valid value) or raises ``ValueError`` with the model untouched.
* ``conversion``: a model with one bad layer (NaN / inf weight or bias,
  float64, K above the exact limit); ``quantize_model`` raises
  ``ValueError`` / ``TypeError`` naming the layer, the model untouched.

``TORCH_QUANT_FUZZ_SECONDS`` (default 30) is the whole run's time; the
counts are printed (``pytest -s``)."""

from __future__ import annotations

import os
import random
import time

import pytest
import torch
from torch import nn

import torch_quant as tq

pytestmark = pytest.mark.slow  # (make test-fast leaves it out)
from torch_quant.ops import reference as ref

from conftest import SUPPORTED_ISAS, assert_same, assert_untouched, snapshot

SECONDS = float(os.environ.get("TORCH_QUANT_FUZZ_SECONDS", "30"))
SHARES = {"linear": 0.35, "quantize": 0.15, "bad_args": 0.15, "files": 0.2, "conversion": 0.15}
SIZES = [0, 1, 2, 3, 7, 16, 17, 31, 64, 65, 127, 130, 257]
MODES = ("symmetric", "asymmetric")


@pytest.fixture(autouse=True)
def _restore():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    tq._C._set_cpu_isa("best")


def _run(category, one_case):
    """Calls one_case(rng) until the category's share of SECONDS is spent
    (at least 5 cases); returns the count."""
    rng = random.Random(f"torch_quant fuzz {category}")
    torch.manual_seed(rng.randrange(2**31))
    end = time.monotonic() + SECONDS * SHARES[category]
    n, outcomes = 0, {}
    while n < 5 or time.monotonic() < end:
        tq._C._set_cpu_isa(rng.choice(SUPPORTED_ISAS))
        torch.set_num_threads(rng.choice([1, 2]))
        outcome = one_case(rng, n)
        if outcome:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        n += 1
    print(f"\nfuzz {category}: {n} cases", outcomes or "")
    return n


def _maybe_strided(t, rng):
    """t itself, or an equal non-contiguous view (every other column)."""
    if t.dim() < 2 or rng.random() < 0.6:
        return t
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def _weights(rng, N, K):
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    if rng.random() < 0.2:
        w.fill_(rng.choice([-128, 127]))
    ws = torch.rand(N) + 0.01
    return w, ws


def _linear_case(rng, i):
    M, K, N = rng.choice(SIZES), rng.choice(SIZES[1:]), rng.choice(SIZES)
    lead = (M,) if rng.random() < 0.7 else (1, M)
    mode = rng.choice(MODES)
    w, ws = _weights(rng, N, K)
    bias = torch.randn(N) if rng.random() < 0.5 else None
    w_sum = w.sum(1, dtype=torch.int32) if rng.random() < 0.3 else None
    packed = rng.random() < 0.5
    wk = tq.pack_weight(w) if packed else w
    if packed:
        w_sum = None
    # quantized_linear, per token or per tensor
    lo, hi = ref.qrange(mode)
    x_q = torch.randint(lo, hi + 1, (*lead, K)).to(ref.code_dtype(mode))
    if rng.random() < 0.5:
        xs, xz = torch.rand(lead) + 0.01, torch.randint(lo, hi + 1, lead, dtype=torch.int32)
    else:
        xs, xz = torch.rand(()) + 0.01, torch.randint(lo, hi + 1, (), dtype=torch.int32)
    out_dtype = rng.choice([torch.float32, torch.bfloat16])
    got = tq.quantized_linear(_maybe_strided(x_q, rng), xs, xz, wk, ws, bias, w_sum,
                              out_dtype=out_dtype)
    assert_same(got, ref.quantized_linear(x_q, xs, xz, w, ws, bias, None, out_dtype),
                f"quantized_linear case {i}")
    # dynamic_quantized_linear, maybe smoothed and rotated
    x = (torch.randn(*lead, K) * rng.choice([1e-3, 1.0, 50.0])).to(
        rng.choice([torch.float32, torch.float32, torch.bfloat16]))
    smooth = torch.rand(K) * 3 + 0.1 if rng.random() < 0.3 else None
    blocks = [b for b in (2, 4, 16, 64) if K % b == 0]
    block = rng.choice(blocks) if blocks and rng.random() < 0.3 else 0
    got = tq.dynamic_quantized_linear(_maybe_strided(x, rng), wk, ws, bias, w_sum, mode, smooth,
                                      block)
    assert_same(got, ref.dynamic_quantized_linear(x, w, ws, bias, None, mode, smooth, block),
                f"dynamic_quantized_linear case {i}")


def _quantize_case(rng, i):
    dims = rng.choice([1, 2, 3])
    shape = tuple(rng.choice(SIZES[:9]) for _ in range(dims))
    mode, bits = rng.choice(MODES), rng.choice([8, 8, 4, 2])
    x = torch.randn(shape) * rng.choice([1e-20, 1e-3, 1.0, 1e4])
    if x.numel() and rng.random() < 0.3:
        x.view(-1)[rng.randrange(x.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
    axis = rng.choice([None, rng.randrange(-dims, dims)])
    if axis is not None and x.shape[axis] == 0:
        axis = None
    xv = _maybe_strided(x, rng)
    s, z = tq.choose_qparams(xv, mode, axis, bits)
    rs, rz = ref.choose_qparams(x, mode, axis, bits)
    assert_same(s, rs, f"choose_qparams case {i}")
    assert_same(z, rz, f"choose_qparams case {i}")
    q = tq.quantize(xv, s, z, mode, axis, bits)
    assert_same(q, ref.quantize(x, s, z, mode, axis, bits), f"quantize case {i}")
    if bits == 8 and axis is None and x.numel():
        dt = torch.qint8 if mode == "symmetric" else torch.quint8
        xf = x.nan_to_num(0.0, 0.0, 0.0)  # torch's kernel has no rule for NaN / inf
        assert_same(tq.quantize(xf, s, z, mode),
                    torch.quantize_per_tensor(xf, float(s), int(z), dt).int_repr())
    assert_same(tq.dequantize(q, s, z, axis), ref.dequantize(q, s, z, axis), f"dequantize {i}")
    for a, b in zip(tq.quantize_per_token(xv, mode, bits), ref.quantize_per_token(x, mode, bits)):
        assert_same(a, b, f"quantize_per_token case {i}")


def _bad_arg_case(rng, i):
    M, K, N = rng.choice([1, 3, 17]), rng.choice([4, 8, 33]), rng.choice([1, 5, 16])
    mode = rng.choice(MODES)
    lo, hi = ref.qrange(mode)
    x = torch.randn(M, K)
    w, ws = _weights(rng, N, K)
    x_q = torch.randint(lo, hi + 1, (M, K)).to(ref.code_dtype(mode))
    xs, xz = torch.rand(M) + 0.01, torch.randint(lo, hi + 1, (M,), dtype=torch.int32)
    s, z = tq.choose_qparams(x, mode)
    bad_scale = rng.choice([float("nan"), 0.0, -1.0, float("inf"), 1e-45])
    corruptions = [
        ("quantized_linear", "x_scale", lambda: tq.quantized_linear(
            x_q, xs.clone().index_fill_(0, torch.tensor([M - 1]), bad_scale), xz, w, ws)),
        ("quantized_linear", "x_zero_point", lambda: tq.quantized_linear(
            x_q, xs, xz.clone().index_fill_(0, torch.tensor([0]), rng.choice([lo - 1, hi + 1])),
            w, ws)),
        ("quantized_linear", "w_scale", lambda: tq.quantized_linear(
            x_q, xs, xz, w, ws.clone().index_fill_(0, torch.tensor([N - 1]), bad_scale))),
        ("quantized_linear", "w_sum", lambda: tq.quantized_linear(
            x_q, xs, xz, w, ws, None, w.sum(1, dtype=torch.int32) + 1)),
        ("quantized_linear", "w_sum", lambda: tq.quantized_linear(
            x_q, xs, xz, tq.pack_weight(w), ws, None, w.sum(1, dtype=torch.int32))),
        ("quantized_linear", "w_q", lambda: tq.quantized_linear(x_q, xs, xz, w.int(), ws)),
        ("quantized_linear", "K mismatch", lambda: tq.quantized_linear(x_q, xs, xz, w[:, 1:], ws)),
        ("quantized_linear", "x_q", lambda: tq.quantized_linear(x_q.float(), xs, xz, w, ws)),
        ("quantized_linear", "bias", lambda: tq.quantized_linear(
            x_q, xs, xz, w, ws, torch.zeros(N + 1))),
        ("dynamic_quantized_linear", "act_mode", lambda: tq.dynamic_quantized_linear(
            x, w, ws, None, None, "sideways")),
        ("dynamic_quantized_linear", "smooth", lambda: tq.dynamic_quantized_linear(
            x, w, ws, None, None, mode, torch.full((K,), bad_scale))),
        ("dynamic_quantized_linear", "hadamard_block", lambda: tq.dynamic_quantized_linear(
            x, w, ws, None, None, mode, None, rng.choice([3, -2, 2 * K]))),
        ("dynamic_quantized_linear", "w_scale", lambda: tq.dynamic_quantized_linear(
            x, w, torch.full((N,), bad_scale))),
        ("dynamic_quantized_linear", "x", lambda: tq.dynamic_quantized_linear(
            x.double(), w, ws)),
        ("quantize", "scale", lambda: tq.quantize(x, torch.tensor(bad_scale), z, mode)),
        ("quantize", "zero_point", lambda: tq.quantize(
            x, s, torch.tensor(rng.choice([lo - 1, hi + 1]), dtype=torch.int32), mode)),
        ("quantize", "bits", lambda: tq.quantize(x, s, z, mode, None, rng.choice([1, 9]))),
        ("quantize", "axis", lambda: tq.quantize(x, s, z, mode, 5)),
        ("dequantize", "scale", lambda: tq.dequantize(x_q, torch.tensor(bad_scale), z)),
        ("choose_qparams", "mode", lambda: tq.choose_qparams(x, "Symmetric")),
        ("quantize_per_token", "x", lambda: tq.quantize_per_token(x.half().int(), mode)),
    ]
    op, arg, call = rng.choice(corruptions)
    with pytest.raises(RuntimeError) as e:
        call()
    msg = str(e.value)
    assert f"torch_quant.{op}" in msg and arg.split()[0] in msg, (op, arg, msg[:300])


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 8), nn.GELU(),
                         nn.Linear(8, 5, bias=False)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved model per setting: (path, bytes, settings)."""
    pytest.importorskip("safetensors")
    files = []
    for mode in MODES:
        for gran in ("per_token", "per_tensor"):
            calib = [torch.randn(6, 24)] if gran == "per_tensor" else None
            q = tq.quantize_model(_mlp(0), mode, gran, calibration_data=calib, progress=False)
            path = tmp_path_factory.mktemp("fuzz") / f"{mode}-{gran}.safetensors"
            tq.save(q, path)
            files.append((path, path.read_bytes(), mode, gran))
    return files


def _file_case(rng, i, saved, tmp):
    path, data, mode, gran = rng.choice(saved)
    kind = rng.choice(["flip", "flip", "cut", "value"])
    data = bytearray(data)
    if kind == "flip":
        for _ in range(rng.choice([1, 1, 4])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        data = data[: rng.randrange(len(data))]
    bad = tmp / f"bad-{i}.safetensors"
    if kind == "value":
        from safetensors import safe_open
        from safetensors.torch import save_file
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        key = rng.choice([k for k, v in tensors.items() if v.numel()])
        t = tensors[key].clone()
        flat = t.view(-1)
        j = rng.randrange(flat.numel())
        if t.is_floating_point():
            flat[j] = rng.choice([float("nan"), float("inf"), 0.0, -1.0, 1e-45])
        elif t.dtype == torch.int32:
            flat[j] = flat[j] + rng.choice([-300, -1, 1, 128, 300])
        else:
            flat[j] = int(flat[j]) ^ 0x40
        tensors[key] = t
        save_file(tensors, str(bad), metadata=meta)
    else:
        bad.write_bytes(bytes(data))
    # a float model, or one quantized with the file's settings
    target = _mlp(1) if rng.random() < 0.5 else tq.load(_mlp(1), path)
    snap = snapshot(target)
    try:
        tq.load(target, bad)
    except ValueError:
        assert_untouched(target, snap)
        return f"{kind}: rejected"
    finally:
        bad.unlink()
    # loaded: the corruption left a valid file (a weight code or a bias
    # value); the model is then a working quantized model
    y = target(torch.randn(3, 24))
    assert y.shape == (3, 5)
    return f"{kind}: loaded"


def _conversion_case(rng, i):
    model = _mlp(2)
    names = ["0", "2", "4"]
    name = rng.choice(names)
    layer = model.get_submodule(name)
    kind = rng.choice(["nan", "inf", "bias", "float64"])
    with torch.no_grad():
        if kind in ("nan", "inf"):
            layer.weight.view(-1)[rng.randrange(layer.weight.numel())] = (
                float("nan") if kind == "nan" else float("inf"))
        elif kind == "bias" and layer.bias is not None:
            layer.bias[0] = float("nan")
        else:
            kind = "float64"
            layer.double()
    snap = snapshot(model)
    with pytest.raises((ValueError, TypeError)) as e:
        tq.quantize_model(model, rng.choice(MODES + ("auto",)),
                          rng.choice(["per_token", "per_tensor"]),
                          calibration_data=[torch.randn(4, 24)], progress=False)
    assert f"'{name}'" in str(e.value) or f" {name}" in str(e.value), str(e.value)
    assert_untouched(model, snap)


def test_fuzz_linear():
    assert _run("linear", _linear_case) >= 5


def test_fuzz_quantize():
    assert _run("quantize", _quantize_case) >= 5


def test_fuzz_bad_arguments():
    assert _run("bad_args", _bad_arg_case) >= 5


def test_fuzz_files(saved, tmp_path):
    assert _run("files", lambda rng, i: _file_case(rng, i, saved, tmp_path)) >= 5


def test_fuzz_conversion():
    assert _run("conversion", _conversion_case) >= 5
