// CUDA kernels of choose_qparams, quantize, dequantize and quantize_per_token
// (docs/semantics.md, "Modes and rounding" and "Operators"), with the CPU
// kernels' semantics: the per-element math is
// quant_math.h, shared with csrc/cpu, and the argument checks are checks.h,
// so both backends reject the same inputs with the same messages.
//
// Written without a GPU to run them on (docs/design.md, "CUDA kernels"): kept plain so that
// they are right by construction. Everything runs on the current stream.
// quantize / dequantize check the caller's scale and zero point values on the
// device (value_checks.h), so no call waits for the GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../quant_math.h"
#include "../visit.h"
#include "common.cuh"
#include "value_checks.h"

namespace torch_quant::cuda {
namespace {

at::ScalarType code_dtype(Mode mode) { return mode == Mode::Symmetric ? at::kChar : at::kByte; }

// dst[i] = f(src[i], c) over contiguous data whose element i uses parameter
// pair c = (i / inner) % channels. kV elements per thread step: one 16-byte
// load or store on the float side when kV > 1, which the launchers take only
// when the data is aligned and a pack never straddles two channels (one
// channel, or inner % kV == 0); the last n % kV elements go one by one.
template <int kV, typename In, typename Out, typename F>
__global__ void per_channel_map_kernel(const In* __restrict__ src, Out* __restrict__ dst,
                                       int64_t n, int64_t channels, int64_t inner, F f) {
  const int64_t packs = n / kV, items = packs + n % kV;
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < items;
       j += int64_t{gridDim.x} * blockDim.x) {
    if (j < packs) {
      const int64_t i = j * kV, c = channels == 1 ? 0 : (i / inner) % channels;
      const Pack<In, kV> in = reinterpret_cast<const Pack<In, kV>*>(src)[j];
      Pack<Out, kV> out;
#pragma unroll
      for (int e = 0; e < kV; ++e) out.v[e] = f(in.v[e], c);
      reinterpret_cast<Pack<Out, kV>*>(dst)[j] = out;
    } else {
      const int64_t i = packs * kV + (j - packs), c = channels == 1 ? 0 : (i / inner) % channels;
      dst[i] = f(src[i], c);
    }
  }
}

template <typename Q>
struct QuantizeFn {
  const float* scale;
  const int64_t* zp;
  float qmin, qmax;
  template <typename In>
  __device__ __forceinline__ Q operator()(In x, int64_t c) const {
    const float inv = 1.0f / scale[c];  // float32 reciprocal, as the CPU kernels and torch
    return static_cast<Q>(
        quantize_val(static_cast<float>(x), inv, static_cast<float>(zp[c]), qmin, qmax));
  }
};

template <typename Out>
struct DequantizeFn {
  const float* scale;
  const int64_t* zp;
  template <typename Q>
  __device__ __forceinline__ Out operator()(Q q, int64_t c) const {
    return static_cast<Out>(
        dequantize_val(static_cast<int>(q), scale[c], static_cast<float>(zp[c])));
  }
};

// choose_qparams in two steps, so that one channel (a whole tensor, per
// tensor) is spread over many blocks: block (c, s) of a grid (channels,
// splits) takes elements s, s + splits, ... (in steps of a block) of channel
// c and writes their finite min and max to part_*[c * splits + s]; then one
// block per channel reduces its splits and computes the parameters. min and
// max are exact, so the result does not depend on the split.
// kV > 1 (16-byte loads) when each channel is one aligned contiguous run:
// outer == 1 and (channels == 1 or inner % kV == 0).
template <int kV, typename In>
__global__ void channel_minmax_kernel(const In* __restrict__ x, int64_t outer, int64_t channels,
                                      int64_t inner, float* __restrict__ part_lo,
                                      float* __restrict__ part_hi) {
  const int64_t c = blockIdx.x, splits = gridDim.y;
  const int64_t first = blockIdx.y * int64_t{blockDim.x} + threadIdx.x,
                step = splits * blockDim.x;
  float lo = INFINITY, hi = -INFINITY;
  const auto take = [&](float v) {
    if (is_finite(v)) {
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
  };
  if constexpr (kV > 1) {
    const In* run = x + c * inner;
    const int64_t packs = inner / kV;
    for (int64_t j = first; j < packs; j += step) {
      const Pack<In, kV> p = reinterpret_cast<const Pack<In, kV>*>(run)[j];
#pragma unroll
      for (int e = 0; e < kV; ++e) take(static_cast<float>(p.v[e]));
    }
    for (int64_t i = packs * kV + first; i < inner; i += step) take(static_cast<float>(run[i]));
  } else {
    for (int64_t j = first; j < outer * inner; j += step) {
      const int64_t o = j / inner, i = j % inner;
      take(static_cast<float>(x[(o * channels + c) * inner + i]));
    }
  }
  block_minmax(lo, hi);
  if (threadIdx.x == 0) {
    part_lo[c * splits + blockIdx.y] = lo;
    part_hi[c * splits + blockIdx.y] = hi;
  }
}

__global__ void channel_qparams_kernel(const float* __restrict__ part_lo,
                                       const float* __restrict__ part_hi, int splits,
                                       float* __restrict__ scale, int32_t* __restrict__ zp,
                                       int mode, int bits) {
  const int64_t c = blockIdx.x;
  float lo = INFINITY, hi = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += blockDim.x) {
    lo = fminf(lo, part_lo[c * splits + s]);
    hi = fmaxf(hi, part_hi[c * splits + s]);
  }
  block_minmax(lo, hi);
  if (threadIdx.x == 0) {
    const QParams p = compute_qparams(lo, hi, static_cast<Mode>(mode), bits);
    scale[c] = p.scale;
    zp[c] = p.zero_point;
  }
}

// One block per row: finite min/max, the row's parameters, then its codes,
// kV elements per thread step (16-byte loads when kV > 1: the launcher makes
// sure x is 16-byte aligned and k % kV == 0, so every row is too). The second
// pass rereads the row, from L2 for any row that fits there. Codes and zero
// points are stored minus `offset` (0, or 128 to hand uint8 codes to an int8
// GEMM as x - 128: see quantize_per_token_impl).
template <int kV, typename In, typename Q>
__global__ void per_token_kernel(const In* __restrict__ x, Q* __restrict__ q, int64_t k,
                                 float* __restrict__ scale, int32_t* __restrict__ zp, int mode,
                                 int bits, int offset, const float* __restrict__ smooth) {
  const int64_t r = blockIdx.x, packs = k / kV;
  const auto* row = reinterpret_cast<const Pack<In, kV>*>(x + r * k);
  auto* out = reinterpret_cast<Pack<Q, kV>*>(q + r * k);
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t j = threadIdx.x; j < packs; j += blockDim.x) {
    const Pack<In, kV> p = row[j];
#pragma unroll
    for (int e = 0; e < kV; ++e) {
      float v = static_cast<float>(p.v[e]);
      if (smooth != nullptr) v = smoothed(v, smooth[j * kV + e]);
      if (is_finite(v)) {
        lo = fminf(lo, v);
        hi = fmaxf(hi, v);
      }
    }
  }
  block_minmax(lo, hi);  // every thread gets the row's range
  const QParams p = compute_qparams(lo, hi, static_cast<Mode>(mode), bits);
  if (threadIdx.x == 0) {
    scale[r] = p.scale;
    zp[r] = p.zero_point - offset;
  }
  const QRange range = qrange(static_cast<Mode>(mode), bits);
  const float inv = 1.0f / p.scale, z = static_cast<float>(p.zero_point);
  const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
  for (int64_t j = threadIdx.x; j < packs; j += blockDim.x) {
    const Pack<In, kV> v = row[j];
    Pack<Q, kV> c;
#pragma unroll
    for (int e = 0; e < kV; ++e) {
      float f = static_cast<float>(v.v[e]);
      if (smooth != nullptr) f = smoothed(f, smooth[j * kV + e]);
      c.v[e] = static_cast<Q>(quantize_val(f, inv, z, qmin, qmax) - offset);
    }
    out[j] = c;
  }
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_cuda(const at::Tensor& x_in,
                                                       std::string_view mode_name,
                                                       std::optional<int64_t> axis,
                                                       int64_t bits) {
  const auto [mode, layout] =
      check_choose_qparams_args("torch_quant.choose_qparams", x_in, mode_name, axis, bits);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const auto shape = axis.has_value() ? std::vector<int64_t>{layout.channels}
                                      : std::vector<int64_t>{};
  at::Tensor scale = at::empty(shape, x.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(shape, x.options().dtype(at::kInt));
  if (layout.channels == 0) return {scale, zero_point};
  // Enough blocks for about 8 per multiprocessor, each with at least 4
  // elements per thread.
  const int64_t per_channel = layout.outer * layout.inner;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t splits = std::clamp<int64_t>(
      std::min((8 * sms + layout.channels - 1) / layout.channels,
               (per_channel + 4 * kBlock - 1) / (4 * kBlock)),
      1, 4096);
  const at::Tensor part = at::empty({2, layout.channels * splits}, scale.options());
  float* part_lo = part.mutable_data_ptr<float>();
  float* part_hi = part_lo + layout.channels * splits;
  visit_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    constexpr int kV = kPack16<In>;
    const bool vec = layout.outer == 1 && aligned_to(x.const_data_ptr(), 16) &&
                     (layout.channels == 1 || layout.inner % kV == 0);
    const dim3 grid(static_cast<unsigned>(layout.channels), static_cast<unsigned>(splits));
    with_pack_size<kV>(vec, [&](auto v) {
      channel_minmax_kernel<decltype(v)::value><<<grid, kBlock, 0, stream()>>>(
          x.const_data_ptr<In>(), layout.outer, layout.channels, layout.inner, part_lo, part_hi);
    });
  });
  check_launch();
  channel_qparams_kernel<<<static_cast<unsigned>(layout.channels), kBlock, 0, stream()>>>(
      part_lo, part_hi, static_cast<int>(splits), scale.mutable_data_ptr<float>(),
      zero_point.mutable_data_ptr<int32_t>(), static_cast<int>(mode), static_cast<int>(bits));
  check_launch();
  return {scale, zero_point};
}

