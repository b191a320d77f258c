// CUDA kernels of quantized_linear and dynamic_quantized_linear (docs/semantics.md, "Operators"),
// with the CPU semantics: exact int32 accumulation, then the epilogue of
// quant_math.h (zero-point correction with w_sum, scales, bias, output dtype).
//
// Two GEMM paths on int8 tensor cores, both written without a GPU to test on
// (docs/design.md, "CUDA kernels"), both taking uint8 activations as x - 128 (a bit flip) with
// 128 * w_sum added back to the int32 result:
//   - where cuBLASLt's int8 alignment rules hold (M > 16, K and N multiples
//     of 8), at::_int_mm (cuBLASLt, int8 x int8 -> int32), then an epilogue
//     kernel: cuBLASLt's own epilogues cannot compute the float32 formula of docs/semantics.md
//     bit for bit, so this path writes and reads the int32 product once more;
//   - otherwise our own kernel (WMMA 16x16x16 int8 fragments, 64 x 64 outputs
//     per block) with the epilogue fused: any M, N, K, no extra int32 pass.
// dynamic_quantized_linear runs the per-token kernel first; it writes
// asymmetric codes already as int8 u - 128 (zero point - 128), so neither
// path flips them. Nothing here has been timed.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../quant_math.h"
#include "../visit.h"
#include "common.cuh"
#include "value_checks.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 720
#error "torch_quant: the int8 tensor-core GEMM needs sm_72 or newer; set TORCH_CUDA_ARCH_LIST"
#endif

namespace torch_quant::cuda {

// csrc/cuda/quantize.cu: int8_codes hands asymmetric codes over as int8
// (u - 128, zero point - 128), which both GEMMs take without a flip;
// smooth (float32 [K] on x's device, or null) multiplies each row first.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_impl(const char* op,
                                                                      const at::Tensor& x,
                                                                      Mode mode, int64_t bits,
                                                                      bool int8_codes,
                                                                      const at::Tensor* smooth);

namespace {

// x (float, [*, K]) times smooth (when defined), then quant_math.h's
// hadamard_stages on every row, as float32 tensor operations: stage h pairs
// element j with j + h inside each run of 2h, exactly as the loop does.
at::Tensor hadamard_rotated(const at::Tensor& x, const at::Tensor& smooth, int64_t block) {
  const int64_t K = x.size(-1);
  at::Tensor v = x.to(at::kFloat);
  if (smooth.defined()) v = v * smooth;
  v = v.reshape({-1, K});
  for (int64_t h = 1; h < block; h *= 2) {
    const at::Tensor pairs = v.reshape({v.size(0), K / (2 * h), 2, h});
    const at::Tensor a = pairs.select(2, 0), c = pairs.select(2, 1);
    v = at::stack({a + c, a - c}, 2).reshape({-1, K});
  }
  return v.reshape(x.sizes());
}

// Everything the epilogue reads besides the int32 dot product.
struct Epilogue {
  const float* x_scale;  // 1 or M values (per_row)
  const int32_t* x_zp;   // as x_scale
  bool per_row;
  const float* w_scale;  // 1 or N values (per_channel)
  bool per_channel;
  const int32_t* w_sum;  // N values, or nullptr when every zero point is 0 and nothing was shifted
  const float* bias;     // N values or nullptr
  uint32_t shift;        // 128 when uint8 activations entered as x - 128, else 0

