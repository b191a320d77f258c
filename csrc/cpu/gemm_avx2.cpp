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
#include "panels.h"
#include "target.h"

#if TORCH_QUANT_X86
#include <immintrin.h>
TORCH_QUANT_TARGET_BEGIN("avx2,fma")

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

// The dot-product kernel: any weights, no packing (small M).
void gemm_rows(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
               int64_t M, int64_t N, int64_t K, int32_t* d, int64_t ldd) {
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
  // With one or two rows (decoding) the activations fit in L1 whole; then
  // each weight row is better read start to end in one stream.
  const int64_t kc = M <= 2 ? kp : kKc;
  for (int64_t k0 = 0; k0 < kp; k0 += kc) {
    const int64_t klen = std::min(kc, kp - k0);
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


// ---------------------------------------------------------------------------
// The panel kernel (many rows). vpmaddubsw multiplies 32 uint8 by 32 int8 and
// adds pairs into int16, at twice the rate of vpmaddwd here, but saturates
// when a pair exceeds 32767. It cannot here: the activation x (int8, or uint8
// moved to int8 by x - 128) enters as |x| <= 128 and its sign moves onto the
// weight, sign(x) * w, which stays in [-127, 127] as long as no weight is
// -128; a pair is then at most 2 * 128 * 127 = 32512. Weight blocks holding
// -128 (never produced by symmetric quantization with scale = max|w| / 127,
// but legal) use gemm_rows instead. vpmaddwd with ones then adds the int16
// pairs into int32 lanes.
//
// The weights come packed into panels of 16 columns (panels.h), either once
// per weight (weight_cache.h) or per call. The activations are read in place,
// four bytes broadcast at a time.

constexpr int kPr = 4;           // activation rows per micro-tile (8 accumulators)
constexpr int kPc = kPanelCols;  // weight columns per micro-tile (two ymm of 8 int32)
constexpr int64_t kQc = 256;     // K block in groups of four: 1 KiB of each row

// R rows x 16 columns; Flip: the rows are uint8 and enter as x - 128.
template <int R, bool Flip>
__attribute__((always_inline)) inline void panel_step(__m256i (&acc)[R][2], const int32_t* quad,
                                                      const int8_t* panel, __m256i ones) {
  const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel));
  const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + 32));
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m256i x = _mm256_set1_epi32(quad[r]);
    if constexpr (Flip) x = _mm256_xor_si256(x, _mm256_set1_epi8(static_cast<char>(0x80)));
    const __m256i ax = _mm256_abs_epi8(x);
    acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(b0, x)), ones));
    acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(b1, x)), ones));
  }
}

template <int R, bool Flip>
void panel_micro(const uint8_t* a, int64_t lda, int64_t q0, int64_t qlen, int64_t K,
                 const int8_t* panel, bool accumulate, int32_t* d, int64_t ldd, int cols) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  // Whole groups of four read straight from the rows; a last partial group is
  // copied so that nothing past the row is read (its weights are zero).
  const int64_t qfull = std::min(qlen, std::max<int64_t>(0, K / 4 - q0));
  const uint8_t* row = a + q0 * 4;
  for (int64_t q = 0; q < qfull; ++q) {
    int32_t quad[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) std::memcpy(&quad[r], row + r * lda + q * 4, 4);
    panel_step<R, Flip>(acc, quad, panel + q * 64, ones);
  }
  if (qfull < qlen) {
    int32_t quad[R];
    for (int r = 0; r < R; ++r) {
      uint8_t bytes[4];
      std::memset(bytes, Flip ? 0x80 : 0, 4);  // 0 once the flip is applied
      std::memcpy(bytes, row + r * lda + qfull * 4, static_cast<size_t>(K % 4));
      std::memcpy(&quad[r], bytes, 4);
    }
    panel_step<R, Flip>(acc, quad, panel + qfull * 64, ones);
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) int32_t out[kPc];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), acc[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8), acc[r][1]);
    for (int c = 0; c < cols; ++c) d[r * ldd + c] = (accumulate ? d[r * ldd + c] : 0) + out[c];
  }
}

using PanelMicro = void (*)(const uint8_t*, int64_t, int64_t, int64_t, int64_t, const int8_t*,
                            bool, int32_t*, int64_t, int);
template <bool Flip, int... R>
constexpr std::array<PanelMicro, kPr> panel_table(std::integer_sequence<int, R...>) {
  return {&panel_micro<R + 1, Flip>...};
}
// [flip][rows - 1]
constexpr std::array<PanelMicro, kPr> kPanelMicros[2] = {
    panel_table<false>(std::make_integer_sequence<int, kPr>()),
    panel_table<true>(std::make_integer_sequence<int, kPr>())};

// Below this many rows, packing the weights on every call costs more than
// the panel kernel saves.
constexpr int64_t kPanelMinM = 48;

void run_panels(const void* a, bool a_signed, int64_t lda, const int8_t* packed,
                const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d, int64_t ldd) {
  const int64_t nq = panel_groups(K), panels = (N + kPc - 1) / kPc;
  const uint8_t* x = static_cast<const uint8_t*>(a);
  for (int64_t q0 = 0; q0 < nq; q0 += kQc) {
    const int64_t qlen = std::min(kQc, nq - q0);
    for (int64_t p = 0; p < panels; ++p) {
      const int cols = static_cast<int>(std::min<int64_t>(kPc, N - p * kPc));
      const int8_t* panel = packed + (p * nq + q0) * 64;
      for (int64_t m0 = 0; m0 < M; m0 += kPr) {
        const int rows = static_cast<int>(std::min<int64_t>(kPr, M - m0));
        kPanelMicros[a_signed ? 0 : 1][rows - 1](x + m0 * lda, lda, q0, qlen, K, panel, q0 > 0,
                                                 d + m0 * ldd + p * kPc, ldd, cols);
      }
    }
  }
  if (!a_signed) {  // the kernel saw x - 128: add 128 * w_sum back (wrapping, exact in the end)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        d[m * ldd + n] = static_cast<int32_t>(static_cast<uint32_t>(d[m * ldd + n]) +
                                              128u * static_cast<uint32_t>(w_sum[n]));
  }
}

}  // namespace

void gemm_s32(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
              const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d,
              int64_t ldd) {
  if (M >= kPanelMinM) {
    std::vector<int8_t> packed(static_cast<size_t>(panel_bytes(N, K)));
    if (pack_panels(w, ldw, N, K, packed.data())) {
      return run_panels(a, a_signed, lda, packed.data(), w_sum, M, N, K, d, ldd);
    }
  }
  gemm_rows(a, a_signed, lda, w, ldw, M, N, K, d, ldd);
}

void gemm_s32_packed(const void* a, bool a_signed, int64_t lda, const int8_t* panels,
                     const int32_t* w_sum, int64_t M, int64_t N, int64_t K, int32_t* d,
                     int64_t ldd) {
  run_panels(a, a_signed, lda, panels, w_sum, M, N, K, d, ldd);
}

}  // namespace torch_quant::cpu::avx2

TORCH_QUANT_TARGET_END

#endif  // TORCH_QUANT_X86
