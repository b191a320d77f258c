"""The CUDA kernels (csrc/cuda): registered whenever the build had CUDA, and on a
GPU equal to the CPU kernels (bit-exact codes, dequantized values and linear outputs:
both use quant_math.h's float32 formulas). Without a GPU (CI) the GPU tests skip."""

from __future__ import annotations

import copy
import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.cpp_extension import CUDA_HOME

import torch_quant as tq

OPS = ("choose_qparams", "quantize", "dequantize", "quantize_per_token", "quantized_linear",
       "dynamic_quantized_linear", "pack_weight", "unpack_weight")
MODES = ("symmetric", "asymmetric")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_build_has_cuda_when_it_can():
    """setup.py builds the CUDA sources whenever nvcc and a CUDA torch exist."""
    if os.environ.get("TORCH_QUANT_FORCE_CPU", "0") not in ("", "0"):
        pytest.skip("TORCH_QUANT_FORCE_CPU is set")
    expected = CUDA_HOME is not None and torch.version.cuda is not None
    assert tq._C._built_with_cuda() == expected


def _cuobjdump():
    """cuobjdump: on PATH, in CUDA_HOME, or from a pip package (NVIDIA's
    nvidia-cuda-cuobjdump, or the copy triton bundles)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    roots = [os.path.join(CUDA_HOME, "bin")] if CUDA_HOME else []
    for site in {os.path.dirname(os.path.dirname(torch.__file__))}:
        roots += glob.glob(os.path.join(site, "nvidia", "*", "bin"))
        roots.append(os.path.join(site, "triton", "backends", "nvidia", "bin"))
    for root in roots:
        exe = os.path.join(root, "cuobjdump")
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def test_binary_has_sass_and_ptx():
    """The CUDA build holds machine code (SASS) for every architecture of the
    TORCH_CUDA_ARCH_LIST it was built with (default 7.5;8.0;9.0+PTX) and PTX
    of those marked +PTX, so that newer GPUs compile the kernels when they
    load them."""
    if not tq._C._built_with_cuda():
        pytest.skip("built without CUDA")
    exe = _cuobjdump()
    if exe is None:
        pytest.skip("no cuobjdump")
    entries = [a for a in tq._C._cuda_arch_list().split("_") if a]  # as built
    assert entries
    sass = {a.split("+")[0].replace(".", "") for a in entries}
    ptx = {a.split("+")[0].replace(".", "") for a in entries if a.endswith("+PTX")}
    lib = tq._C.__file__
    elf = subprocess.run([exe, "--list-elf", lib], capture_output=True, text=True).stdout
    listed = subprocess.run([exe, "--list-ptx", lib], capture_output=True, text=True).stdout
    assert sass <= set(re.findall(r"sm_(\d+a?)\.cubin", elf)), elf
    assert ptx <= set(re.findall(r"(?:sm|compute)_(\d+a?)\.ptx", listed)), listed


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_cuda_kernel(op):
    if not tq._C._built_with_cuda():
        pytest.skip("built without CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torch_quant::{op}", "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torch_quant::{op}", "CPU")


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    if x.numel() > 4:
        flat = x.view(-1)
        flat[0], flat[1], flat[2] = float("nan"), float("inf"), float("-inf")
    return x


def _on_gpu(t, offset=0):
    """t on the GPU, contiguous, its data starting `offset` elements into its
    storage (offset=1: not 16-byte aligned, so the kernels' element-by-element
    versions run instead of the 16-byte ones)."""
    out = torch.empty(t.numel() + offset, dtype=t.dtype, device="cuda")[offset:].view(t.shape)
    return out.copy_(t)


@gpu
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
# 16-byte packs where the data is aligned and a pack stays within a channel:
# one channel ((1025,) with a tail of 1; (1031,) of 7), inner % pack == 0
# ((4, 16) axis 0, (3, 5, 64) axis 1); element by element otherwise.
@pytest.mark.parametrize("shape,axis", [((1025,), None), ((1031,), None), ((7, 17), 0),
                                        ((7, 17), 1), ((3, 5, 33), 1), ((4, 16), 0),
                                        ((3, 5, 64), 1), ((0, 4), None), ((4, 0), 0)])
def test_quantize_ops_match_cpu(offset, mode, dtype, shape, axis):
    x = _x(shape, dtype)
    s_cpu, z_cpu = tq.choose_qparams(x, mode, axis)
    s_gpu, z_gpu = tq.choose_qparams(_on_gpu(x, offset), mode, axis)
    assert torch.equal(s_gpu.cpu(), s_cpu) and torch.equal(z_gpu.cpu(), z_cpu)
    q_cpu = tq.quantize(x, s_cpu, z_cpu, mode, axis)
    q_gpu = tq.quantize(_on_gpu(x, offset), s_cpu.cuda(), z_cpu.cuda(), mode, axis)
    assert torch.equal(q_gpu.cpu(), q_cpu)
    for out in (torch.float32, torch.bfloat16):
        d_cpu = tq.dequantize(q_cpu, s_cpu, z_cpu, axis, out)
        d_gpu = tq.dequantize(_on_gpu(q_cpu, offset), s_cpu.cuda(), z_cpu.cuda(), axis, out)
        assert torch.equal(d_gpu.cpu(), d_cpu)


@gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
# Large channels are spread over many blocks (then one block per channel
# reduces their partial ranges): per tensor with a tail, contiguous channels
# with and without 16-byte packs, strided channels.
@pytest.mark.parametrize("shape,axis", [((2**20 + 3,), None), ((3, 2**18 + 5), 0),
                                        ((4, 2**18), 0), ((2**16 + 1, 4), 1),
                                        ((2, 2**17, 3), 1)])
def test_choose_qparams_split_over_blocks_matches_cpu(mode, dtype, shape, axis):
    x = _x(shape, dtype)
    flat = x.view(-1)
    flat[-1], flat[flat.numel() // 2 + 1] = 1000.0, -2000.0  # extremes far from the start
    s_cpu, z_cpu = tq.choose_qparams(x, mode, axis)
    s_gpu, z_gpu = tq.choose_qparams(x.cuda(), mode, axis)
    assert torch.equal(s_gpu.cpu(), s_cpu) and torch.equal(z_gpu.cpu(), z_cpu)


@gpu
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# (3, 64) and (2, 5, 1024): whole 16-byte packs when aligned
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (3, 64), (2, 5, 1024), (2, 5, 1025),
                                   (0, 8), (4, 0)])
def test_quantize_per_token_matches_cpu(offset, mode, dtype, shape):
    x = _x(shape, dtype)
    got = tq.quantize_per_token(_on_gpu(x, offset), mode)
    for a, b in zip(got, tq.quantize_per_token(x, mode)):
        assert torch.equal(a.cpu(), b)


@gpu
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8])
# (129, 64, 256), (17, 8, 8) and (33, 1024, 40) take the cuBLASLt path (M > 16,
# K and N multiples of 8); the others our tensor-core kernel, with whole
# 16-byte loads when K % 16 == 0 ((5, 64, 70), (100, 48, 130), (16, 1024, 9))
# unless the data is misaligned (offset=1), byte loads otherwise; (100, 48, 130)
# spans 2 x 3 blocks of 64 x 64 outputs.
@pytest.mark.parametrize("M,K,N,offset", [
    (1, 1, 1, 0), (3, 17, 5, 0), (16, 1025, 33, 0), (129, 64, 256, 0), (17, 8, 8, 0),
    (33, 1024, 40, 0), (20, 1000, 7, 0), (5, 64, 70, 0), (100, 48, 130, 0), (16, 1024, 9, 0),
    (16, 1024, 9, 1), (70, 0, 3, 0)])
def test_quantized_linear_matches_cpu(xdtype, M, K, N, offset):
    g = torch.Generator().manual_seed(M * K + N)
    lo, hi = (-128, 127) if xdtype == torch.int8 else (0, 255)
    # offset > 0: a contiguous x_q whose data starts `offset` bytes into its storage
    x_q = torch.randint(lo, hi + 1, (M * K + offset,), generator=g).to(xdtype)[offset:]
    x_q = x_q.view(M, K)
    w_q = torch.randint(-128, 128, (N, K), generator=g).to(torch.int8)
    xs = torch.rand(M, generator=g) + 0.01
    xz = torch.randint(lo, hi + 1, (M,), generator=g, dtype=torch.int32)
    ws = torch.rand(N, generator=g) + 0.01
    bias = torch.randn(N, generator=g)
    x_dev = _on_gpu(x_q, offset)
    for out in (torch.float32, torch.float16, torch.bfloat16):
        want = tq.quantized_linear(x_q, xs, xz, w_q, ws, bias, out_dtype=out)
        got = tq.quantized_linear(x_dev, xs.cuda(), xz.cuda(), w_q.cuda(), ws.cuda(),
                                  bias.cuda(), out_dtype=out)
        assert torch.equal(got.cpu(), want)
    # per-tensor activation parameters, no bias, w_sum given
    want = tq.quantized_linear(x_q, xs[:1], xz[:1], w_q, ws, None, w_q.sum(1, dtype=torch.int32))
    got = tq.quantized_linear(x_dev, xs[:1].cuda(), xz[:1].cuda(), w_q.cuda(), ws.cuda(), None,
                              w_q.sum(1, dtype=torch.int32).cuda())
    assert torch.equal(got.cpu(), want)


@gpu
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("M,K", [(1, 65793), (17, 65792)])  # ours / cuBLASLt
def test_extreme_accumulators_are_exact_on_cuda(xdtype, M, K):
    """The largest K and the most extreme codes: |sum| just below 2^31, in
    both GEMMs, including the uint8 flip and its 128 * w_sum correction."""
    x_val, zp = (-128, 127) if xdtype == torch.int8 else (255, 0)
    x_q = torch.full((M, K), x_val, dtype=xdtype)
    w_q = torch.full((8, K), -128, dtype=torch.int8)
    w_q[1::2] = 127
    xs, xz = torch.ones(M), torch.full((M,), zp, dtype=torch.int32)
    ws = torch.ones(8)
    want = tq.quantized_linear(x_q, xs, xz, w_q, ws, out_dtype=torch.float32)
    got = tq.quantized_linear(x_q.cuda(), xs.cuda(), xz.cuda(), w_q.cuda(), ws.cuda(),
                              out_dtype=torch.float32)
    assert torch.equal(got.cpu(), want)


@gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("K", [65, 64])
@pytest.mark.parametrize("rows", [1, 42])  # 42 rows, K = 64, N = 32: the cuBLASLt path
def test_dynamic_linear_matches_cpu(mode, K, rows):
    x = _x((2, 7, K)).nan_to_num()
    x = torch.cat([x, x * 0.5, x * 2], 1)[:, : rows // 2 or 1]
    x = x[:1] if rows == 1 else x
    g = torch.Generator().manual_seed(1)
    N = 32 if K == 64 else 33
    w_q = torch.randint(-127, 128, (N, K), generator=g).to(torch.int8)
    ws = torch.rand(N, generator=g) + 0.01
    want = tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode)
    got = tq.dynamic_quantized_linear(x.cuda(), w_q.cuda(), ws.cuda(), None, None, mode)
    assert torch.equal(got.cpu(), want)
    smooth = torch.rand(K, generator=g) * 4 + 0.1  # activation smoothing, fused
    want = tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode, smooth)
    got = tq.dynamic_quantized_linear(x.cuda(), w_q.cuda(), ws.cuda(), None, None, mode,
                                      smooth.cuda())
    assert torch.equal(got.cpu(), want)
    for block in (2, 64):  # a Hadamard rotation of the smoothed rows: same butterfly order
        if K % block:
            continue
        want = tq.dynamic_quantized_linear(x, w_q, ws, None, None, mode, smooth, block)
        got = tq.dynamic_quantized_linear(x.cuda(), w_q.cuda(), ws.cuda(), None, None, mode,
                                          smooth.cuda(), block)
        assert torch.equal(got.cpu(), want)


@gpu
def test_opcheck_and_compile_on_cuda():
    x = _x((4, 32)).nan_to_num().cuda()
    s, z = tq.choose_qparams(x, "asymmetric")
    w_q = torch.randint(-127, 128, (16, 32), device="cuda").to(torch.int8)
    ws = torch.rand(16, device="cuda") + 0.01
    samples = [
        (torch.ops.torch_quant.choose_qparams.default, (x, "symmetric", 0, 8)),
        (torch.ops.torch_quant.quantize.default, (x, s, z, "asymmetric", None, 8)),
        (torch.ops.torch_quant.quantize_per_token.default, (x, "asymmetric", 8)),
        (torch.ops.torch_quant.dynamic_quantized_linear.default,
         (x, w_q, ws, None, None, "asymmetric")),
        (torch.ops.torch_quant.dynamic_quantized_linear.default,
         (x, w_q, ws, None, None, "symmetric", torch.rand(32, device="cuda") + 0.5)),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)
    torch._dynamo.reset()
    f = torch.compile(lambda t: tq.dynamic_quantized_linear(t, w_q, ws, None, None, "symmetric"),
                      fullgraph=True)
    assert torch.equal(f(x), tq.dynamic_quantized_linear(x, w_q, ws, None, None, "symmetric"))


@gpu
def test_no_op_waits_for_the_gpu():
    """Value checks run on the device: no op waits for the GPU, not even for
    parameters it has never seen or inference tensors (torch's sync debug
    mode turns any wait into an error; the last call shows it is on)."""
    x = _x((8, 64)).nan_to_num().cuda()
    g = torch.Generator().manual_seed(3)
    w_q = torch.randint(-127, 128, (32, 64), generator=g).to(torch.int8).cuda()
    with torch.inference_mode():
        ws_inference = (torch.rand(32, generator=g) + 0.01).cuda()
    ws = (torch.rand(32, generator=g) + 0.01).cuda()
    w_sum = w_q.sum(1, dtype=torch.int32)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for w_scale in (ws, ws_inference, ws.clone()):
            for mode in MODES:
                for axis in (None, 0):
                    s, z = tq.choose_qparams(x, mode, axis)
                    q = tq.quantize(x, s.clone(), z.clone(), mode, axis)
                    tq.dequantize(q, s, z, axis)
                qt, st, zt = tq.quantize_per_token(x, mode)
                tq.quantized_linear(qt, st, zt, w_q, w_scale, None, w_sum)
                tq.dynamic_quantized_linear(x, w_q, w_scale, None, w_sum, mode)
        with pytest.raises(RuntimeError, match="synchroniz"):
            float(x.sum())
    finally:
        torch.cuda.set_sync_debug_mode(0)


@gpu
def test_quantized_model_runs_on_cuda_without_waiting():
    torch.manual_seed(0)
    # ReLU between the layers: exact on both devices (GELU's CPU and CUDA
    # kernels differ in the last bit, which the next layer's quantization sees)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 16))
    x = torch.randn(5, 64)
    for act_mode in MODES:
        q = tq.quantize_model(copy.deepcopy(model), act_mode=act_mode)
        want = q(x)
        q.cuda()
        x_gpu = x.cuda()  # a copy from pageable memory waits: not in the checked region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = q(x_gpu)  # even the first call reads nothing back
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(got.cpu(), want)


@gpu
def test_packed_weights_on_cuda():
    """pack / unpack on a GPU tensor give the CPU's bytes; the CUDA linear ops
    refuse a packed weight with a clear error; QuantLinear converts its weight
    on the way to the GPU and back."""
    g = torch.Generator().manual_seed(3)
    w = torch.randint(-128, 128, (37, 29), generator=g).to(torch.int8)
    packed = tq.pack_weight(w)
    assert torch.equal(tq.pack_weight(w.cuda()).cpu(), packed)
    assert torch.equal(tq.unpack_weight(packed.cuda(), 29).cpu(), w)
    x = torch.randn(3, 29, device="cuda")
    with pytest.raises(RuntimeError, match="packed w_q .* is a CPU layout"):
        tq.dynamic_quantized_linear(x, packed.cuda(), torch.ones(37, device="cuda"))
    q = tq.QuantLinear.from_float(torch.nn.Linear(29, 37))
    assert isinstance(q.weight, tq.nn.PackedWeight) and q.weight.shape == (37, 29)
    q.cuda()
    assert type(q.weight) is torch.nn.Parameter and q.weight.shape == (37, 29) and q.weight.is_cuda
    q.cpu()
    assert isinstance(q.weight, tq.nn.PackedWeight) and isinstance(q.weight, torch.nn.Parameter)


BAD_VALUE_CASES = [
    lambda d: tq.quantize(torch.ones(3, device=d), torch.tensor([-1.0], device=d),
                          torch.tensor([0], device=d), "symmetric"),
    lambda d: tq.quantize(torch.ones(2, 3, device=d), torch.tensor([1.0, float("nan")], device=d),
                          torch.tensor([0, 0], device=d), "symmetric", 0),
    lambda d: tq.quantize(torch.ones(3, device=d), torch.tensor([1.0], device=d),
                          torch.tensor([256], device=d), "asymmetric"),
    lambda d: tq.dequantize(torch.ones(3, dtype=torch.int8, device=d),
                            torch.tensor([0.0], device=d), torch.tensor([0], device=d)),
    lambda d: tq.dequantize(torch.ones(3, dtype=torch.uint8, device=d),
                            torch.tensor([1.0], device=d), torch.tensor([-1], device=d)),
    lambda d: tq.quantized_linear(torch.ones(2, 4, dtype=torch.int8, device=d),
                                  torch.tensor([1.0, 1.0], device=d),
                                  torch.tensor([0, 200], device=d, dtype=torch.int32),
                                  torch.ones(3, 4, dtype=torch.int8, device=d),
                                  torch.ones(3, device=d)),
    lambda d: tq.dynamic_quantized_linear(torch.ones(2, 4, device=d),
                                          torch.ones(3, 4, dtype=torch.int8, device=d),
                                          torch.tensor([1.0, float("inf"), 1.0], device=d),
                                          None, None, "symmetric"),
    lambda d: tq.dynamic_quantized_linear(torch.ones(2, 4, device=d),
                                          torch.ones(3, 4, dtype=torch.int8, device=d),
                                          torch.ones(3, device=d), None,
                                          torch.tensor([4, 5, 4], dtype=torch.int32, device=d),
                                          "asymmetric"),
]


@gpu
@pytest.mark.parametrize("case", BAD_VALUE_CASES)
def test_bad_values_stop_the_kernel_with_a_message(case):
    """On the CPU a bad value raises at once; on CUDA it is checked on the
    device, which stops with a device-side assertion after printing the
    argument's name (run in a subprocess: the CUDA context is unusable
    afterwards)."""
    with pytest.raises(RuntimeError) as on_cpu:
        case("cpu")
    arg = re.search(r": (\w+) must", str(on_cpu.value)).group(1)
    script = textwrap.dedent(f"""
        import sys, torch, torch_quant as tq
        sys.path[:0] = [{os.path.dirname(__file__)!r}, {os.path.dirname(os.path.dirname(__file__))!r}]
        import test_cuda
        case = test_cuda.BAD_VALUE_CASES[{BAD_VALUE_CASES.index(case)}]
        try:
            case("cuda")
            torch.cuda.synchronize()
        except RuntimeError as e:
            print("raised:", str(e).splitlines()[0])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    text = out.stdout + out.stderr
    assert "device-side assert" in text, text[-2000:]
    assert f"torch_quant: {arg} must" in text, text[-2000:]


