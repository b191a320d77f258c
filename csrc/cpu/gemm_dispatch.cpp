// The one table of GEMM kernels per instruction set (gemm.h), with the row
// count from which a plain weight is packed for the call. The thresholds are
// measured (docs/design.md, "Plain weights": the plain kernel against packing
// per call, K = 4096, weights from DRAM): the plain kernel stays within 1.2x
// of the packed weight's time up to ~64-96 rows on AVX-512 VNNI and ~64-128 on
// AVX2, where packing per call costs 1.1-1.2x.
#include "gemm.h"

namespace torch_quant::cpu {

namespace {
constexpr int64_t kPackPerCallVnni = 80;
constexpr int64_t kPackPerCallAvx2 = 128;
constexpr int64_t kNever = int64_t{1} << 62;  // the scalar kernels never pack
}  // namespace

GemmKernels gemm_kernels(Isa isa) {
#if TORCH_QUANT_X86
  switch (isa) {
    case Isa::Avx512Vnni:
      return {&avx512_vnni::prepared_row_bytes, &avx512_vnni::prepare_rows,
              &avx512_vnni::gemm_packed,        &avx512_vnni::plain_row_bytes,
              &avx512_vnni::prepare_plain_rows, &avx512_vnni::gemm_plain,
              &avx512_vnni::pack_panels,        kPackPerCallVnni};
    case Isa::Avx512:  // without VNNI the AVX2 kernels are the fastest exact ones
    case Isa::Avx2:
      return {&avx2::prepared_row_bytes, &avx2::prepare_rows,       &avx2::gemm_packed,
              &avx2::plain_row_bytes,    &avx2::prepare_plain_rows, &avx2::gemm_plain,
              &avx2::pack_panels,        kPackPerCallAvx2};
    default:
      break;
  }
#endif
  (void)isa;
  return {&scalar::prepared_row_bytes, &scalar::prepare_rows,       &scalar::gemm_packed,
          &scalar::plain_row_bytes,    &scalar::prepare_plain_rows, &scalar::gemm_plain,
          nullptr,                     kNever};
}

}  // namespace torch_quant::cpu
