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
#include "peaks.h"
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

// The plain-layout kernel (few rows, unpacked weight): per micro-tile of R
// activation rows x C weight rows, R * C dot products accumulated in zmm
// lanes over all of K (64 k a step, the tail masked), and with Sums the C
// weight rows' sums beside them (vpdpbusd of ones: one more instruction per
// weight vector, in the first row block only). The C rows of the weight are
// read once per tile and stay in L1 while the row blocks pass; the
// horizontal reductions happen once per output, at the end.
namespace {

constexpr int kPr = 4;  // activation rows per plain micro-tile
constexpr int kPc = 4;  // weight rows (output columns) per plain micro-tile
constexpr int kStep = 64;

// The four horizontal sums of a0..a3, in order.
inline __m128i reduce4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  // per 128-bit lane: [a0 0+2, a1 0+2, a0 1+3, a1 1+3], then the same for a2, a3
  const __m512i x01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i x23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  // per lane: [a0, a1, a2, a3], then the four lanes added
  const __m512i y = _mm512_add_epi32(_mm512_unpacklo_epi64(x01, x23), _mm512_unpackhi_epi64(x01, x23));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(y), _mm512_extracti64x4_epi64(y, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// The four lanes' sums of a0..a3 to out[0 .. C).
template <int C>
inline void store_sums(__m512i a0, __m512i a1, __m512i a2, __m512i a3, int32_t* out) {
  _mm_mask_storeu_epi32(out, static_cast<__mmask8>((1u << C) - 1), reduce4(a0, a1, a2, a3));
}

// What a micro-tile prefetches while it runs: `lines` (1 to 4) cache lines a
// step from pf on (the next weight rows, so that they arrive while this tile
// computes instead of when the next one starts).
struct Prefetch {
  const int8_t* pf;
  int lines;
};

// An empty asm that "changes" each accumulator, between the main loop, the
// tail and the reductions: without it GCC 12 ties the registers of the later
// code to the loop's and copies every accumulator on every step (measured:
// half the speed).
template <int R, int C>
inline void pin(__m512i (&acc)[R][C], __m512i (&s)[C]) {
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    asm("" : "+v"(s[c]));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) asm("" : "+v"(acc[r][c]));
  }
}

// a: R prepared rows (stride lda, at least K bytes each); w: C weight rows
// (stride K). Writes dot[r * ldd + c], and with Sums sums[c].
template <int R, int C, bool Sums>
void plain_micro(const uint8_t* a, int64_t lda, const int8_t* w, int64_t K, int32_t* dot,
                 int64_t ldd, int32_t* sums, Prefetch pre) {
  __m512i acc[R][C], s[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) {
    s[c] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][c] = _mm512_setzero_si512();
  }
  const int8_t* wp[C];
