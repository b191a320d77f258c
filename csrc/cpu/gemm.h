// Exact int8 dot-product kernels behind quantized_linear on CPU.
//
//   d[m * ldd + n] = sum_k a[m * lda + k] * w[n * ldw + k]      (int32, exact)
//
// for m < M, n < N: a holds int8 (a_signed) or uint8 activations, w int8
// weights in the public [N, K] layout (no packing), w_sum[n] = sum_k w[n][k]
// for kernels that shift a into another range. The caller keeps K within the
// exact-int32 limit (linear.cpp), so no kernel can overflow, and every kernel
// returns the same integers: there is no saturating arithmetic anywhere.
//
//   scalar       int32 multiply-adds
//   avx2         few rows: activations widened to int16, vpmaddwd (never
//                saturates); many rows, or a weight packed once
//                (weight_cache.h): vpmaddubsw on packed panels with the
//                activation's sign moved onto the weight, which keeps every
//                int16 pair sum below 2^15 (gemm_avx2.cpp)
//   avx512_vnni  vpdpbusd (uint8 x int8 -> int32, 64 products an
//                instruction); int8 activations are shifted by +128 and the
//                shift is taken back with 128 * w_sum
#pragma once

#include <cstdint>
#include <cstdlib>

#include "isa.h"
#include "target.h"

#define TORCH_QUANT_DECLARE_GEMM                                                    \
  void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w,         \
                int64_t ldw, const int32_t* w_sum, int64_t M, int64_t N, int64_t K, \
                int32_t* d, int64_t ldd);

namespace torch_quant::cpu {

// Bytes per row of split activations (avx2::split_activations).
inline int64_t split_stride(int64_t K) { return (K + 3) / 4 * 8; }

// Single-core throughput (operations per second, a multiply-add counting as
// two) of the fp32 FMA unit, of the exact AVX2 panel kernel on data in L1, and
// of the same loop without the sign move (uint8 x int8, saturating on 8-bit
// data): the ceilings the benchmark prints next to its measurements.
struct KernelPeaks {
  double fp32_fma = 0, int8_exact = 0, int8_u8s8 = 0;
};

namespace scalar { TORCH_QUANT_DECLARE_GEMM }
namespace avx2 {
TORCH_QUANT_DECLARE_GEMM
// The activations as the panel kernel reads them: per group of four k, the
// four |x'| bytes then the four x' bytes, x' = x (int8) or x - 128 (uint8),
// zero padded to whole groups; split_stride(K) bytes per row.
void split_activations(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                       uint8_t* out);
// The product with w already packed (panels.h; columns 0 .. N-1 of the packed
// weight start at `panels`; no weight is -128) and the activations split.
void gemm_s32_packed(const uint8_t* split, int64_t ld_split, bool a_signed, const int8_t* panels,
                     const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d,
                     int64_t ldd);
KernelPeaks kernel_peaks(double seconds_each);
}  // namespace avx2
namespace avx512_vnni { TORCH_QUANT_DECLARE_GEMM }

// From this many rows on, linear.cpp hands the AVX2 kernel a packed copy of
// the weight kept per weight (weight_cache.h). With one row the plain kernel
// is as fast (both stream the weights at memory speed); with 4 to 16 the
// packed one is about 1.7x faster.
constexpr int64_t kPackedMinM = 2;

inline bool wants_packed_weights(int64_t M) {
#if TORCH_QUANT_X86
  const Isa isa = active_isa();
  return (isa == Isa::Avx2 || isa == Isa::Avx512) && M >= kPackedMinM;
#else
  return false;
#endif
}

inline void split_activations(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                              uint8_t* out) {
#if TORCH_QUANT_X86
  avx2::split_activations(a, a_signed, lda, M, K, out);
#else
  std::abort();  // wants_packed_weights() is false off x86
#endif
}

inline void gemm_s32_packed(const uint8_t* split, int64_t ld_split, bool a_signed,
                            const int8_t* panels, const int32_t* w_sum, int64_t M, int64_t N,
                            int64_t K, int32_t* d, int64_t ldd) {
#if TORCH_QUANT_X86
  avx2::gemm_s32_packed(split, ld_split, a_signed, panels, w_sum, M, N, K, d, ldd);
#else
  std::abort();  // wants_packed_weights() is false off x86
#endif
}

inline void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w,
                     int64_t ldw, const int32_t* w_sum, int64_t M, int64_t N, int64_t K,
                     int32_t* d, int64_t ldd) {
#if TORCH_QUANT_X86
  switch (active_isa()) {
    case Isa::Avx512Vnni:
      return avx512_vnni::gemm_s32(a, a_signed, lda, w, ldw, w_sum, M, N, K, d, ldd);
    case Isa::Avx512:  // without VNNI the AVX2 kernel is the fastest exact one
    case Isa::Avx2:
      return avx2::gemm_s32(a, a_signed, lda, w, ldw, w_sum, M, N, K, d, ldd);
    default:
      break;
  }
#endif
  scalar::gemm_s32(a, a_signed, lda, w, ldw, w_sum, M, N, K, d, ldd);
}

}  // namespace torch_quant::cpu
