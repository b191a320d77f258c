// CPU kernels of quantized_linear and dynamic_quantized_linear (SPEC.md §3):
//
//   dot[m,n] = sum_k x_q[m,k] * w_q[n,k]                     (gemm.h, exact int32)
//   y[m,n]   = float(dot - x_zero_point[m] * w_sum[n]) * (x_scale[m] * w_scale[n]) + bias[n]
//
// The output is cut into tiles of kTileM x kTileN; each tile is one task of
// at::parallel_for and is computed whole (all of K) by one thread, so the
// result does not depend on the thread count. With few rows (decoding, M = 1)
// the tiles split N across threads; with many rows they split M and N.
#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../quant_math.h"
#include "gemm.h"
#include "output_alloc.h"
#include "row_kernels.h"
#include "../visit.h"
#include "weight_cache.h"
#include "panels.h"

namespace torch_quant::cpu {
namespace {

// Tiles of up to kTileM x kTileN outputs. Tall tiles, because a kernel may
// repack its kTileN x K weights for each tile: that cost is shared by all of
// the tile's rows. (The kernels block K themselves to stay in cache.)
constexpr int64_t kTileM = 256;
constexpr int64_t kTileN = 64;

// One row's or one tensor's value of a parameter.
template <typename T>
struct PerRow {
  const T* data;
  bool per_row;
  T operator[](int64_t i) const { return data[per_row ? i : 0]; }
};

// w_sum as given, or computed from w_q (only when some term needs it).
at::Tensor weight_sums(const at::Tensor& w, const std::optional<at::Tensor>& w_sum) {
  if (w_sum.has_value()) return w_sum->contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor sums = at::empty({N}, w.options().dtype(at::kInt));
  const int8_t* wp = w.const_data_ptr<int8_t>();
  int32_t* sp = sums.mutable_data_ptr<int32_t>();
  at::parallel_for(0, N, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(K, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t n = begin; n < end; ++n) {
                       int32_t s = 0;
                       for (int64_t k = 0; k < K; ++k) s += wp[n * K + k];
                       sp[n] = s;
                     }
                   });
  return sums;
}

// The shared GEMM + epilogue. a: M x K codes (row stride K), signed or not;
// w_scale: checked float32 (checked_scale_values).
at::Tensor linear(const void* a, bool a_signed, int64_t M, int64_t K, const at::Tensor& w,
                  const std::optional<at::Tensor>& w_sum_arg, PerRow<float> x_scale,
                  PerRow<int32_t> x_zp, bool any_zp, const at::Tensor& w_scale,
                  const std::optional<at::Tensor>& bias, at::IntArrayRef out_shape,
                  at::ScalarType out_dtype) {
  const int64_t N = w.size(0);
  at::Tensor out = empty_output(out_shape, out_dtype);
  if (M == 0 || N == 0) return out;
  // Kernels that move activations between int8 and uint8 (by 128) undo the
  // shift with w_sum: VNNI for int8 input, AVX2's panel kernel for uint8.
  const bool need_sums = any_zp || !a_signed || active_isa() == Isa::Avx512Vnni;
  const at::Tensor sums = need_sums ? weight_sums(w, w_sum_arg) : at::Tensor();
  const int32_t* ws_sum = need_sums ? sums.const_data_ptr<int32_t>() : nullptr;
  const PerRow<float> w_sc{w_scale.const_data_ptr<float>(), w_scale.numel() != 1};
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = bias.has_value() ? b.const_data_ptr<float>() : nullptr;
  const int8_t* wp = w.const_data_ptr<int8_t>();
  const int64_t m_tiles = (M + kTileM - 1) / kTileM, n_tiles = (N + kTileN - 1) / kTileN;
  // The weight packed once (null when not cached); its panels of 16 columns
  // line up with the tiles because kTileN is a multiple of 16.
  static_assert(kTileN % kPanelCols == 0);
  const std::shared_ptr<const PackedPanels> packed =
      wants_packed_weights(M) ? cached_panels(w) : nullptr;
  const int64_t lds = split_stride(K);
  std::unique_ptr<uint8_t[]> split;
  if (packed != nullptr) {
    split.reset(new uint8_t[static_cast<size_t>(M * lds)]);
    at::parallel_for(0, M, std::max<int64_t>(1, (1 << 16) / lds), [&](int64_t begin, int64_t end) {
      split_activations(static_cast<const uint8_t*>(a) + begin * K, a_signed, K, end - begin, K,
                        split.get() + begin * lds);
    });
  }

  visit_float(out_dtype, [&](auto tag) {
    using Out = decltype(tag);
    Out* yp = out.mutable_data_ptr<Out>();
    // Tiles in n-major order, so a thread's consecutive tiles share weights.
    at::parallel_for(0, m_tiles * n_tiles, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> dot(static_cast<size_t>(std::min(kTileM, M) * kTileN));
      for (int64_t t = begin; t < end; ++t) {
        const int64_t m0 = (t % m_tiles) * kTileM, n0 = (t / m_tiles) * kTileN;
        const int64_t mc = std::min(kTileM, M - m0), nc = std::min(kTileN, N - n0);
        const void* a0 = static_cast<const uint8_t*>(a) + m0 * K;
        const int32_t* s0 = ws_sum == nullptr ? nullptr : ws_sum + n0;
        if (packed != nullptr) {
          gemm_s32_packed(split.get() + m0 * lds, lds, a_signed,
                          packed->data.data() + n0 * panel_groups(K) * 4, s0, mc, nc, K,
                          dot.data(), nc);
        } else {
          gemm_s32(a0, a_signed, K, wp + n0 * K, K, s0, mc, nc, K, dot.data(), nc);
        }
        for (int64_t i = 0; i < mc; ++i) {
          const int64_t m = m0 + i;
          for (int64_t j = 0; j < nc; ++j) {
            const int64_t n = n0 + j;
            float y = linear_epilogue(dot[i * nc + j], x_zp[m],
                                      ws_sum == nullptr ? 0 : ws_sum[n], x_scale[m], w_sc[n]);
            if (bp != nullptr) y += bp[n];
            yp[m * N + n] = static_cast<Out>(y);
          }
        }
      }
    });
  });
  return out;
}

