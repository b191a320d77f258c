// The portable int8 GEMM (gemm.h): plain int32 multiply-adds, the reference
// the vector kernels are tested against, and the scalar epilogue they share.
#include <cstdint>
#include <cstring>
#include <vector>

#include "../quant_math.h"
#include "gemm.h"

namespace torch_quant::cpu {

float finish_scalar(int32_t dot, int64_t m, int64_t n, int32_t zp_shift, int32_t w_sum,
                    const Epilogue& ep) {
  float y = linear_epilogue(dot, ep.zp[m] + zp_shift, w_sum, ep.x_scale[m], ep.w_scale[n]);
  if (ep.bias != nullptr) y += ep.bias[n];
  return y;
}

namespace scalar {
namespace {

template <typename A>
int32_t dot_plain(const A* x, const int8_t* y, int64_t K) {
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += int32_t{x[k]} * int32_t{y[k]};
  return acc;
}

template <typename A>
void gemm(const A* a, int64_t lda, const int8_t* w, int64_t ldw, int64_t M, int64_t N,
          int64_t K, int32_t* d, int64_t ldd) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) d[m * ldd + n] = dot_plain(a + m * lda, w + n * ldw, K);
}

}  // namespace

// The scalar kernel reads the codes as they are: nothing to prepare.
int64_t prepared_row_bytes(int64_t /*K*/) { return 0; }

void prepare_rows(const void*, bool, int64_t, int64_t, int64_t, uint8_t*) {}

void gemm_packed(const uint8_t* /*prepared*/, const void* a, bool a_signed,
                 const PackedWeight& w, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                 const Epilogue& ep) {
  const int64_t K = w.K;
  std::vector<int8_t> col(static_cast<size_t>(K));
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < K; ++k) col[k] = w.at(n, k);
    const int32_t sum = w.sum(n);
    for (int64_t m = m0; m < m1; ++m) {
      const int32_t dot = a_signed
          ? dot_plain(static_cast<const int8_t*>(a) + m * K, col.data(), K)
          : dot_plain(static_cast<const uint8_t*>(a) + m * K, col.data(), K);
      ep.y[m * ep.ldy + n] = finish_scalar(dot, m, n, 0, sum, ep);
    }
  }
}

void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
              const int32_t* /*w_sum*/, int64_t M, int64_t N, int64_t K, int32_t* d,
              int64_t ldd) {
  if (a_signed) {
    gemm(static_cast<const int8_t*>(a), lda, w, ldw, M, N, K, d, ldd);
  } else {
    gemm(static_cast<const uint8_t*>(a), lda, w, ldw, M, N, K, d, ldd);
  }
}

}  // namespace scalar

GemmKernels gemm_kernels(Isa isa) {
#if TORCH_QUANT_X86
  switch (isa) {
    case Isa::Avx512Vnni:
      return {&avx512_vnni::prepared_row_bytes, &avx512_vnni::prepare_rows,
              &avx512_vnni::gemm_packed, &avx512_vnni::gemm_s32, 8, true};
    case Isa::Avx512:  // without VNNI the AVX2 kernels are the fastest exact ones
    case Isa::Avx2:
      return {&avx2::prepared_row_bytes, &avx2::prepare_rows, &avx2::gemm_packed,
              &avx2::gemm_s32, 48, false};
    default:
      break;
  }
#endif
  (void)isa;
  return {&scalar::prepared_row_bytes, &scalar::prepare_rows, &scalar::gemm_packed,
          &scalar::gemm_s32, int64_t{1} << 62, false};
}

}  // namespace torch_quant::cpu
