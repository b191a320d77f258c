// The AVX2 int8 GEMM (gemm.h). No VNNI here. Two kernels:
//
// gemm_rows (plain [N, K] weights, few rows; and packed panels holding -128):
// the activations are widened to int16 once, the weights on load
// (vpmovsxbw), and vpmaddwd adds int16 x int16 pairs into int32 lanes, which
// cannot overflow (2 * 255 * 128 < 2^31). Each output keeps its own vector
// accumulator across K and is summed horizontally at the end.
//
// The panel kernel (packed weights): vpmaddubsw with the activation's sign
// moved onto the weight, below.
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <utility>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "peaks.h"
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
// null, 16 more come from tail[c] (zero padded). Adds to d when accumulate;
// with Sums, also adds the block's weight sums to sums[c] (vpmaddwd with
// ones: one more instruction per weight vector). Each step prefetches the
// line at pf + C * k (the next weight rows when a caller streams them, or
// lines it reads anyway).
template <int R, int C, bool Sums>
void micro(const int16_t* a, int64_t lda, const int8_t* const* w,
           const int8_t (*tail)[kStep], int64_t kfull, bool accumulate, int32_t* d,
           int64_t ldd, int32_t* sums, const int8_t* pf) {
  __m256i acc[R][C], s[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    s[c] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][c] = _mm256_setzero_si256();
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const int8_t* wp[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) wp[c] = w[c];
  const int16_t* ap[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) ap[r] = a + r * lda;
  // (No lambda for the step, and the accumulators pinned after the loop:
  // otherwise GCC copies every accumulator on every step.)
  for (int64_t k = 0; k < kfull; k += kStep) {
    _mm_prefetch(reinterpret_cast<const char*>(pf + C * k), _MM_HINT_T0);
    __m256i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      wv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wp[c] + k)));
      if constexpr (Sums) s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(wv[c], ones));
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ap[r] + k));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(av, wv[c]));
    }
  }
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    asm("" : "+x"(s[c]));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) asm("" : "+x"(acc[r][c]));
  }
  if (tail != nullptr) {
    __m256i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      wv[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tail[c])));
      if constexpr (Sums) s[c] = _mm256_add_epi32(s[c], _mm256_madd_epi16(wv[c], ones));
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ap[r] + kfull));
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(av, wv[c]));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) d[r * ldd + c] = (accumulate ? d[r * ldd + c] : 0) + hsum(acc[r][c]);
  if constexpr (Sums)
    for (int c = 0; c < C; ++c) sums[c] += hsum(s[c]);
}

using Micro = void (*)(const int16_t*, int64_t, const int8_t* const*, const int8_t (*)[kStep],
                       int64_t, bool, int32_t*, int64_t, int32_t*, const int8_t*);

// Micro-kernels for every edge size, indexed [with sums][rows - 1][cols - 1].
template <bool S, int R, int... C>
constexpr std::array<Micro, kNr> micro_row(std::integer_sequence<int, C...>) {
  return {&micro<R, C + 1, S>...};
}
template <bool S, int... R>
constexpr std::array<std::array<Micro, kNr>, kMr> micro_table(std::integer_sequence<int, R...>) {
  return {micro_row<S, R + 1>(std::make_integer_sequence<int, kNr>())...};
}
constexpr std::array<std::array<std::array<Micro, kNr>, kMr>, 2> kMicros = {
    micro_table<false>(std::make_integer_sequence<int, kMr>()),
    micro_table<true>(std::make_integer_sequence<int, kMr>())};

template <typename A>
void widen(const A* a, int64_t lda, int64_t M, int64_t K, int64_t kp, int16_t* out) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) out[m * kp + k] = a[m * lda + k];
    std::fill(out + m * kp + K, out + (m + 1) * kp, int16_t{0});
  }
}

int64_t widened_k(int64_t K) { return (K + kStep - 1) / kStep * kStep; }

void widen_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K, int16_t* out) {
  if (a_signed) {
    widen(static_cast<const int8_t*>(a), lda, M, K, widened_k(K), out);
  } else {
    widen(static_cast<const uint8_t*>(a), lda, M, K, widened_k(K), out);
  }
}

