#include "checks.h"

#include "cpu/packed.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/ATen.h>

namespace torch_quant {

std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

Mode parse_mode(const char* op, std::string_view mode, const char* name) {
  if (mode == "symmetric") return Mode::Symmetric;
  if (mode == "asymmetric") return Mode::Asymmetric;
  TORCH_CHECK(false, op, ": ", name, " must be 'symmetric' or 'asymmetric', got '",
              std::string(mode), "'");
}

void check_bits(const char* op, int64_t bits) {
  TORCH_CHECK(bits >= 2 && bits <= 8, op, ": bits must be in [2, 8], got ", bits);
}

void check_float_input(const char* op, const char* name, const at::Tensor& x) {
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", dtype_name(t));
}

int64_t normalize_axis(const char* op, const at::Tensor& x, int64_t axis) {
  const int64_t dim = x.dim();
  TORCH_CHECK(axis >= -dim && axis < dim && dim > 0, op, ": axis ", axis,
              " is out of range for a tensor of ", dim, " dimension(s)");
  return axis < 0 ? axis + dim : axis;
}

ParamLayout channel_layout(const at::Tensor& x, int64_t axis) {
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.size(d);
  for (int64_t d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
  return {outer, x.size(axis), inner};
}

ParamLayout check_qparams(const char* op, const char* x_name, const at::Tensor& x,
                          const at::Tensor& scale, const at::Tensor& zero_point,
                          std::optional<int64_t> axis, const char* scale_name,
                          const char* zp_name) {
  TORCH_CHECK(scale.is_floating_point(), op, ": ", scale_name,
              " must be a floating-point tensor, got ", dtype_name(scale.scalar_type()));
  TORCH_CHECK(!c10::isFloatingType(zero_point.scalar_type()) &&
                  !c10::isComplexType(zero_point.scalar_type()) &&
                  zero_point.scalar_type() != at::kBool,
              op, ": ", zp_name, " must be an integer tensor, got ",
              dtype_name(zero_point.scalar_type()));
  TORCH_CHECK(scale.device() == x.device(), op, ": ", scale_name, " is on ", scale.device(),
              " but ", x_name, " is on ", x.device());
  TORCH_CHECK(zero_point.device() == x.device(), op, ": ", zp_name, " is on ",
              zero_point.device(), " but ", x_name, " is on ", x.device());
  TORCH_CHECK(scale.sizes() == zero_point.sizes(), op, ": ", scale_name, " and ", zp_name,
              " must have the same shape, got ", scale.sizes(), " and ", zero_point.sizes());
  TORCH_CHECK(scale.numel() > 0 || x.numel() == 0, op, ": ", scale_name, " is empty but ",
              x_name, " has ", x.numel(), " elements");
  if (axis.has_value()) {
    const int64_t k = normalize_axis(op, x, *axis);
    TORCH_CHECK(scale.dim() == 1 && scale.size(0) == x.size(k), op, ": with axis=", *axis,
                " ", scale_name, " must have shape [", x.size(k), "] (", x_name, ".size(",
                *axis, ")), got ", scale.sizes());
    return channel_layout(x, k);
  }
  if (scale.numel() == 1) return {1, 1, x.numel()};
  const bool per_token =
      x.dim() >= 1 && scale.sizes() == x.sizes().slice(0, x.dim() - 1);
  TORCH_CHECK(per_token, op, ": with axis=None ", scale_name,
              " must have one element (per tensor) or the shape ", x_name,
              ".shape[:-1] (per token), got ", scale.sizes(), " for ", x_name, " of shape ",
              x.sizes());
  const int64_t k = x.size(-1);
  return {1, k == 0 ? 0 : x.numel() / k, k};
}

at::Tensor checked_scale_values(const char* op, const at::Tensor& scale, const char* name) {
  at::Tensor out = float_on_cpu(scale).contiguous();
  const float* s = out.const_data_ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    TORCH_CHECK(s[i] > 0.0f && is_finite(s[i]) && is_finite(1.0f / s[i]), op, ": ", name,
                " must be finite and > 0 (with a finite reciprocal), got ", s[i],
                out.dim() > 0 ? " at index " + std::to_string(i) : std::string());
  }
  return out;
}

at::Tensor checked_zero_point_values(const char* op, const at::Tensor& zero_point, QRange range,
                                     const char* name) {
  at::Tensor z = zero_point.to(at::kCPU, at::kLong).contiguous();
  const int64_t* zp = z.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < z.numel(); ++i) {
    TORCH_CHECK(zp[i] >= range.qmin && zp[i] <= range.qmax, op, ": ", name, " must be in [",
                range.qmin, ", ", range.qmax, "], got ", zp[i],
                z.dim() > 0 ? " at index " + std::to_string(i) : std::string());
  }
  return z;
}

