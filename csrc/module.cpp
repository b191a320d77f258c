// The Python module torch_quant._C. Importing it loads this library, whose
// static initialisers register the ops with the dispatcher. It also exposes the
// CPU kernel selection (csrc/cpu/isa.h) so that tests can force every path and
// benchmarks can compare them.
#include <string>
#include <vector>

#include <torch/extension.h>

#include "cpu/isa.h"
#include "cpu/weight_cache.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace torch_quant::cpu;
  m.def("_cpu_isa", [] { return std::string(isa_name(active_isa())); },
        "Name of the instruction set the CPU kernels use now.");
  m.def("_set_cpu_isa", &set_isa, pybind11::arg("isa"),
        "Use the 'scalar', 'avx2', 'avx512' or 'avx512_vnni' CPU kernels, or 'best'.");
  m.def("_supported_cpu_isas",
        [] {
          std::vector<std::string> names;
          for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni}) {
            if (isa_supported(isa)) names.emplace_back(isa_name(isa));
          }
          return names;
        },
        "Instruction sets this CPU can run, from the portable one up.");
  m.def("_clear_weight_cache", &clear_weight_cache,
        "Drop every packed weight copy kept by the CPU linear kernels.");
  m.def("_weight_cache_info", &weight_cache_info,
        "(weights, bytes) of packed weight copies kept now.");
}
