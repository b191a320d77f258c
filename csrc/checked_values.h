// Value checks of the caller's scales and zero points that do not read the
// same values twice.
//
// SPEC.md §3 asks every op to reject a scale <= 0 or non-finite and a zero
// point outside [qmin, qmax] with an error naming the argument. On a GPU that
// means copying the values to the host, which waits for the device. The CUDA
// ops check through this cache instead: a tensor version (tensor_version.h)
// whose values passed once is not read again, and the parameters made by
// choose_qparams / quantize_per_token are recorded as valid when they are
// made. So a model's scale buffers are read once, and a pipeline of our own
// ops never waits; only a tensor seen for the first time (or an inference
// tensor, which has no version counter) costs a copy to the host, which is
// refused with a clear error during a CUDA graph capture.
//
// Device-agnostic (it is exercised on CPU tensors by tests/test_checked_values.py);
// the messages are those of checks.h, which the first check calls.
#pragma once

#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

#include "quant_math.h"

namespace torch_quant {

// As checked_scale_values (checks.h), without returning the values.
void check_scale_values_once(const char* op, const at::Tensor& scale, const char* name);

// As checked_qparam_values' zero point check; returns the smallest and
// largest zero point ({0, 0} when there are none).
std::pair<int64_t, int64_t> check_zero_point_values_once(const char* op,
                                                         const at::Tensor& zero_point,
                                                         QRange range, const char* name);

// Records values known to be valid because our kernels computed them: scales
// finite and > 0, zero points within [lo, hi].
void remember_valid_scale(const at::Tensor& scale);
void remember_zero_point_bounds(const at::Tensor& zero_point, int64_t lo, int64_t hi);

void clear_checked_values();
// (tensors remembered now, host reads of values since the start).
std::pair<int64_t, int64_t> checked_values_info();

}  // namespace torch_quant
