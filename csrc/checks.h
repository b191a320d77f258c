// Argument checks shared by the CPU and CUDA implementations of every op, so
// that both reject the same inputs with the same messages. Each message starts
// with the op's qualified name ("torch_quant.quantize: ...") and names the
// argument and what was expected.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>

#include "quant_math.h"

namespace torch_quant {

// "symmetric" | "asymmetric".
Mode parse_mode(const char* op, std::string_view mode);

// 2 <= bits <= 8.
void check_bits(const char* op, int64_t bits);

// x is float32, float16 or bfloat16.
void check_float_input(const char* op, const char* name, const at::Tensor& x);

// Wraps a possibly negative axis into [0, x.dim()).
int64_t normalize_axis(const char* op, const at::Tensor& x, int64_t axis);

// How a (scale, zero_point) pair lines up with the data: the data, made
// contiguous, is viewed as [outer, channels, inner] and element
// (o, c, i) uses pair c.
//   per tensor:  scale has one element            -> [1, 1, numel]
//   per token:   scale.shape == x.shape[:-1]      -> [1, rows, x.size(-1)]
//   per channel: axis = k, scale.shape == [x.size(k)] -> [prod(before k), x.size(k), prod(after k)]
struct ParamLayout {
  int64_t outer;
  int64_t channels;
  int64_t inner;
};

// Checks the dtypes, devices and shapes of scale / zero_point against x
// (named `x_name` in messages) and returns their layout.
ParamLayout check_qparams(const char* op, const char* x_name, const at::Tensor& x,
                          const at::Tensor& scale, const at::Tensor& zero_point,
                          std::optional<int64_t> axis);

// The layout of per-channel parameters along `axis` (already normalised).
ParamLayout channel_layout(const at::Tensor& x, int64_t axis);

// Checks the values: every scale finite and > 0 with a finite reciprocal, every
// zero point in [qmin, qmax]. Takes contiguous float32 / int64 CPU tensors
// (int64 so that an out-of-range int64 zero point cannot wrap into range).
void check_qparam_values(const char* op, const at::Tensor& scale,
                         const at::Tensor& zero_point, QRange range);

}  // namespace torch_quant