#pragma GCC unroll 4
  for (int c = 0; c < C; ++c) wp[c] = w + c * K;
  const uint8_t* ap[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) ap[r] = a + r * lda;
  const __m512i ones = _mm512_set1_epi8(1);
  // Four prefetches a step, branch-free: the unused ones repeat the first line.
  const char* pf = reinterpret_cast<const char*>(pre.pf);
  const int64_t o1 = pre.lines > 1 ? 64 : 0, o2 = pre.lines > 2 ? 128 : 0,
                o3 = pre.lines > 3 ? 192 : 0, pf_step = 64 * pre.lines;
  const int64_t steps = K / kStep;
  for (int64_t q = 0; q < steps; ++q) {
    const char* p = pf + q * pf_step;
    _mm_prefetch(p, _MM_HINT_T0);
    _mm_prefetch(p + o1, _MM_HINT_T0);
    _mm_prefetch(p + o2, _MM_HINT_T0);
    _mm_prefetch(p + o3, _MM_HINT_T0);
    __m512i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      wv[c] = _mm512_loadu_si512(wp[c] + q * kStep);
      if constexpr (Sums) s[c] = _mm512_dpbusd_epi32(s[c], ones, wv[c]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_loadu_si512(ap[r] + q * kStep);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
    }
  }
  pin(acc, s);
  if (steps * kStep < K) {  // the tail, masked (zeros past K add nothing)
    const int64_t k = steps * kStep;
    const __mmask64 mask = ~__mmask64{0} >> (kStep - (K - k));
    __m512i wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      wv[c] = _mm512_maskz_loadu_epi8(mask, wp[c] + k);
      if constexpr (Sums) s[c] = _mm512_dpbusd_epi32(s[c], ones, wv[c]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_maskz_loadu_epi8(mask, ap[r] + k);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
    }
  }
  pin(acc, s);
  const __m512i z = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
    store_sums<C>(acc[r][0], C > 1 ? acc[r][C > 1 ? 1 : 0] : z, C > 2 ? acc[r][C > 2 ? 2 : 0] : z,
                  C > 3 ? acc[r][C > 3 ? 3 : 0] : z, dot + r * ldd);
  if constexpr (Sums)
    store_sums<C>(s[0], C > 1 ? s[C > 1 ? 1 : 0] : z, C > 2 ? s[C > 2 ? 2 : 0] : z,
                  C > 3 ? s[C > 3 ? 3 : 0] : z, sums);
}

using PlainMicro = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int32_t*, int64_t,
                            int32_t*, Prefetch);
template <bool S, int R, int... C>
constexpr std::array<PlainMicro, kPc> plain_row(std::integer_sequence<int, C...>) {
  return {&plain_micro<R, C + 1, S>...};
}
template <bool S, int... R>
constexpr std::array<std::array<PlainMicro, kPc>, kPr> plain_table(std::integer_sequence<int, R...>) {
  return {plain_row<S, R + 1>(std::make_integer_sequence<int, kPc>())...};
}
// [with sums][rows - 1][columns - 1]
constexpr std::array<std::array<std::array<PlainMicro, kPc>, kPr>, 2> kPlainMicros = {
    plain_table<false>(std::make_integer_sequence<int, kPr>()),
    plain_table<true>(std::make_integer_sequence<int, kPr>())};

}  // namespace

// The plain kernel reads the same uint8 rows as the packed one.
int64_t plain_row_bytes(int64_t K) { return prepared_row_bytes(K); }

void prepare_plain_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,
                        uint8_t* out) {
  prepare_rows(a, a_signed, lda, M, K, out);
}

void gemm_plain(const PlainTask& t, const Epilogue& ep) {
  const int64_t K = t.K, M = t.m1 - t.m0, cols = t.n1 - t.n0;
  std::vector<int32_t> dot(static_cast<size_t>(M * cols)), sums(static_cast<size_t>(cols));
  // While the row blocks of one group of kPc weight rows run, the next
  // group's rows (contiguous after them) are prefetched, spread evenly over
  // the blocks' steps: the weight then streams from memory all the time, not
  // only in each group's first block.
  const int64_t blocks = (M + kPr - 1) / kPr, steps = std::max<int64_t>((K + kStep - 1) / kStep, 1);
  const int lines = static_cast<int>(
      std::clamp<int64_t>(((kPc * K + 63) / 64 + blocks * steps - 1) / (blocks * steps), 1, 4));
  for (int64_t c0 = 0; c0 < cols; c0 += kPc) {
    const int nc = static_cast<int>(std::min<int64_t>(kPc, cols - c0));
    const int8_t* w = t.w + (t.n0 + c0) * K;
    // (the last group prefetches its own rows again: nothing follows them)
    Prefetch pre{t.n0 + c0 + nc < t.N ? w + nc * K : w, lines};
    for (int64_t r0 = 0; r0 < M; r0 += kPr) {
      const int nr = static_cast<int>(std::min<int64_t>(kPr, M - r0));
      kPlainMicros[r0 == 0][nr - 1][nc - 1](t.a + (t.m0 + r0) * t.plain_ld, t.plain_ld, w, K,
                                            dot.data() + r0 * cols + c0, cols, sums.data() + c0,
                                            pre);
      pre.pf += static_cast<int64_t>(lines) * 64 * (K / kStep);
    }
  }
  if (t.sums != nullptr) std::copy(sums.begin(), sums.end(), t.sums + t.n0);
  // int8 codes were read as code + 128: take 128 * sum back (zero point 0).
  const int32_t shift = t.a_signed ? 128 : 0;
  for (int64_t r = 0; r < M; ++r)
    finish_row(dot.data() + r * cols, sums.data(), t.m0 + r, t.n0, cols, shift, ep);
}

