// Device-side value checks (value_checks.h says why they run on the device).
#include "value_checks.h"

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cstdio>

#include "common.cuh"

namespace torch_quant::cuda {
namespace {

__device__ const char* arg_name(Arg arg) {
  switch (arg) {
    case Arg::Scale: return "scale";
    case Arg::ZeroPoint: return "zero_point";
    case Arg::XScale: return "x_scale";
    case Arg::XZeroPoint: return "x_zero_point";
    case Arg::WScale: return "w_scale";
    case Arg::Smooth: return "smooth";
    case Arg::WSum: return "w_sum";
  }
  return "?";
}

__global__ void scale_check_kernel(const float* __restrict__ s, int64_t n, Arg arg) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float v = s[i];
    if (!(v > 0.0f && is_finite(v) && is_finite(1.0f / v))) {
      printf("torch_quant: %s must be finite and > 0 (with a finite reciprocal), got %g at "
             "index %lld\n", arg_name(arg), v, static_cast<long long>(i));
      CUDA_KERNEL_ASSERT_MSG(false, "torch_quant: invalid scale or smoothing factor (see above)");
    }
  }
}

__global__ void zero_point_check_kernel(const int64_t* __restrict__ z, int64_t n, int64_t lo,
                                        int64_t hi, Arg arg) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t v = z[i];
    if (v < lo || v > hi) {
      printf("torch_quant: %s must be in [%lld, %lld], got %lld at index %lld\n", arg_name(arg),
             static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(v),
             static_cast<long long>(i));
      CUDA_KERNEL_ASSERT_MSG(false, "torch_quant: zero point out of range (see above)");
    }
  }
}

__global__ void weight_sum_check_kernel(const int32_t* __restrict__ given,
                                        const int32_t* __restrict__ sums, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (given[i] != sums[i]) {
      printf("torch_quant: w_sum must hold the row sums of w_q, but w_sum[%lld] = %d and the "
             "row sums to %d\n", static_cast<long long>(i), given[i], sums[i]);
      CUDA_KERNEL_ASSERT_MSG(false, "torch_quant: wrong w_sum (see above)");
    }
  }
}

}  // namespace

void check_scales_on_device(const at::Tensor& scale, Arg arg) {
  const int64_t n = scale.numel();
  if (n == 0) return;
  scale_check_kernel<<<grid_for(n), kBlock, 0, stream()>>>(scale.const_data_ptr<float>(), n, arg);
  check_launch();
}

void check_zero_points_on_device(const at::Tensor& zero_point, QRange r, Arg arg) {
  const int64_t n = zero_point.numel();
  if (n == 0) return;
  zero_point_check_kernel<<<grid_for(n), kBlock, 0, stream()>>>(
      zero_point.const_data_ptr<int64_t>(), n, r.qmin, r.qmax, arg);
  check_launch();
}

void check_weight_sums_on_device(const at::Tensor& w_sum, const at::Tensor& sums) {
  const int64_t n = sums.numel();
  if (n == 0) return;
  const at::Tensor given = w_sum.contiguous();
  weight_sum_check_kernel<<<grid_for(n), kBlock, 0, stream()>>>(
      given.const_data_ptr<int32_t>(), sums.const_data_ptr<int32_t>(), n);
  check_launch();
}

}  // namespace torch_quant::cuda
