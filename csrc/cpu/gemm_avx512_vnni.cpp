// The AVX-512 VNNI int8 GEMM (gemm.h). vpdpbusd multiplies 64 uint8 by 64
// int8 values and adds each group of four products to an int32 lane, without
// saturation. uint8 activations feed it as they are; int8 activations are
// moved to uint8 by adding 128 (a bit flip), and the epilogue takes
// 128 * w_sum[n] back.
//
// Packed kernel: a micro-tile of R rows x C panels (16 columns each) keeps
// R * C zmm accumulators; per group of four k it loads C weight vectors and
// broadcasts four activation bytes per row, so there is no horizontal
// reduction anywhere. The accumulators start at zero and are only added to
// memory after the K loop (GCC spills them to the stack when a branch
// initialises them from memory).
//
// Built on every x86 compiler; run only where the CPU has AVX512_VNNI (isa.cpp).
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "gemm.h"
#include "target.h"

#if TORCH_QUANT_X86
#include <immintrin.h>
TORCH_QUANT_TARGET_BEGIN("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

namespace torch_quant::cpu::avx512_vnni {
namespace {

// Micro-tiles of kMr rows x kNp panels (of 16 columns): 24 zmm accumulators,
// 4 weight vectors and a broadcast. On Zen 4 it beat 8 x 2, 8 x 3 and 12 x 2
// at M = 16, 256 and 512 (6-10%).
constexpr int kMr = 6;
constexpr int kNp = 4;
// K block, in groups of four: 8 KiB of each row, so that a block of kNp panels
// (512 KiB) stays in L2 while all the tile's rows pass. Smaller blocks (64 to
// 512 groups) ran 3-12% slower at M = 256, K = 4096 than none: the partial
// sums' round trips through memory cost more than they save.
constexpr int64_t kQc = 2048;
constexpr int64_t kPrefetch = 16;  // groups ahead, for the weight stream of one row

// R rows x C panels over groups [0, qn) (pointers already at the block's
// first group). Accumulators are added to `stage` (R x 64 int32 per row of
// stride 64) when `load` is set; with `finish` the epilogue writes y,
// otherwise the sums go back to `stage`.
struct Tile {
  const uint8_t* a;        // first row at the block's first byte
  int64_t lda;             // bytes between prepared rows
  const int8_t* w[kNp]; // panel pointers at the block's first group
  int64_t qn;              // groups in this block
  int32_t* stage;          // [R][ldst]
  int64_t ldst;
  bool load, finish;
  // epilogue (finish only)
  const int32_t* zp;       // [R] (row m0 first)
  const float* x_scale;    // [R]
  const int32_t* w_sum[kNp];  // 16 per panel
  const float* w_scale;    // from the tile's first column
  const float* bias;       // from the tile's first column, or null
  float* y;                // row m0, the tile's first column
  int64_t ldy;
  int cols;                // valid columns in the tile (<= C * 16)
};

template <int R, int C, bool Prefetch>
void micro(const Tile& t) {
  __m512i acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  const uint8_t* a = t.a;
  const int8_t* w[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) w[c] = t.w[c];
  for (int64_t q = 0; q < t.qn; ++q) {
    __m512i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(w[c] + (q + kPrefetch) * 64), _MM_HINT_T0);
      wv[c] = _mm512_loadu_si512(w[c] + q * 64);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, a + r * t.lda + q * 4, 4);
      const __m512i av = _mm512_set1_epi32(four);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
    }
  }
  if (t.load) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c)
        acc[r][c] = _mm512_add_epi32(acc[r][c], _mm512_loadu_si512(t.stage + r * t.ldst + c * 16));
  }
  if (!t.finish) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) _mm512_storeu_si512(t.stage + r * t.ldst + c * 16, acc[r][c]);
    return;
  }
  // y = float(acc - zp * w_sum) * (x_scale * w_scale) + bias, as quant_math.h.
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    const int left = t.cols - c * 16;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << std::max(left, 0)) - 1);
    const __m512i ws = _mm512_loadu_si512(t.w_sum[c]);
    const __m512 wsc = _mm512_maskz_loadu_ps(mask, t.w_scale + c * 16);
    const __m512 b = t.bias != nullptr ? _mm512_maskz_loadu_ps(mask, t.bias + c * 16)
                                       : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i v = _mm512_sub_epi32(acc[r][c], _mm512_mullo_epi32(_mm512_set1_epi32(t.zp[r]), ws));
      __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(_mm512_set1_ps(t.x_scale[r]), wsc));
      if (t.bias != nullptr) f = _mm512_add_ps(f, b);
      _mm512_mask_storeu_ps(t.y + r * t.ldy + c * 16, mask, f);
    }
  }
}

