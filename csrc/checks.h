// Argument checks shared by the CPU and CUDA implementations of every op, so
// that both reject the same inputs with the same messages. Each message starts
// with the op's qualified name ("torch_quant.quantize: ...") and names the
// argument and what was expected.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "quant_math.h"

namespace torch_quant {

// A dtype as Python prints it ("torch.int32"): the messages are word for word
// those of the fake kernels (torch_quant/fake_kernels.py).
std::string dtype_name(at::ScalarType t);

// t as float32 on the CPU: t itself when it already is, without the
// dispatcher call of t.to() (a call's prologue is a visible share of a small
// layer's decode step).
inline at::Tensor float_on_cpu(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.device().is_cpu() ? t : t.to(at::kCPU, at::kFloat);
}

// "symmetric" | "asymmetric"; `name` is the argument's name in messages.
Mode parse_mode(const char* op, std::string_view mode, const char* name = "mode");

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
                          std::optional<int64_t> axis, const char* scale_name = "scale",
                          const char* zp_name = "zero_point");

// The layout of per-channel parameters along `axis` (already normalised).
ParamLayout channel_layout(const at::Tensor& x, int64_t axis);

// scale as a contiguous float32 CPU tensor, after checking that every value
// is finite and > 0 with a finite reciprocal.
at::Tensor checked_scale_values(const char* op, const at::Tensor& scale,
                                const char* name = "scale");

// zero_point as a contiguous int64 CPU tensor, after checking every value in
// [qmin, qmax] (in int64, so that an out-of-range int64 zero point cannot wrap
// into range).
at::Tensor checked_zero_point_values(const char* op, const at::Tensor& zero_point, QRange range,
                                     const char* name = "zero_point");

// scale and zero_point as contiguous float32 / int64 CPU tensors, after
// checking the scales as above and every zero point in [qmin, qmax] (in int64,
// so that an out-of-range int64 zero point cannot wrap into range).
std::pair<at::Tensor, at::Tensor> checked_qparam_values(const char* op, const at::Tensor& scale,
                                                        const at::Tensor& zero_point,
                                                        QRange range,
                                                        const char* scale_name = "scale",
                                                        const char* zp_name = "zero_point");

// Largest K whose int32 accumulator sum_k (x_q - x_zero_point) * w_q is exact
// for every valid input: |x_q - x_zero_point| <= 255 and |w_q| <= 128.
constexpr int64_t kMaxLinearK = ((int64_t{1} << 31) - 1) / (255 * 128);  // 65793

// w_q of pack_weight: int8 [N, K], K <= kMaxLinearK.
void check_pack_weight_args(const char* op, const at::Tensor& w_q);
// w_packed of unpack_weight: int8 [N, ceil(K / 4) + 2, 4] (cpu/packed.h).
void check_unpack_weight_args(const char* op, const at::Tensor& w_packed, int64_t K);

// Whether a linear op's w_q is a packed weight (pack_weight's [N, G, 4])
// rather than a plain [N, K] one.
inline bool is_packed_weight(const at::Tensor& w_q) { return w_q.dim() == 3; }
// The CUDA kernels read plain weights only: a packed one is a CPU layout.
void check_plain_weight(const char* op, const at::Tensor& w_q);

// The weight-side arguments of quantized_linear / dynamic_quantized_linear
// against activations x of shape [*, K]: w_q int8, either plain [N, K] or
// packed [N, ceil(K / 4) + 2, 4] (then w_sum must be absent: the packed
// weight holds its sums), w_scale floating with one element or [N], bias
// floating [N] or absent, w_sum int32 [N] or absent, all on x's device,
// K <= kMaxLinearK. Returns N.
int64_t check_linear_weight(const char* op, const at::Tensor& x, const at::Tensor& w_q,
                            const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& w_sum);

// The shape of a linear op's output: the activations' shape with the last
// dim (K) replaced by N. One rule for the CPU and CUDA kernels.
std::vector<int64_t> linear_output_shape(const at::Tensor& x, int64_t N);

// The values of w_sum (int32 [N], next to a plain [N, K] w_q on the CPU) are
// w_q's row sums, `actual` (N values): else an error naming the first wrong
// one. The CPU linear ops call it on every call that passes w_sum, with the
// sums their kernels take in the pass over the weight they make anyway
// (cpu/linear.cpp), so that no result ever depends on which sums a kernel
// read; a packed weight holds sums computed once by pack_weight and takes no
// w_sum.
void check_weight_sums(const char* op, const at::Tensor& w_sum, const int32_t* actual);