at::Tensor quantize_cuda(const at::Tensor& x_in, const at::Tensor& scale,
                         const at::Tensor& zero_point, std::string_view mode_name,
                         std::optional<int64_t> axis, int64_t bits) {
  // Values checked on the device: the kernel reads the device tensors.
  const QuantizeArgs args = check_quantize_args("torch_quant.quantize", x_in, scale, zero_point,
                                                mode_name, axis, bits, ValueCheck::Device);
  const Mode mode = args.mode;
  const QRange range = args.range;
  const ParamLayout layout = args.layout;
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  const at::Tensor z = zero_point.to(at::kLong).contiguous();
  check_scales_on_device(s, Arg::Scale);
  check_zero_points_on_device(z, range, Arg::ZeroPoint);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(code_dtype(mode)));
  const int64_t n = x.numel();
  if (n == 0) return q;
  visit_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const auto launch = [&](auto* out) {
      constexpr int kV = kPack16<In>;
      const bool vec = aligned_to(x.const_data_ptr(), 16) && aligned_to(out, kV) &&
                       (layout.channels == 1 || layout.inner % kV == 0);
      using Q = std::remove_pointer_t<decltype(out)>;
      const QuantizeFn<Q> f{s.const_data_ptr<float>(), z.const_data_ptr<int64_t>(),
                            static_cast<float>(range.qmin), static_cast<float>(range.qmax)};
      with_pack_size<kV>(vec, [&](auto v) {
        per_channel_map_kernel<decltype(v)::value>
            <<<grid_for(n / v + n % v), kBlock, 0, stream()>>>(x.const_data_ptr<In>(), out, n,
                                                               layout.channels, layout.inner, f);
      });
    };
    if (mode == Mode::Symmetric) {
      launch(q.mutable_data_ptr<int8_t>());
    } else {
      launch(q.mutable_data_ptr<uint8_t>());
    }
  });
  check_launch();
  return q;
}