std::pair<at::Tensor, at::Tensor> checked_qparam_values(const char* op, const at::Tensor& scale,
                                                        const at::Tensor& zero_point,
                                                        QRange range, const char* scale_name,
                                                        const char* zp_name) {
  at::Tensor s = checked_scale_values(op, scale, scale_name);
  return {s, checked_zero_point_values(op, zero_point, range, zp_name)};
}

void check_pack_weight_args(const char* op, const at::Tensor& w_q) {
  TORCH_CHECK(w_q.scalar_type() == at::kChar, op, ": w_q must be int8 (symmetric), got ",
              dtype_name(w_q.scalar_type()));
  TORCH_CHECK(w_q.dim() == 2, op, ": w_q must have shape [N, K], got ", w_q.sizes());
  TORCH_CHECK(w_q.size(1) <= kMaxLinearK, op, ": K = ", w_q.size(1), " is larger than ",
              kMaxLinearK, ", the largest K whose int32 accumulator is exact");
}

void check_unpack_weight_args(const char* op, const at::Tensor& w_packed, int64_t K) {
  TORCH_CHECK(w_packed.scalar_type() == at::kChar, op, ": w_packed must be int8, got ",
              dtype_name(w_packed.scalar_type()));
  TORCH_CHECK(K >= 0 && K <= kMaxLinearK, op, ": K must be in [0, ", kMaxLinearK, "], got ", K);
  TORCH_CHECK(w_packed.dim() == 3 && w_packed.size(1) == cpu::packed_rows(K) &&
                  w_packed.size(2) == 4,
              op, ": w_packed must have shape [N, ", cpu::packed_rows(K),
              ", 4] (pack_weight of an [N, ", K, "] weight), got ", w_packed.sizes());
}

void check_plain_weight(const char* op, const at::Tensor& w_q) {
  TORCH_CHECK(!is_packed_weight(w_q), op, ": a packed w_q (pack_weight) is a CPU layout; on ",
              w_q.device(), " pass the plain [N, K] weight (unpack_weight; QuantLinear.to() "
              "converts its own)");
}

int64_t check_linear_weight(const char* op, const at::Tensor& x, const at::Tensor& w_q,
                            const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& w_sum) {
  TORCH_CHECK(w_q.scalar_type() == at::kChar, op, ": w_q must be int8 (symmetric), got ",
              dtype_name(w_q.scalar_type()));
  TORCH_CHECK(x.dim() >= 1, op, ": the activations must have shape [*, K], got a 0-dim tensor");
  const int64_t N = w_q.dim() >= 1 ? w_q.size(0) : 0, K = x.size(-1);
  if (is_packed_weight(w_q)) {
    TORCH_CHECK(w_q.size(1) == cpu::packed_rows(K) && w_q.size(2) == 4, op,
                ": K mismatch: the packed w_q has shape ", w_q.sizes(),
                " (from pack_weight of an [N, K] weight: [N, ceil(K / 4) + 2, 4]) but the "
                "activations have shape ", x.sizes());
    TORCH_CHECK(!w_sum.has_value(), op,
                ": w_sum must be None with a packed w_q (it holds its own column sums)");
  } else {
    TORCH_CHECK(w_q.dim() == 2, op,
                ": w_q must have shape [N, K] or be packed by pack_weight, got ", w_q.sizes());
    TORCH_CHECK(w_q.size(1) == K, op, ": K mismatch: w_q has shape ", w_q.sizes(),
                " but the activations have shape ", x.sizes());
  }
  TORCH_CHECK(K <= kMaxLinearK, op, ": K = ", K, " is larger than ", kMaxLinearK,
              ", the largest K whose int32 accumulator is exact");
  const auto same_device = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
                " but the activations are on ", x.device());
  };
  same_device("w_q", w_q);
  same_device("w_scale", w_scale);
  TORCH_CHECK(w_scale.is_floating_point(), op,
              ": w_scale must be a floating-point tensor, got ", dtype_name(w_scale.scalar_type()));
  TORCH_CHECK(w_scale.numel() == 1 || (w_scale.dim() == 1 && w_scale.size(0) == N), op,
              ": w_scale must have one element or shape [", N, "], got ", w_scale.sizes());
  if (bias.has_value()) {
    same_device("bias", *bias);
    TORCH_CHECK(bias->is_floating_point(), op, ": bias must be a floating-point tensor, got ",
                dtype_name(bias->scalar_type()));
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must have shape [", N,
                "], got ", bias->sizes());
  }
  if (w_sum.has_value()) {
    same_device("w_sum", *w_sum);
    TORCH_CHECK(w_sum->scalar_type() == at::kInt, op, ": w_sum must be int32, got ",
                dtype_name(w_sum->scalar_type()));
    TORCH_CHECK(w_sum->dim() == 1 && w_sum->size(0) == N, op, ": w_sum must have shape [", N,
                "], got ", w_sum->sizes());
  }
  return N;
}

