"""Reliability of the linear ops around their numerics: a CPU path switched
from another thread while calls run, and weights written by routes that
bypass PyTorch's version counter (numpy, DLPack, raw storage, ``.data``).
Every result is compared with the Python reference (exact)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import torch_quant as tq
from torch_quant.ops import reference as ref

from conftest import MODES, SUPPORTED_ISAS, assert_same, using_isa


@pytest.mark.slow
def test_switching_the_cpu_path_from_another_thread_is_safe():
    """One thread loops over the linear ops (plain weights, M >= 2, so both
    the w_sum and the packing decisions are taken) while another switches
    the CPU path as fast as it can; run in a subprocess so that a crash
    fails the test instead of the test run. Every result stays exact."""
    script = textwrap.dedent(f"""
        import threading, time, torch, torch_quant as tq
        from torch_quant.ops import reference as ref
        isas = {SUPPORTED_ISAS!r}
        stop = threading.Event()
        def switch():
            i = 0
            while not stop.is_set():
                tq._C._set_cpu_isa(isas[i % len(isas)]); i += 1
        g = torch.Generator().manual_seed(0)
        x = torch.randn(9, 70, generator=g)
        w = torch.randint(-128, 128, (33, 70), generator=g, dtype=torch.int8)
        ws = torch.rand(33, generator=g) + 0.01
        want = {{m: ref.dynamic_quantized_linear(x, w, ws, None, None, m) for m in ("symmetric", "asymmetric")}}
        t = threading.Thread(target=switch); t.start()
        calls, end = 0, time.time() + 3.0
        try:
            while time.time() < end:
                for m, y in want.items():
                    got = tq.dynamic_quantized_linear(x, w, ws, None, None, m)
                    assert torch.equal(got, y), m
                    calls += 1
        finally:
            stop.set(); t.join()
        print("calls", calls)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) > 10


def _writes(w: torch.Tensor, new: torch.Tensor):
    """Ways to overwrite w's values in place that PyTorch's version counter
    of w does not see (or sees through another tensor)."""
    def via_numpy():
        torch.from_numpy(w.numpy())[...] = new

    def via_dlpack():
        torch.utils.dlpack.from_dlpack(w)[...] = new

    def via_storage():
        w.untyped_storage().copy_(new.contiguous().untyped_storage())

    def via_data():
        w.data[...] = new

    def via_copy():
        w.copy_(new)
    return {"numpy": via_numpy, "dlpack": via_dlpack, "storage": via_storage,
            "data": via_data, "copy_": via_copy}


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
@pytest.mark.parametrize("route", ["numpy", "dlpack", "storage", "data", "copy_"])
@pytest.mark.parametrize("mode", MODES)
def test_no_stale_result_after_a_hidden_weight_write(isa, route, mode):
    """The ops keep nothing between calls: after the weight is overwritten by
    any route, the next call computes with the new values (M = 1 and M >= 2,
    raw ops with w_sum recomputed by the caller)."""
    g = torch.Generator().manual_seed(1)
    K, N = 64, 24
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) + 0.01
    new = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    with using_isa(isa):
        for M in (1, 5, 300):
            x = torch.randn(M, K, generator=g)
            tq.dynamic_quantized_linear(x, w, ws, None, None, mode)  # a call before the write
        _writes(w, new)[route]()
        assert torch.equal(w, new)
        for M in (1, 5, 300):
            x = torch.randn(M, K, generator=g)
            w_sum = w.sum(1, dtype=torch.int32)
            assert_same(tq.dynamic_quantized_linear(x, w, ws, None, w_sum, mode),
                        ref.dynamic_quantized_linear(x, new, ws, None, None, mode), f"M={M}")
            x_q, s, z = tq.quantize_per_token(x, mode)
            assert_same(tq.quantized_linear(x_q, s, z, w, ws, None, w_sum),
                        ref.quantized_linear(x_q, s, z, new, ws, None, None), f"ql M={M}")


@pytest.mark.parametrize("M", [0, 1, 2, 7, 64, 130])
def test_w_sum_is_checked_identically_on_every_path(isa, gen, M):
    """w_sum (with a plain weight) must be the weight's row sums: a value off
    by one anywhere is an error naming w_sum on every path (some kernels read
    w_sum, others their own sums), for both ops and both activation types;
    the true sums give the reference's result."""
    K, N = 37, 21
    x = torch.randn(M, K, generator=gen)
    w = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8)
    ws = torch.rand(N, generator=gen) + 0.01
    sums = w.sum(1, dtype=torch.int32)
    for mode in MODES:
        q, s, z = ref.quantize_per_token(x, mode)
        assert_same(tq.quantized_linear(q, s, z, w, ws, None, sums),
                    ref.quantized_linear(q, s, z, w, ws, None, None))
        assert_same(tq.dynamic_quantized_linear(x, w, ws, None, sums, mode),
                    ref.dynamic_quantized_linear(x, w, ws, None, None, mode))
        for n in (0, N - 1):
            wrong = sums.clone()
            wrong[n] += 1
            with pytest.raises(RuntimeError, match=rf"quantized_linear: w_sum .* w_sum\[{n}\]"):
                tq.quantized_linear(q, s, z, w, ws, None, wrong)
            with pytest.raises(RuntimeError, match=rf"dynamic_quantized_linear: w_sum .* w_sum\[{n}\]"):
                tq.dynamic_quantized_linear(x, w, ws, None, wrong, mode)
