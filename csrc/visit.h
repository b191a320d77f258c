// Dtype dispatch for the CPU and CUDA ops: call a generic lambda with a value of
// the C++ type that stores a tensor's elements.
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace torch_quant {

// float32, float16 or bfloat16 (the ops check the dtype before).
template <typename F>
void visit_float(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(c10::Half{});
    case at::kBFloat16: return f(c10::BFloat16{});
    default: TORCH_INTERNAL_ASSERT(false, "unexpected dtype ", t);
  }
}

// int8 or uint8 codes.
template <typename F>
void visit_code(at::ScalarType t, const F& f) {
  if (t == at::kChar) return f(int8_t{});
  TORCH_INTERNAL_ASSERT(t == at::kByte, "unexpected dtype ", t);
  f(uint8_t{});
}

}  // namespace torch_quant
