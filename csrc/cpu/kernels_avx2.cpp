// The row kernels (row_kernels_impl.h) compiled for AVX2, with the target
// "avx2,fma,f16c" set for this file alone. The dispatcher
// (row_kernels.h) calls them only when isa.cpp finds the CPU supports it.
#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../quant_math.h"
#include "row_kernels.h"
#include "target.h"

#if TORCH_QUANT_X86
#include <immintrin.h>
TORCH_QUANT_TARGET_BEGIN("avx2,fma,f16c")
#include "vec_avx2.h"
namespace torch_quant::cpu::avx2 {
using V = Vec256;
#include "row_kernels_impl.h"
}  // namespace torch_quant::cpu::avx2
TORCH_QUANT_TARGET_END
#endif  // TORCH_QUANT_X86
