// One version of one tensor's contents, recognised later without reading them.
//
// Used by the caches that remember work done on a tensor (the CPU linear's
// packed weights, the CUDA ops' checked scales and zero points): the work is
// reused only while the tensor is the same live object with the same data
// pointer, shape, strides and version counter. Any in-place change through
// the tensor or a view of it (copy_, fill_, load_state_dict, set_, ...) bumps
// the version. Inference tensors have no version counter and are never
// remembered. A write through `t.data` (a separate version counter) or from
// outside PyTorch is not seen: the caches document how to clear themselves.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

namespace torch_quant {

class TensorVersion {
 public:
  // nullopt for a tensor that cannot be recognised later (an inference tensor).
  static std::optional<TensorVersion> of(const at::Tensor& t) {
    if (!t.defined() || t.is_inference()) return std::nullopt;
    return TensorVersion(t);
  }

  // The key to file it under: the TensorImpl's address, which stays the
  // object's for as long as any TensorVersion of it exists (the weak
  // reference keeps the allocation).
  static const c10::TensorImpl* key(const at::Tensor& t) { return t.unsafeGetTensorImpl(); }

  // Whether the tensor is gone (then its entry can be dropped).
  bool expired() const { return owner_.expired(); }

  // Whether t, found under this version's key, still holds the same contents.
  bool current(const at::Tensor& t) const {
    return !owner_.expired() && !t.is_inference() && t.const_data_ptr() == data_ &&
           t._version() == version_ && t.sizes() == c10::IntArrayRef(sizes_) &&
           t.strides() == c10::IntArrayRef(strides_) && t.scalar_type() == dtype_;
  }

 private:
  using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  explicit TensorVersion(const at::Tensor& t)
      : owner_(t.getIntrusivePtr()),
        data_(t.const_data_ptr()),
        version_(t._version()),
        sizes_(t.sizes().vec()),
        strides_(t.strides().vec()),
        dtype_(t.scalar_type()) {}

  WeakImpl owner_;
  const void* data_;
  int64_t version_;
  std::vector<int64_t> sizes_, strides_;
  at::ScalarType dtype_;
};

}  // namespace torch_quant