@gpu
def test_cuda_graph_capture_and_replay():
    """A pipeline of our ops can be captured into a CUDA graph and replayed,
    with parameters used before or never (inference tensors too): their
    values are checked on the device, inside the graph."""
    x = _x((8, 64)).nan_to_num().cuda()
    g = torch.Generator().manual_seed(5)
    w_q = torch.randint(-127, 128, (32, 64), generator=g).to(torch.int8).cuda()
    ws = (torch.rand(32, generator=g) + 0.01).cuda()
    w_sum = w_q.sum(1, dtype=torch.int32)

    def f(t, w_scale):
        s, z = tq.choose_qparams(t, "asymmetric", 0)
        d = tq.dequantize(tq.quantize(t, s, z, "asymmetric", 0), s, z, 0)
        qt, st, zt = tq.quantize_per_token(t, "asymmetric")
        return (d, tq.quantized_linear(qt, st, zt, w_q, w_scale, None, w_sum),
                tq.dynamic_quantized_linear(t, w_q, w_scale, None, w_sum, "symmetric"))

    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture
        f(static_x, ws)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = f(static_x, ws)
    static_x.copy_(x * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, f(x * 0.5, ws)):
        assert torch.equal(got, want)

    # parameters never used before, made under inference mode: captured
    # as they are (their values are checked inside the graph, on the device)
    with torch.inference_mode():
        fresh = ws * 1.5
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = f(static_x, fresh)
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, f(x * 0.5, fresh)):
        assert torch.equal(got, want)


