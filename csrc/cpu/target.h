// Building one file for one instruction set, whatever the global compiler
// flags: code between TORCH_QUANT_TARGET_BEGIN("avx2,fma") and
// TORCH_QUANT_TARGET_END is compiled for that target, and isa.cpp makes sure
// it only runs on CPUs that have it. Off x86 (TORCH_QUANT_X86 == 0) the ISA
// files build nothing and the dispatchers never name them.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TORCH_QUANT_X86 1
#define TORCH_QUANT_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define TORCH_QUANT_TARGET_BEGIN(T) \
  TORCH_QUANT_PRAGMA(clang attribute push(__attribute__((target(T))), apply_to = function))
#define TORCH_QUANT_TARGET_END TORCH_QUANT_PRAGMA(clang attribute pop)
#else
#define TORCH_QUANT_TARGET_BEGIN(T) \
  TORCH_QUANT_PRAGMA(GCC push_options) TORCH_QUANT_PRAGMA(GCC target(T))
#define TORCH_QUANT_TARGET_END TORCH_QUANT_PRAGMA(GCC pop_options)
#endif
#else
#define TORCH_QUANT_X86 0
#endif
