// Packing and unpacking int8 weights (packed.h), and the ops pack_weight /
// unpack_weight. The packed weight is an ordinary tensor the caller owns:
// nothing is cached here.
#include "packed.h"

#include <algorithm>
#include <cstring>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "gemm.h"
#include "isa.h"

namespace torch_quant::cpu {

void pack_columns(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int64_t n0, int64_t n1,
                  int8_t* out) {
  const PackedWeight pw{out, N, K};
  const int64_t kg = pw.kg(), kfull = K / 4;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t p = n / kPanelCols;
    const int64_t stride = 4 * pw.panel_cols(p);
    int8_t* dst = out + p * 64 * pw.g() + 4 * (n % kPanelCols);
    const int8_t* row = w + n * ldw;
    int32_t sum = 0, has_min = 0;
    for (int64_t k = 0; k < K; ++k) {
      sum += row[k];
      has_min |= row[k] == -128;
    }
    for (int64_t q = 0; q < kfull; ++q) std::memcpy(dst + q * stride, row + 4 * q, 4);
    if (kfull < kg) {  // the last group, zero padded
      int8_t tail[4] = {0, 0, 0, 0};
      std::memcpy(tail, row + 4 * kfull, static_cast<size_t>(K - 4 * kfull));
      std::memcpy(dst + kfull * stride, tail, 4);
    }
    const int32_t flags =
        static_cast<int32_t>(K << kFlagKShift) | (has_min ? kFlagHasMin : 0);
    std::memcpy(dst + kg * stride, &sum, 4);
    std::memcpy(dst + (kg + 1) * stride, &flags, 4);
  }
}

void pack(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* out,
          PanelPacker panels_fn) {
  // Whole panels per task: columns of one panel share cache lines.
  const int64_t panels = (N + kPanelCols - 1) / kPanelCols, full = N / kPanelCols;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(kPanelCols * K, 1));
  // The full panels by transposes where the CPU has them (AVX-512: 6x faster
  // than the column loop at 4096 x 4096, a copy's speed), the narrower last
  // one here.
  at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
    if (panels_fn != nullptr && begin < full) {
      panels_fn(w, ldw, K, begin, std::min(end, full), out);
      begin = std::min(end, full);
    }
    if (begin < end)
      pack_columns(w, ldw, N, K, begin * kPanelCols, std::min(N, end * kPanelCols), out);
  });
}

void unpack(const PackedWeight& pw, int8_t* out) {
  const int64_t N = pw.N, K = pw.K;
  at::parallel_for(0, N, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(K, 1)),
                   [&](int64_t begin, int64_t end) {
                     // a group of 4 weights moves as one 4-byte word (the
                     // backward of the linear ops unpacks on every call)
                     const int64_t groups = K / 4;
                     for (int64_t n = begin; n < end; ++n) {
                       const int64_t p = n / kPanelCols;
                       const int64_t stride = 4 * pw.panel_cols(p);
                       const int8_t* src = pw.panel(p) + 4 * (n % kPanelCols);
                       int8_t* dst = out + n * K;
                       for (int64_t q = 0; q < groups; ++q)
                         std::memcpy(dst + 4 * q, src + q * stride, 4);
                       for (int64_t k = 4 * groups; k < K; ++k)
                         dst[k] = src[groups * stride + k % 4];
                     }
                   });
}

void check_packed_k(const char* op, const char* name, const PackedWeight& pw) {
  if (pw.N == 0) return;
  const int64_t packed_k = pw.flags(0) >> kFlagKShift;
  TORCH_CHECK(packed_k == pw.K, op, ": K mismatch: ", name, " was packed from a weight with K = ",
              packed_k, " columns, but K = ", pw.K, " here");
}

namespace {

at::Tensor pack_weight_cpu(const at::Tensor& w_q) {
  check_pack_weight_args("torch_quant.pack_weight", w_q);
  const at::Tensor w = w_q.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor out = at::empty({N, packed_rows(K), 4}, w.options());
  if (out.numel() > 0)
    pack(w.const_data_ptr<int8_t>(), K, N, K, out.mutable_data_ptr<int8_t>(),
         gemm_kernels(active_isa()).pack_panels);
  return out;
}

at::Tensor unpack_weight_cpu(const at::Tensor& w_packed, int64_t K) {
  check_unpack_weight_args("torch_quant.unpack_weight", w_packed, K);
  const at::Tensor pw = w_packed.contiguous();
  const int64_t N = pw.size(0);
  const PackedWeight view{pw.const_data_ptr<int8_t>(), N, K};
  check_packed_k("torch_quant.unpack_weight", "w_packed", view);
  at::Tensor out = at::empty({N, K}, pw.options());
  if (out.numel() > 0) unpack(view, out.mutable_data_ptr<int8_t>());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_quant, CPU, m) {
  m.impl("pack_weight", &pack_weight_cpu);
  m.impl("unpack_weight", &unpack_weight_cpu);
}

#ifdef TORCH_QUANT_WITH_CUDA
// The CUDA kernels read the plain [N, K] layout; the packed one exists on a
// GPU only on its way to or from the CPU (QuantLinear.to()). A conversion
// happens once per weight, so it goes through the CPU code above.
TORCH_LIBRARY_IMPL(torch_quant, CUDA, m) {
  m.impl("pack_weight", [](const at::Tensor& w_q) {
    check_pack_weight_args("torch_quant.pack_weight", w_q);
    return pack_weight_cpu(w_q.cpu()).to(w_q.device());
  });
  m.impl("unpack_weight", [](const at::Tensor& w_packed, int64_t K) {
    check_unpack_weight_args("torch_quant.unpack_weight", w_packed, K);
    return unpack_weight_cpu(w_packed.cpu(), K).to(w_packed.device());
  });
}
#endif

}  // namespace torch_quant::cpu
