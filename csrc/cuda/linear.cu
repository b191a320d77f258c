// CUDA kernels of quantized_linear and dynamic_quantized_linear (SPEC.md §3),
// with the CPU semantics: exact int32 accumulation, then the epilogue of
// quant_math.h (zero-point correction with w_sum, scales, bias, output dtype)
// fused into the GEMM kernel.
//
// Two GEMM paths, both written without a GPU to test on (see the README):
//   - where cuBLASLt's int8 alignment rules hold (M > 16, K and N multiples
//     of 8), at::_int_mm (cuBLASLt, int8 x int8 -> int32 on tensor cores),
//     uint8 activations entering as x - 128 (a bit flip) with 128 * w_sum
//     added back, then an epilogue kernel;
//   - otherwise a plain shared-memory tiled kernel on CUDA cores (int32
//     multiply-adds) with the epilogue fused: the correct fallback.
// Nothing here has been timed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "../checked_values.h"
#include "../checks.h"
#include "../quant_math.h"
#include "common.cuh"

namespace torch_quant::cuda {

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_impl(const char* op,
                                                                      const at::Tensor& x,
                                                                      Mode mode, int64_t bits);

namespace {

constexpr int kTile = 16;  // outputs per block side
constexpr int kTk = 32;    // k per shared-memory step

// y[m, n] = epilogue(sum_k a[m, k] * w[n, k]) for a tile of 16 x 16 outputs,
// one per thread. x_scale / x_zp have one value (per_row false) or M.
template <typename A, typename Out>
__global__ void linear_kernel(const A* __restrict__ a, const int8_t* __restrict__ w, int64_t M,
                              int64_t N, int64_t K, const float* __restrict__ x_scale,
                              const int32_t* __restrict__ x_zp, bool per_row,
                              const float* __restrict__ w_scale, bool per_channel,
                              const int32_t* __restrict__ w_sum,
                              const float* __restrict__ bias, Out* __restrict__ y) {
  __shared__ int32_t a_s[kTile][kTk + 1];
  __shared__ int32_t w_s[kTile][kTk + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTile + tx;
  const int64_t m = blockIdx.y * int64_t{kTile} + ty;
  const int64_t n = blockIdx.x * int64_t{kTile} + tx;
  int32_t acc = 0;  // exact: linear.cpp's K limit keeps |sum| < 2^31
  for (int64_t k0 = 0; k0 < K; k0 += kTk) {
    // 256 threads load 16 x 32 values of each operand, two each.
    for (int e = tid; e < kTile * kTk; e += kTile * kTile) {
      const int r = e / kTk, c = e % kTk;
      const int64_t k = k0 + c, am = blockIdx.y * int64_t{kTile} + r,
                    wn = blockIdx.x * int64_t{kTile} + r;
      a_s[r][c] = (am < M && k < K) ? static_cast<int32_t>(a[am * K + k]) : 0;
      w_s[r][c] = (wn < N && k < K) ? static_cast<int32_t>(w[wn * K + k]) : 0;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kTk; ++c) acc += a_s[ty][c] * w_s[tx][c];
    __syncthreads();
  }
  if (m < M && n < N) {
    const int64_t i = per_row ? m : 0, j = per_channel ? n : 0;
    float v = linear_epilogue(acc, x_zp[i], w_sum == nullptr ? 0 : w_sum[n], x_scale[i],
                              w_scale[j]);
    if (bias != nullptr) v = __fadd_rn(v, bias[n]);
    y[m * N + n] = static_cast<Out>(v);
  }
}

// y[m, n] = epilogue(dot[m, n] + shift * w_sum[n]) over an int32 [M, N]
// product from cuBLASLt; shift = 128 when uint8 activations went in as x - 128.
template <typename Out>
__global__ void epilogue_kernel(const int32_t* __restrict__ dot, int64_t M, int64_t N,
                                uint32_t shift, const float* __restrict__ x_scale,
                                const int32_t* __restrict__ x_zp, bool per_row,
                                const float* __restrict__ w_scale, bool per_channel,
                                const int32_t* __restrict__ w_sum,
                                const float* __restrict__ bias, Out* __restrict__ y) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < M * N;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t m = e / N, n = e % N;
    const int32_t ws = w_sum == nullptr ? 0 : w_sum[n];
    // wrapping int32 arithmetic, exact in the end (the true sum fits)
    const int32_t d = static_cast<int32_t>(static_cast<uint32_t>(dot[e]) +
                                           shift * static_cast<uint32_t>(ws));
    const int64_t i = per_row ? m : 0, j = per_channel ? n : 0;
    float v = linear_epilogue(d, x_zp[i], ws, x_scale[i], w_scale[j]);
    if (bias != nullptr) v = __fadd_rn(v, bias[n]);
    y[e] = static_cast<Out>(v);
  }
}

// cuBLASLt's int8 GEMM (through at::_int_mm) needs these.
bool int_mm_fits(int64_t M, int64_t N, int64_t K) {
  return M > 16 && K > 0 && K % 8 == 0 && N % 8 == 0;
}

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

// The shared GEMM + epilogue on device tensors: x_q [M, K] codes, x_scale
// float32 / x_zp int32 with 1 or M values, w_scale float32 1 or N values.
at::Tensor linear(const at::Tensor& x_q, const at::Tensor& x_scale, const at::Tensor& x_zp,
                  bool need_sums, const at::Tensor& w, const std::optional<at::Tensor>& w_sum,
                  const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                  std::vector<int64_t> out_shape, at::ScalarType out_dtype) {
  const int64_t K = w.size(1), N = w.size(0);
  const int64_t M = K == 0 ? c10::multiply_integers(x_q.sizes().slice(0, x_q.dim() - 1))
                           : x_q.numel() / K;
  at::Tensor y = at::empty(out_shape, x_q.options().dtype(out_dtype));
  if (M == 0 || N == 0) return y;
  TORCH_CHECK((M + kTile - 1) / kTile <= 65535, "torch_quant: more than ",
              int64_t{65535} * kTile, " rows are not supported on CUDA yet");
  const bool a_signed = x_q.scalar_type() == at::kChar;
  const bool tensor_cores = int_mm_fits(M, N, K);
  // uint8 activations on the cuBLASLt path enter as x - 128: w_sum takes it back.
  need_sums = need_sums || (tensor_cores && !a_signed);
  at::Tensor sums;
  if (need_sums) {
    sums = w_sum.has_value() ? w_sum->to(at::kInt).contiguous() : w.sum(1, /*keepdim=*/false, at::kInt);
  }
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  if (tensor_cores) {
    const at::Tensor a2 = x_q.reshape({M, K});
    const at::Tensor a8 = a_signed ? a2 : at::bitwise_xor(a2, 128).view(at::kChar);
    const at::Tensor dot = at::_int_mm(a8, w.t());  // [M, N] int32
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "epilogue", [&] {
      epilogue_kernel<<<grid_for(M * N), kBlock, 0, stream()>>>(
          dot.const_data_ptr<int32_t>(), M, N, a_signed ? 0u : 128u,
          x_scale.const_data_ptr<float>(), x_zp.const_data_ptr<int32_t>(), x_scale.numel() != 1,
          w_scale.const_data_ptr<float>(), w_scale.numel() != 1,
          need_sums ? sums.const_data_ptr<int32_t>() : nullptr,
          bias.has_value() ? b.const_data_ptr<float>() : nullptr,
          y.mutable_data_ptr<scalar_t>());
    });
    check_launch();
    return y;
  }
  const dim3 grid(static_cast<unsigned>((N + kTile - 1) / kTile),
                  static_cast<unsigned>((M + kTile - 1) / kTile));
  const dim3 block(kTile, kTile);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "linear", [&] {
    using Out = scalar_t;
    const auto launch = [&](const auto* a) {
      linear_kernel<<<grid, block, 0, stream()>>>(
          a, w.const_data_ptr<int8_t>(), M, N, K, x_scale.const_data_ptr<float>(),
          x_zp.const_data_ptr<int32_t>(), x_scale.numel() != 1, w_scale.const_data_ptr<float>(),
          w_scale.numel() != 1, need_sums ? sums.const_data_ptr<int32_t>() : nullptr,
          bias.has_value() ? b.const_data_ptr<float>() : nullptr, y.mutable_data_ptr<Out>());
    };
    if (x_q.scalar_type() == at::kChar) {
      launch(x_q.const_data_ptr<int8_t>());
    } else {
      launch(x_q.const_data_ptr<uint8_t>());
    }
  });
  check_launch();
  return y;
}

