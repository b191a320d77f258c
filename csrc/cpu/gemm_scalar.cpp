// The portable int8 GEMM (gemm.h): plain int32 multiply-adds, the reference
// the vector kernels are tested against.
#include <cstdint>

#include "gemm.h"

namespace torch_quant::cpu::scalar {
namespace {

template <typename A>
void gemm(const A* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t M, int64_t N,
          int64_t K, int32_t* d, int64_t ldd) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      const A* x = a + m * lda;
      const int8_t* y = w + n * ldw;
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t{x[k]} * int32_t{y[k]};
      d[m * ldd + n] = acc;
    }
  }
}

}  // namespace

void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
              const int32_t* /*w_sum*/, int64_t M, int64_t N, int64_t K, int32_t* d,
              int64_t ldd) {
  if (a_signed) {
    gemm(static_cast<const int8_t*>(a), lda, w, ldw, M, N, K, d, ldd);
  } else {
    gemm(static_cast<const uint8_t*>(a), lda, w, ldw, M, N, K, d, ldd);
  }
}

}  // namespace torch_quant::cpu::scalar
