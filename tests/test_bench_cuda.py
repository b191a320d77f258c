"""The CUDA section of the benchmark (benchmarks/cuda.py) run end to
end on CPU tensors with small sizes: no GPU is available here, and this is
what keeps the section working for whoever has one. Checks its arithmetic
(bytes, GB/s, ratios, TOP/s) and that it skips cleanly without a device."""

from __future__ import annotations

import statistics

import pytest
import torch

import torch_quant as tq
from benchmarks import cuda as bench_cuda
from benchmarks import tables, timing


def small_run():
    sizes = bench_cuda.Sizes(copy_numel=4096 + 3, per_token_shape=(33, 64), linear_nk=(40, 64),
                             linear_ms=(1, 17, 256), weight_copies=2)
    cfg = timing.Config(repeat=3, warmup=1)
    with torch.no_grad():
        return bench_cuda.section(cfg, torch.device("cpu"), sizes), sizes


def test_section_runs_and_its_numbers_add_up():
    res, sizes = small_run()
    rows = {r.key: r for r in res.rows}
    n = sizes.copy_numel
    assert rows["copy"].nbytes == 8 * n and rows["quantize"].nbytes == 5 * n
    for r in res.rows:
        assert len(r.times) == 3 and all(t > 0 for t in r.times)
    q, copy = rows["quantize"], rows["copy"]
    assert q.gbps == pytest.approx(5 * n / statistics.median(q.times) / 1e9)
    assert q.bw_fraction == pytest.approx(q.gbps / copy.gbps) and q.baseline == "copy"
    assert rows["quantize_per_token"].baseline == "copy_bf16"
    N, K = sizes.linear_nk
    for M in sizes.linear_ms:
        bf16 = rows[f"M{M}_bf16"]
        sym = rows[f"M{M}_sym"]
        assert sym.ratio == pytest.approx(bf16.median / sym.median)
        assert sym.extra["tops"] == pytest.approx(2 * M * N * K / sym.median / 1e12)
        # torch._int_mm only where it takes the shape (M > 16)
        assert (f"M{M}_int_mm" in rows) == (M > 16)
    names = [g.name for g in res.goals]
    assert names[0].startswith("cuda quantize") and len(names) == 2  # + M=256 linear
    text = tables.format_section(res)
    assert "ours W8A8 dynamic, symmetric" in text and "TOP/s" in text


def test_section_skips_without_a_gpu():
    if torch.cuda.is_available() and tq._C._built_with_cuda():
        pytest.skip("this machine has a GPU: the section runs")
    res = bench_cuda.section(timing.Config(repeat=1, warmup=0))
    assert "skipped" in res.title and not res.rows and not res.goals
    assert "skipped" in tables.format_section(res)
