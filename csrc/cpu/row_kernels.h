// Contiguous-row kernels behind every quantize / dequantize / choose_qparams
// op on CPU. Each exists in three builds of one template
// (row_kernels_impl.h): scalar::, avx2:: and avx512::; the functions in
// torch_quant::cpu below pick one through active_isa() (isa.h).
//
//   minmax          *lo = min(*lo, finite x), *hi = max(*hi, finite x)
//   minmax_columns  lo[i] = min(lo[i], x[i]), hi[i] = max(hi[i], x[i]) where x[i] is finite
//   quantize        q[i] = quantize_val(x[i], inv_scale, zero_point)            (one pair)
//   quantize_pc     q[i] = quantize_val(x[i], inv_scale[i], zero_point[i])      (per element)
//   dequantize      x[i] = dequantize_val(q[i], scale, zero_point)
//   dequantize_pc   x[i] = dequantize_val(q[i], scale[i], zero_point[i])
//   hadamard        quant_math.h's hadamard_stages in place (same stages, same bits)
//   quantize_row    minmax, compute_qparams and quantize of one row (per token)
//
// Zero points travel as float here: they are small integers, exact in float,
// and the vector code then needs no integer/float conversions per element.
#pragma once

#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../quant_math.h"
#include "isa.h"
#include "target.h"

#define TORCH_QUANT_DECLARE_ROW_KERNELS                                              \
  template <typename In>                                                             \
  void minmax(const In* x, int64_t n, float* lo, float* hi);                         \
  template <typename In>                                                             \
  void minmax_columns(const In* x, int64_t n, float* lo, float* hi);                 \
  template <typename In, typename Q>                                                 \
  void quantize(const In* x, int64_t n, float inv_scale, float zero_point,           \
                float qmin, float qmax, Q* q);                                       \
  template <typename In, typename Q>                                                 \
  void quantize_pc(const In* x, int64_t n, const float* inv_scale,                   \
                   const float* zero_point, float qmin, float qmax, Q* q);           \
  template <typename Q, typename Out>                                                \
  void dequantize(const Q* q, int64_t n, float scale, float zero_point, Out* x);     \
  template <typename Q, typename Out>                                                \
  void dequantize_pc(const Q* q, int64_t n, const float* scale,                      \
                     const float* zero_point, Out* x);                                \
  void hadamard(float* v, int64_t n, int64_t block);

namespace torch_quant::cpu {

namespace scalar { TORCH_QUANT_DECLARE_ROW_KERNELS }
namespace avx2 { TORCH_QUANT_DECLARE_ROW_KERNELS }
namespace avx512 { TORCH_QUANT_DECLARE_ROW_KERNELS }

#if TORCH_QUANT_X86
#define TORCH_QUANT_DISPATCH_ISA(FN, ...)                                   \
  switch (active_isa()) {                                                   \
    case Isa::Avx512Vnni:                                                   \
    case Isa::Avx512: return avx512::FN(__VA_ARGS__);                       \
    case Isa::Avx2: return avx2::FN(__VA_ARGS__);                           \
    default: return scalar::FN(__VA_ARGS__);                                \
  }
#else
#define TORCH_QUANT_DISPATCH_ISA(FN, ...) return scalar::FN(__VA_ARGS__);
#endif

template <typename In>
void minmax(const In* x, int64_t n, float* lo, float* hi) {
  TORCH_QUANT_DISPATCH_ISA(minmax, x, n, lo, hi)
}
template <typename In>
void minmax_columns(const In* x, int64_t n, float* lo, float* hi) {
  TORCH_QUANT_DISPATCH_ISA(minmax_columns, x, n, lo, hi)
}
template <typename In, typename Q>
void quantize(const In* x, int64_t n, float inv_scale, float zero_point, float qmin,
              float qmax, Q* q) {
  TORCH_QUANT_DISPATCH_ISA(quantize, x, n, inv_scale, zero_point, qmin, qmax, q)
}
template <typename In, typename Q>
void quantize_pc(const In* x, int64_t n, const float* inv_scale, const float* zero_point,
                 float qmin, float qmax, Q* q) {
  TORCH_QUANT_DISPATCH_ISA(quantize_pc, x, n, inv_scale, zero_point, qmin, qmax, q)
}
template <typename Q, typename Out>
void dequantize(const Q* q, int64_t n, float scale, float zero_point, Out* x) {
  TORCH_QUANT_DISPATCH_ISA(dequantize, q, n, scale, zero_point, x)
}
template <typename Q, typename Out>
void dequantize_pc(const Q* q, int64_t n, const float* scale, const float* zero_point,
                   Out* x) {
  TORCH_QUANT_DISPATCH_ISA(dequantize_pc, q, n, scale, zero_point, x)
}

inline void hadamard(float* v, int64_t n, int64_t block) {
  TORCH_QUANT_DISPATCH_ISA(hadamard, v, n, block)
}

#undef TORCH_QUANT_DISPATCH_ISA

// One row quantized with its own parameters (per token): its finite range,
// its (scale, zero_point) by compute_qparams, then its codes. The one
// per-token loop body, of quantize_per_token and dynamic_quantized_linear.
template <typename In, typename Q>
QParams quantize_row(const In* x, int64_t k, Mode mode, int bits, Q* q) {
  float lo = INFINITY, hi = -INFINITY;
  minmax(x, k, &lo, &hi);
  const QParams p = compute_qparams(lo, hi, mode, bits);
  const QRange r = qrange(mode, bits);
  quantize(x, k, 1.0f / p.scale, static_cast<float>(p.zero_point), static_cast<float>(r.qmin),
           static_cast<float>(r.qmax), q);
  return p;
}

}  // namespace torch_quant::cpu
