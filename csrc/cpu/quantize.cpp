// CPU kernels of choose_qparams, quantize, dequantize and quantize_per_token.
//
// The ops only check arguments, lay the data out as [outer, channels, inner]
// (checks.h) and cut it into contiguous pieces for at::parallel_for; the
// per-element work is done by the row kernels (row_kernels.h), which are
// vectorised per ISA. Every result is independent of the thread count: the
// element-wise ops trivially, the reductions because min and max are exact.
#include <algorithm>
#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../quant_math.h"
#include "row_kernels.h"
#include "../visit.h"

namespace torch_quant::cpu {
namespace {

// Elements per parallel task: large enough that a task costs far more than
// handing it to a thread, small enough to split a 1 MB tensor across cores.
constexpr int64_t kGrain = 1 << 15;

at::ScalarType code_dtype(Mode mode) {
  return mode == Mode::Symmetric ? at::kChar : at::kByte;
}

// Calls row(pos, len, c) on the pieces of [0, numel) whose elements all use
// pair c; when inner == 1 (a new pair every element, e.g. axis=-1) calls
// pc(pos, len, c0) on pieces of one row whose elements use pairs c0, c0+1, ...
template <typename Row, typename PerChannel>
void for_each_piece(const ParamLayout& layout, int64_t numel, const Row& row,
                    const PerChannel& pc) {
  const int64_t channels = layout.channels, inner = layout.inner;
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t pos = begin; pos < end;) {
      if (inner == 1 && channels > 1) {
        const int64_t c0 = pos % channels;
        const int64_t len = std::min(end - pos, channels - c0);
        pc(pos, len, c0);
        pos += len;
      } else {
        const int64_t c = (pos / inner) % channels;
        const int64_t len = std::min(end - pos, inner - pos % inner);
        row(pos, len, c);
        pos += len;
      }
    }
  });
}

