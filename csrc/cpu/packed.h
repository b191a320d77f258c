// The packed weight layout that every CPU GEMM kernel reads (docs/semantics.md,
// "Packed weights"). One layout for all instruction sets, so a packed weight
// never has to be repacked when the kernel path changes.
//
// A [N, K] int8 weight becomes an int8 tensor of shape [N, G, 4] with
// Kg = ceil(K / 4) groups of four k and G = Kg + 2: per column, its Kg groups
// of four weights (zero padded past K), then its sum sum_k w[n, k] as a
// little-endian int32, then an int32 of flags (bit 0: the column holds -128;
// bits 8 and up: K, so that a K with the same ceil(K / 4) is caught).
// The bytes are ordered in panels of 16 columns: panel p holds columns
// 16p .. 16p + c - 1 (c = 16, or what is left for the last panel) and starts
// at byte p * 64 * G; inside it, group q of column 16p + j is at q * 4c + 4j.
// A full panel is thus G rows of 64 bytes: one zmm (or two ymm) of "four k of
// 16 columns" per group, the order vpdpbusd and vpmaddubsw consume, and a
// last row-pair of sums and flags the epilogue loads as vectors. The last,
// narrower panel keeps the tensor exactly N * G * 4 bytes, so that N (the
// output width) is the tensor's first dimension.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace torch_quant::cpu {

constexpr int64_t kPanelCols = 16;
constexpr int32_t kFlagHasMin = 1;  // the column holds -128
constexpr int kFlagKShift = 8;      // flags >> kFlagKShift: the K it was packed with

constexpr int64_t kGroupK = 4;       // k per group: the bytes vpdpbusd multiplies into one int32
constexpr int64_t kTailGroups = 2;   // per column after its groups: its sum and its flags

inline int64_t packed_groups(int64_t K) { return (K + kGroupK - 1) / kGroupK; }
// G of the packed [N, G, 4]: K's groups, then the sum and the flags.
inline int64_t packed_rows(int64_t K) { return packed_groups(K) + kTailGroups; }

// A packed weight as the kernels see it.
struct PackedWeight {
  const int8_t* data;
  int64_t N, K;

  int64_t kg() const { return packed_groups(K); }
  int64_t g() const { return packed_rows(K); }
  int64_t panels() const { return (N + kPanelCols - 1) / kPanelCols; }
  int panel_cols(int64_t p) const {
    const int64_t left = N - p * kPanelCols;
    return static_cast<int>(left < kPanelCols ? left : kPanelCols);
  }
  // Start of panel p; group q of its column j is at panel(p) + q * 4 * cols + 4 * j.
  const int8_t* panel(int64_t p) const { return data + p * 64 * g(); }
  int32_t word(int64_t n, int64_t q) const {
    const int64_t p = n / kPanelCols;
    int32_t v;
    std::memcpy(&v, panel(p) + q * 4 * panel_cols(p) + 4 * (n % kPanelCols), 4);
    return v;
  }
  int32_t sum(int64_t n) const { return word(n, kg()); }
  int32_t flags(int64_t n) const { return word(n, kg() + 1); }
  int8_t at(int64_t n, int64_t k) const {
    const int64_t p = n / kPanelCols;
    return panel(p)[(k / 4) * 4 * panel_cols(p) + 4 * (n % kPanelCols) + k % 4];
  }
  // Panel p as a full-width panel (16 columns, 64-byte groups), zero padded:
  // the kernels read the last, narrower panel through such a copy. Returns
  // panel(p) itself when it is full width; else fills `buf` (64 * g() bytes).
  const int8_t* full_panel(int64_t p, std::vector<int8_t>& buf) const {
    const int cols = panel_cols(p);
    if (cols == kPanelCols) return panel(p);
    buf.assign(static_cast<size_t>(64 * g()), 0);
    for (int64_t q = 0; q < g(); ++q) std::memcpy(buf.data() + q * 64, panel(p) + q * 4 * cols, 4 * cols);
    return buf.data();
  }
  // Whether any column of panel p holds -128 (the AVX2 panel kernel cannot
  // take those, gemm_avx2.cpp says why).
  bool panel_has_min(int64_t p) const {
    for (int j = 0; j < panel_cols(p); ++j)
      if (flags(p * kPanelCols + j) & kFlagHasMin) return true;
    return false;
  }
};

// Checks that the packed weight w_packed ([N, G, 4] int8, contiguous, on the
// CPU) was packed from a weight with K columns (the flags hold it): a K with
// the same ceil(K / 4) passes the shape checks but would read the wrong sums.
void check_packed_k(const char* op, const char* name, const PackedWeight& pw);

// Packs columns [n0, n1) of w ([N, K], row stride ldw) into out, the whole
// packed tensor (N * packed_rows(K) * 4 bytes).
void pack_columns(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int64_t n0, int64_t n1,
                  int8_t* out);
// Packs full panels [p0, p1) by transposes (an ISA's pack_panels, gemm.h).
using PanelPacker = void (*)(const int8_t* w, int64_t ldw, int64_t K, int64_t p0, int64_t p1,
                             int8_t* out);
// The whole weight, in parallel: full panels by `panels` where given (the
// call's ISA), the rest (or all, with null) by pack_columns; the same bytes
// either way.
void pack(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* out, PanelPacker panels);
// The inverse: out is [N, K] (row stride K).
void unpack(const PackedWeight& pw, int8_t* out);

}  // namespace torch_quant::cpu
