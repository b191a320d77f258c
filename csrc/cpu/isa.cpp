#include "isa.h"
#include "target.h"

#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

namespace torch_quant::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

bool isa_supported(Isa isa) {
#if TORCH_QUANT_X86
  switch (isa) {
    case Isa::Scalar:
      return true;
    case Isa::Avx2:
      // libgcc also checks that the OS saves the YMM/ZMM state (XGETBV).
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("f16c");
    case Isa::Avx512:
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") &&
          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512dq");
    case Isa::Avx512Vnni:
      return isa_supported(Isa::Avx512) && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == Isa::Scalar;
#endif
}

namespace {

Isa best_supported() {
  for (Isa isa : {Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2}) {
    if (isa_supported(isa)) return isa;
  }
  return Isa::Scalar;
}

bool parse(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni}) {
    if (name == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

// The environment variable can only lower the choice: asking for an ISA the
// CPU lacks falls back to the best one it has instead of crashing later.
Isa initial_isa() {
  Isa best = best_supported();
  const char* env = std::getenv("TORCH_QUANT_CPU_ISA");
  Isa wanted;
  if (env != nullptr && parse(env, &wanted) &&
      static_cast<int>(wanted) < static_cast<int>(best)) {
    return wanted;
  }
  return best;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

}  // namespace

Isa active_isa() {
  return static_cast<Isa>(current().load(std::memory_order_relaxed));
}

void set_isa(const std::string& name) {
  Isa isa;
  if (name.empty() || name == "best") {
    isa = best_supported();
  } else {
    TORCH_CHECK(parse(name, &isa),
                "torch_quant._set_cpu_isa: isa must be 'scalar', 'avx2', 'avx512', "
                "'avx512_vnni' or 'best', got '", name, "'");
    TORCH_CHECK(isa_supported(isa), "torch_quant._set_cpu_isa: this CPU cannot run the '",
                name, "' kernels");
  }
  current().store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace torch_quant::cpu