// The activation-side arguments of quantized_linear: x_q int8 or uint8 with at
// least one dim; x_scale floating and x_zero_point integer, both with one
// element or the shape x_q.shape[:-1].
void check_linear_activation(const char* op, const at::Tensor& x_q,
                             const at::Tensor& x_scale, const at::Tensor& x_zero_point);

// How check_*_args below check the values of the caller's scales and zero
// points (> 0 and finite, within [qmin, qmax]).
enum class ValueCheck {
  // Read them to the host and return them there: the CPU kernels use those.
  Read,
  // Leave them to the device (cuda/value_checks.h) and return no values: the
  // CUDA ops never wait for the GPU to read them back.
  Device,
};

// Every check of choose_qparams' arguments, shared by its CPU and CUDA
// kernels: mode, bits, x, axis; the layout of the parameters it returns.
struct ChooseQparamsArgs {
  Mode mode;
  ParamLayout layout;
};
ChooseQparamsArgs check_choose_qparams_args(const char* op, const at::Tensor& x,
                                            std::string_view mode, std::optional<int64_t> axis,
                                            int64_t bits);

// The same for quantize_per_token: mode, bits, x with at least one dim.
Mode check_quantize_per_token_args(const char* op, const at::Tensor& x, std::string_view mode,
                                   int64_t bits);

// Every check of quantize's arguments, shared by its CPU and CUDA kernels:
// mode, bits, x, the parameters' layout and values. With ValueCheck::Read,
// scale and zero_point are the values as contiguous float32 / int64 CPU
// tensors; with Device they are undefined.
struct QuantizeArgs {
  Mode mode;
  QRange range;
  ParamLayout layout;
  at::Tensor scale, zero_point;
};
QuantizeArgs check_quantize_args(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                 const at::Tensor& zero_point, std::string_view mode,
                                 std::optional<int64_t> axis, int64_t bits, ValueCheck values);

// The same for dequantize; out_dtype is `dtype` or float32.
struct DequantizeArgs {
  at::ScalarType out_dtype;
  ParamLayout layout;
  at::Tensor scale, zero_point;
};
DequantizeArgs check_dequantize_args(const char* op, const at::Tensor& q, const at::Tensor& scale,
                                     const at::Tensor& zero_point, std::optional<int64_t> axis,
                                     std::optional<at::ScalarType> dtype, ValueCheck values);

// The same for quantized_linear: N, the output dtype, whether x_q is int8,
// the checked x_scale (float32) and x_zero_point (int32) values and w_scale
// (float32) as CPU tensors (undefined with ValueCheck::Device), and whether any
// zero point may be non-zero (always with Device, which does not read them).
struct QuantizedLinearArgs {
  int64_t N;
  at::ScalarType out_dtype;
  bool a_signed;
  at::Tensor x_scale, x_zero_point, w_scale;
  bool any_zero_point;
};
QuantizedLinearArgs check_quantized_linear_args(
    const char* op, const at::Tensor& x_q, const at::Tensor& x_scale,
    const at::Tensor& x_zero_point, const at::Tensor& w_q, const at::Tensor& w_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_sum,
    std::optional<at::ScalarType> out_dtype, ValueCheck values);

// The same for dynamic_quantized_linear: act_mode, x, the weight side,
// w_scale's values and smooth (floating [K] on x's device, every value finite
// and > 0, like a scale). With ValueCheck::Read, w_scale and smooth are those
// values as float32 CPU tensors (smooth undefined when absent); with Device,
// w_scale is undefined and smooth is the argument as contiguous float32 on
// x's device. hadamard_block must be 0 (none) or a power of two >= 2 that
// divides K.
struct DynamicLinearArgs {
  Mode mode;
  int64_t N;
  at::Tensor w_scale;
  at::Tensor smooth;
};
DynamicLinearArgs check_dynamic_quantized_linear_args(
    const char* op, const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_sum,
    std::string_view act_mode, const std::optional<at::Tensor>& smooth, int64_t hadamard_block,
    ValueCheck values);

// hadamard_block is 0 (none) or a power of two >= 2 that divides K.
void check_hadamard_block(const char* op, int64_t hadamard_block, int64_t K);

}  // namespace torch_quant
