// Launch helpers and block reductions shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace torch_quant::cuda {

constexpr int kBlock = 256;  // threads per block (a multiple of 32)

inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

// Enough blocks of kBlock threads for n elements in a grid-stride loop.
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 65535 * 8));
}

inline void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

// kN values of T moved as one aligned load or store (16 bytes for the float
// side of quantize / dequantize: LDG.128 / STG.128).
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Pack {
  T v[kN];
};

// Values per 16-byte pack of T.
template <typename T>
constexpr int kPack16 = static_cast<int>(16 / sizeof(T));

inline bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// f(std::integral_constant<int, kV>) when vec, else f(... 1): the kernels
// come in a packed and an element-by-element version.
template <int kV, typename F>
void with_pack_size(bool vec, F&& f) {
  if (vec) {
    f(std::integral_constant<int, kV>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// Min of lo and max of hi over the block; every thread returns with the
// block's result. Needs blockDim.x == kBlock.
__device__ __forceinline__ void block_minmax(float& lo, float& hi) {
  __shared__ float s_lo[kBlock / 32], s_hi[kBlock / 32];
  for (int off = 16; off > 0; off >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
  }
  __syncthreads();
  lo = s_lo[0];
  hi = s_hi[0];
  for (int w = 1; w < kBlock / 32; ++w) {
    lo = fminf(lo, s_lo[w]);
    hi = fmaxf(hi, s_hi[w]);
  }
  __syncthreads();  // the shared slots may be reused by a later call
}

}  // namespace torch_quant::cuda