at::Tensor quantized_linear_cuda(const at::Tensor& x_q, const at::Tensor& x_scale,
                                 const at::Tensor& x_zero_point, const at::Tensor& w_q,
                                 const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& w_sum,
                                 std::optional<at::ScalarType> out_dtype) {
  // Values checked once per tensor version (checked_values.h).
  const QuantizedLinearArgs args = check_quantized_linear_args(
      "torch_quant.quantized_linear", x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum,
      out_dtype, ValueCheck::Once);
  const c10::cuda::CUDAGuard guard(x_q.device());
  const at::Tensor x = x_q.contiguous();
  return linear(x, x_scale.to(at::kFloat).contiguous(), x_zero_point.to(at::kInt).contiguous(),
                args.any_zero_point, w_q.contiguous(), w_sum, w_scale.to(at::kFloat).contiguous(),
                bias, output_shape(x, args.N), args.out_dtype);
}

at::Tensor dynamic_quantized_linear_cuda(const at::Tensor& x_in, const at::Tensor& w_q,
                                         const at::Tensor& w_scale,
                                         const std::optional<at::Tensor>& bias,
                                         const std::optional<at::Tensor>& w_sum,
                                         std::string_view act_mode) {
  constexpr const char* op = "torch_quant.dynamic_quantized_linear";
  const Mode mode = parse_mode(op, act_mode, "act_mode");
  check_float_input(op, "x", x_in);
  TORCH_CHECK(x_in.dim() >= 1, op, ": x must have shape [*, K], got a 0-dim tensor");
  const int64_t N = check_linear_weight(op, x_in, w_q, w_scale, bias, w_sum);
  check_scale_values_once(op, w_scale, "w_scale");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto [q, scale, zp] = quantize_per_token_impl(op, x_in, mode, 8);
  // Symmetric rows have zero point 0: w_sum is only needed for asymmetric.
  return linear(q, scale.reshape({-1}), zp.reshape({-1}), mode == Mode::Asymmetric,
                w_q.contiguous(), w_sum, w_scale.to(at::kFloat).contiguous(), bias,
                output_shape(x_in, N), x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CUDA, m) {
  m.impl("quantized_linear", &quantized_linear_cuda);
  m.impl("dynamic_quantized_linear", &dynamic_quantized_linear_cuda);
}

}  // namespace torch_quant::cuda
