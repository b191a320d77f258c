// The AVX-512 VNNI int8 GEMM (gemm.h): vpdpbusd multiplies 64 uint8 by 64 int8
// values and adds each group of four products to an int32 lane, without
// saturation. uint8 activations feed it as they are; int8 activations are
// moved to uint8 by adding 128 (a bit flip), and 128 * w_sum[n] is taken back
// from each result. The K tail is read with masked loads.
//
// Built on every x86 compiler; run only where the CPU has AVX512_VNNI (isa.cpp).
// The development and CI machines do not, so the tests exercise this file only
// on such hosts.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "gemm.h"
#include "target.h"

#if TORCH_QUANT_X86
#include <immintrin.h>
TORCH_QUANT_TARGET_BEGIN("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

namespace torch_quant::cpu::avx512_vnni {
namespace {

constexpr int kMr = 4;
constexpr int kNr = 4;
constexpr int kStep = 64;  // bytes of a zmm register

template <int R, int C>
void micro(const uint8_t* a, int64_t kp, const int8_t* const* w, int64_t K, int32_t* d,
           int64_t ldd) {
  __m512i acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  const auto step = [&](int64_t k, __mmask64 mask) {
    __m512i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) wv[c] = _mm512_maskz_loadu_epi8(mask, w[c] + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_loadu_si512(a + r * kp + k);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
    }
  };
  const int64_t kfull = K / kStep * kStep;
  for (int64_t k = 0; k < kfull; k += kStep) step(k, ~__mmask64{0});
  if (kfull < K) step(kfull, (__mmask64{1} << (K - kfull)) - 1);
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) d[r * ldd + c] = _mm512_reduce_add_epi32(acc[r][c]);
}

using Micro = void (*)(const uint8_t*, int64_t, const int8_t* const*, int64_t, int32_t*, int64_t);

template <int R, int C>
constexpr Micro kMicro = &micro<R, C>;

constexpr Micro kMicros[kMr][kNr] = {
    {kMicro<1, 1>, kMicro<1, 2>, kMicro<1, 3>, kMicro<1, 4>},
    {kMicro<2, 1>, kMicro<2, 2>, kMicro<2, 3>, kMicro<2, 4>},
    {kMicro<3, 1>, kMicro<3, 2>, kMicro<3, 3>, kMicro<3, 4>},
    {kMicro<4, 1>, kMicro<4, 2>, kMicro<4, 3>, kMicro<4, 4>}};

}  // namespace

void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
              const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d,
              int64_t ldd) {
  const int64_t kp = (K + kStep - 1) / kStep * kStep;
  // Activations as uint8, zero padded to whole vectors (padding meets masked,
  // zero weights, so it adds nothing).
  std::vector<uint8_t> a8(static_cast<size_t>(M * kp), 0);
  const uint8_t flip = a_signed ? 0x80 : 0x00;  // int8 + 128 as uint8
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* src = static_cast<const uint8_t*>(a) + m * lda;
    for (int64_t k = 0; k < K; ++k) a8[m * kp + k] = src[k] ^ flip;
  }
  for (int64_t m0 = 0; m0 < M; m0 += kMr) {
    const int rows = static_cast<int>(std::min<int64_t>(kMr, M - m0));
    for (int64_t n0 = 0; n0 < N; n0 += kNr) {
      const int cols = static_cast<int>(std::min<int64_t>(kNr, N - n0));
      const int8_t* wrow[kNr];
      for (int c = 0; c < cols; ++c) wrow[c] = w + (n0 + c) * ldw;
      int32_t* out = d + m0 * ldd + n0;
      kMicros[rows - 1][cols - 1](a8.data() + m0 * kp, kp, wrow, K, out, ldd);
      if (a_signed) {
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < cols; ++c)  // wrapping int32 arithmetic, exact in the end
            out[r * ldd + c] = static_cast<int32_t>(static_cast<uint32_t>(out[r * ldd + c]) -
                                                    128u * static_cast<uint32_t>(w_sum[n0 + c]));
      }
    }
  }
}

}  // namespace torch_quant::cpu::avx512_vnni

TORCH_QUANT_TARGET_END

#endif  // TORCH_QUANT_X86
