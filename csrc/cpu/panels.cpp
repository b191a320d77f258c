#include "panels.h"

#include <cstring>

namespace torch_quant::cpu {

bool pack_panels(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* out) {
  const int64_t nq = panel_groups(K), kfull = K / 4 * 4;
  std::memset(out, 0, static_cast<size_t>(panel_bytes(N, K)));
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* row = w + n * ldw;
    int8_t* base = out + (n / kPanelCols) * nq * 64 + ((n % kPanelCols) / 8) * 32 + (n % 8) * 4;
    uint32_t has_min = 0;
    int64_t q = 0;
    for (; q * 4 < kfull; ++q) {
      uint32_t v;
      std::memcpy(&v, row + q * 4, 4);
      // A byte equal to 0x80 (-128) is 0 in t = v ^ 0x80808080, and a zero
      // byte sets its top bit in (t - 0x01010101) & ~t.
      const uint32_t t = v ^ 0x80808080u;
      has_min |= (t - 0x01010101u) & ~t & 0x80808080u;
      std::memcpy(base + q * 64, &v, 4);
    }
    for (int64_t k = kfull; k < K; ++k) {
      has_min |= row[k] == -128;
      base[q * 64 + (k - kfull)] = row[k];
    }
    if (has_min != 0) return false;
  }
  return true;
}

}  // namespace torch_quant::cpu