  // y[m, n] from dot = sum_k a[m, k] * w[n, k] (a shifted by -shift).
  __device__ __forceinline__ float operator()(int32_t dot, int64_t m, int64_t n) const {
    const int32_t ws = w_sum == nullptr ? 0 : w_sum[n];
    // wrapping int32 arithmetic, exact in the end (the true sum fits)
    const int32_t d = static_cast<int32_t>(static_cast<uint32_t>(dot) +
                                           shift * static_cast<uint32_t>(ws));
    const int64_t i = per_row ? m : 0, j = per_channel ? n : 0;
    float v = linear_epilogue(d, x_zp[i], ws, x_scale[i], w_scale[j]);
    if (bias != nullptr) v = __fadd_rn(v, bias[n]);
    return v;
  }
};

// ---- our tensor-core kernel --------------------------------------------
namespace wmma = nvcuda::wmma;

constexpr int kBM = 64, kBN = 64;  // outputs per block
constexpr int kBK = 64;            // k per shared-memory step
constexpr int kChunks = kBK / 16;  // WMMA k steps per shared-memory step
constexpr int kThreads = 128;      // 2 x 2 warps, 32 x 32 outputs each
constexpr int kCPad = 4;           // int32 padding per row of the staged outputs

// A tile is stored chunk by chunk, [k / 16][row][16 bytes], so that every
// 16 x 16 fragment is 256 contiguous, 256-byte aligned bytes (WMMA wants
// 32-byte aligned pointers and a leading dimension that is a multiple of 16).
struct Tiles {
  int8_t a[kChunks][kBM][16];
  int8_t b[kChunks][kBN][16];
};
// The staged int32 outputs reuse the tiles' memory after the last k step.
union __align__(128) Smem {
  Tiles tiles;
  int32_t c[kBM][kBN + kCPad];
};

// Copies rows [row0, row0 + kRows) x k [k0, k0 + kBK) of src ([rows, K],
// contiguous) into dst, as int8: uint8 values are flipped to x - 128. Values
// outside the matrix are 0, so they add nothing to any dot product.
// kVec: K % 16 == 0 and src 16-byte aligned, so whole 16-byte loads.
template <int kRows, bool kVec, typename T>
__device__ __forceinline__ void load_tile(int8_t (*dst)[kRows][16], const T* __restrict__ src,
                                          int64_t rows, int64_t row0, int64_t K, int64_t k0) {
  constexpr bool kFlip = std::is_same_v<T, uint8_t>;
  // Thread t takes 16-byte pieces t, t + 128, ...: four neighbours read 64
  // contiguous bytes of one row.
  for (int e = threadIdx.x; e < kRows * kChunks; e += kThreads) {
    const int r = e / kChunks, c = e % kChunks;
    const int64_t row = row0 + r, k = k0 + int64_t{c} * 16;
    int4 v = make_int4(0, 0, 0, 0);
    if (row < rows && k < K) {
      const T* p = src + row * K + k;
      if constexpr (kVec) {
        v = *reinterpret_cast<const int4*>(p);  // k < K and K % 16 == 0: all 16 inside
        if constexpr (kFlip) {
          v.x ^= 0x80808080;
          v.y ^= 0x80808080;
          v.z ^= 0x80808080;
          v.w ^= 0x80808080;
        }
      } else {
        int8_t bytes[16];
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          const uint8_t u = k + j < K ? static_cast<uint8_t>(p[j]) ^ (kFlip ? 0x80 : 0x00) : 0;
          bytes[j] = static_cast<int8_t>(u);
        }
        memcpy(&v, bytes, 16);
      }
    }
    *reinterpret_cast<int4*>(&dst[c][r][0]) = v;
  }
}

// y = epilogue(a @ w^T) for a [M, K] (int8 or uint8) and w [N, K] int8, one
// 64 x 64 output tile per block; the four warps each own a 32 x 32 quadrant
// (2 x 2 fragments of int32 accumulators).
template <bool kVec, typename A, typename Out>
__global__ void __launch_bounds__(kThreads)
    tc_linear_kernel(const A* __restrict__ a, const int8_t* __restrict__ w, int64_t M, int64_t N,
                     int64_t K, Epilogue ep, Out* __restrict__ y) {
  __shared__ Smem smem;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  const int64_t m0 = blockIdx.x * int64_t{kBM}, n0 = blockIdx.y * int64_t{kBN};

  wmma::fragment<wmma::accumulator, 16, 16, 16, int> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0);
  }
  for (int64_t k0 = 0; k0 < K; k0 += kBK) {
    load_tile<kBM, kVec>(smem.tiles.a, a, M, m0, K, k0);
    load_tile<kBN, kVec>(smem.tiles.b, w, N, n0, K, k0);
    __syncthreads();
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      // a is [m][k] (row-major A); w is [n][k], i.e. B = w^T column-major.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(fa[i], &smem.tiles.a[c][wm * 32 + i * 16][0], 16);
        wmma::load_matrix_sync(fb[i], &smem.tiles.b[c][wn * 32 + i * 16][0], 16);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
    }
    __syncthreads();  // before the next step (or the staging below) overwrites the tiles
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&smem.c[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j],
                              kBN + kCPad, wmma::mem_row_major);
    }
  }
  __syncthreads();
  // The fused epilogue: consecutive threads write consecutive outputs of a row.
  for (int e = threadIdx.x; e < kBM * kBN; e += kThreads) {
    const int r = e / kBN, c = e % kBN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < M && n < N) y[m * N + n] = static_cast<Out>(ep(smem.c[r][c], m, n));
  }
}

