// src/cpu/simd_dispatch.hpp — how the CPU backend's per-ISA kernels are compiled and chosen.
//
// Each op declares a kernel table and a `select_<op>_kernels` functor whose Arch-templated call operator fills the
// table (src/cpu/<op>_simd_impl.hpp). CMake compiles one translation unit per (op, ISA) with that ISA's flags
// (generated/<op>_<isa>.cpp); the declarations below keep every other TU from instantiating them. At run time
// resolve_kernels picks the best ISA the CPU supports, once per op.
#pragma once

#include <xsimd/xsimd.hpp>

namespace dsv4::cpu::detail {

// The ISAs with a compiled instantiation, best first (xsimd::dispatch walks them in this order). Keep in step with
// DSV4_ISAS in CMakeLists.txt.
#if defined(__x86_64__) || defined(_M_X64)
using cpu_archs = xsimd::arch_list<xsimd::avx512bw, xsimd::fma3<xsimd::avx2>, xsimd::sse2>;
#define DSV4_CPU_SIMD 1
// extern template declarations of select_<op>_kernels for every ISA of cpu_archs.
#define DSV4_CPU_EXTERN_KERNELS(op)                                                                                  \
  extern template op##_kernels select_##op##_kernels::operator()<xsimd::avx512bw>(xsimd::avx512bw) const;          \
  extern template op##_kernels select_##op##_kernels::operator()<xsimd::fma3<xsimd::avx2>>(xsimd::fma3<xsimd::avx2>) \
      const;                                                                                                         \
  extern template op##_kernels select_##op##_kernels::operator()<xsimd::sse2>(xsimd::sse2) const;
#else
#define DSV4_CPU_SIMD 0
#define DSV4_CPU_EXTERN_KERNELS(op)
#endif

// The kernel table of the best compiled ISA the running CPU supports, or an empty table (the CPU backend then
// declines, see cpu::simd_isa). Call once and keep the result.
template <class Kernels, class Select>
Kernels resolve_kernels() {
#if DSV4_CPU_SIMD
  if (xsimd::available_architectures().best >= xsimd::sse2::version())
    return xsimd::dispatch<cpu_archs>(Select{})();
#endif
  return Kernels{};
}

}  // namespace dsv4::cpu::detail
