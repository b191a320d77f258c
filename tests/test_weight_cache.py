"""The per-weight packed copies of the CPU linear kernels (csrc/cpu/weight_cache.h).

A packed copy may only ever be used while it equals the weight: every test
here changes or replaces a weight in some way and checks the result against
the int64 oracle of test_linear.py, on every CPU kernel path.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch

import torch_quant as tq

from test_linear import codes, ref_linear
from conftest import assert_same

M, K, N = 5, 1025, 33  # M >= 2: the packed path on AVX2


def check(x_q, w_q, what):
    xs, xz = torch.tensor(0.5), torch.tensor(3, dtype=torch.int32)
    ws = torch.rand(w_q.shape[0], generator=torch.Generator().manual_seed(1)) + 0.1
    got = tq.quantized_linear(x_q, xs, xz, w_q, ws)
    assert_same(got, ref_linear(x_q, xs, xz, w_q, ws), what)


def cache_info():
    return tq._C._weight_cache_info()


@pytest.fixture(autouse=True)
def empty_cache():
    tq.clear_weight_cache()
    yield
    tq.clear_weight_cache()


@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_in_place_writes_repack(isa, gen, xdtype):
    x_q = codes(gen, (M, K), xdtype)
    w = codes(gen, (N, K), torch.int8).clamp_(min=-127)
    check(x_q, w, "first use")
    check(x_q, w, "second use (cached)")
    w.copy_(codes(gen, (N, K), torch.int8).clamp_(min=-127))
    check(x_q, w, "after copy_")
    w[7, 100] = 99
    check(x_q, w, "after one element written")
    w[3, 5] = -128  # the panel kernel cannot take -128: back to the plain one
    check(x_q, w, "after -128 written")
    w.clamp_(min=-127)
    check(x_q, w, "after clamp_")
    w.set_(codes(gen, (N, K), torch.int8))
    check(x_q, w, "after set_ to new storage")
    with torch.no_grad():
        w.mul_(0)
    check(x_q, w, "after mul_(0)")


def test_load_state_dict_repacks(gen):
    lin = torch.nn.Module()
    lin.register_buffer("w", codes(gen, (N, K), torch.int8).clamp_(min=-127))
    x_q = codes(gen, (M, K), torch.int8)
    check(x_q, lin.w, "before")
    new = {"w": codes(gen, (N, K), torch.int8).clamp_(min=-127)}
    lin.load_state_dict(new)
    assert not torch.equal(lin.w, torch.zeros_like(lin.w))
    check(x_q, lin.w, "after load_state_dict")


def test_one_copy_per_live_weight(gen):
    if tq._C._cpu_isa() not in ("avx2", "avx512"):
        pytest.skip("packed copies are made for the AVX2 kernel only")
    x_q = codes(gen, (M, K), torch.int8)
    w1 = codes(gen, (N, K), torch.int8).clamp_(min=-127)
    check(x_q, w1, "w1")
    check(x_q, w1, "w1 again")
    assert cache_info()[0] == 1 and cache_info()[1] > 0
    w2 = codes(gen, (N, K), torch.int8).clamp_(min=-127)
    check(x_q, w2, "w2")
    assert cache_info()[0] == 2
    del w1, w2
    gc.collect()
    assert cache_info() == (0, 0), "copies of dead weights must be released"


def test_single_row_does_not_pack(gen):
    if tq._C._cpu_isa() not in ("avx2", "avx512"):
        pytest.skip("packed copies are made for the AVX2 kernel only")
    w = codes(gen, (N, K), torch.int8).clamp_(min=-127)
    check(codes(gen, (1, K), torch.int8), w, "M=1")
    assert cache_info()[0] == 0


@pytest.mark.parametrize("kind", ["inference", "non_contiguous"])
def test_weights_that_are_not_cached(isa, gen, kind):
    x_q = codes(gen, (M, K), torch.int8)
    base = codes(gen, (N, 2 * K), torch.int8).clamp_(min=-127)
    if kind == "inference":
        with torch.inference_mode():
            w = base[:, :K].clone()
        assert w.is_inference()
    else:
        w = base[:, ::2]
    check(x_q, w, kind)
    check(x_q, w, kind + " again")
    if kind == "inference":
        with torch.inference_mode():
            w.add_(1)
        check(x_q, w, "inference tensor after add_")
    assert cache_info()[0] == 0


def test_write_through_shared_storage_view(isa, gen):
    """A contiguous view shares the version counter of its base."""
    x_q = codes(gen, (M, K), torch.int8)
    base = codes(gen, (2 * N, K), torch.int8).clamp_(min=-127)
    w = base[N:]  # contiguous rows of base
    assert w.is_contiguous()
    check(x_q, w, "view")
    base[N + 1].fill_(17)
    check(x_q, w, "after writing the base")


def test_clear_after_write_through_data(isa, gen):
    x_q = codes(gen, (M, K), torch.int8)
    w = codes(gen, (N, K), torch.int8).clamp_(min=-127)
    check(x_q, w, "before")
    w.data.copy_(codes(gen, (N, K), torch.int8).clamp_(min=-127))
    tq.clear_weight_cache()
    check(x_q, w, "after .data write and clear_weight_cache()")


@pytest.mark.parametrize("budget", ["0", "1"])
def test_budget_environment_variable(budget):
    """TORCH_QUANT_WEIGHT_CACHE_MB caps the copies; over the cap the kernels
    pack per call, with the same results."""
    code = f"""
import torch, torch_quant as tq
g = torch.Generator().manual_seed(0)
x = torch.randint(-128, 128, ({M}, 4096), generator=g, dtype=torch.int8)
w = torch.randint(-127, 128, (512, 4096), generator=g, dtype=torch.int8)  # 2 MiB packed
ws = torch.rand(512, generator=g) + 0.1
tq._C._set_cpu_isa("scalar")
want = tq.quantized_linear(x, torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), w, ws)
tq._C._set_cpu_isa("best")
for _ in range(2):
    got = tq.quantized_linear(x, torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), w, ws)
    assert torch.equal(got, want)
print(tq._C._weight_cache_info()[0])
"""
    env = dict(os.environ, TORCH_QUANT_WEIGHT_CACHE_MB=budget)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