// ---- the cuBLASLt path's epilogue ----------------------------------------
template <typename Out>
__global__ void epilogue_kernel(const int32_t* __restrict__ dot, int64_t M, int64_t N,
                                Epilogue ep, Out* __restrict__ y) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < M * N;
       e += int64_t{gridDim.x} * blockDim.x) {
    y[e] = static_cast<Out>(ep(dot[e], e / N, e % N));
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// cuBLASLt's int8 GEMM (through at::_int_mm) needs these: its tensor-core
// kernels read both operands in aligned 16-byte vectors, so a view that
// starts at an odd offset (buf[1:].view(...), x3[1] of an odd-sized batch)
// must take our kernel, which reads unaligned rows byte by byte.
bool int_mm_fits(int64_t M, int64_t N, int64_t K, const void* a, const void* w) {
  return M > 16 && K > 0 && K % 8 == 0 && N % 8 == 0 && aligned16(a) && aligned16(w);
}

// The shared GEMM + epilogue on device tensors: x_q [M, K] codes, x_scale
// float32 / x_zp int32 with 1 or M values, w_scale float32 1 or N values.
// need_sums: some zero point may be non-zero. w_sum, when given, is checked
// against the row sums on the device (the kernels use the sums computed here).
at::Tensor linear(const at::Tensor& x_q, const at::Tensor& x_scale, const at::Tensor& x_zp,
                  bool need_sums, const at::Tensor& w, const std::optional<at::Tensor>& w_sum,
                  const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                  std::vector<int64_t> out_shape, at::ScalarType out_dtype) {
  const int64_t K = w.size(1), N = w.size(0);
  const int64_t M = K == 0 ? c10::multiply_integers(x_q.sizes().slice(0, x_q.dim() - 1))
                           : x_q.numel() / K;
  at::Tensor y = at::empty(out_shape, x_q.options().dtype(out_dtype));
  // A given w_sum is checked on every call, as on the CPU, even without rows.
  at::Tensor sums;
  if (w_sum.has_value()) {
    sums = w.sum(1, /*keepdim=*/false, at::kInt);
    check_weight_sums_on_device(*w_sum, sums);
  }
  if (M == 0 || N == 0) return y;
  const bool a_signed = x_q.scalar_type() == at::kChar;
  // uint8 activations enter both GEMMs as x - 128: w_sum takes it back.
  need_sums = need_sums || !a_signed;
  if (need_sums && !sums.defined()) sums = w.sum(1, /*keepdim=*/false, at::kInt);
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const Epilogue ep{x_scale.const_data_ptr<float>(),
                    x_zp.const_data_ptr<int32_t>(),
                    x_scale.numel() != 1,
                    w_scale.const_data_ptr<float>(),
                    w_scale.numel() != 1,
                    need_sums ? sums.const_data_ptr<int32_t>() : nullptr,
                    bias.has_value() ? b.const_data_ptr<float>() : nullptr,
                    a_signed ? 0u : 128u};
  const at::Tensor a2 = x_q.reshape({M, K});
  if (int_mm_fits(M, N, K, a2.const_data_ptr(), w.const_data_ptr())) {
    const at::Tensor a8 = a_signed ? a2 : at::bitwise_xor(a2, 128).view(at::kChar);
    const at::Tensor dot = at::_int_mm(a8, w.t());  // [M, N] int32
    visit_float(out_dtype, [&](auto tag) {
      using Out = decltype(tag);
      epilogue_kernel<<<grid_for(M * N), kBlock, 0, stream()>>>(
          dot.const_data_ptr<int32_t>(), M, N, ep, y.mutable_data_ptr<Out>());
    });
    check_launch();
    return y;
  }
  const int64_t m_tiles = (M + kBM - 1) / kBM, n_tiles = (N + kBN - 1) / kBN;
  TORCH_CHECK(n_tiles <= 65535 && m_tiles <= 0x7fffffff, "torch_quant: an output of ", M,
              " x ", N, " is larger than the CUDA linear kernel's grid (at most ",
              int64_t{65535} * kBN, " columns)");
  const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(n_tiles));
  const bool vec = K % 16 == 0 && aligned16(a2.const_data_ptr()) && aligned16(w.const_data_ptr());
  visit_float(out_dtype, [&](auto tag) {
    using Out = decltype(tag);
    const auto launch = [&](const auto* a) {
      if (vec) {
        tc_linear_kernel<true><<<grid, kThreads, 0, stream()>>>(
            a, w.const_data_ptr<int8_t>(), M, N, K, ep, y.mutable_data_ptr<Out>());
      } else {
        tc_linear_kernel<false><<<grid, kThreads, 0, stream()>>>(
            a, w.const_data_ptr<int8_t>(), M, N, K, ep, y.mutable_data_ptr<Out>());
      }
    };
    if (a_signed) {
      launch(a2.const_data_ptr<int8_t>());
    } else {
      launch(a2.const_data_ptr<uint8_t>());
    }
  });
  check_launch();
  return y;
}

