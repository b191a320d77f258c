// Exact int8 GEMM kernels behind quantized_linear on CPU.
//
// Two kinds, one set per instruction set:
//
// * Packed kernels (the main path): the weight in the packed layout
//   (packed.h), the activations prepared once per call into the layout the
//   kernel reads (prepare_rows), and the epilogue fused:
//
//     dot[m,n] = sum_k a[m,k] * w[n,k]                       (int32, exact)
//     y[m,n]   = float(dot - zp[m] * w_sum[n]) * (x_scale[m] * w_scale[n]) + bias[n]
//
//   written as float32. Kernels that see shifted activations (a + 128 or
//   a - 128, to reach the operand type of their instruction) fold the shift
//   into zp, which is exact in wrapping int32 arithmetic.
//
//     scalar       int32 multiply-adds
//     avx2         vpmaddubsw on |a| with a's sign moved onto the weight (needs
//                  weights in [-127, 127]: panels holding -128 take an int16
//                  path), vpmaddwd into int32 (gemm_avx2.cpp)
//     avx512_vnni  vpdpbusd: uint8 a (int8 a + 128) x int8 w, 64 products an
//                  instruction, register-blocked (gemm_avx512_vnni.cpp)
//
// * Plain kernels (gemm_plain): the public [N, K] weight as it is, for the raw
//   ops given an unpacked weight and few rows, where packing the weight on
//   every call would cost more than it saves. They read each weight row once
//   per tile and take its sum in the same pass (the epilogue needs it for zero
//   points and shifts, and the op checks a given w_sum against it), so a plain
//   weight costs no pass of its own: a row-dot product per output, several
//   rows and columns per micro-tile, reduced horizontally once at the end.
//
// The caller keeps K within the exact-int32 limit (checks.h), so no kernel
// can overflow, and every kernel returns the same numbers: no saturating
// arithmetic anywhere, and the epilogue is the same float operations in the
// same order (quant_math.h: linear_epilogue).
#pragma once

#include <cstdint>

#include "../quant_math.h"
#include "isa.h"
#include "packed.h"
#include "target.h"

namespace torch_quant::cpu {

// Everything the fused epilogue needs, per row and per column (the caller
// expands per-tensor values). Pointers index from row 0 and column 0 of the
// whole problem.
struct Epilogue {
  const int32_t* zp;       // [M] activation zero points
  const float* x_scale;    // [M]
  const float* w_scale;    // [N]
  const float* bias;       // [N] or null
  float* y;                // [M, ldy] float32 output
  int64_t ldy;
};

// The scalar epilogue of one output (quant_math.h's linear_epilogue plus bias);
// vector kernels do the same operations lane by lane.
float finish_scalar(int32_t dot, int64_t m, int64_t n, int32_t zp_shift, int32_t w_sum,
                    const Epilogue& ep);

// One row of outputs from int32 dot products: y[j] = finish_scalar(dot[j], m,
// n0 + j, zp_shift, sums[j]) for j < cols, written as a plain loop that the
// compiler vectorizes in each ISA's file (the same float operations, in the
// same order, lane by lane: -ffp-contract=off keeps them unfused).
inline void finish_row(const int32_t* dot, const int32_t* sums, int64_t m, int64_t n0,
                       int64_t cols, int32_t zp_shift, const Epilogue& ep) {
  const int32_t zp = ep.zp[m] + zp_shift;
  const float xs = ep.x_scale[m];
  const float* ws = ep.w_scale + n0;
  float* y = ep.y + m * ep.ldy + n0;
  if (ep.bias == nullptr) {
    for (int64_t j = 0; j < cols; ++j) y[j] = linear_epilogue(dot[j], zp, sums[j], xs, ws[j]);
  } else {
    const float* b = ep.bias + n0;
    for (int64_t j = 0; j < cols; ++j)
      y[j] = linear_epilogue(dot[j], zp, sums[j], xs, ws[j]) + b[j];
  }
}

// sum_k row[k]: a plain weight row's sum (the plain kernels' epilogue and the
// check of a given w_sum need it).
inline int32_t row_sum(const int8_t* row, int64_t K) {
  int32_t s = 0;
  for (int64_t k = 0; k < K; ++k) s += row[k];
  return s;
}

// One task of the plain kernels: rows [m0, m1) x columns [n0, n1) of the
// output, from the activations as prepare_plain_rows left them (plain_ld
// bytes a row; the codes themselves, row stride K, where plain_ld is 0) and
// the plain weight w ([N, K], row stride K: all of it, so that a task may
// prefetch past its own columns). Where `sums` is set, the task
// also writes the row sums of w's rows n0 .. n1 - 1 into sums[n0 .. n1).
struct PlainTask {
  const uint8_t* a;
  int64_t plain_ld;
  bool a_signed;
  const int8_t* w;
  int64_t N, K;
  int64_t m0, m1, n0, n1;
  int32_t* sums;
};

#define TORCH_QUANT_DECLARE_GEMM                                                         \
  /* Bytes per prepared activation row. */                                               \
  int64_t prepared_row_bytes(int64_t K);                                                 \
  /* Codes (int8 when a_signed, else uint8; M rows of stride lda) to the rows */         \
  /* the packed kernel reads (prepared_row_bytes(K) each). */                            \
  void prepare_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,     \
                    uint8_t* out);                                                       \
  /* Rows [m0, m1) x columns [n0, n1) of the epilogue's y; n0 a multiple of 16. */       \
  /* `a` holds codes as given (plain) for kernels that need them (avx2's -128 path). */  \
  void gemm_packed(const uint8_t* prepared, const void* a, bool a_signed,                \
                   const PackedWeight& w, int64_t m0, int64_t m1, int64_t n0, int64_t n1, \
                   const Epilogue& ep);                                                  \
  /* Bytes per activation row as the plain kernel reads it (0: the codes as given). */ \
  int64_t plain_row_bytes(int64_t K);                                                    \
  void prepare_plain_rows(const void* a, bool a_signed, int64_t lda, int64_t M, int64_t K,\
                          uint8_t* out);                                                 \
  /* One task of the plain kernel (PlainTask), epilogue fused. */                        \
  void gemm_plain(const PlainTask& t, const Epilogue& ep);

