// The AVX2 int8 GEMM (gemm.h). No VNNI here, and vpmaddubsw is out: its
// uint8 x int8 pair sums saturate at int16 (255*127*2 > 32767). Instead the
// activations of a tile are widened to int16 once, the weights are widened on
// load (vpmovsxbw), and vpmaddwd adds int16 x int16 pairs into int32 lanes,
// which cannot overflow (2 * 255 * 128 < 2^31). Each output keeps its own
// vector accumulator across K and is summed horizontally at the end, so the
// weights are read in their public [N, K] layout, row after row.
#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <cstring>
#include <vector>

#include "gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace torch_quant::cpu::avx2 {
namespace {

// 4 x 2 outputs per micro-tile: on Zen 3 it beat 4 x 3 and 6 x 2 (which run
// out of the 16 ymm registers) by 1.3-2x at M = 256.
constexpr int kMr = 4;  // activation rows per micro-tile
constexpr int kNr = 2;  // weight rows per micro-tile
constexpr int kStep = 16;  // int16 lanes of a ymm register
constexpr int64_t kKc = 1024;  // K block: kMr rows of int16 activations = 8 KiB

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// R x C outputs over one block of K. a: R rows (stride lda) of int16;
// w[c]: weight row c. The first kfull values come from w; when tail is not
// null, 16 more come from tail[c] (zero padded). Adds to d when accumulate.
template <int R, int C>
void micro(const int16_t* a, int64_t lda, const int8_t* const* w,
           const int8_t (*tail)[kStep], int64_t kfull, bool accumulate, int32_t* d,
           int64_t ldd) {
  __m256i acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_si256();
  const auto step = [&](int64_t k, const int8_t* const* wp, int64_t wk) {
    __m256i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
      wv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp[c] + wk)));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(av, wv[c]));
    }
  };
  for (int64_t k = 0; k < kfull; k += kStep) step(k, w, k);
  if (tail != nullptr) {
    const int8_t* tp[C];
    for (int c = 0; c < C; ++c) tp[c] = tail[c];
    step(kfull, tp, 0);
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) d[r * ldd + c] = (accumulate ? d[r * ldd + c] : 0) + hsum(acc[r][c]);
}

using Micro = void (*)(const int16_t*, int64_t, const int8_t* const*, const int8_t (*)[kStep],
                       int64_t, bool, int32_t*, int64_t);

// Micro-kernels for every edge size, indexed [rows - 1][cols - 1].
template <int R, int... C>
constexpr std::array<Micro, kNr> micro_row(std::integer_sequence<int, C...>) {
  return {&micro<R, C + 1>...};
}
template <int... R>
constexpr std::array<std::array<Micro, kNr>, kMr> micro_table(std::integer_sequence<int, R...>) {
  return {micro_row<R + 1>(std::make_integer_sequence<int, kNr>())...};
}
constexpr auto kMicros = micro_table(std::make_integer_sequence<int, kMr>());

template <typename A>
void widen(const A* a, int64_t lda, int64_t M, int64_t K, int64_t kp, int16_t* out) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) out[m * kp + k] = a[m * lda + k];
    std::fill(out + m * kp + K, out + (m + 1) * kp, int16_t{0});
  }
}

}  // namespace

void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
              const int32_t* /*w_sum*/, int64_t M, int64_t N, int64_t K, int32_t* d,
              int64_t ldd) {
  const int64_t kp = (K + kStep - 1) / kStep * kStep, kfull = K / kStep * kStep;
  std::vector<int16_t> a16(static_cast<size_t>(M * kp));
  if (a_signed) {
    widen(static_cast<const int8_t*>(a), lda, M, K, kp, a16.data());
  } else {
    widen(static_cast<const uint8_t*>(a), lda, M, K, kp, a16.data());
  }
  // K in blocks of kKc, so that kMr int16 activation rows stay in L1 while
  // the weight rows stream past; activation rows outside, weight rows inside.
  int8_t tail[kNr][kStep];
  for (int64_t k0 = 0; k0 < kp; k0 += kKc) {
    const int64_t klen = std::min(kKc, kp - k0);
    const int64_t kmain = std::clamp<int64_t>(kfull - k0, 0, klen);
    const bool has_tail = kmain < klen;
    for (int64_t m0 = 0; m0 < M; m0 += kMr) {
      const int rows = static_cast<int>(std::min<int64_t>(kMr, M - m0));
      for (int64_t n0 = 0; n0 < N; n0 += kNr) {
        const int cols = static_cast<int>(std::min<int64_t>(kNr, N - n0));
        const int8_t* wrow[kNr];
        for (int c = 0; c < cols; ++c) {
          wrow[c] = w + (n0 + c) * ldw + k0;
          if (has_tail) {
            std::memset(tail[c], 0, kStep);
            std::memcpy(tail[c], w + (n0 + c) * ldw + kfull, static_cast<size_t>(K - kfull));
          }
        }
        kMicros[rows - 1][cols - 1](a16.data() + m0 * kp + k0, kp, wrow,
                                    has_tail ? tail : nullptr, kmain, k0 > 0,
                                    d + m0 * ldd + n0, ldd);
      }
    }
  }
}

}  // namespace torch_quant::cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else  // not x86: never selected (isa.cpp), but the dispatcher needs the name.
namespace torch_quant::cpu::avx2 {
void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
              const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d,
              int64_t ldd) {
  scalar::gemm_s32(a, a_signed, lda, w, ldw, w_sum, M, N, K, d, ldd);
}
}  // namespace torch_quant::cpu::avx2
#endif
