// The packed weight layout of the AVX2 panel kernel (gemm_avx2.cpp).
//
// A [N, K] int8 weight becomes ceil(N / 16) panels of 16 columns. A panel
// holds nq = ceil(K / 4) groups of 64 bytes: for four consecutive k, two
// 32-byte vectors with 4 bytes (k .. k+3) of 8 columns each. Missing columns
// and k are zero. Plain C++: the packer runs on any CPU, the kernel on AVX2.
#pragma once

#include <cstdint>

namespace torch_quant::cpu {

constexpr int64_t kPanelCols = 16;

inline int64_t panel_groups(int64_t K) { return (K + 3) / 4; }
inline int64_t panel_bytes(int64_t N, int64_t K) {
  return (N + kPanelCols - 1) / kPanelCols * panel_groups(K) * 64;
}

// Packs w (N x K, row stride ldw) into out (panel_bytes(N, K) bytes). Returns
// false, leaving out partly written, if w holds -128: the panel kernel needs
// every weight in [-127, 127] (gemm_avx2.cpp says why).
bool pack_panels(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* out);

}  // namespace torch_quant::cpu