// The dot-product kernel on activations widened to int16 (widen_rows, row
// stride widened_k(K)): any weights, no packing. d[m * ldd + n] = the dot
// products; with `sums` set, sums[n] = the sums of w's rows.
void gemm_rows16(const int16_t* a16, const int8_t* w, int64_t ldw, int64_t M, int64_t N,
                 int64_t K, int32_t* d, int64_t ldd, int32_t* sums) {
  const int64_t kp = widened_k(K), kfull = K / kStep * kStep;
  if (sums != nullptr) std::fill(sums, sums + N, 0);
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
        // One stream per call (one or two rows, all of K): prefetch the
        // next rows, which follow these in memory; else lines read anyway.
        const int8_t* pf = kc == kp && n0 + cols < N ? w + (n0 + cols) * ldw : wrow[0];
        const bool with_sums = sums != nullptr && m0 == 0;
        kMicros[with_sums][rows - 1][cols - 1](a16 + m0 * kp + k0, kp, wrow,
                                               has_tail ? tail : nullptr, kmain, k0 > 0,
                                               d + m0 * ldd + n0, ldd,
                                               with_sums ? sums + n0 : nullptr, pf);
      }
    }
  }
}

// The same from the codes as given (the panel kernel's -128 panels).
void gemm_rows(const void* a, bool a_signed, int64_t lda, const int8_t* w, int64_t ldw,
               int64_t M, int64_t N, int64_t K, int32_t* d, int64_t ldd) {
  std::vector<int16_t> a16(static_cast<size_t>(M * widened_k(K)));
  widen_rows(a, a_signed, lda, M, K, a16.data());
  gemm_rows16(a16.data(), w, ldw, M, N, K, d, ldd, nullptr);
}


// ---------------------------------------------------------------------------
// The panel kernel (many rows). vpmaddubsw multiplies 32 uint8 by 32 int8 and
// adds pairs into int16, at twice the rate of vpmaddwd here, but saturates
// when a pair exceeds 32767. It cannot here: the activation x (int8, or uint8
// moved to int8 by x - 128) enters as |x| <= 128 and its sign moves onto the
// weight, sign(x) * w, which stays in [-127, 127] as long as no weight is
// -128; a pair is then at most 2 * 128 * 127 = 32512. Weights holding -128
// (never produced by symmetric quantization with scale = max|w| / 127, but
// legal) use gemm_rows instead. vpmaddwd with ones then adds the int16 pairs
// into int32 lanes.
//
// The weights come packed (packed.h): panels of 16 columns, 64 bytes per
// group of four k, the two halves of a group one ymm each. The activations are prepared once
// per call (split_activations): for each group of four k, the four |x| bytes
// and then the four x bytes, so the inner loop only broadcasts them (the abs
// and the uint8 flip would otherwise be redone for every panel: about 15%).

constexpr int kPr = 4;           // activation rows per micro-tile (8 accumulators)
constexpr int kPc = kPanelCols;  // weight columns per micro-tile (two ymm of 8 int32)
constexpr int64_t kQc = 256;     // K block in groups of four: 2 KiB of each split row

// R rows x 16 columns over qlen groups of four k, from split rows (stride
// lds int32) and a panel.
template <int R>
void panel_micro(const int32_t* split, int64_t lds, int64_t qlen, const int8_t* panel,
                 bool accumulate, int32_t* d, int64_t ldd, int cols) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t q = 0; q < qlen; ++q) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + q * 64));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + q * 64 + 32));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i ax = _mm256_set1_epi32(split[r * lds + 2 * q]);
      const __m256i x = _mm256_set1_epi32(split[r * lds + 2 * q + 1]);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(b0, x)), ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(b1, x)), ones));
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) int32_t out[kPc];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), acc[r][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8), acc[r][1]);
    for (int c = 0; c < cols; ++c) d[r * ldd + c] = (accumulate ? d[r * ldd + c] : 0) + out[c];
  }
}

using PanelMicro = void (*)(const int32_t*, int64_t, int64_t, const int8_t*, bool, int32_t*,
                            int64_t, int);
template <int... R>
constexpr std::array<PanelMicro, kPr> panel_table(std::integer_sequence<int, R...>) {
  return {&panel_micro<R + 1>...};
}
constexpr std::array<PanelMicro, kPr> kPanelMicros =
    panel_table(std::make_integer_sequence<int, kPr>());

}  // namespace

int64_t prepared_row_bytes(int64_t K) { return packed_groups(K) * 8; }

