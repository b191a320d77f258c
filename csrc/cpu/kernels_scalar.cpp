// The portable row kernels: plain C++ over quant_math.h, for CPUs without AVX2
// and as the reference path the vector builds are tested against.
#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../quant_math.h"
#include "row_kernels.h"
#include "scalar_vec.h"

namespace torch_quant::cpu::scalar {
using V = ScalarVec;
#include "row_kernels_impl.h"
}  // namespace torch_quant::cpu::scalar
