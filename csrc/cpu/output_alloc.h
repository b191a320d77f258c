// Allocation of the ops' CPU outputs.
#pragma once

#include <ATen/core/Tensor.h>

namespace torch_quant::cpu {

// A contiguous CPU tensor like at::empty. Outputs of several MiB are backed by
// transparent huge pages where the kernel offers them: fresh memory costs a
// page fault per 4 KiB page, and for a 32 MiB result those ~8000 faults take
// longer than quantizing it. PyTorch's allocator does the same for every
// allocation when THP_MEM_ALLOC_ENABLE=1; here it is limited to our outputs.
at::Tensor empty_output(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace torch_quant::cpu
