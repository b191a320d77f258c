#include "output_alloc.h"

#include <cstdlib>

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace torch_quant::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
// Below this the faults are few and the default allocator's pooling in malloc
// usually avoids them anyway.
constexpr size_t kThreshold = size_t{4} << 20;

class OutputAllocator final : public at::Allocator {
 public:
  at::DataPtr allocate(size_t nbytes) override {
#if defined(__linux__)
    if (nbytes >= kThreshold) {
      const size_t size = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
      void* p = std::aligned_alloc(kHugePage, size);
      TORCH_CHECK(p != nullptr, "torch_quant: out of memory allocating ", nbytes, " bytes");
      madvise(p, size, MADV_HUGEPAGE);  // advice only: failure leaves 4 KiB pages
      return {p, p, &std::free, at::Device(at::kCPU)};
    }
#endif
    return c10::GetDefaultCPUAllocator()->allocate(nbytes);
  }

  // Blocks come from two allocators with different deleters.
  at::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

at::Allocator* output_allocator() {
  static auto* allocator = new OutputAllocator();  // never destroyed: tensors may outlive statics
  return allocator;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_generic(sizes, output_allocator(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

}  // namespace torch_quant::cpu
