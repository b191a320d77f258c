// 8 x float32 in a YMM register: the operations row_kernels_impl.h needs.
// Include only from kernels_avx2.cpp, after its target pragma.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

struct Vec256 {
  using F = __m256;
  static constexpr int W = 8;

  static F set1(float v) { return _mm256_set1_ps(v); }

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static F load(const c10::BFloat16* p) {
    // bfloat16 is the top half of a float32: widen and shift, exact.
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static F load(const int8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static F load(const uint8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }

  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store(c10::Half* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static void store(c10::BFloat16* p, F v) {
    // Round to nearest even like c10::BFloat16(float); NaN becomes 0x7fc0 as there.
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    const __m128i packed =
        _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
  // v holds integers already clamped to the code's range, so the saturating
  // packs below never saturate: they only narrow.
  static __m128i narrow16(F v) {
    const __m256i i = _mm256_cvtps_epi32(v);
    return _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
  }
  static void store(int8_t* p, F v) {
    const __m128i w = narrow16(v);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w, w));
  }
  static void store(uint8_t* p, F v) {
    const __m128i w = narrow16(v);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
  }

  // Four vectors of codes in one 32-byte store. The packs interleave 128-bit
  // lanes; the final permute puts the 4-byte groups back in order.
  template <typename Q>
  static __m256i narrow4(F a, F b, F c, F d) {
    const __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
    const __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(c), _mm256_cvtps_epi32(d));
    const __m256i abcd = std::is_signed_v<Q> ? _mm256_packs_epi16(ab, cd) : _mm256_packus_epi16(ab, cd);
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  }
  template <typename Q>
  static void store4(Q* p, F a, F b, F c, F d) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow4<Q>(a, b, c, d));
  }
  // Non-temporal store4; p must be 32-byte aligned.
  template <typename Q>
  static void stream4(Q* p, F a, F b, F c, F d) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), narrow4<Q>(a, b, c, d));
  }
  static void stream_fence() { _mm_sfence(); }

  // a * b + c, rounded once.
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  // One Hadamard butterfly stage of stride s (1, 2 or 4) inside the vector:
  // lane j pairs with lane j ^ s (p); the lower lane gets a + c = x + p, the
  // upper a - c = p - x. Both are fma(x, +-1, p): x * +-1 is exact, so the
  // one rounding is that of the sum or difference, as in the scalar code.
  static F butterfly(F x, int s) {
    switch (s) {
      case 1:
        return _mm256_fmadd_ps(x, _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1),
                               _mm256_permute_ps(x, 0xB1));
      case 2:
        return _mm256_fmadd_ps(x, _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1),
                               _mm256_permute_ps(x, 0x4E));
      default:
        return _mm256_fmadd_ps(x, _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1),
                               _mm256_permute2f128_ps(x, x, 0x01));
    }
  }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  // Round half to even, as nearbyint does in the default rounding mode.
  static F round(F v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  // alt where x is NaN, v elsewhere.
  static F if_nan(F x, F v, F alt) {
    return _mm256_blendv_ps(v, alt, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  // x where x is finite, alt where it is NaN or ±inf.
  static F if_finite(F x, F alt) {
    const F abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    return _mm256_blendv_ps(alt, x, _mm256_cmp_ps(abs, _mm256_set1_ps(INFINITY), _CMP_LT_OQ));
  }

  static float reduce_min(F v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_max(F v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
};