std::vector<int64_t> linear_output_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

void check_weight_sums(const char* op, const at::Tensor& w_sum, const int32_t* actual) {
  const at::Tensor given = w_sum.contiguous();
  const int32_t* g = given.const_data_ptr<int32_t>();
  const int64_t N = given.numel();
  int64_t first = -1, wrong = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (g[n] != actual[n]) {
      if (first < 0) first = n;
      ++wrong;
    }
  }
  TORCH_CHECK(wrong == 0, op, ": w_sum must hold the row sums of w_q (sum over k of w_q[n, k]), "
              "but w_sum[", first, "] = ", g[std::max<int64_t>(first, 0)], " and row ", first,
              " sums to ", actual[std::max<int64_t>(first, 0)], " (", wrong, " wrong value(s)); "
              "pass w_sum=None to have it computed, or pack the weight (pack_weight), which "
              "holds its sums");
}

void check_linear_activation(const char* op, const at::Tensor& x_q,
                             const at::Tensor& x_scale, const at::Tensor& x_zero_point) {
  const auto code = x_q.scalar_type();
  TORCH_CHECK(code == at::kChar || code == at::kByte, op,
              ": x_q must be int8 (symmetric) or uint8 (asymmetric), got ", dtype_name(code));
  TORCH_CHECK(x_q.dim() >= 1, op, ": x_q must have shape [*, K], got a 0-dim tensor");
  // One pair, or one per row: both layouts are what quantized_linear takes.
  check_qparams(op, "x_q", x_q, x_scale, x_zero_point, std::nullopt, "x_scale",
                "x_zero_point");
}

ChooseQparamsArgs check_choose_qparams_args(const char* op, const at::Tensor& x,
                                            std::string_view mode_name,
                                            std::optional<int64_t> axis, int64_t bits) {
  const Mode mode = parse_mode(op, mode_name);
  check_bits(op, bits);
  check_float_input(op, "x", x);
  const ParamLayout layout = axis.has_value() ? channel_layout(x, normalize_axis(op, x, *axis))
                                              : ParamLayout{1, 1, x.numel()};
  return {mode, layout};
}

Mode check_quantize_per_token_args(const char* op, const at::Tensor& x,
                                   std::string_view mode_name, int64_t bits) {
  const Mode mode = parse_mode(op, mode_name);
  check_bits(op, bits);
  check_float_input(op, "x", x);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension, got a 0-dim tensor");
  return mode;
}

QuantizeArgs check_quantize_args(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                 const at::Tensor& zero_point, std::string_view mode_name,
                                 std::optional<int64_t> axis, int64_t bits, ValueCheck values) {
  const Mode mode = parse_mode(op, mode_name);
  check_bits(op, bits);
  check_float_input(op, "x", x);
  const ParamLayout layout = check_qparams(op, "x", x, scale, zero_point, axis);
  const QRange range = qrange(mode, static_cast<int>(bits));
  if (values == ValueCheck::Device) return {mode, range, layout, at::Tensor(), at::Tensor()};
  auto [s, z] = checked_qparam_values(op, scale, zero_point, range);
  return {mode, range, layout, std::move(s), std::move(z)};
}

