// src/cpu/hadamard.cpp — CPU backend of the Walsh–Hadamard transform: oneTBB over rows, the row transform from the
// best ISA's kernel (hadamard_simd_impl.hpp), in place on the output row when it is fp32, else on a per-task
// fp32 scratch row.
#include "dsv4/cpu/hadamard.hpp"

#include <type_traits>
#include <vector>

#include "dsv4/ref/hadamard.hpp"
#include "hadamard_simd.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

const detail::hadamard_kernels& kernels() {
  static const auto k = detail::resolve_kernels<detail::hadamard_kernels, detail::select_hadamard_kernels>();
  return k;
}

}  // namespace

template <class TIn, class TOut>
void hadamard(view<const TIn, 2> x, view<TOut, 2> y, const exec& ex) {
  const auto k = kernels();
  const std::int64_t n = x.size(1);
  const float scale = ref::hadamard_scale(n);
  detail::parallel_rows(x.size(0), 4, ex, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> scratch;
    if constexpr (!std::is_same_v<TOut, float>) scratch.resize(static_cast<std::size_t>(n));
    for (std::int64_t r = r0; r < r1; ++r) {
      float* v;
      if constexpr (std::is_same_v<TOut, float>)
        v = y.row(r);
      else
        v = scratch.data();
      const TIn* src = x.row(r);
      if (static_cast<const void*>(src) != static_cast<const void*>(v))
        for (std::int64_t j = 0; j < n; ++j) v[j] = to_f32(src[j]);
      k.row(v, n, scale);
      if constexpr (!std::is_same_v<TOut, float>)
        for (std::int64_t j = 0; j < n; ++j) y.row(r)[j] = from_f32<TOut>(v[j]);
    }
  });
}

template void hadamard<float, float>(view<const float, 2>, view<float, 2>, const exec&);
template void hadamard<float, bf16>(view<const float, 2>, view<bf16, 2>, const exec&);
template void hadamard<bf16, float>(view<const bf16, 2>, view<float, 2>, const exec&);
template void hadamard<bf16, bf16>(view<const bf16, 2>, view<bf16, 2>, const exec&);

}  // namespace dsv4::cpu