using Micro = void (*)(const Tile&);

template <int NP, bool P, int R, int... C>
constexpr std::array<Micro, NP> micro_row(std::integer_sequence<int, C...>) {
  return {&micro<R, C + 1, P>...};
}
template <int NP, bool P, int... R>
constexpr std::array<std::array<Micro, NP>, sizeof...(R)> micro_table(std::integer_sequence<int, R...>) {
  return {micro_row<NP, P, R + 1>(std::make_integer_sequence<int, NP>())...};
}

// Micro-tiles of MR rows x NP panels, [rows - 1][panels - 1]; the prefetching
// variants serve single rows, which only stream the weights.
template <int MR, int NP>
struct Blocking {
  static constexpr auto plain = micro_table<NP, false>(std::make_integer_sequence<int, MR>());
  static constexpr auto prefetch = micro_table<NP, true>(std::make_integer_sequence<int, MR>());
};
}  // namespace

int64_t prepared_row_bytes(int64_t K) { return packed_groups(K) * 4; }

void prepare_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                  uint8_t* out) {
  const int64_t ld = prepared_row_bytes(K);
  const __m512i flip = _mm512_set1_epi8(a_signed ? static_cast<char>(0x80) : 0);
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* src = static_cast<const uint8_t*>(a) + m * lda;
    uint8_t* dst = out + m * ld;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64)
      _mm512_storeu_si512(dst + k, _mm512_xor_si512(_mm512_loadu_si512(src + k), flip));
    if (k < ld) {  // the tail, zero padded to whole groups (padding meets zero weights)
      const __mmask64 in = K > k ? (~__mmask64{0} >> (64 - (K - k))) : 0;
      const __mmask64 all = ~__mmask64{0} >> (64 - (ld - k));
      const __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(in, src + k), flip);
      _mm512_mask_storeu_epi8(dst + k, all, _mm512_maskz_mov_epi8(in, v));
    }
  }
}

namespace {
void run_packed(const uint8_t* prepared, bool a_signed, const PackedWeight& w, int64_t m0,
                int64_t m1, int64_t n0, int64_t n1, const Epilogue& ep) {
  const int64_t ld = prepared_row_bytes(w.K), kg = w.kg();
  const int64_t p0 = n0 / kPanelCols, p1 = (n1 + kPanelCols - 1) / kPanelCols;
  const int64_t M = m1 - m0;
  // The last panel of a weight whose N is not a multiple of 16 is narrower
  // (packed.h); give the kernel a zero-padded full-width copy of it.
  std::vector<int8_t> tail;
  const int8_t* last = w.full_panel(p1 - 1, tail);
  const auto panel = [&](int64_t p) { return p == p1 - 1 ? last : w.panel(p); };
  // Zero points with the +128 shift of int8 activations folded in.
  std::vector<int32_t> zp(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) zp[i] = ep.zp[m0 + i] + (a_signed ? 128 : 0);
  // One K block when the tile has a single micro-row: nothing is reused then.
  // (Blocks of equal size: 96 to 2048 groups, L1- to L2-sized, measured
  // interleaved in one process: unblocked K ran 4-10% faster at M = 512 on
  // SmolLM2's shapes and at M = 256, K = 4096.)
  int64_t qc = M <= kMr ? std::max<int64_t>(kg, 1) : kQc;
  if (qc < kg) {
    const int64_t blocks = (kg + qc - 1) / qc;
    qc = (kg + blocks - 1) / blocks;
  }
  // A single row only streams the weights: prefetch them.
  const bool stream = M == 1;
  std::vector<int32_t> stage(qc < kg ? static_cast<size_t>(M * kNp * 16 * ((p1 - p0 + kNp - 1) / kNp)) : 0);
  const int64_t chunks = (p1 - p0 + kNp - 1) / kNp;
  // (K = 0 still runs one empty block: the epilogue writes the bias.)
  for (int64_t q0 = 0; q0 < std::max<int64_t>(kg, 1); q0 += qc) {
    const int64_t qn = std::min(qc, kg - q0);
    for (int64_t j = 0; j < chunks; ++j) {
      const int64_t pa = p0 + j * kNp;
      const int np = static_cast<int>(std::min<int64_t>(kNp, p1 - pa));
      for (int64_t r0 = 0; r0 < M; r0 += kMr) {
        const int rows = static_cast<int>(std::min<int64_t>(kMr, M - r0));
        Tile t;
        t.a = prepared + (m0 + r0) * ld + q0 * 4;
        t.lda = ld;
        for (int c = 0; c < np; ++c) {
          t.w[c] = panel(pa + c) + q0 * 64;
          t.w_sum[c] = reinterpret_cast<const int32_t*>(panel(pa + c) + kg * 64);
        }
        t.qn = qn;
        t.stage = stage.empty() ? nullptr : stage.data() + (j * M + r0) * kNp * 16;
        t.ldst = kNp * 16;
        t.load = q0 > 0;
        t.finish = q0 + qn >= kg;
        t.zp = zp.data() + r0;
        t.x_scale = ep.x_scale + m0 + r0;
        const int64_t c0 = pa * kPanelCols;
        t.w_scale = ep.w_scale + c0;
        t.bias = ep.bias != nullptr ? ep.bias + c0 : nullptr;
        t.y = ep.y + (m0 + r0) * ep.ldy + c0;
        t.ldy = ep.ldy;
        t.cols = static_cast<int>(std::min<int64_t>(n1, w.N) - c0);
        (stream ? Blocking<kMr, kNp>::prefetch : Blocking<kMr, kNp>::plain)[rows - 1][np - 1](t);
      }
    }
  }
}
}  // namespace