// Finite min / max of each channel of x (contiguous) under `layout`.
template <typename In>
void channel_minmax(const In* x, const ParamLayout& layout, int64_t numel,
                    std::vector<float>& lo, std::vector<float>& hi) {
  const int64_t outer = layout.outer, channels = layout.channels, inner = layout.inner;
  if (channels == 1) {
    // Per tensor: fixed-size chunks reduced in parallel, then combined.
    constexpr int64_t kChunk = 1 << 16;
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    std::vector<float> plo(chunks, INFINITY), phi(chunks, -INFINITY);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t start = i * kChunk;
        minmax(x + start, std::min(kChunk, numel - start), &plo[i], &phi[i]);
      }
    });
    for (int64_t i = 0; i < chunks; ++i) {
      lo[0] = std::fmin(lo[0], plo[i]);
      hi[0] = std::fmax(hi[0], phi[i]);
    }
  } else if (inner == 1) {
    // The channel is the last dim: reduce down the rows, a block of columns
    // per task, with vector min/max across columns.
    const int64_t grain = std::max<int64_t>(64, kGrain / std::max<int64_t>(outer, 1));
    at::parallel_for(0, channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t o = 0; o < outer; ++o) {
        minmax_columns(x + o * channels + begin, end - begin, &lo[begin], &hi[begin]);
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(outer * inner, 1));
    at::parallel_for(0, channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t o = 0; o < outer; ++o) {
          minmax(x + (o * channels + c) * inner, inner, &lo[c], &hi[c]);
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_cpu(const at::Tensor& x_in,
                                                      std::string_view mode_name,
                                                      std::optional<int64_t> axis,
                                                      int64_t bits) {
  const auto [mode, layout] =
      check_choose_qparams_args("torch_quant.choose_qparams", x_in, mode_name, axis, bits);
  const at::Tensor x = x_in.contiguous();
  std::vector<float> lo(layout.channels, INFINITY), hi(layout.channels, -INFINITY);
  visit_float(x.scalar_type(), [&](auto tag) {
    using In = decltype(tag);
    channel_minmax(x.const_data_ptr<In>(), layout, x.numel(), lo, hi);
  });
  const auto shape = axis.has_value() ? std::vector<int64_t>{layout.channels}
                                      : std::vector<int64_t>{};
  at::Tensor scale = at::empty(shape, x.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(shape, x.options().dtype(at::kInt));
  float* s = scale.mutable_data_ptr<float>();
  int32_t* z = zero_point.mutable_data_ptr<int32_t>();
  for (int64_t c = 0; c < layout.channels; ++c) {
    const QParams p = compute_qparams(lo[c], hi[c], mode, static_cast<int>(bits));
    s[c] = p.scale;
    z[c] = p.zero_point;
  }
  return {scale, zero_point};
}

std::vector<float> as_floats(const at::Tensor& z) {
  const int64_t* p = z.const_data_ptr<int64_t>();
  return std::vector<float>(p, p + z.numel());
}

at::Tensor quantize_cpu(const at::Tensor& x_in, const at::Tensor& scale,
                        const at::Tensor& zero_point, std::string_view mode_name,
                        std::optional<int64_t> axis, int64_t bits) {
  const auto [mode, range, layout, s, z] =
      check_quantize_args("torch_quant.quantize", x_in, scale, zero_point, mode_name, axis, bits,
                          ValueCheck::Read);

  const at::Tensor x = x_in.contiguous();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(code_dtype(mode)));
  // inv_scale = 1.0f / scale in float32, exactly as torch.quantize_per_* does.
  std::vector<float> inv_scale(s.numel()), zp = as_floats(z);
  const float* sp = s.const_data_ptr<float>();
  for (int64_t i = 0; i < s.numel(); ++i) inv_scale[i] = 1.0f / sp[i];
  const float qmin = static_cast<float>(range.qmin), qmax = static_cast<float>(range.qmax);

  visit_float(x.scalar_type(), [&](auto in_tag) {
    visit_code(q.scalar_type(), [&](auto q_tag) {
      using In = decltype(in_tag);
      using Q = decltype(q_tag);
      const In* xp = x.const_data_ptr<In>();
      Q* qp = q.mutable_data_ptr<Q>();
      for_each_piece(
          layout, x.numel(),
          [&](int64_t pos, int64_t len, int64_t c) {
            quantize(xp + pos, len, inv_scale[c], zp[c], qmin, qmax, qp + pos);
          },
          [&](int64_t pos, int64_t len, int64_t c0) {
            quantize_pc(xp + pos, len, &inv_scale[c0], &zp[c0], qmin, qmax, qp + pos);
          });
    });
  });
  return q;
}

at::Tensor dequantize_cpu(const at::Tensor& q_in, const at::Tensor& scale,
                          const at::Tensor& zero_point, std::optional<int64_t> axis,
                          std::optional<at::ScalarType> dtype) {
  const auto [out_dtype, layout, s, z] =
      check_dequantize_args("torch_quant.dequantize", q_in, scale, zero_point, axis, dtype,
                            ValueCheck::Read);
  const auto code = q_in.scalar_type();

  const at::Tensor q = q_in.contiguous();
  at::Tensor x = at::empty(q.sizes(), q.options().dtype(out_dtype));
  const float* sp = s.const_data_ptr<float>();
  const std::vector<float> zp = as_floats(z);

  visit_code(code, [&](auto q_tag) {
    visit_float(out_dtype, [&](auto out_tag) {
      using Q = decltype(q_tag);
      using Out = decltype(out_tag);
      const Q* qp = q.const_data_ptr<Q>();
      Out* xp = x.mutable_data_ptr<Out>();
      for_each_piece(
          layout, q.numel(),
          [&](int64_t pos, int64_t len, int64_t c) {
            dequantize(qp + pos, len, sp[c], zp[c], xp + pos);
          },
          [&](int64_t pos, int64_t len, int64_t c0) {
            dequantize_pc(qp + pos, len, sp + c0, &zp[c0], xp + pos);
          });
    });
  });
  return x;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_token_cpu(
    const at::Tensor& x_in, std::string_view mode_name, int64_t bits) {
  const Mode mode =
      check_quantize_per_token_args("torch_quant.quantize_per_token", x_in, mode_name, bits);
  const at::Tensor x = x_in.contiguous();
  const auto row_shape = x.sizes().slice(0, x.dim() - 1);
  const int64_t k = x.size(-1);
  const int64_t rows = c10::multiply_integers(row_shape);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(code_dtype(mode)));
  at::Tensor scale = at::empty(row_shape, x.options().dtype(at::kFloat));
  at::Tensor zero_point = at::empty(row_shape, x.options().dtype(at::kInt));
  float* sp = scale.mutable_data_ptr<float>();
  int32_t* zp = zero_point.mutable_data_ptr<int32_t>();

  visit_float(x.scalar_type(), [&](auto in_tag) {
    visit_code(q.scalar_type(), [&](auto q_tag) {
      using In = decltype(in_tag);
      using Q = decltype(q_tag);
      const In* xp = x.const_data_ptr<In>();
      Q* qp = q.mutable_data_ptr<Q>();
      // One row at a time, so the quantizing pass re-reads it from cache.
      const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1));
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const QParams p = quantize_row(xp + r * k, k, mode, static_cast<int>(bits), qp + r * k);
          sp[r] = p.scale;
          zp[r] = p.zero_point;
        }
      });
    });
  });
  return {q, scale, zero_point};
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CPU, m) {
  m.impl("choose_qparams", &choose_qparams_cpu);
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("quantize_per_token", &quantize_per_token_cpu);
}

}  // namespace torch_quant::cpu
