// Gradients of the linear ops (docs/semantics.md, "Gradients"): the input's
// quantization is taken as the identity (straight-through), so the gradient
// with respect to x is that of the float layer whose weight is the
// dequantized one; the bias gets the output's gradient summed over rows; the
// integer weight and the quantization parameters get none.
//
// Registered under the Autograd key in C++ rather than with
// torch.library.register_autograd: a Python autograd kernel runs on every
// call made with grad mode on (torch.no_grad() included, where Hugging Face's
// generate() runs), ~3.4 us a call measured, a visible share of a decode step.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "checks.h"

namespace torch_quant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kGradX = "torch_quant.quantized_linear_grad_x";

// Each run of `block` values along the last dim times the Sylvester-order
// Hadamard matrix (unnormalised), by the butterfly stages of
// torch_quant/hadamard.py's hadamard_rows. The matrix is symmetric, so this is
// also the transpose the backward needs.
at::Tensor hadamard_rows(const at::Tensor& g, int64_t block) {
  at::Tensor v = g.reshape({-1, block});
  for (int64_t h = 1; h < block; h *= 2) {
    const at::Tensor pairs = v.view({v.size(0), block / (2 * h), 2, h});
    const at::Tensor a = pairs.select(2, 0);
    const at::Tensor c = pairs.select(2, 1);
    v = at::stack({a + c, a - c}, 2).reshape({-1, block});
  }
  return v.view(g.sizes());
}

at::Tensor unpack_weight(const at::Tensor& w_packed, int64_t K) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torch_quant::unpack_weight", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(w_packed, K);
}

// grad_out [..., N] -> grad_x [..., K]: grad_out @ (w * w_scale[:, None])
// rotated run by run when hadamard_block > 0, times smooth when given, in
// float32, returned in out_dtype (default grad_out's dtype).
at::Tensor quantized_linear_grad_x(const at::Tensor& grad_out, const at::Tensor& w_q,
                                   const at::Tensor& w_scale, int64_t K,
                                   const std::optional<at::Tensor>& smooth,
                                   int64_t hadamard_block,
                                   std::optional<at::ScalarType> out_dtype) {
  check_float_input(kGradX, "grad_out", grad_out);
  TORCH_CHECK(grad_out.dim() >= 1, kGradX, ": grad_out must have at least one dim");
  TORCH_CHECK(w_q.scalar_type() == at::kChar && (w_q.dim() == 2 || w_q.dim() == 3), kGradX,
              ": w_q must be an int8 [N, K] weight or a packed one, got ",
              dtype_name(w_q.scalar_type()), " with ", w_q.dim(), " dims");
  TORCH_CHECK(K >= 1 && (w_q.dim() == 3 || w_q.size(1) == K), kGradX, ": K must be >= 1 and ",
              "the plain weight's width, got K = ", K, " for w_q of shape ", w_q.sizes());
  const int64_t N = w_q.size(0);
  TORCH_CHECK(grad_out.size(-1) == N, kGradX, ": grad_out's last dim must be N = ", N,
              " (w_q's rows), got ", grad_out.size(-1));
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 && w_scale.size(0) == N,
              kGradX, ": w_scale must be a float32 tensor of shape [", N, "], got ",
              dtype_name(w_scale.scalar_type()), " ", w_scale.sizes());
  check_hadamard_block(kGradX, hadamard_block, K);
  if (smooth.has_value()) {
    TORCH_CHECK(smooth->scalar_type() == at::kFloat && smooth->dim() == 1 &&
                    smooth->size(0) == K,
                kGradX, ": smooth must be a float32 tensor of shape [", K, "], got ",
                dtype_name(smooth->scalar_type()), " ", smooth->sizes());
  }
  const at::Tensor w = w_q.dim() == 3 ? unpack_weight(w_q, K) : w_q;
  // grad_out @ (w * w_scale[:, None]) as (grad_out * w_scale) @ w: the scales
  // go on the [*, N] gradient instead of a second [N, K] pass over the weight
  at::Tensor g = at::matmul(grad_out.to(at::kFloat) * w_scale, w.to(at::kFloat));
  if (hadamard_block > 0) g = hadamard_rows(g, hadamard_block);
  if (smooth.has_value()) g = g * *smooth;
  return g.to(out_dtype.value_or(grad_out.scalar_type()));
}

// The bias's gradient: the output's, summed over every dim but the last, in
// the bias's dtype.
at::Tensor bias_grad(const at::Tensor& grad_out, at::ScalarType dtype) {
  return grad_out.reshape({-1, grad_out.size(-1)}).sum(0, /*keepdim=*/false, at::kFloat).to(dtype);
}

bool requires_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->requires_grad();
}

