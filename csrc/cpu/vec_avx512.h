// 16 x float32 in a ZMM register: the operations row_kernels_impl.h needs.
// Include only from kernels_avx512.cpp, after its target pragma.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

struct Vec512 {
  using F = __m512;
  static constexpr int W = 16;

  static F set1(float v) { return _mm512_set1_ps(v); }

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load(const c10::BFloat16* p) {
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
  static F load(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static F load(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }

  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store(c10::Half* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static void store(c10::BFloat16* p, F v) {
    // Round to nearest even like c10::BFloat16(float); NaN becomes 0x7fc0 as there.
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r,
                                _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  // v holds integers already clamped to the code's range: narrowing is exact.
  static void store(int8_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  static void store(uint8_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }

  template <typename Q>
  static __m512i narrow4(F a, F b, F c, F d) {
    const auto narrow = [](F v) {
      const __m512i i = _mm512_cvtps_epi32(v);
      return std::is_signed_v<Q> ? _mm512_cvtsepi32_epi8(i) : _mm512_cvtepi32_epi8(i);
    };
    __m512i r = _mm512_castsi128_si512(narrow(a));
    r = _mm512_inserti32x4(r, narrow(b), 1);
    r = _mm512_inserti32x4(r, narrow(c), 2);
    return _mm512_inserti32x4(r, narrow(d), 3);
  }
  template <typename Q>
  static void store4(Q* p, F a, F b, F c, F d) {
    _mm512_storeu_si512(p, narrow4<Q>(a, b, c, d));
  }
  // Non-temporal store4; p must be 64-byte aligned.
  template <typename Q>
  static void stream4(Q* p, F a, F b, F c, F d) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), narrow4<Q>(a, b, c, d));
  }
  static void stream_fence() { _mm_sfence(); }

  // a * b + c, rounded once.
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  // One Hadamard butterfly stage of stride s (1, 2, 4 or 8) inside the vector:
  // lane j pairs with lane j ^ s (p); the lower lane gets a + c = x + p, the
  // upper a - c = p - x. Both are fma(x, +-1, p): x * +-1 is exact, so the
  // one rounding is that of the sum or difference, as in the scalar code.
  static F butterfly(F x, int s) {
    switch (s) {
      case 1: return _mm512_fmadd_ps(x, sign_pattern(0xAAAA), _mm512_permute_ps(x, 0xB1));
      case 2: return _mm512_fmadd_ps(x, sign_pattern(0xCCCC), _mm512_permute_ps(x, 0x4E));
      case 4: return _mm512_fmadd_ps(x, sign_pattern(0xF0F0), _mm512_shuffle_f32x4(x, x, 0xB1));
      default: return _mm512_fmadd_ps(x, sign_pattern(0xFF00), _mm512_shuffle_f32x4(x, x, 0x4E));
    }
  }
  // -1 in the lanes of `upper`, +1 elsewhere.
  static F sign_pattern(__mmask16 upper) {
    return _mm512_mask_blend_ps(upper, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
  }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F round(F v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  static F if_nan(F x, F v, F alt) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), v, alt);
  }
  static F if_finite(F x, F alt) {
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(finite, alt, x);
  }

  static float reduce_min(F v) { return _mm512_reduce_min_ps(v); }
  static float reduce_max(F v) { return _mm512_reduce_max_ps(v); }
};