// The activations as the panel kernel reads them: per group of four k, the
// four |x'| bytes then the four x' bytes, x' = x (int8) or x - 128 (uint8),
// zero padded to whole groups; prepared_row_bytes(K) bytes per row.
void split_activations(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                       uint8_t* out);

void prepare_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                  uint8_t* out) {
  split_activations(a, a_signed, lda, M, K, out);
}

void gemm_packed(const uint8_t* prepared, const void* a, bool a_signed, const PackedWeight& w,
                 int64_t m0, int64_t m1, int64_t n0, int64_t n1, const Epilogue& ep) {
  const int64_t K = w.K, kg = w.kg(), M = m1 - m0;
  const int64_t p0 = n0 / kPc, p1 = (n1 + kPc - 1) / kPc, ldd = (p1 - p0) * kPc;
  const int32_t* s32 = reinterpret_cast<const int32_t*>(prepared) + m0 * 2 * kg;
  const int64_t lds = 2 * kg;  // int32 per split row
  std::vector<int32_t> d(static_cast<size_t>(M * ldd));
  // The last, narrower panel (packed.h) as a zero-padded full-width copy.
  std::vector<int8_t> tail;
  const int8_t* last = w.full_panel(p1 - 1, tail);
  const auto panel = [&](int64_t p) { return p == p1 - 1 ? last : w.panel(p); };
  std::vector<char> dirty(static_cast<size_t>(p1 - p0));
  for (int64_t p = p0; p < p1; ++p) dirty[p - p0] = w.panel_has_min(p);
  // K in blocks only when several row blocks reuse them: a single one (M <= 4,
  // decoding) then reads each panel start to end, and the panels one after
  // another, as one stream (K blocks made it jump by a panel every 16 KiB:
  // 0.92 ms at M = 1, K = N = 4096, against 0.52 for the plain kernel).
  const int64_t qc = M <= kPr ? std::max<int64_t>(kg, 1) : kQc;
  for (int64_t q0 = 0; q0 < kg; q0 += qc) {
    const int64_t qlen = std::min(qc, kg - q0);
    for (int64_t p = p0; p < p1; ++p) {
      if (dirty[p - p0]) continue;
      const int8_t* pp = panel(p) + q0 * 64;
      for (int64_t r0 = 0; r0 < M; r0 += kPr) {
        const int rows = static_cast<int>(std::min<int64_t>(kPr, M - r0));
        kPanelMicros[rows - 1](s32 + r0 * lds + 2 * q0, lds, qlen, pp, q0 > 0,
                               d.data() + r0 * ldd + (p - p0) * kPc, ldd, kPc);
      }
    }
  }
  // Panels holding -128: the int16 kernel on the plain codes and weights.
  for (int64_t p = p0; p < p1; ++p) {
    if (!dirty[p - p0]) continue;
    const int cols = w.panel_cols(p);
    std::vector<int8_t> rows(static_cast<size_t>(cols * K));
    for (int c = 0; c < cols; ++c)
      for (int64_t k = 0; k < K; ++k) rows[c * K + k] = w.at(p * kPc + c, k);
    gemm_rows(static_cast<const uint8_t*>(a) + m0 * K, a_signed, K, rows.data(), K, M, cols, K,
              d.data() + (p - p0) * kPc, ldd);
  }
  // Epilogue. The panel kernel saw a - 128 for uint8 codes: fold the shift
  // into the zero point (zp - 128); the -128 panels saw the codes as they are.
  for (int64_t p = p0; p < p1; ++p) {
    const int cols = w.panel_cols(p);
    const int32_t shift = dirty[p - p0] || a_signed ? 0 : -128;
    const int32_t* sums = reinterpret_cast<const int32_t*>(panel(p) + kg * 64);
    const int64_t c0 = p * kPc;
    for (int64_t r = 0; r < M; ++r) {
      const int64_t m = m0 + r;
      const int32_t* dr = d.data() + r * ldd + (p - p0) * kPc;
      float* y = ep.y + m * ep.ldy + c0;
      int c = 0;
      if (cols == kPc) {
        const __m256i zp = _mm256_set1_epi32(ep.zp[m] + shift);
        const __m256 xs = _mm256_set1_ps(ep.x_scale[m]);
        for (; c < kPc; c += 8) {
          const __m256i ws = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + c));
          const __m256i v = _mm256_sub_epi32(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dr + c)),
              _mm256_mullo_epi32(zp, ws));
          __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v),
                                   _mm256_mul_ps(xs, _mm256_loadu_ps(ep.w_scale + c0 + c)));
          if (ep.bias != nullptr) f = _mm256_add_ps(f, _mm256_loadu_ps(ep.bias + c0 + c));
          _mm256_storeu_ps(y + c, f);
        }
      }
      for (; c < cols; ++c) y[c] = finish_scalar(dr[c], m, c0 + c, shift, sums[c], ep);
    }
  }
}