// Packing (packed.h) 64 k at a time: the 16 columns of a panel, 64 bytes
// each, are 16 rows of 16 groups of four k; a 16 x 16 transpose of those
// 4-byte groups gives the panel's 16 rows of 64 bytes for those groups, in
// the order they are stored. Each transposed vector also feeds the column
// sums (vpdpbusd with ones adds each column's four bytes into its lane) and
// the -128 flags.
namespace {

// r[i] (16 int32 each) -> r[e] holding element e of every input, in order.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // pairs of rows, interleaved by 32 bits
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i s[16];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // s[4i + x], lane L: element 4L + x of rows 4i .. 4i + 3
    s[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    s[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    s[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    s[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int x = 0; x < 4; ++x) {  // a 4 x 4 transpose of 128-bit lanes
    const __m512i ab_lo = _mm512_shuffle_i32x4(s[x], s[4 + x], 0x44);
    const __m512i ab_hi = _mm512_shuffle_i32x4(s[x], s[4 + x], 0xEE);
    const __m512i cd_lo = _mm512_shuffle_i32x4(s[8 + x], s[12 + x], 0x44);
    const __m512i cd_hi = _mm512_shuffle_i32x4(s[8 + x], s[12 + x], 0xEE);
    r[x] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
    r[4 + x] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);
    r[8 + x] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
    r[12 + x] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);
  }
}

}  // namespace

void pack_panels(const int8_t* w, int64_t ldw, int64_t K, int64_t p0, int64_t p1, int8_t* out) {
  const int64_t kg = packed_groups(K), g = packed_rows(K);
  const __m512i ones = _mm512_set1_epi8(1), min8 = _mm512_set1_epi8(-128);
  for (int64_t p = p0; p < p1; ++p) {
    const int8_t* src = w + p * kPanelCols * ldw;
    int8_t* dst = out + p * 64 * g;
    __m512i sums = _mm512_setzero_si512();
    __mmask64 has_min = 0;
    for (int64_t k0 = 0; k0 < K; k0 += 64) {
      const int64_t left = K - k0;
      const __mmask64 in = left >= 64 ? ~__mmask64{0} : ~__mmask64{0} >> (64 - left);
      __m512i r[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) r[j] = _mm512_maskz_loadu_epi8(in, src + j * ldw + k0);
      transpose16(r);
      const int64_t groups = std::min<int64_t>(16, kg - k0 / 4);
      for (int64_t q = 0; q < groups; ++q) {
        _mm512_storeu_si512(dst + (k0 / 4 + q) * 64, r[q]);
        sums = _mm512_dpbusd_epi32(sums, ones, r[q]);
        has_min |= _mm512_cmpeq_epi8_mask(r[q], min8);
      }
    }
    alignas(64) int32_t flags[16];
    for (int j = 0; j < 16; ++j)
      flags[j] = static_cast<int32_t>(K << kFlagKShift) |
                 (((has_min >> (4 * j)) & 0xF) != 0 ? kFlagHasMin : 0);
    _mm512_storeu_si512(dst + kg * 64, sums);
    _mm512_storeu_si512(dst + (kg + 1) * 64, _mm512_load_si512(flags));
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
