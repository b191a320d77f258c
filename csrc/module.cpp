// The Python module torch_quant._C. Importing it loads this library, whose
// static initialisers register the ops with the dispatcher. It also exposes the
// CPU kernel selection (csrc/cpu/isa.h) so that tests can force every path and
// benchmarks can compare them.
#include <map>
#include <string>
#include <vector>

#include <torch/extension.h>

#include "checks.h"
#include "cpu/gemm.h"
#include "cpu/isa.h"
#include "cpu/packed.h"
#include "cpu/peaks.h"

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
  m.def("_built_with_cuda",
        [] {
#ifdef TORCH_QUANT_WITH_CUDA
          return true;
#else
          return false;
#endif
        },
        "Whether this build has the CUDA kernels (csrc/cuda).");
  m.def("_cuda_arch_list",
        [] {
#ifdef TORCH_QUANT_CUDA_ARCHS  // setup.py: TORCH_CUDA_ARCH_LIST, entries joined by '_'
#define TQ_STRINGIFY2(x) #x
#define TQ_STRINGIFY(x) TQ_STRINGIFY2(x)
          return std::string(TQ_STRINGIFY(TORCH_QUANT_CUDA_ARCHS));
#else
          return std::string();
#endif
        },
        "The TORCH_CUDA_ARCH_LIST this build compiled for, entries joined by '_' "
        "(empty without CUDA).");
  // The numbers of the shape rules, for the fake kernels (torch_quant/fake_kernels.py)
  // to read rather than restate.
  m.attr("MAX_LINEAR_K") = torch_quant::kMaxLinearK;
  m.attr("PACKED_GROUP_K") = kGroupK;
  m.attr("PACKED_TAIL_GROUPS") = kTailGroups;
  m.def("_kernel_peaks",
        [](double seconds) {
          std::map<std::string, double> out;
#if TORCH_QUANT_X86
          if (isa_supported(Isa::Avx2)) {
            const avx2::KernelPeaks p = avx2::kernel_peaks(seconds);
            out = {{"fp32_fma", p.fp32_fma}, {"int8_exact", p.int8_exact},
                   {"int8_u8s8", p.int8_u8s8}};
          }
#endif
          return out;
        },
        pybind11::arg("seconds") = 0.2,
        "Single-core ops/s of the fp32 FMA unit, of the exact AVX2 int8 kernel in L1 and of "
        "the saturating uint8 x int8 loop; empty without AVX2.");
  m.def("_vnni_peak",
        [](double seconds) {
#if TORCH_QUANT_X86
          if (isa_supported(Isa::Avx512Vnni)) return avx512_vnni::vnni_peak(seconds);
#endif
          return 0.0;
        },
        pybind11::arg("seconds") = 0.2, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Ops/s of a plain vpdpbusd loop on the calling thread; 0 without AVX512_VNNI. "
        "Releases the GIL, so that one call per thread measures them all together.");
}