at::Tensor quantized_linear_cuda(const at::Tensor& x_q, const at::Tensor& x_scale,
                                 const at::Tensor& x_zero_point, const at::Tensor& w_q,
                                 const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                 const std::optional<at::Tensor>& w_sum,
                                 std::optional<at::ScalarType> out_dtype) {
  // Values checked on the device (value_checks.h).
  const QuantizedLinearArgs args = check_quantized_linear_args(
      "torch_quant.quantized_linear", x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum,
      out_dtype, ValueCheck::Device);
  check_plain_weight("torch_quant.quantized_linear", w_q);
  const c10::cuda::CUDAGuard guard(x_q.device());
  const at::Tensor x = x_q.contiguous();
  const at::Tensor xs = x_scale.to(at::kFloat).contiguous();
  const at::Tensor ws = w_scale.to(at::kFloat).contiguous();
  check_scales_on_device(xs, Arg::XScale);
  check_zero_points_on_device(x_zero_point.to(at::kLong).contiguous(),
                              args.a_signed ? QRange{-128, 127} : QRange{0, 255}, Arg::XZeroPoint);
  check_scales_on_device(ws, Arg::WScale);
  return linear(x, xs, x_zero_point.to(at::kInt).contiguous(), args.any_zero_point,
                w_q.contiguous(), w_sum, ws, bias, linear_output_shape(x, args.N),
                args.out_dtype);
}

at::Tensor dynamic_quantized_linear_cuda(const at::Tensor& x_in, const at::Tensor& w_q,
                                         const at::Tensor& w_scale,
                                         const std::optional<at::Tensor>& bias,
                                         const std::optional<at::Tensor>& w_sum,
                                         std::string_view act_mode,
                                         const std::optional<at::Tensor>& smooth,
                                         int64_t hadamard_block) {
  constexpr const char* op = "torch_quant.dynamic_quantized_linear";
  const DynamicLinearArgs args = check_dynamic_quantized_linear_args(
      op, x_in, w_q, w_scale, bias, w_sum, act_mode, smooth, hadamard_block, ValueCheck::Device);
  check_plain_weight(op, w_q);
  const Mode mode = args.mode;
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor ws = w_scale.to(at::kFloat).contiguous();
  check_scales_on_device(ws, Arg::WScale);
  if (args.smooth.defined()) check_scales_on_device(args.smooth, Arg::Smooth);
  // Two kernels: the per-token one writes int8 codes (asymmetric ones as
  // u - 128, so no flip pass is needed) and each row's scale and zero point;
  // the GEMM reads them with the epilogue fused (on our kernel's path).
  // With hadamard_block, the rows are smoothed and rotated first by tensor
  // operations in the order of quant_math.h's hadamard_stages (same bits).
  const bool rotate = hadamard_block > 0 && x_in.numel() > 0;
  const at::Tensor x_rot = rotate ? hadamard_rotated(x_in, args.smooth, hadamard_block) : x_in;
  const at::Tensor* sm = !rotate && args.smooth.defined() ? &args.smooth : nullptr;
  const auto [q, scale, zp] = quantize_per_token_impl(op, x_rot, mode, 8, /*int8_codes=*/true, sm);
  // Symmetric rows have zero point 0: w_sum is only needed for asymmetric.
  return linear(q, scale.reshape({-1}), zp.reshape({-1}), mode == Mode::Asymmetric,
                w_q.contiguous(), w_sum, ws, bias, linear_output_shape(x_in, args.N),
                x_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CUDA, m) {
  m.impl("quantized_linear", &quantized_linear_cuda);
  m.impl("dynamic_quantized_linear", &dynamic_quantized_linear_cuda);
}

}  // namespace torch_quant::cuda
