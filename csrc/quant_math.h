// Scalar quantization math shared by the CPU kernels (scalar path and vector
// tails) and the CUDA kernels. Everything here is float32, as the contract
// (docs/semantics.md, "Modes and rounding") asks,
// so a CPU test of these functions is a test of what the GPU computes too.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TQ_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TQ_HOST_DEVICE inline
#endif

namespace torch_quant {

enum class Mode : int { Symmetric = 0, Asymmetric = 1 };

// Integer range of a b-bit code: signed for symmetric, unsigned for asymmetric.
struct QRange {
  int qmin;
  int qmax;
};

TQ_HOST_DEVICE QRange qrange(Mode mode, int bits) {
  return mode == Mode::Symmetric
      ? QRange{-(1 << (bits - 1)), (1 << (bits - 1)) - 1}
      : QRange{0, (1 << bits) - 1};
}

TQ_HOST_DEVICE bool is_finite(float x) {
  // |x| < inf is false for NaN and for ±inf, and needs no libm call on device.
  return fabsf(x) < INFINITY;
}

struct QParams {
  float scale;
  int zero_point;
};

// Parameters for data whose finite values lie in [lo, hi]. Pass lo = +inf and
// hi = -inf when there were none: the range is then widened to [0, 0].
TQ_HOST_DEVICE QParams compute_qparams(float lo, float hi, Mode mode, int bits) {
  const QRange r = qrange(mode, bits);
  // The range always contains 0 so that 0.0 is exactly representable.
  lo = fminf(lo, 0.0f);
  hi = fmaxf(hi, 0.0f);
  if (mode == Mode::Symmetric) {
    const float amax = fmaxf(-lo, hi);
    return QParams{fmaxf(amax / static_cast<float>(r.qmax), FLT_EPSILON), 0};
  }
  const float levels = static_cast<float>(r.qmax - r.qmin);
  float scale = (hi - lo) / levels;
  // hi - lo overflows float32 when the data spans more than FLT_MAX; the
  // scale itself is representable, so form it without the overflowing sum.
  if (!is_finite(scale)) scale = hi / levels - lo / levels;
  scale = fmaxf(scale, FLT_EPSILON);
  float zp = static_cast<float>(r.qmin) - nearbyintf(lo / scale);
  zp = fminf(fmaxf(zp, static_cast<float>(r.qmin)), static_cast<float>(r.qmax));
  return QParams{scale, static_cast<int>(zp)};
}

// q = clamp(nearbyint(x * inv_scale + zero_point), qmin, qmax), with
// x * inv_scale + zero_point rounded once (a fused multiply-add): the zero point
// is added before rounding, as torch.quantize_per_tensor does, so .5 ties go to
// the even code. NaN -> zero_point, +inf -> qmax, -inf -> qmin.
TQ_HOST_DEVICE int quantize_val(float x, float inv_scale, float zero_point,
                                float qmin, float qmax) {
  if (x != x) return static_cast<int>(zero_point);
  const float r = nearbyintf(fmaf(x, inv_scale, zero_point));
  return static_cast<int>(fminf(fmaxf(r, qmin), qmax));
}

// An input value times its channel's smoothing factor (dynamic_quantized_linear's
// `smooth`), rounded once to float32 before it is quantized: never fused with
// the multiply-add of quantize_val.
TQ_HOST_DEVICE float smoothed(float x, float factor) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(x, factor);
#else
  return x * factor;
#endif
}

// dynamic_quantized_linear's `hadamard_block` b (a power of two dividing K):
// each run of b values of a row is replaced by its product with the b x b
// Hadamard matrix of +-1 entries (Sylvester order, not normalised: the
// per-token scale absorbs the factor b, the weight carries 1/b), computed as
// log2(b) butterfly stages: at stage h = 1, 2, ..., b/2 the pairs (j, j + h),
// j mod 2h < h, become (v[j] + v[j+h], v[j] - v[j+h]), each rounded once to
// float32. That order is the contract: the CUDA path and reference.py run the
// same stages, so all give the same bits. The rotation spreads a few large
// channels over the whole block, which per-token quantization handles far
// better (docs/conversion.md, "Quantize a model").
//
// hadamard_stages runs the stages h_from <= h < h_to (powers of two) on n
// values (n a multiple of 2 * the last h); a whole rotation is h = 1 .. b/2.
TQ_HOST_DEVICE void hadamard_stages(float* v, int64_t n, int64_t h_from, int64_t h_to) {
  for (int64_t h = h_from; h < h_to; h *= 2) {
    for (int64_t i = 0; i < n; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const float a = v[j], c = v[j + h];
        v[j] = a + c;
        v[j + h] = a - c;
      }
    }
  }
}


// x = (float(q) - float(zero_point)) * scale, exactly this formula (no fma).
TQ_HOST_DEVICE float dequantize_val(int q, float scale, float zero_point) {
  return (static_cast<float>(q) - zero_point) * scale;
}

// The quantized linear epilogue without bias:
//   y = float(dot - x_zero_point * w_sum) * (x_scale * w_scale)
// where dot = sum_k x_q * w_q. The int32 terms wrap (unsigned arithmetic),
// which is exact because the caller bounds K so that the true result fits.
// No fused multiply-add: the product of scales is rounded, then the result.
TQ_HOST_DEVICE float linear_epilogue(int32_t dot, int32_t x_zero_point, int32_t w_sum,
                                     float x_scale, float w_scale) {
  const int32_t acc = static_cast<int32_t>(
      static_cast<uint32_t>(dot) -
      static_cast<uint32_t>(x_zero_point) * static_cast<uint32_t>(w_sum));
#if defined(__CUDA_ARCH__)
  return __fmul_rn(static_cast<float>(acc), __fmul_rn(x_scale, w_scale));
#else
  return static_cast<float>(acc) * (x_scale * w_scale);
#endif
}

}  // namespace torch_quant
