// Value checks of the caller's scales, zero points and weight sums on CUDA
// (docs/semantics.md, "Errors"), done on the device: no call waits for the
// GPU to read values back, and calls can be captured into CUDA graphs.
//
// Each check is one small kernel over the argument's values that stops with
// a device-side assertion when a value is invalid, after printing the op's
// argument, the index and the value. CUDA reports the assertion at the next
// synchronisation as "device-side assert triggered"; the process's CUDA
// context is unusable afterwards, as after PyTorch's own device-side index
// checks. Parameters made by our ops (choose_qparams, quantize_per_token)
// and those QuantLinear loads (QuantLinear.check_state) are valid by
// construction or checked where they are made, with a Python error.
//
// The CPU ops read the values instead and raise at once (checks.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "../quant_math.h"

namespace torch_quant::cuda {

// Which argument a check is about (its name in the printed message).
enum class Arg : int { Scale, ZeroPoint, XScale, XZeroPoint, WScale, Smooth, WSum };

// scale: float32, contiguous, on the device: every value finite and > 0 with
// a finite reciprocal.
void check_scales_on_device(const at::Tensor& scale, Arg arg);
// zero_point: int64, contiguous, on the device: every value in [r.qmin, r.qmax].
void check_zero_points_on_device(const at::Tensor& zero_point, QRange r, Arg arg);
// w_sum (int32, any layout) equals sums (int32 [N], contiguous) element by element.
void check_weight_sums_on_device(const at::Tensor& w_sum, const at::Tensor& sums);

}  // namespace torch_quant::cuda