void gemm_packed(const uint8_t* prepared, const void* /*a*/, bool a_signed,
                 const PackedWeight& w, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                 const Epilogue& ep) {
  run_packed(prepared, a_signed, w, m0, m1, n0, n1, ep);
}

// The plain-layout kernel (few rows, unpacked weight): one dot product per
// output, reduced horizontally.
namespace {

constexpr int kPr = 4;
constexpr int kPc = 4;
constexpr int kStep = 64;

template <int R, int C>
void plain_micro(const uint8_t* a, int64_t kp, const int8_t* const* w, int64_t K, int32_t* d,
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

using PlainMicro = void (*)(const uint8_t*, int64_t, const int8_t* const*, int64_t, int32_t*, int64_t);
template <int R, int C>
constexpr PlainMicro kPlain = &plain_micro<R, C>;
constexpr PlainMicro kPlainMicros[kPr][kPc] = {
    {kPlain<1, 1>, kPlain<1, 2>, kPlain<1, 3>, kPlain<1, 4>},
    {kPlain<2, 1>, kPlain<2, 2>, kPlain<2, 3>, kPlain<2, 4>},
    {kPlain<3, 1>, kPlain<3, 2>, kPlain<3, 3>, kPlain<3, 4>},
    {kPlain<4, 1>, kPlain<4, 2>, kPlain<4, 3>, kPlain<4, 4>}};

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
  for (int64_t m0 = 0; m0 < M; m0 += kPr) {
    const int rows = static_cast<int>(std::min<int64_t>(kPr, M - m0));
    for (int64_t n0 = 0; n0 < N; n0 += kPc) {
      const int cols = static_cast<int>(std::min<int64_t>(kPc, N - n0));
      const int8_t* wrow[kPc];
      for (int c = 0; c < cols; ++c) wrow[c] = w + (n0 + c) * ldw;
      int32_t* out = d + m0 * ldd + n0;
      kPlainMicros[rows - 1][cols - 1](a8.data() + m0 * kp, kp, wrow, K, out, ldd);
      if (a_signed) {
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < cols; ++c)  // wrapping int32 arithmetic, exact in the end
            out[r * ldd + c] = static_cast<int32_t>(static_cast<uint32_t>(out[r * ldd + c]) -
                                                    128u * static_cast<uint32_t>(w_sum[n0 + c]));
      }
    }
  }
}

__attribute__((noinline)) static void vnni_loop(int64_t n, __m512i* out) {
  __m512i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_epi32(i);
  __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
  for (int64_t k = 0; k < n; ++k) {
    // The operands must not be known constants, or the compiler folds the loop.
    asm volatile("" : "+v"(a), "+v"(b));
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  for (int i = 1; i < 16; ++i) acc[0] = _mm512_add_epi32(acc[0], acc[i]);
  *out = acc[0];
}

double vnni_peak(double seconds) {
  volatile int64_t iters = 1 << 16;
  __m512i sink;
  vnni_loop(iters, &sink);  // warm up
  int64_t calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double t = 0;
  do {
    vnni_loop(iters, &sink);
    ++calls;
    t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (t < seconds);
  // 16 instructions x 64 multiply-adds (two operations each) per iteration.
  return 2.0 * 64 * 16 * static_cast<double>(iters) * static_cast<double>(calls) / t;
}

}  // namespace torch_quant::cpu::avx512_vnni

TORCH_QUANT_TARGET_END

#endif  // TORCH_QUANT_X86
