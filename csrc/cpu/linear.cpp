// CPU kernels of quantized_linear and dynamic_quantized_linear
// (docs/semantics.md, "Modes and rounding"):
//
//   dot[m,n] = sum_k x_q[m,k] * w_q[n,k]                     (gemm.h, exact int32)
//   y[m,n]   = float(dot - x_zero_point[m] * w_sum[n]) * (x_scale[m] * w_scale[n]) + bias[n]
//
// The weight is either packed (pack_weight; the packed kernels) or plain
// [N, K]: then it is packed for the call when there are enough rows to pay
// for it, and otherwise read as it is by the plain kernels. Nothing is kept
// between calls.
//
// The output is cut into tiles of kTileM x kTileN; each tile is one task of
// at::parallel_for and is computed whole (all of K) by one thread, so the
// result does not depend on the thread count. With few rows (decoding, M = 1)
// the tiles split N across threads; with many rows they split M and N.
#include <algorithm>
#include <cmath>
#include <functional>
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
#include "packed.h"
#include "row_kernels.h"
#include "../visit.h"

namespace torch_quant::cpu {
namespace {

// Tiles of up to kTileM x kTileN outputs: each reads kTileN columns of the
// weight for all its rows, so tall tiles share each weight byte among many
// rows. (The kernels block K themselves to stay in cache.)
constexpr int64_t kTileM = 256;
constexpr int64_t kTileN = 64;
static_assert(kTileN % kPanelCols == 0, "tiles start on a panel");

// One row's or one tensor's value of a parameter.
template <typename T>
struct PerRow {
  const T* data;
  bool per_row;
  T operator[](int64_t i) const { return data[per_row ? i : 0]; }
};

// The activations of one call: M rows of K codes (row stride K), int8 when
// a_signed; x_scale / zp per row. `fill(begin, end)`, when set, writes rows
// [begin, end) of the codes and their parameters first (dynamic quantization),
// in the same parallel pass that prepares them for the kernel.
struct Activations {
  const void* codes;
  bool a_signed;
  int64_t M, K;
  const float* x_scale;
  const int32_t* zp;
  std::function<void(int64_t, int64_t)> fill;
};

// Writes y = the epilogue of the product of `act` and `w` into out (dtype
// out_dtype), after checking a given w_sum against the sums of the pass over
// the weight that the call makes anyway (packing it, or the plain kernels).
void linear(const char* op, const Activations& act, const at::Tensor& w, const std::optional<at::Tensor>& w_sum,
            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t M = act.M, K = act.K, N = out.size(-1);
  if (M == 0 || N == 0) {  // no pass over the weight to take the sums from: one for w_sum
    if (w_sum.has_value() && N > 0) {
      std::vector<int32_t> sums(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) sums[n] = row_sum(w.const_data_ptr<int8_t>() + n * K, K);
      check_weight_sums(op, *w_sum, sums.data());
    }
    return;
  }
  // The kernels of one ISA for the whole call (gemm.h says why).
  const GemmKernels kern = gemm_kernels(active_isa());
  const bool packed_arg = is_packed_weight(w);
  const bool use_packed = packed_arg || M >= kern.pack_per_call_min_m;
  const uint8_t* codes = static_cast<const uint8_t*>(act.codes);

  // A packed argument is read as it is. A plain weight with many rows is
  // packed for the call, one task's 64 columns at a time into a buffer of the
  // thread's (hot in cache when the kernel reads it, and no temporary the
  // size of the weight: at 11008 x 4096 its fresh pages alone cost more than
  // the packing).
  PackedWeight pw{nullptr, N, K};
  if (packed_arg) {
    pw.data = w.const_data_ptr<int8_t>();
    check_packed_k(op, "w_q", pw);
  }
  const bool pack_now = use_packed && !packed_arg;

  // Activations: filled (dynamic) and prepared for the kernel in one pass.
  const int64_t ldp = use_packed ? kern.prepared_row_bytes(K) : kern.plain_row_bytes(K);
  const auto prepare = use_packed ? kern.prepare_rows : kern.prepare_plain_rows;
  std::unique_ptr<uint8_t[]> prepared(ldp > 0 ? new uint8_t[static_cast<size_t>(M * ldp)] : nullptr);
  if (act.fill || ldp > 0) {
    at::parallel_for(0, M, std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(K, 1)),
                     [&](int64_t begin, int64_t end) {
                       if (act.fill) act.fill(begin, end);
                       if (ldp > 0)
                         prepare(codes + begin * K, act.a_signed, K, end - begin, K,
                                 prepared.get() + begin * ldp);
                     });
  }

