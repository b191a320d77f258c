// The instruction ceilings the benchmark prints next to its measurements
// (benchmarks/machine.py, through _C._kernel_peaks and _C._vnni_peak): loops
// of one instruction on registers or L1, not kernels the ops run.
#pragma once

namespace torch_quant::cpu {
namespace avx2 {
// Single-core throughput (operations per second, a multiply-add counting as
// two) of the fp32 FMA unit, of the exact AVX2 panel kernel on data in L1, and
// of the same loop without the sign move (uint8 x int8, saturating on 8-bit
// data).
struct KernelPeaks {
  double fp32_fma = 0, int8_exact = 0, int8_u8s8 = 0;
};
KernelPeaks kernel_peaks(double seconds_each);
}  // namespace avx2
namespace avx512_vnni {
// Ops/s of a plain vpdpbusd loop (16 independent accumulators, registers
// only) on this thread: the instruction's ceiling.
double vnni_peak(double seconds);
}  // namespace avx512_vnni
}  // namespace torch_quant::cpu