at::Tensor dequantize_cuda(const at::Tensor& q_in, const at::Tensor& scale,
                           const at::Tensor& zero_point, std::optional<int64_t> axis,
                           std::optional<at::ScalarType> dtype) {
  const DequantizeArgs args =
      check_dequantize_args("torch_quant.dequantize", q_in, scale, zero_point, axis, dtype,
                            ValueCheck::Device);
  const at::ScalarType out_dtype = args.out_dtype;
  const ParamLayout layout = args.layout;
  const auto code = q_in.scalar_type();
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous();
  const at::Tensor s = scale.to(at::kFloat).contiguous();
  const at::Tensor z = zero_point.to(at::kLong).contiguous();
  check_scales_on_device(s, Arg::Scale);
  check_zero_points_on_device(z, code == at::kChar ? QRange{-128, 127} : QRange{0, 255},
                              Arg::ZeroPoint);
  at::Tensor x = at::empty(q.sizes(), q.options().dtype(out_dtype));
  const int64_t n = q.numel();
  if (n == 0) return x;
  visit_float(out_dtype, [&](auto tag) {
    using Out = decltype(tag);
    const auto launch = [&](const auto* in) {
      constexpr int kV = kPack16<Out>;
      const bool vec = aligned_to(in, kV) && aligned_to(x.const_data_ptr(), 16) &&
                       (layout.channels == 1 || layout.inner % kV == 0);
      const DequantizeFn<Out> f{s.const_data_ptr<float>(), z.const_data_ptr<int64_t>()};
      with_pack_size<kV>(vec, [&](auto v) {
        per_channel_map_kernel<decltype(v)::value>
            <<<grid_for(n / v + n % v), kBlock, 0, stream()>>>(
                in, x.mutable_data_ptr<Out>(), n, layout.channels, layout.inner, f);
      });
    };
    if (code == at::kChar) {
      launch(q.const_data_ptr<int8_t>());
    } else {
      launch(q.const_data_ptr<uint8_t>());
    }
  });
  check_launch();
  return x;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_impl(const char* op,
                                                                      const at::Tensor& x_in,
                                                                      Mode mode, int64_t bits,
                                                                      bool int8_codes,
                                                                      const at::Tensor* smooth) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const auto row_shape = x.sizes().slice(0, x.dim() - 1);
  const int64_t k = x.size(-1);
  const int64_t rows = c10::multiply_integers(row_shape);
  // Asymmetric codes u in [0, 255] with zero point z go out as int8 u - 128
  // and z - 128 when int8_codes: sum_k (u - z) w is unchanged.
  const bool shift = int8_codes && mode == Mode::Asymmetric;
  const int offset = shift ? 128 : 0;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(shift ? at::kChar : code_dtype(mode)));
  at::Tensor scale = at::empty(row_shape, x.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(row_shape, x.options().dtype(at::kInt));
  if (rows == 0) return {q, scale, zero_point};
  TORCH_CHECK(rows <= 0x7fffffff, op, ": more than 2^31 - 1 rows are not supported on CUDA");
  visit_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const auto launch = [&](auto* out) {
      constexpr int kV = kPack16<In>;
      const bool vec = aligned_to(x.const_data_ptr(), 16) && k % kV == 0 && aligned_to(out, kV);
      with_pack_size<kV>(vec, [&](auto v) {
        per_token_kernel<decltype(v)::value><<<static_cast<unsigned>(rows), kBlock, 0, stream()>>>(
            x.const_data_ptr<In>(), out, k, scale.mutable_data_ptr<float>(),
            zero_point.mutable_data_ptr<int32_t>(), static_cast<int>(mode),
            static_cast<int>(bits), offset,
            smooth != nullptr ? smooth->const_data_ptr<float>() : nullptr);
      });
    };
    if (q.scalar_type() == at::kChar) {
      launch(q.mutable_data_ptr<int8_t>());
    } else {
      launch(q.mutable_data_ptr<uint8_t>());
    }
  });
  check_launch();
  return {q, scale, zero_point};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_cuda(
    const at::Tensor& x_in, std::string_view mode_name, int64_t bits) {
  constexpr const char* op = "torch_quant.quantize_per_token";
  const Mode mode = check_quantize_per_token_args(op, x_in, mode_name, bits);
  return quantize_per_token_impl(op, x_in, mode, bits, /*int8_codes=*/false,
                                 /*smooth=*/nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CUDA, m) {
  m.impl("choose_qparams", &choose_qparams_cuda);
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
  m.impl("quantize_per_token", &quantize_per_token_cuda);
}

}  // namespace torch_quant::cuda