  // Per-column epilogue parameters, and a float32 destination.
  const at::Tensor ws = w_scale.numel() == N ? float_on_cpu(w_scale).contiguous()
                                             : float_on_cpu(w_scale).reshape({1}).expand({N}).contiguous();
  const at::Tensor b = bias.has_value() ? float_on_cpu(*bias).contiguous() : at::Tensor();
  at::Tensor y32 = out.scalar_type() == at::kFloat ? out : at::empty({M, N}, out.options().dtype(at::kFloat));
  const Epilogue ep{act.zp, act.x_scale, ws.const_data_ptr<float>(),
                    bias.has_value() ? b.const_data_ptr<float>() : nullptr,
                    y32.mutable_data_ptr<float>(), N};

  // Plain weights: the tasks of the first row tile write the weight's row
  // sums here, taken in their pass over it (the plain kernel's, or packing).
  std::vector<int32_t> sums(packed_arg ? 0 : static_cast<size_t>(N));
  const uint8_t* plain_a = ldp > 0 ? prepared.get() : codes;
  const int8_t* wp = packed_arg ? nullptr : w.const_data_ptr<int8_t>();

  const int64_t m_tiles = (M + kTileM - 1) / kTileM, n_tiles = (N + kTileN - 1) / kTileN;
  // Tiles in n-major order, so a thread's consecutive tiles share weights.
  at::parallel_for(0, m_tiles * n_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> chunk;  // pack_now: columns chunk_n0 .. + 64, packed
    int64_t chunk_n0 = -1;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = (t % m_tiles) * kTileM, n0 = (t / m_tiles) * kTileN;
      const int64_t m1 = std::min(M, m0 + kTileM), n1 = std::min(N, n0 + kTileN);
      if (packed_arg) {
        kern.gemm_packed(prepared.get(), codes, act.a_signed, pw, m0, m1, n0, n1, ep);
      } else if (pack_now) {
        const int64_t cols = n1 - n0;
        if (n0 != chunk_n0) {
          chunk.resize(static_cast<size_t>(cols * packed_rows(K) * 4));
          pack(wp + n0 * K, K, cols, K, chunk.data(), kern.pack_panels);  // (serial: in a task)
          chunk_n0 = n0;
        }
        const PackedWeight view{chunk.data(), cols, K};
        if (m0 == 0)
          for (int64_t j = 0; j < cols; ++j) sums[n0 + j] = view.sum(j);
        // The chunk's columns start at 0: so do the epilogue's.
        Epilogue e = ep;
        e.w_scale += n0;
        if (e.bias != nullptr) e.bias += n0;
        e.y += n0;
        kern.gemm_packed(prepared.get(), codes, act.a_signed, view, m0, m1, 0, cols, e);
      } else {
        kern.gemm_plain(PlainTask{plain_a, ldp, act.a_signed, wp, N, K, m0, m1, n0, n1,
                                  m0 == 0 ? sums.data() : nullptr},
                        ep);
      }
    }
  });
  // (The output is not returned when this throws.)
  if (w_sum.has_value()) check_weight_sums(op, *w_sum, sums.data());
  if (!y32.is_same(out)) out.view({M, N}).copy_(y32);
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
  const int64_t K = x.size(-1);
  const int64_t M = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  at::Tensor out =
      at::empty(linear_output_shape(x, args.N), x.options().dtype(args.out_dtype));
  // Per-row parameters, expanded from per-tensor ones.
  const PerRow<float> xs{args.x_scale.const_data_ptr<float>(), args.x_scale.numel() != 1};
  const PerRow<int32_t> xz{args.x_zero_point.const_data_ptr<int32_t>(),
                           args.x_zero_point.numel() != 1};
  std::vector<float> scales(static_cast<size_t>(M));
  std::vector<int32_t> zps(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) {
    scales[m] = xs[m];
    zps[m] = xz[m];
  }
  linear("torch_quant.quantized_linear",
         Activations{x.const_data_ptr(), args.a_signed, M, K, scales.data(), zps.data(), {}},
         w_q.contiguous(), w_sum, args.w_scale, bias, out);
  return out;
}

