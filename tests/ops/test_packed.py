"""Packed weights (tq.pack_weight / tq.unpack_weight, csrc/cpu/packed.h) and
how QuantLinear holds its weight: once, packed on CPU, plain in every file.

The layout is checked against an element-by-element Python transcription of
docs/semantics.md ("Packed weights"); results against the int64 oracle of the
reference. Numerics of the linear ops with packed weights on every ISA are in
test_linear.py (its ``weight_form`` fixture).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torch_quant as tq
from torch_quant.ops import reference as ref
from torch_quant.nn import PackedWeight

from conftest import MODES, assert_same, num_threads

SIZES = [(1, 1), (7, 3), (16, 4), (17, 5), (33, 29), (5, 1025), (48, 64), (0, 8), (3, 0),
         (32, 100), (64, 1030)]


def layout_reference(w: torch.Tensor) -> torch.Tensor:
    """docs/semantics.md, written out one byte at a time."""
    N, K = w.shape
    kg = (K + 3) // 4
    G = kg + 2
    out = bytearray(N * G * 4)
    sums = w.long().sum(1).tolist() if K else [0] * N
    for n in range(N):
        p, j = divmod(n, 16)
        cols = min(16, N - 16 * p)
        base = p * 64 * G + 4 * j
        for k in range(K):
            out[base + (k // 4) * 4 * cols + k % 4] = int(w[n, k]) & 0xFF
        flags = (1 if K and int(w[n].min()) == -128 else 0) | (K << 8)
        out[base + kg * 4 * cols: base + kg * 4 * cols + 4] = (sums[n] & 0xFFFFFFFF).to_bytes(4, "little")
        out[base + (kg + 1) * 4 * cols: base + (kg + 1) * 4 * cols + 4] = flags.to_bytes(4, "little")
    return torch.frombuffer(out, dtype=torch.int8).reshape(N, G, 4) if out else \
        torch.empty(N, G, 4, dtype=torch.int8)


@pytest.mark.parametrize("N,K", SIZES, ids=[f"{n}x{k}" for n, k in SIZES])
def test_layout_matches_the_documented_one(isa, gen, N, K):
    """Every ISA's packing (AVX-512 and AVX2 transpose full panels) writes the
    documented bytes; -128 in a full panel's first and last column too."""
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    if N and K:
        w[N // 2, K // 2] = -128
    if N >= 16 and K:
        w[0, K - 1] = w[15, 0] = -128
    packed = tq.pack_weight(w)
    assert packed.dtype == torch.int8 and packed.shape == (N, (K + 3) // 4 + 2, 4)
    assert_same(packed, layout_reference(w), "layout")
    assert_same(packed, ref.pack_weight(w), "reference.pack_weight")
    assert_same(tq.unpack_weight(packed, K), w, "round trip")
    assert_same(ref.unpack_weight(packed, K), w, "reference.unpack_weight")


@pytest.mark.parametrize("packed_k,k", [(8, 5), (5, 8), (7, 6), (4, 3)])
def test_a_k_with_the_same_group_count_is_caught(packed_k, k):
    """ceil(k / 4) equal, so the shapes pass; the K stored in the flags does not."""
    packed = tq.pack_weight(torch.ones(16, packed_k, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=f"dynamic_quantized_linear: K mismatch: w_q was packed "
                                           f"from a weight with K = {packed_k} columns, but K = {k}"):
        tq.dynamic_quantized_linear(torch.randn(2, k), packed, torch.ones(16))
    with pytest.raises(RuntimeError, match="quantized_linear: K mismatch"):
        tq.quantized_linear(torch.zeros(1, k, dtype=torch.int8), torch.tensor(1.0),
                            torch.tensor(0), packed, torch.ones(16))
    with pytest.raises(RuntimeError, match="unpack_weight: K mismatch"):
        tq.unpack_weight(packed, k)
    q = tq.QuantLinear.from_float(nn.Linear(packed_k, 16))
    with pytest.raises(RuntimeError, match="K mismatch"):
        q(torch.randn(3, k))


def test_pack_takes_non_contiguous_weights(gen):
    w = torch.randint(-127, 128, (40, 70), generator=gen).to(torch.int8)
    assert_same(tq.pack_weight(w.t().contiguous().t()), tq.pack_weight(w), "transposed storage")
    assert_same(tq.pack_weight(w[:, ::2]), tq.pack_weight(w[:, ::2].contiguous()), "strided")


@pytest.mark.parametrize("bad,match", [
    (lambda: tq.pack_weight(torch.zeros(3, 4)), r"pack_weight: w_q must be int8"),
    (lambda: tq.pack_weight(torch.zeros(3, dtype=torch.int8)), r"pack_weight: w_q must have shape \[N, K\]"),
    (lambda: tq.pack_weight(torch.zeros(1, 65794, dtype=torch.int8)), r"pack_weight: K = 65794"),
    (lambda: tq.unpack_weight(torch.zeros(3, 4, 4, dtype=torch.int8), 9), r"unpack_weight: w_packed must have shape \[N, 5, 4\]"),
    (lambda: tq.unpack_weight(torch.zeros(3, 4, dtype=torch.int8), 8), r"unpack_weight: w_packed must have shape"),
    (lambda: tq.unpack_weight(torch.zeros(3, 4, 4, dtype=torch.int8), -1), r"unpack_weight: K must be in"),
    (lambda: tq.dynamic_quantized_linear(torch.randn(2, 8), tq.pack_weight(torch.zeros(3, 8, dtype=torch.int8)),
                                         torch.ones(3), None, torch.zeros(3, dtype=torch.int32)),
     r"dynamic_quantized_linear: w_sum must be None with a packed w_q"),
    (lambda: tq.dynamic_quantized_linear(torch.randn(2, 12), tq.pack_weight(torch.zeros(3, 8, dtype=torch.int8)),
                                         torch.ones(3)),
     r"dynamic_quantized_linear: K mismatch: the packed w_q has shape \[3, 4, 4\]"),
    (lambda: tq.quantized_linear(torch.zeros(2, 8, dtype=torch.int8), torch.tensor(1.0), torch.tensor(0),
                                 torch.zeros(3, 4, 2, dtype=torch.int8), torch.ones(3)),
     r"quantized_linear: K mismatch: the packed w_q"),
])
def test_bad_arguments_name_the_op_and_argument(bad, match):
    with pytest.raises(RuntimeError, match=match):
        bad()


@pytest.mark.parametrize("M", [1, 2, 5, 6, 7, 13, 64, 300])
@pytest.mark.parametrize("N,K", [(17, 33), (64, 1024), (5, 4097)])
def test_packed_equals_the_int64_oracle_on_every_isa(isa, gen, M, N, K):
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    w[0, 0] = -128  # a -128 column: AVX2 takes its panel through the int16 path
    packed = tq.pack_weight(w)
    ws, bias = torch.rand(N, generator=gen) + 0.01, torch.randn(N, generator=gen)
    for xdtype, zp in ((torch.int8, 0), (torch.uint8, 131), (torch.int8, -7)):
        lo, hi = (-128, 128) if xdtype == torch.int8 else (0, 256)
        x_q = torch.randint(lo, hi, (M, K), generator=gen).to(xdtype)
        xs, xz = torch.rand(M, generator=gen) + 0.01, torch.full((M,), zp, dtype=torch.int32)
        got = tq.quantized_linear(x_q, xs, xz, packed, ws, bias)
        assert_same(got, ref.quantized_linear(x_q, xs, xz, w, ws, bias), f"{xdtype} zp={zp}")
    x = torch.randn(M, K, generator=gen)
    for mode in MODES:
        assert_same(tq.dynamic_quantized_linear(x, packed, ws, bias, None, mode),
                    ref.dynamic_quantized_linear(x, w, ws, bias, None, mode), mode)


def test_packed_results_do_not_depend_on_threads(isa, restore_threads, gen):
    M, K, N = 300, 777, 200
    w = torch.randint(-127, 128, (N, K), generator=gen).to(torch.int8)
    packed, ws = tq.pack_weight(w), torch.rand(N, generator=gen) + 0.01
    x = torch.randn(M, K, generator=gen)
    got = {}
    for n in (1, 2, 3):
        with num_threads(n):
            got[n] = [tq.dynamic_quantized_linear(x, packed, ws, None, None, m) for m in MODES]
    for n in (2, 3):
        for a, b in zip(got[n], got[1]):
            assert_same(a, b, f"{n} threads vs 1")


# ---------------------------------------------------------------------------
# No stale results: nothing is remembered between calls, so a write through
# any alias of a weight is seen by the next call.

WRITES = {
    "numpy": lambda w, v: torch.from_numpy(w.numpy()).copy_(v),
    "dlpack": lambda w, v: torch.utils.dlpack.from_dlpack(w).copy_(v),
    "storage": lambda w, v: w.untyped_storage().copy_(v.untyped_storage()),
    "data": lambda w, v: w.data.copy_(v),
}


@pytest.mark.parametrize("how", list(WRITES))
@pytest.mark.parametrize("M", [1, 5, 64])
def test_writes_through_any_alias_are_seen(isa, gen, how, M):
    K, N = 70, 40
    x = torch.randn(M, K, generator=gen)
    ws = torch.rand(N, generator=gen) + 0.01
    w = torch.randint(-127, 128, (N, K), generator=gen).to(torch.int8)
    new = torch.randint(-127, 128, (N, K), generator=gen).to(torch.int8)
    tq.dynamic_quantized_linear(x, w, ws)  # a first call with the old weight
    WRITES[how](w, new)
    assert_same(tq.dynamic_quantized_linear(x, w, ws), ref.dynamic_quantized_linear(x, new, ws),
                f"plain weight after a write through {how}")
    # the same through a QuantLinear's packed weight
    q = tq.QuantLinear.from_float(nn.Linear(K, N))
    q(x)
    new_packed = tq.pack_weight(new)
    with torch.no_grad():
        WRITES[how](q.weight.packed, new_packed)
    want = ref.dynamic_quantized_linear(x, new, q.weight_scale, q.bias)
    assert_same(q(x).detach(), want, f"QuantLinear after a write through {how}")


@pytest.mark.slow
def test_isa_switch_from_another_thread_never_crashes():
    """The linear ops read the active ISA once per call (gemm.h)."""
    code = textwrap.dedent("""
        import threading, torch, torch_quant as tq
        from torch_quant.ops import reference
        isas = tq._C._supported_cpu_isas()
        x, w = torch.randn(8, 512), torch.randint(-127, 128, (256, 512), dtype=torch.int8)
        ws, stop = torch.rand(256) + 0.01, threading.Event()
        want = reference.dynamic_quantized_linear(x, w, ws)
        def flip():
            i = 0
            while not stop.is_set():
                tq._C._set_cpu_isa(isas[i % len(isas)]); i += 1
        t = threading.Thread(target=flip); t.start()
        try:
            for _ in range(300):
                assert torch.equal(tq.dynamic_quantized_linear(x, w, ws), want)
                assert torch.equal(tq.dynamic_quantized_linear(x, tq.pack_weight(w), ws), want)
        finally:
            stop.set(); t.join()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---------------------------------------------------------------------------
# QuantLinear holds the weight once


def test_quantlinear_holds_one_packed_weight_and_saves_it_plain(gen):
    lin = nn.Linear(37, 21)
    q = tq.QuantLinear.from_float(lin)
    assert tq.is_packed_weight(q.weight.packed) and q.weight.shape == (21, 37)
    assert [n for n, _ in q.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in q.named_buffers()] == ["weight_scale", "weight_sum"]
    sd = q.state_dict()
    assert list(sd) == ["weight", "bias", "weight_scale", "weight_sum"]
    assert sd["weight"].shape == (21, 37) and sd["weight"].dtype == torch.int8
    assert type(sd["weight"]) is torch.Tensor
    assert_same(tq.pack_weight(sd["weight"]), q.weight.packed, "saved plain = held packed")
    # load into a fresh layer: packed again
    q2 = tq.QuantLinear(37, 21)
    q2.load_state_dict(sd)
    assert_same(q2.weight.packed, q.weight.packed, "loaded")
    x = torch.randn(3, 37, generator=gen)
    assert_same(q2(x), q(x), "forward after load")
    # assign=True (a plain tensor comes in) and torch.load of the saved dict
    q3 = tq.QuantLinear(37, 21)
    q3.load_state_dict(copy.deepcopy(sd), assign=True)
    assert isinstance(q3.weight, PackedWeight)
    assert_same(q3(x), q(x), "assign=True")


def test_quantlinear_dtype_moves_keep_the_layout(gen):
    q = tq.QuantLinear.from_float(nn.Linear(20, 9))
    x = torch.randn(2, 20, generator=gen)
    want = q(x)
    for move in (lambda m: m.float(), lambda m: m.to(torch.float32), lambda m: m.cpu(),
                 lambda m: m.share_memory(), copy.deepcopy):
        q = move(q)
        assert isinstance(q.weight, PackedWeight) and isinstance(q.weight, nn.Parameter)
        assert_same(q(x), want)


def test_quantlinear_rejects_a_wrong_shape_on_load():
    q = tq.QuantLinear(8, 4)
    bad = tq.QuantLinear(9, 4).state_dict()
    with pytest.raises(ValueError, match=r"load_state_dict: weight must be a torch.int8 tensor "
                                         r"of shape \(4, 8\), got \(4, 9\)"):
        q.load_state_dict(bad)
    assert isinstance(q.weight, PackedWeight) and q.weight.packed.shape == (4, 4, 4)


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or sys.platform != "linux",
                    reason="needs /proc and glibc")
@pytest.mark.slow
def test_quantizing_a_model_holds_no_second_copy_of_any_weight():
    """Resident memory after quantize_model ~ int8 weight bytes (+ scales,
    sums, biases): the float weights are gone and no packed copy sits beside
    a plain one. Run in a fresh process so that nothing else is resident."""
    code = textwrap.dedent("""
        import ctypes, gc, torch, torch_quant as tq
        from torch import nn
        torch.manual_seed(0)
        def rss():
            # glibc keeps freed heap memory for reuse; hand it back first, so
            # that what is counted is what is still allocated
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"): return int(line.split()[1]) * 1024
        model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(6)])
        x = torch.randn(4, 2048)
        with torch.no_grad(): model(x)
        gc.collect(); base = rss()
        float_bytes = sum(p.numel() * 4 for p in model.parameters())
        tq.quantize_model(model, progress=False)
        with torch.no_grad(): model(x)
        gc.collect()
        int8_bytes = sum(m.in_features * m.out_features for m in model if isinstance(m, tq.QuantLinear))
        print(base, rss(), float_bytes, int8_bytes)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    base, after, float_bytes, int8_bytes = map(int, out.stdout.split())
    # before: the float weights (96 MiB); after: they are gone and 24 MiB of
    # int8 (packed: +8 bytes a column) remain. Allow 8 MiB of allocator slack.
    assert after <= base - float_bytes + int8_bytes * 1.01 + (8 << 20), (base, after)


def test_a_layer_under_two_names_is_saved_once(tmp_path):
    """state_dict unpacks the weight anew on every call; tq.save still knows the
    two names hold one weight (by its packed buffer) and writes it once."""
    from safetensors import safe_open
    model = nn.Sequential(nn.Linear(8, 8))
    model.add_module("again", model[0])
    tq.quantize_model(model, progress=False)
    path = tmp_path / "m.safetensors"
    tq.save(model, path)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        aliases = f.metadata()["aliases"]
    assert "0.weight" in keys and "again.weight" not in keys
    assert '"again.weight": "0.weight"' in aliases
