// Packed copies of int8 weights, made on first use and kept while the weight
// lives, so that the GEMM does not repack the same weight on every call.
//
// A cached copy is keyed on the weight tensor itself (a weak reference to its
// TensorImpl) and is used only while the tensor's data pointer, shape and
// version counter are those it was packed from: any in-place change through
// the tensor (copy_, load_state_dict, fill_, ...) bumps the version and the
// next call repacks. Not cached: inference tensors (they have no version
// counter), non-contiguous weights (their contiguous copy is a temporary),
// and anything beyond the byte budget (TORCH_QUANT_WEIGHT_CACHE_MB, default
// 1024; 0 turns the cache off). A write through `w.data`, which has its own
// version counter, is invisible here: call clear_weight_cache() after one.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace torch_quant::cpu {

struct PackedPanels {
  std::vector<int8_t> data;  // panels.h layout; empty when the weight holds -128
};

// The panels of w ([N, K] int8), packing them now if needed; nullptr when w
// is not cached (see above) or cannot be packed (it holds -128).
std::shared_ptr<const PackedPanels> cached_panels(const at::Tensor& w);

void clear_weight_cache();
// (weights, bytes) held now, after dropping those of weights that are gone.
std::pair<int64_t, int64_t> weight_cache_info();

}  // namespace torch_quant::cpu