@gpu
@pytest.mark.parametrize("xdtype", [torch.int8, torch.uint8])
def test_offset_int8_inputs_on_every_gemm_path(xdtype):
    """Contiguous int8 / uint8 activations and weights whose data does not
    start on a 16-byte boundary, at shapes that would take cuBLASLt (M > 16,
    K and N multiples of 8) and our kernel: equal to the CPU result (the
    cuBLASLt path takes only aligned operands)."""
    g = torch.Generator().manual_seed(11)
    lo, hi = (-128, 127) if xdtype == torch.int8 else (0, 255)
    for M, K, N in ((32, 64, 16), (17, 24, 8), (5, 64, 70), (40, 1024, 32)):
        x = torch.randint(lo, hi + 1, (M, K), generator=g).to(xdtype)
        w = torch.randint(-128, 128, (N, K), generator=g).to(torch.int8)
        xs, ws = torch.rand(M, generator=g) + 0.01, torch.rand(N, generator=g) + 0.01
        xz = torch.randint(lo, hi + 1, (M,), generator=g, dtype=torch.int32)
        want = tq.quantized_linear(x, xs, xz, w, ws)
        buf = torch.empty(M * K + 1, dtype=xdtype, device="cuda")
        x_odd = buf[1:].view(M, K).copy_(x)                          # offset 1 byte
        x3 = torch.empty(2, M, K, dtype=xdtype, device="cuda")
        x3[1].copy_(x)                                                # offset M * K bytes
        wbuf = torch.empty(N * K + 4, dtype=torch.int8, device="cuda")
        w_odd = wbuf[4:].view(N, K).copy_(w)                          # offset 4 bytes
        for xd in (x_odd, x3[1]):
            for wd in (w.cuda(), w_odd):
                got = tq.quantized_linear(xd, xs.cuda(), xz.cuda(), wd, ws.cuda())
                assert torch.equal(got.cpu(), want), (M, K, N, xd.storage_offset(),
                                                      wd.storage_offset())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ops_on_the_second_gpu():
    """Tensors on cuda:1 while cuda:0 is current: kernels launch on the
    tensors' device (a device guard) and give the CPU's results."""
    x = _x((9, 64)).nan_to_num()
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-127, 128, (24, 64), generator=g).to(torch.int8)
    ws = torch.rand(24, generator=g) + 0.01
    d = torch.device("cuda:1")
    for mode in MODES:
        s, z = tq.choose_qparams(x, mode, 0)
        s1, z1 = tq.choose_qparams(x.to(d), mode, 0)
        assert torch.equal(s1.cpu(), s) and torch.equal(z1.cpu(), z)
        q1 = tq.quantize(x.to(d), s1, z1, mode, 0)
        assert torch.equal(q1.cpu(), tq.quantize(x, s, z, mode, 0))
        assert torch.equal(tq.dequantize(q1, s1, z1, 0).cpu(), tq.dequantize(q1.cpu(), s, z, 0))
        got = tq.dynamic_quantized_linear(x.to(d), w.to(d), ws.to(d), None, None, mode)
        assert got.device == d
        assert torch.equal(got.cpu(), tq.dynamic_quantized_linear(x, w, ws, None, None, mode))


@gpu
@pytest.mark.parametrize("which", ["x_scale", "x_zero_point", "w_q", "w_scale", "bias", "w_sum"])
def test_device_mismatch_messages_match_the_fake_kernel(which):
    """One argument on the CPU, the rest on the GPU: the CUDA kernel's C++
    check and the fake kernel give the same message word for word. (On a
    machine without a GPU the only other device is meta, whose calls go to
    the fake kernel on both sides, so this is where the C++ device checks
    are compared.)"""
    from conftest import assert_fake_raises_as_real

    M, K, N = 4, 8, 3
    t = dict(x_q=torch.zeros(M, K, dtype=torch.int8), x_scale=torch.tensor(0.1),
             x_zero_point=torch.tensor(0, dtype=torch.int32),
             w_q=torch.zeros(N, K, dtype=torch.int8), w_scale=torch.full((N,), 0.1),
             bias=torch.zeros(N), w_sum=torch.zeros(N, dtype=torch.int32))
    t = {k: v if k == which else v.cuda() for k, v in t.items()}
    assert_fake_raises_as_real(lambda a: tq.quantized_linear(**a), t,
                               "torch_quant.quantized_linear", which)
