// The portable int8 GEMM (gemm.h): plain int32 multiply-adds, the reference
// the vector kernels are tested against, and the scalar epilogue they share.
#include <cstdint>
#include <cstring>
#include <vector>

#include "../quant_math.h"
#include "gemm.h"

namespace torch_quant::cpu {

float finish_scalar(int32_t dot, int64_t m, int64_t n, int32_t zp_shift, int32_t w_sum,
                    const Epilogue& ep) {
  float y = linear_epilogue(dot, ep.zp[m] + zp_shift, w_sum, ep.x_scale[m], ep.w_scale[n]);
  if (ep.bias != nullptr) y += ep.bias[n];
  return y;
}

namespace scalar {
namespace {

template <typename A>
int32_t dot_plain(const A* x, const int8_t* y, int64_t K) {
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += int32_t{x[k]} * int32_t{y[k]};
  return acc;
}

}  // namespace

// The scalar kernel reads the codes as they are: nothing to prepare.
int64_t prepared_row_bytes(int64_t /*K*/) { return 0; }

void prepare_rows(const void*, bool, int64_t, int64_t, int64_t, uint8_t*) {}

void gemm_packed(const uint8_t* /*prepared*/, const void* a, bool a_signed,
                 const PackedWeight& w, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                 const Epilogue& ep) {
  const int64_t K = w.K;
  std::vector<int8_t> col(static_cast<size_t>(K));
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < K; ++k) col[k] = w.at(n, k);
    const int32_t sum = w.sum(n);
    for (int64_t m = m0; m < m1; ++m) {
      const int32_t dot = a_signed
          ? dot_plain(static_cast<const int8_t*>(a) + m * K, col.data(), K)
          : dot_plain(static_cast<const uint8_t*>(a) + m * K, col.data(), K);
      ep.y[m * ep.ldy + n] = finish_scalar(dot, m, n, 0, sum, ep);
    }
  }
}

// The scalar plain kernel reads the codes as they are too.
int64_t plain_row_bytes(int64_t /*K*/) { return 0; }

void prepare_plain_rows(const void*, bool, int64_t, int64_t, int64_t, uint8_t*) {}

void gemm_plain(const PlainTask& t, const Epilogue& ep) {
  const int64_t K = t.K, cols = t.n1 - t.n0;
  std::vector<int32_t> sums(static_cast<size_t>(cols)), dot(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) sums[j] = row_sum(t.w + (t.n0 + j) * K, K);
  if (t.sums != nullptr) std::memcpy(t.sums + t.n0, sums.data(), sizeof(int32_t) * cols);
  for (int64_t m = t.m0; m < t.m1; ++m) {
    for (int64_t j = 0; j < cols; ++j) {
      const int8_t* row = t.w + (t.n0 + j) * K;
      dot[j] = t.a_signed ? dot_plain(reinterpret_cast<const int8_t*>(t.a) + m * K, row, K)
                          : dot_plain(t.a + m * K, row, K);
    }
    finish_row(dot.data(), sums.data(), m, t.n0, cols, 0, ep);
  }
}

}  // namespace scalar

}  // namespace torch_quant::cpu
