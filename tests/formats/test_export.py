"""Deployment: torch.export of quantized models (dynamic batch and sequence
dims), an AOTInductor package of one (run from Python and from the C++
example, examples/cpp/run_aoti.cpp) and the C++ example that calls the ops
through the dispatcher (examples/cpp/call_ops.cpp). The C++ programs are
built with CMake against the installed torch; those tests skip only where
there is no CMake or C++ compiler."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.cpp_extension import CUDA_HOME

import torch_quant as tq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, "build", "examples-cpp")


def model(act_mode="symmetric", act_granularity="per_token", seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    calib = [torch.randn(8, 32) for _ in range(2)]
    return tq.quantize_(m, tq.QuantConfig(act_mode, act_granularity, smoothing="off"),
                        calib if act_granularity == "per_tensor" else None, progress=False)


def mixed_model():
    """Layer 0 symmetric, layer 2 asymmetric (after the ReLU)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    m[0] = tq.QuantLinear.from_float(m[0], "symmetric")
    m[2] = tq.QuantLinear.from_float(m[2], "asymmetric")
    return m


def export(m):
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=4096)
    return torch.export.export(m, (torch.randn(2, 5, 32),),
                               dynamic_shapes={"input": {0: batch, 1: seq}})


@pytest.mark.parametrize("mode,granularity", [("symmetric", "per_token"),
                                              ("asymmetric", "per_token"),
                                              ("asymmetric", "per_tensor")])
def test_export_with_dynamic_batch_and_sequence(mode, granularity):
    m = model(mode, granularity)
    ep = export(m)
    g = torch.Generator().manual_seed(1)
    for shape in ((1, 1, 32), (3, 7, 32), (2, 33, 32)):
        x = torch.randn(shape, generator=g)
        assert torch.equal(ep.module()(x), m(x)), shape
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("torch_quant" in o for o in ops), ops


def _tools():
    if shutil.which("cmake") is None or not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no CMake or C++ compiler")


@pytest.fixture(scope="module")
def cpp_examples():
    """The examples built (incrementally) into build/examples-cpp."""
    _tools()
    out = subprocess.run(["cmake", "-S", os.path.join(ROOT, "examples", "cpp"), "-B", BUILD,
                          "-DCMAKE_BUILD_TYPE=Release",
                          f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                         capture_output=True, text=True)
    if out.returncode != 0 and torch.version.cuda is not None and CUDA_HOME is None:
        pytest.skip("LibTorch's CMake config of a CUDA build of torch needs the CUDA toolkit")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    out = subprocess.run(["cmake", "--build", BUILD, "-j", str(os.cpu_count() or 2)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return BUILD


@pytest.mark.slow
def test_aoti_package_matches_eager_in_python_and_cpp(tmp_path, cpp_examples):
    m = mixed_model()
    package = torch._inductor.aoti_compile_and_package(
        export(m), package_path=str(tmp_path / "model.pt2"))
    x = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(2))
    want = m(x)
    assert torch.equal(torch._inductor.aoti_load_package(package)(x), want)
    x.numpy().tofile(tmp_path / "x.bin")
    run = subprocess.run([os.path.join(cpp_examples, "run_aoti"), package, str(tmp_path / "x.bin"),
                          "3", "9", "32", str(tmp_path / "y.bin")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    got = torch.from_numpy(np.fromfile(tmp_path / "y.bin", dtype=np.float32)).reshape(want.shape)
    assert torch.equal(got, want)


@pytest.mark.slow
def test_cpp_calls_the_ops_through_the_dispatcher(tmp_path, cpp_examples):
    M, K, N = 7, 70, 33
    g = torch.Generator().manual_seed(3)
    x = torch.randn(M, K, generator=g)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) + 0.01
    for name, t in (("x", x), ("w", w), ("ws", ws)):
        t.numpy().tofile(tmp_path / f"{name}.bin")
    run = subprocess.run([os.path.join(cpp_examples, "call_ops"), str(tmp_path / "x.bin"),
                          str(tmp_path / "w.bin"), str(tmp_path / "ws.bin"), str(M), str(K), str(N),
                          str(tmp_path / "out_")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for mode in ("symmetric", "asymmetric"):
        want = tq.dynamic_quantized_linear(x, tq.pack_weight(w), ws, act_mode=mode)
        for kind in ("fused", "two_step"):
            got = np.fromfile(tmp_path / f"out_{mode}_{kind}.bin", dtype=np.float32)
            assert torch.equal(torch.from_numpy(got).reshape(M, N), want), (mode, kind)
