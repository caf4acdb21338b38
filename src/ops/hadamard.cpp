// src/ops/hadamard.cpp — validated entry point of the Walsh–Hadamard transform.
#include "dsv4/ops/hadamard.hpp"

#include "common.hpp"
#include "dsv4/cpu/hadamard.hpp"
#include "dsv4/ref/hadamard.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/hadamard.hpp"
#endif

namespace dsv4::ops {

void hadamard(const tensor_view& x, const tensor_view& y, const exec& ex) {
  constexpr const char* op = "hadamard";
  DSV4_CHECK(x.rank() >= 1, op, "x must have rank >= 1, got ", x.describe());
  detail::check_same_device(op, {&x, &y});
  detail::check_same_shape(op, x, y);
  const std::int64_t n = x.shape(-1);
  DSV4_CHECK(n >= 1 && (n & (n - 1)) == 0, op, "last dim ", n, " of ", x.describe(), " is not a power of two");
  detail::check_aliasing(op, x, y, true);
  const char* declines = nullptr;
  if ((x.stride(-1) != 1 && n > 1) || (y.stride(-1) != 1 && n > 1)) declines = "innermost stride is not 1";
  const backend be = detail::choose_backend(op, ex, x.dev(), declines);

  visit_dtype<float, bf16>(x.dt(), op, [&]<class TIn>(std::type_identity<TIn>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TOut>(std::type_identity<TOut>) {
      detail::for_each_matrix<2>({x, y}, [&](const std::array<tensor_view, 2>& m) {
        const auto xv = m[0].as<const TIn, 2>();
        const auto yv = m[1].as<TOut, 2>();
        if (be == backend::ref) ref::hadamard(xv, yv);
        if (be == backend::cpu) cpu::hadamard(xv, yv, ex);
#if DSV4_WITH_CUDA
        if (be == backend::cuda) cuda::hadamard(xv, yv, detail::on_device(op, ex, x.dev()));
#endif
      });
    });
  });
}

}  // namespace dsv4::ops