at::Tensor dynamic_quantized_linear_cpu(const at::Tensor& x_in, const at::Tensor& w_q,
                                        const at::Tensor& w_scale,
                                        const std::optional<at::Tensor>& bias,
                                        const std::optional<at::Tensor>& w_sum,
                                        std::string_view act_mode,
                                        const std::optional<at::Tensor>& smooth_arg,
                                        int64_t hadamard_block) {
  const auto [mode, N, ws, smooth] = check_dynamic_quantized_linear_args(
      "torch_quant.dynamic_quantized_linear", x_in, w_q, w_scale, bias, w_sum, act_mode,
      smooth_arg, hadamard_block, ValueCheck::Read);
  const at::Tensor x = x_in.contiguous();
  const int64_t K = x.size(-1);
  const int64_t M = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  at::Tensor out = at::empty(linear_output_shape(x, N), x.options());

  // Per-token quantization, row by row as quantize_per_token does it, into
  // the codes the kernels read (filled inside linear()'s preparing pass).
  const bool a_signed = mode == Mode::Symmetric;
  // Not value-initialised: every byte is written by fill.
  const std::unique_ptr<uint8_t[]> codes_buf(new uint8_t[static_cast<size_t>(M * K)]);
  uint8_t* codes = codes_buf.get();
  std::vector<float> scales(static_cast<size_t>(M));
  std::vector<int32_t> zps(static_cast<size_t>(M));
  // With smooth and/or hadamard_block, each row is first multiplied by the
  // factors and then rotated (in float32, in a buffer of the thread's,
  // quant_math.h) and the result is what gets quantized.
  const float* sm = smooth.defined() ? smooth.const_data_ptr<float>() : nullptr;
  const auto quantize_one = [&](const auto* row, int64_t r) {
    const QParams p = a_signed
        ? quantize_row(row, K, mode, 8, reinterpret_cast<int8_t*>(codes) + r * K)
        : quantize_row(row, K, mode, 8, codes + r * K);
    scales[r] = p.scale;
    zps[r] = p.zero_point;
  };
  const auto fill = [&](int64_t begin, int64_t end) {
    visit_float(x.scalar_type(), [&](auto tag) {
      using In = decltype(tag);
      const In* xp = x.const_data_ptr<In>();
      if (sm == nullptr && hadamard_block == 0) {
        for (int64_t r = begin; r < end; ++r) quantize_one(xp + r * K, r);
        return;
      }
      std::vector<float> buf(static_cast<size_t>(K));
      for (int64_t r = begin; r < end; ++r) {
        const In* row = xp + r * K;
        if (sm != nullptr) {
          for (int64_t k = 0; k < K; ++k) buf[k] = smoothed(static_cast<float>(row[k]), sm[k]);
        } else {
          for (int64_t k = 0; k < K; ++k) buf[k] = static_cast<float>(row[k]);
        }
        if (hadamard_block > 0) hadamard(buf.data(), K, hadamard_block);
        quantize_one(buf.data(), r);
      }
    });
  };
  linear("torch_quant.dynamic_quantized_linear",
         Activations{codes, a_signed, M, K, scales.data(), zps.data(), fill}, w_q.contiguous(),
         w_sum, ws, bias, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CPU, m) {
  m.impl("quantized_linear", &quantized_linear_cpu);
  m.impl("dynamic_quantized_linear", &dynamic_quantized_linear_cpu);
}

}  // namespace torch_quant::cpu
