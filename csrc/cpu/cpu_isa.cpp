// Which float32 CAR kernels run in this process: cpuid, capped by FASTMLR_CPU_CAPABILITY or
// ATEN_CPU_CAPABILITY (car_simd.h).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "car_simd.h"

namespace fastmlr {
namespace {

CpuIsa best_supported() {
#if FMLR_X86_SIMD
  __builtin_cpu_init();
  // libgcc's checks include the OS's support for saving the registers (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return CpuIsa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kDefault;
}

CpuIsa decide() {
  const CpuIsa best = best_supported();
  const char* var = "FASTMLR_CPU_CAPABILITY";
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') {
    var = "ATEN_CPU_CAPABILITY";
    v = std::getenv(var);
  }
  if (v == nullptr || *v == '\0') return best;
  CpuIsa want;
  if (std::strncmp(v, "avx512", 6) == 0) {
    want = CpuIsa::kAvx512;
  } else if (std::strcmp(v, "avx2") == 0) {
    want = CpuIsa::kAvx2;
  } else if (std::strcmp(v, "default") == 0) {
    want = CpuIsa::kDefault;
  } else {
    std::fprintf(stderr, "fastmlr: %s=%s is not one of avx512, avx2, default; the CAR kernels use %s\n", var, v,
                 cpu_isa_name(best));
    return best;
  }
  if (static_cast<int>(want) > static_cast<int>(best)) {
    std::fprintf(stderr, "fastmlr: %s=%s asks for more than this CPU has; the CAR kernels use %s\n", var, v,
                 cpu_isa_name(best));
    return best;
  }
  return want;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

CpuIsa cpu_isa() {
  static const CpuIsa isa = decide();
  return isa;
}

}  // namespace fastmlr
