// Every schema of the torch_quant namespace, in one place (docs/semantics.md, "Operators").
// Backends register implementations with TORCH_LIBRARY_IMPL in csrc/cpu/ and
// csrc/cuda/ (the gradients, csrc/autograd.cpp, for every device); fake (meta)
// kernels live in torch_quant/ops/fake_kernels.py.
#include <torch/library.h>

TORCH_LIBRARY(torch_quant, m) {
  m.def("choose_qparams(Tensor x, str mode, int? axis=None, int bits=8) -> (Tensor scale, Tensor zero_point)");
  m.def("quantize(Tensor x, Tensor scale, Tensor zero_point, str mode, int? axis=None, int bits=8) -> Tensor");
  m.def("dequantize(Tensor q, Tensor scale, Tensor zero_point, int? axis=None, ScalarType? dtype=None) -> Tensor");
  m.def("quantize_per_token(Tensor x, str mode, int bits=8) -> (Tensor q, Tensor scale, Tensor zero_point)");
  m.def("quantized_linear(Tensor x_q, Tensor x_scale, Tensor x_zero_point, Tensor w_q, Tensor w_scale, "
        "Tensor? bias=None, Tensor? w_sum=None, ScalarType? out_dtype=None) -> Tensor");
  m.def("dynamic_quantized_linear(Tensor x, Tensor w_q, Tensor w_scale, Tensor? bias=None, "
        "Tensor? w_sum=None, str act_mode=\"symmetric\", Tensor? smooth=None, int hadamard_block=0) -> Tensor");
  m.def("pack_weight(Tensor w_q) -> Tensor");
  m.def("unpack_weight(Tensor w_packed, int K) -> Tensor");
  m.def("quantized_linear_grad_x(Tensor grad_out, Tensor w_q, Tensor w_scale, int K, "
        "Tensor? smooth=None, int hadamard_block=0, ScalarType? out_dtype=None) -> Tensor");
}
