// Calls the torch_quant ops from C++ through the dispatcher (the same ops
// Python reaches as torch.ops.torch_quant.*): packs an int8 weight, then for
// both activation modes runs the fused dynamic_quantized_linear and the
// two-step quantize_per_token + quantized_linear, and writes the outputs.
//
//   call_ops x.bin w_q.bin w_scale.bin M K N out_prefix
// writes out_prefix{symmetric,asymmetric}_{fused,two_step}.bin (float32 [M, N]).
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include <torch/torch.h>

#include "tensor_io.h"

namespace {

// A typed handle on torch_quant::<name> (the schema in csrc/registration.cpp).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Opt = std::optional<at::Tensor>;

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::cerr << "usage: call_ops x.bin w_q.bin w_scale.bin M K N out_prefix\n";
    return 2;
  }
  try {
    const int64_t M = std::stoll(argv[4]), K = std::stoll(argv[5]), N = std::stoll(argv[6]);
    const std::string prefix = argv[7];
    const at::Tensor x = read_tensor(argv[1], {M, K}, torch::kFloat);
    const at::Tensor w_q = read_tensor(argv[2], {N, K}, torch::kChar);
    const at::Tensor w_scale = read_tensor(argv[3], {N}, torch::kFloat);

    const auto pack = op<at::Tensor(const at::Tensor&)>("torch_quant::pack_weight");
    const auto dynamic = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const Opt&, const Opt&, std::string_view, const Opt&,
                                       int64_t)>("torch_quant::dynamic_quantized_linear");
    const auto per_token = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, std::string_view, int64_t)>("torch_quant::quantize_per_token");
    const auto linear = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, const at::Tensor&, const Opt&,
                                      const Opt&, std::optional<at::ScalarType>)>(
        "torch_quant::quantized_linear");

    const at::Tensor packed = pack.call(w_q);  // once per weight
    for (const std::string mode : {"symmetric", "asymmetric"}) {
      const at::Tensor fused = dynamic.call(x, packed, w_scale, std::nullopt, std::nullopt, mode,
                                            std::nullopt, 0);
      const auto [q, scale, zero_point] = per_token.call(x, mode, 8);
      const at::Tensor two_step = linear.call(q, scale, zero_point, w_q, w_scale, std::nullopt,
                                              std::nullopt, std::nullopt);
      write_tensor(prefix + mode + "_fused.bin", fused);
      write_tensor(prefix + mode + "_two_step.bin", two_step);
      std::cout << mode << ": fused and two-step equal: " << std::boolalpha
                << at::equal(fused, two_step) << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "call_ops: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