// The plain kernel reads the activations widened to int16.
int64_t plain_row_bytes(int64_t K) { return 2 * widened_k(K); }

void prepare_plain_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                        uint8_t* out) {
  widen_rows(a, a_signed, lda, M, K, reinterpret_cast<int16_t*>(out));
}

void gemm_plain(const PlainTask& t, const Epilogue& ep) {
  const int64_t M = t.m1 - t.m0, cols = t.n1 - t.n0;
  std::vector<int32_t> dot(static_cast<size_t>(M * cols)), sums(static_cast<size_t>(cols));
  gemm_rows16(reinterpret_cast<const int16_t*>(t.a + t.m0 * t.plain_ld), t.w + t.n0 * t.K, t.K,
              M, cols, t.K, dot.data(), cols, sums.data());
  if (t.sums != nullptr) std::copy(sums.begin(), sums.end(), t.sums + t.n0);
  for (int64_t r = 0; r < M; ++r)
    finish_row(dot.data() + r * cols, sums.data(), t.m0 + r, t.n0, cols, 0, ep);
}

void split_activations(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                       uint8_t* out) {
  const int64_t lds = prepared_row_bytes(K), kv = K / 32 * 32;
  const __m256i flip = _mm256_set1_epi8(a_signed ? 0 : static_cast<char>(0x80));
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* x = static_cast<const uint8_t*>(a) + m * lda;
    uint8_t* o = out + m * lds;
    int64_t k = 0;
    for (; k < kv; k += 32) {
      const __m256i v = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k)), flip);
      const __m256i mag = _mm256_abs_epi8(v);
      // Interleave 4-byte groups: |x| of k..k+3, x of k..k+3, |x| of k+4..
      const __m256i lo = _mm256_unpacklo_epi32(mag, v), hi = _mm256_unpackhi_epi32(mag, v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * k),
                          _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * k + 32),
                          _mm256_permute2x128_si256(lo, hi, 0x31));
    }
    for (; k < lds / 2; ++k) {  // the tail, zero padded to a whole group
      const int8_t v = k < K ? static_cast<int8_t>(x[k] ^ (a_signed ? 0 : 0x80)) : 0;
      const int64_t at = (k / 4) * 8 + k % 4;
      o[at] = static_cast<uint8_t>(v < 0 ? -v : v);  // |-128| = 128 as uint8
      o[at + 4] = static_cast<uint8_t>(v);
    }
  }
}

// Packing (packed.h) 32 k at a time: the same bytes as pack_columns, from
// an 8 x 8 transpose of 4-byte groups per half panel (8 columns), whose
// vectors also feed the column sums and the -128 flags (gemm_avx512_vnni.cpp
// does the same with 16 x 16).
namespace {

inline void transpose8(__m256i (&r)[8]) {
  __m256i t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {  // u[4i + x], lane L: element 4L + x of rows 4i .. 4i + 3
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int x = 0; x < 4; ++x) {
    r[x] = _mm256_permute2x128_si256(u[x], u[4 + x], 0x20);
    r[4 + x] = _mm256_permute2x128_si256(u[x], u[4 + x], 0x31);
  }
}

}  // namespace