std::vector<int64_t> output_shape(const at::Tensor& x, int64_t N) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

at::Tensor quantized_linear_cpu(const at::Tensor& x_q, const at::Tensor& x_scale,
                                const at::Tensor& x_zero_point, const at::Tensor& w_q,
                                const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& w_sum,
                                std::optional<at::ScalarType> out_dtype) {
  const QuantizedLinearArgs args = check_quantized_linear_args(
      "torch_quant.quantized_linear", x_q, x_scale, x_zero_point, w_q, w_scale, bias, w_sum,
      out_dtype, ValueCheck::Read);
  const at::Tensor x = x_q.contiguous();
  const at::Tensor w = w_q.contiguous();
  const int64_t K = x.size(-1);
  const int64_t M = K == 0 ? c10::multiply_integers(x.sizes().slice(0, x.dim() - 1))
                           : x.numel() / K;
  const at::Tensor& xs = args.x_scale;
  const at::Tensor& xz = args.x_zero_point;
  return linear(x.const_data_ptr(), args.a_signed, M, K, w, w_sum,
                PerRow<float>{xs.const_data_ptr<float>(), xs.numel() != 1},
                PerRow<int32_t>{xz.const_data_ptr<int32_t>(), xz.numel() != 1},
                args.any_zero_point, args.w_scale, bias, output_shape(x, args.N),
                args.out_dtype);
}

at::Tensor dynamic_quantized_linear_cpu(const at::Tensor& x_in, const at::Tensor& w_q,
                                        const at::Tensor& w_scale,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& w_sum,
                                        std::string_view act_mode) {
  const auto [mode, N, ws] =
      check_dynamic_quantized_linear_args("torch_quant.dynamic_quantized_linear", x_in, w_q,
                                          w_scale, bias, w_sum, act_mode, ValueCheck::Read);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = w_q.contiguous();
  const int64_t K = x.size(-1);
  const int64_t M = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));

  // Per-token quantization, row by row as quantize_per_token does it, into a
  // scratch buffer that the GEMM reads.
  const bool a_signed = mode == Mode::Symmetric;
  const QRange range = qrange(mode, 8);
  const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);
  // Not value-initialised: every byte is written below.
  const std::unique_ptr<uint8_t[]> codes_buf(new uint8_t[static_cast<size_t>(M * K)]);
  uint8_t* codes = codes_buf.get();
  std::vector<float> scales(static_cast<size_t>(M));
  std::vector<int32_t> zps(static_cast<size_t>(M));
  visit_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    const In* xp = x.const_data_ptr<In>();
    at::parallel_for(0, M, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(K, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t r = begin; r < end; ++r) {
                         float lo = INFINITY, hi = -INFINITY;
                         minmax(xp + r * K, K, &lo, &hi);
                         const QParams p = compute_qparams(lo, hi, mode, 8);
                         scales[r] = p.scale;
                         zps[r] = p.zero_point;
                         const float inv = 1.0f / p.scale, z = static_cast<float>(p.zero_point);
                         if (a_signed) {
                           quantize(xp + r * K, K, inv, z, qmin, qmax,
                                    reinterpret_cast<int8_t*>(codes) + r * K);
                         } else {
                           quantize(xp + r * K, K, inv, z, qmin, qmax, codes + r * K);
                         }
                       }
                     });
  });
  const bool any_zp = std::any_of(zps.begin(), zps.end(), [](int32_t z) { return z != 0; });
  return linear(codes, a_signed, M, K, w, w_sum, PerRow<float>{scales.data(), true},
                PerRow<int32_t>{zps.data(), true}, any_zp, ws, bias, output_shape(x, N),
                x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CPU, m) {
  m.impl("quantized_linear", &quantized_linear_cpu);
  m.impl("dynamic_quantized_linear", &dynamic_quantized_linear_cpu);
}

}  // namespace torch_quant::cpu
