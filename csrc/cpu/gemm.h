// Exact int8 GEMM kernels behind quantized_linear on CPU.
//
// Two kinds, one set per instruction set:
//
// * Packed kernels (the main path): the weight in the packed layout
//   (packed.h), the activations prepared once per call into the layout the
//   kernel reads (prepare_rows), and the epilogue fused:
//
//     dot[m,n] = sum_k a[m,k] * w[n,k]                       (int32, exact)
//     y[m,n]   = float(dot - zp[m] * w_sum[n]) * (x_scale[m] * w_scale[n]) + bias[n]
//
//   written as float32. Kernels that see shifted activations (a + 128 or
//   a - 128, to reach the operand type of their instruction) fold the shift
//   into zp, which is exact in wrapping int32 arithmetic.
//
//     scalar       int32 multiply-adds
//     avx2         vpmaddubsw on |a| with a's sign moved onto the weight (needs
//                  weights in [-127, 127]: panels holding -128 take an int16
//                  path), vpmaddwd into int32 (gemm_avx2.cpp)
//     avx512_vnni  vpdpbusd: uint8 a (int8 a + 128) x int8 w, 64 products an
//                  instruction, register-blocked (gemm_avx512_vnni.cpp)
//
// * Plain kernels (gemm_s32): the public [N, K] weight as it is, for the raw
//   ops given an unpacked weight and a few rows, where packing the weight on
//   every call would cost more than it saves.
//
// The caller keeps K within the exact-int32 limit (checks.h), so no kernel
// can overflow, and every kernel returns the same numbers: no saturating
// arithmetic anywhere, and the epilogue is the same float operations in the
// same order (quant_math.h: linear_epilogue).
#pragma once

#include <cstdint>

#include "isa.h"
#include "packed.h"
#include "target.h"

namespace torch_quant::cpu {

// Everything the fused epilogue needs, per row and per column (the caller
// expands per-tensor values). Pointers index from row 0 and column 0 of the
// whole problem.
struct Epilogue {
  const int32_t* zp;       // [M] activation zero points
  const float* x_scale;    // [M]
  const float* w_scale;    // [N]
  const float* bias;       // [N] or null
  float* y;                // [M, ldy] float32 output
  int64_t ldy;
};

// The scalar epilogue of one output (quant_math.h's linear_epilogue plus bias);
// vector kernels do the same operations lane by lane.
float finish_scalar(int32_t dot, int64_t m, int64_t n, int32_t zp_shift, int32_t w_sum,
                    const Epilogue& ep);

#define TORCH_QUANT_DECLARE_GEMM                                                         \
  /* Bytes per prepared activation row. */                                               \
  int64_t prepared_row_bytes(int64_t K);                                                 \
  /* Codes (int8 when a_signed, else uint8; M rows of stride lda) to the rows */         \
  /* the packed kernel reads (prepared_row_bytes(K) each). */                            \
  void prepare_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,     \
                    uint8_t* out);                                                       \
  /* Rows [m0, m1) x columns [n0, n1) of the epilogue's y; n0 a multiple of 16. */       \
  /* `a` holds codes as given (plain) for kernels that need them (avx2's -128 path). */  \
  void gemm_packed(const uint8_t* prepared, const void* a, bool a_signed,                \
                   const PackedWeight& w, int64_t m0, int64_t m1, int64_t n0, int64_t n1, \
                   const Epilogue& ep);                                                  \
  /* d[m * ldd + n] = sum_k a[m * lda + k] * w[n * ldw + k]; plain weights; w_sum */     \
  /* is read by kernels that shift a. */                                                 \
  void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,  \
                const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d,       \
                int64_t ldd);

namespace scalar { TORCH_QUANT_DECLARE_GEMM }
namespace avx2 {
TORCH_QUANT_DECLARE_GEMM
// Single-core throughput (operations per second, a multiply-add counting as
// two) of the fp32 FMA unit, of the exact AVX2 panel kernel on data in L1, and
// of the same loop without the sign move (uint8 x int8, saturating on 8-bit
// data): the ceilings the benchmark prints next to its measurements.
struct KernelPeaks {
  double fp32_fma = 0, int8_exact = 0, int8_u8s8 = 0;
};
KernelPeaks kernel_peaks(double seconds_each);
}  // namespace avx2
namespace avx512_vnni {
TORCH_QUANT_DECLARE_GEMM
// Ops/s of a plain vpdpbusd loop (16 independent accumulators, registers
// only) on this thread: the instruction's ceiling.
double vnni_peak(double seconds);
}  // namespace avx512_vnni

// The GEMM entry points for one instruction set, chosen once per call
// (linear.cpp reads active_isa() once and passes it down, so a switch from
// another thread cannot change the kernel halfway through a call).
struct GemmKernels {
  int64_t (*prepared_row_bytes)(int64_t);
  void (*prepare_rows)(const void*, bool, int64_t, int64_t, int64_t, uint8_t*);
  void (*gemm_packed)(const uint8_t*, const void*, bool, const PackedWeight&, int64_t, int64_t,
                      int64_t, int64_t, const Epilogue&);
  void (*gemm_s32)(const void*, bool, int64_t, const int8_t*, int64_t, const int32_t*, int64_t,
                   int64_t, int64_t, int32_t*, int64_t);
  // With a plain weight, from this many rows on it pays to pack it for the
  // call (an extra pass over the weight) and run the packed kernel.
  int64_t pack_per_call_min_m;
  // Whether gemm_s32 reads w_sum for int8 activations even without zero
  // points (it shifts them into uint8).
  bool plain_needs_sums_signed;
};

GemmKernels gemm_kernels(Isa isa);

}  // namespace torch_quant::cpu
