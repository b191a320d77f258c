// The row kernels (row_kernels_impl.h) compiled for AVX-512, with the target
// "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq" set for this file
// alone. The dispatcher (row_kernels.h) calls them only when isa.cpp finds the
// CPU supports it. Off x86 these names hold the portable build, so that the
// library still links.
#include <cmath>
#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "../quant_math.h"
#include "row_kernels.h"
#include "scalar_vec.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#endif
#include "vec_avx512.h"
namespace torch_quant::cpu::avx512 {
using V = Vec512;
#include "row_kernels_impl.h"
}  // namespace torch_quant::cpu::avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#else
namespace torch_quant::cpu::avx512 {
using V = ScalarVec;
#include "row_kernels_impl.h"
}  // namespace torch_quant::cpu::avx512
#endif
