// The portable row kernels: plain C++ over quant_math.h, for CPUs without AVX2
// and as the reference path the vector builds are tested against.
#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../quant_math.h"
#include "row_kernels.h"

namespace torch_quant::cpu::scalar {
// W = 1 tells row_kernels_impl.h to skip its vector loop: the scalar loop
// (quant_math.h) does every element.
struct ScalarVec {
  static constexpr int W = 1;
};
using V = ScalarVec;
#include "row_kernels_impl.h"
}  // namespace torch_quant::cpu::scalar