void pack_panels(const int8_t* w, int64_t ldw, int64_t K, int64_t p0, int64_t p1, int8_t* out) {
  const int64_t kg = packed_groups(K), g = packed_rows(K), kfull = K / 32 * 32;
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  const __m256i min8 = _mm256_set1_epi8(-128);
  for (int64_t p = p0; p < p1; ++p) {
    for (int half = 0; half < 2; ++half) {
      const int8_t* src = w + (p * kPanelCols + 8 * half) * ldw;
      int8_t* dst = out + p * 64 * g + 32 * half;
      __m256i sums = _mm256_setzero_si256();
      uint32_t has_min = 0;
      for (int64_t k0 = 0; k0 < K; k0 += 32) {
        __m256i r[8];
        if (k0 < kfull) {
#pragma GCC unroll 8
          for (int j = 0; j < 8; ++j)
            r[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + j * ldw + k0));
        } else {  // the tail, zero padded
          alignas(32) int8_t buf[8][32] = {};
          for (int j = 0; j < 8; ++j) std::memcpy(buf[j], src + j * ldw + k0, static_cast<size_t>(K - k0));
          for (int j = 0; j < 8; ++j) r[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf[j]));
        }
        transpose8(r);
        const int64_t groups = std::min<int64_t>(8, kg - k0 / 4);
        for (int64_t q = 0; q < groups; ++q) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (k0 / 4 + q) * 64), r[q]);
          // each column's four bytes: pairs into int16, then into its int32 lane
          sums = _mm256_add_epi32(sums, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, r[q]), ones16));
          has_min |= static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(r[q], min8)));
        }
      }
      alignas(32) int32_t flags[8];
      for (int j = 0; j < 8; ++j)
        flags[j] = static_cast<int32_t>(K << kFlagKShift) |
                   (((has_min >> (4 * j)) & 0xF) != 0 ? kFlagHasMin : 0);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kg * 64), sums);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (kg + 1) * 64),
                          _mm256_load_si256(reinterpret_cast<const __m256i*>(flags)));
    }
  }
}

// ---------------------------------------------------------------------------
// Single-core instruction ceilings for the benchmark (gemm.h): how fast the
// panel kernel above runs when everything is in L1, next to the fp32 FMA peak
// and to the plain uint8 x int8 loop (vpmaddubsw without the sign move, which
// saturates on 8-bit data and is what 7-bit-activation kernels run).

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs body (which does `ops` operations) until `seconds` have passed; ops/s.
template <typename F>
double rate(double seconds, double ops, F&& body) {
  body();  // warm up
  int64_t calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double t = 0;
  do {
    for (int i = 0; i < 16; ++i) body();
    calls += 16;
    t = seconds_since(t0);
  } while (t < seconds);
  return ops * static_cast<double>(calls) / t;
}

__attribute__((noinline)) float fma_loop(int64_t n, float seed) {
  __m256 acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = _mm256_set1_ps(seed + static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
  for (int64_t k = 0; k < n; ++k) {
#pragma GCC unroll 10
    for (int i = 0; i < 10; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 s = acc[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, acc[i]);
  return _mm256_cvtss_f32(s);
}

__attribute__((noinline)) void u8s8_loop(const int32_t* x, const int8_t* panel, int64_t qlen,
                                         int32_t* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[kPr][2];
  for (int r = 0; r < kPr; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (int64_t q = 0; q < qlen; ++q) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + q * 64));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(panel + q * 64 + 32));
#pragma GCC unroll 8
    for (int r = 0; r < kPr; ++r) {
      const __m256i xv = _mm256_set1_epi32(x[r * qlen + q]);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, b0), ones));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, b1), ones));
    }
  }
  for (int r = 0; r < kPr; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * 16), acc[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * 16 + 8), acc[r][1]);
  }
}

}  // namespace

KernelPeaks kernel_peaks(double seconds) {
  KernelPeaks p;
  // volatile: the arguments must not be known to the compiler, or it folds
  // the whole loop into a constant
  volatile float sink = 0, seed = 1.0f;
  volatile int64_t fma_iters = 4096;
  p.fp32_fma = rate(seconds, 2.0 * 8 * 10 * static_cast<double>(fma_iters),
                    [&] { sink = sink + fma_loop(fma_iters, seed); });
  // One K block of the real kernel: 4 rows x 16 columns x 1024 k, in L1.
  constexpr int64_t qlen = kQc;
  std::vector<int8_t> panel(static_cast<size_t>(qlen * 64), 3);
  std::vector<int32_t> split(static_cast<size_t>(kPr * 2 * qlen), 0x05050505);
  std::vector<int32_t> d(kPr * kPc);
  const double ops = 2.0 * kPr * kPc * 4 * qlen;
  p.int8_exact = rate(seconds, ops, [&] {
    kPanelMicros[kPr - 1](split.data(), 2 * qlen, qlen, panel.data(), false, d.data(), kPc, kPc);
  });
  p.int8_u8s8 = rate(seconds, ops, [&] { u8s8_loop(split.data(), panel.data(), qlen, d.data()); });
  return p;
}

}  // namespace torch_quant::cpu::avx2

TORCH_QUANT_TARGET_END

#endif  // TORCH_QUANT_X86
