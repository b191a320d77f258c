// The one place where the CPU kernels choose an instruction set.
//
// Every vectorised kernel exists once per Isa (csrc/cpu/kernels_<isa>.cpp, the
// same template compiled for each target) and is reached through the
// dispatchers in row_kernels.h, which ask active_isa() on every call. The
// choice is the best ISA this CPU supports, lowered by the environment variable
// TORCH_QUANT_CPU_ISA=scalar|avx2|avx512|avx512_vnni at load time or by set_isa() (exposed
// to Python as torch_quant._C._set_cpu_isa) so that tests can force each path.
#pragma once

#include <string>

namespace torch_quant::cpu {

// Ordered: each level can run the kernels of the levels below it.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3 };

// Name as used by TORCH_QUANT_CPU_ISA and _set_cpu_isa: "scalar", "avx2",
// "avx512", "avx512_vnni".
const char* isa_name(Isa isa);

// Whether this CPU (and OS) can run the kernels built for `isa`.
bool isa_supported(Isa isa);

// The ISA the kernels use now.
Isa active_isa();

// Selects the kernels by name; throws if the name is unknown or the CPU cannot
// run them. "best" (or "") restores the automatic choice.
void set_isa(const std::string& name);

}  // namespace torch_quant::cpu