namespace scalar { TORCH_QUANT_DECLARE_GEMM }
namespace avx2 {
TORCH_QUANT_DECLARE_GEMM
// As avx512_vnni::pack_panels, with AVX2 (8 x 8 transposes).
void pack_panels(const int8_t* w, int64_t ldw, int64_t K, int64_t p0, int64_t p1, int8_t* out);
}  // namespace avx2
namespace avx512_vnni {
TORCH_QUANT_DECLARE_GEMM
// Packs the full panels [p0, p1) of w ([N, K], row stride ldw; N >= 16 * p1)
// into out, the whole packed tensor: the same bytes as pack_columns.
void pack_panels(const int8_t* w, int64_t ldw, int64_t K, int64_t p0, int64_t p1, int8_t* out);
}  // namespace avx512_vnni

// The GEMM entry points for one instruction set, chosen once per call
// (linear.cpp reads active_isa() once and passes it down, so a switch from
// another thread cannot change the kernel halfway through a call). The one
// table of them, and the measured thresholds, is gemm_dispatch.cpp.
struct GemmKernels {
  int64_t (*prepared_row_bytes)(int64_t);
  void (*prepare_rows)(const void*, bool, int64_t, int64_t, int64_t, uint8_t*);
  void (*gemm_packed)(const uint8_t*, const void*, bool, const PackedWeight&, int64_t, int64_t,
                      int64_t, int64_t, const Epilogue&);
  int64_t (*plain_row_bytes)(int64_t);
  void (*prepare_plain_rows)(const void*, bool, int64_t, int64_t, int64_t, uint8_t*);
  void (*gemm_plain)(const PlainTask&, const Epilogue&);
  // Packs full panels [p0, p1) by transposes (null: pack_columns packs all).
  PanelPacker pack_panels;
  // With a plain weight, from this many rows on it pays to pack it for the
  // call (an extra pass over the weight) and run the packed kernel; measured
  // per ISA (docs/design.md, "Plain weights").
  int64_t pack_per_call_min_m;
};

GemmKernels gemm_kernels(Isa isa);

}  // namespace torch_quant::cpu