DequantizeArgs check_dequantize_args(const char* op, const at::Tensor& q, const at::Tensor& scale,
                                     const at::Tensor& zero_point, std::optional<int64_t> axis,
                                     std::optional<at::ScalarType> dtype, ValueCheck values) {
  const auto code = q.scalar_type();
  TORCH_CHECK(code == at::kChar || code == at::kByte, op,
              ": q must be int8 (symmetric) or uint8 (asymmetric), got ", dtype_name(code));
  const at::ScalarType out_dtype = dtype.value_or(at::kFloat);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16,
              op, ": dtype must be float32, float16 or bfloat16, got ", dtype_name(out_dtype));
  const ParamLayout layout = check_qparams(op, "q", q, scale, zero_point, axis);
  const QRange range = code == at::kChar ? QRange{-128, 127} : QRange{0, 255};
  if (values == ValueCheck::Device) return {out_dtype, layout, at::Tensor(), at::Tensor()};
  auto [s, z] = checked_qparam_values(op, scale, zero_point, range);
  return {out_dtype, layout, std::move(s), std::move(z)};
}

QuantizedLinearArgs check_quantized_linear_args(
    const char* op, const at::Tensor& x_q, const at::Tensor& x_scale,
    const at::Tensor& x_zero_point, const at::Tensor& w_q, const at::Tensor& w_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_sum,
    std::optional<at::ScalarType> out_dtype, ValueCheck values) {
  check_linear_activation(op, x_q, x_scale, x_zero_point);
  const int64_t N = check_linear_weight(op, x_q, w_q, w_scale, bias, w_sum);
  const at::ScalarType dtype = out_dtype.value_or(at::kFloat);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op,
              ": out_dtype must be float32, float16 or bfloat16, got ", dtype_name(dtype));
  const bool a_signed = x_q.scalar_type() == at::kChar;
  const QRange range = a_signed ? QRange{-128, 127} : QRange{0, 255};
  if (values == ValueCheck::Device) {
    return {N, dtype, a_signed, at::Tensor(), at::Tensor(), at::Tensor(), true};
  }
  const auto [xs, xz64] =
      checked_qparam_values(op, x_scale, x_zero_point, range, "x_scale", "x_zero_point");
  at::Tensor ws = checked_scale_values(op, w_scale, "w_scale");
  const at::Tensor xz = xz64.to(at::kInt);
  const int32_t* zp = xz.const_data_ptr<int32_t>();
  const bool any_zp = std::any_of(zp, zp + xz.numel(), [](int32_t z) { return z != 0; });
  return {N, dtype, a_signed, xs, xz, std::move(ws), any_zp};
}

void check_hadamard_block(const char* op, int64_t hadamard_block, int64_t K) {
  TORCH_CHECK(hadamard_block == 0 || (hadamard_block >= 2 &&
                                      (hadamard_block & (hadamard_block - 1)) == 0 &&
                                      K % hadamard_block == 0),
              op, ": hadamard_block must be 0 or a power of two >= 2 that divides K = ", K,
              ", got ", hadamard_block);
}

DynamicLinearArgs check_dynamic_quantized_linear_args(
    const char* op, const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& w_sum,
    std::string_view act_mode, const std::optional<at::Tensor>& smooth, int64_t hadamard_block,
    ValueCheck values) {
  const Mode mode = parse_mode(op, act_mode, "act_mode");
  check_float_input(op, "x", x);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have shape [*, K], got a 0-dim tensor");
  const int64_t N = check_linear_weight(op, x, w_q, w_scale, bias, w_sum);
  const int64_t K = x.size(-1);
  check_hadamard_block(op, hadamard_block, K);
  if (smooth.has_value()) {
    const at::Tensor& s = *smooth;
    TORCH_CHECK(at::isFloatingType(s.scalar_type()), op,
                ": smooth must be a floating tensor, got ", dtype_name(s.scalar_type()));
    TORCH_CHECK(s.dim() == 1 && s.size(0) == x.size(-1), op, ": smooth must have shape [K] = [",
                x.size(-1), "] (one factor per input channel), got ", s.sizes());
    TORCH_CHECK(s.device() == x.device(), op, ": smooth must be on x's device (", x.device(),
                "), got ", s.device());
  }
  if (values == ValueCheck::Device) {
    return {mode, N, at::Tensor(),
            smooth.has_value() ? smooth->to(at::kFloat).contiguous() : at::Tensor()};
  }
  return {mode, N, checked_scale_values(op, w_scale, "w_scale"),
          smooth.has_value() ? checked_scale_values(op, *smooth, "smooth") : at::Tensor()};
}

}  // namespace torch_quant