class DynamicLinear : public torch::autograd::Function<DynamicLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w_q,
                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& w_sum, std::string_view act_mode,
                            const std::optional<at::Tensor>& smooth, int64_t hadamard_block) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call(x, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block);
    // the forward takes scales of shape [], [1] or [N] and factors in any float
    // dtype; the gradient's op, float32 [N] and [K]
    // (converted only when they differ: an op below autograd may not return
    // its input, as .to() of a float32 tensor would)
    const int64_t N = w_q.size(0);
    const bool as_is = w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 &&
                       w_scale.size(0) == N;
    const at::Tensor scales = as_is ? w_scale : w_scale.to(at::kFloat).expand({N}).contiguous();
    const at::Tensor factors = !smooth.has_value() ? at::Tensor()
                               : smooth->scalar_type() == at::kFloat ? *smooth
                                                                     : smooth->to(at::kFloat);
    ctx->save_for_backward({w_q, scales, factors});
    // (sym_size: under torch.export / torch.compile, size() would fix every
    // dim of x, batch and sequence included, to the traced example's)
    ctx->saved_data["K"] = x.sym_size(-1).guard_int(__FILE__, __LINE__);
    ctx->saved_data["block"] = hadamard_block;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["bias_dtype"] =
        static_cast<int64_t>(bias.has_value() ? bias->scalar_type() : at::kFloat);
    ctx->saved_data["has_bias"] = bias.has_value();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& g = grads[0];
    at::Tensor grad_x, grad_bias;
    if (ctx->needs_input_grad(0)) {
      const std::optional<at::Tensor> smooth =
          saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
      grad_x = quantized_linear_grad_x(
          g, saved[0], saved[1], ctx->saved_data["K"].toInt(), smooth,
          ctx->saved_data["block"].toInt(),
          static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    // (needs_input_grad counts the tensors given: a bias of None is none)
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(3)) {
      grad_bias = bias_grad(g, static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()));
    }
    return {grad_x, at::Tensor(), at::Tensor(), grad_bias, at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }

  static at::Tensor call(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& w_sum, std::string_view act_mode,
                         const std::optional<at::Tensor>& smooth, int64_t hadamard_block) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("torch_quant::dynamic_quantized_linear", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                              std::string_view, const std::optional<at::Tensor>&, int64_t)>();
    return op.call(x, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block);
  }
};

// Only the bias has a gradient here: x_q is integer. (QuantLinear's static
// layers give x its straight-through gradient around quantize + this op.)
class StaticLinear : public torch::autograd::Function<StaticLinear> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_q, const at::Tensor& x_scale,
                            const at::Tensor& x_zero_point, const at::Tensor& w_q,
                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& w_sum,
                            std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["bias_dtype"] =
        static_cast<int64_t>(bias.has_value() ? bias->scalar_type() : at::kFloat);
    return call(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad_bias;
    if (ctx->needs_input_grad(5)) {
      grad_bias = bias_grad(grads[0],
                            static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()));
    }
    return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), grad_bias,
            at::Tensor(), at::Tensor()};
  }

  static at::Tensor call(const at::Tensor& x_q, const at::Tensor& x_scale,
                         const at::Tensor& x_zero_point, const at::Tensor& w_q,
                         const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& w_sum,
                         std::optional<at::ScalarType> out_dtype) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("torch_quant::quantized_linear", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                              std::optional<at::ScalarType>)>();
    return op.call(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype);
  }
};

// The autograd kernels. With nothing to differentiate (grad mode off, or no
// float input that requires grad) they go straight to the backend, with no
// autograd node.
at::Tensor dynamic_autograd(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& w_sum, std::string_view act_mode,
                            const std::optional<at::Tensor>& smooth, int64_t hadamard_block) {
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || requires_grad(bias))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return DynamicLinear::call(x, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block);
  }
  return DynamicLinear::apply(x, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block);
}

at::Tensor static_autograd(const at::Tensor& x_q, const at::Tensor& x_scale,
                           const at::Tensor& x_zero_point, const at::Tensor& w_q,
                           const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                           const std::optional<at::Tensor>& w_sum,
                           std::optional<at::ScalarType> out_dtype) {
  if (!at::GradMode::is_enabled() || !requires_grad(bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return StaticLinear::call(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype);
  }
  return StaticLinear::apply(x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, Autograd, m) {
  m.impl("dynamic_quantized_linear", &dynamic_autograd);
  m.impl("quantized_linear", &static_autograd);
}

// ATen ops only: every device, and autograd and torch.compile see through it.
TORCH_LIBRARY_IMPL(torch_quant, CompositeImplicitAutograd, m) {
  m.impl("quantized_linear_grad_x", &quantized_linear_grad_x);
}

}  // namespace torch_quant
