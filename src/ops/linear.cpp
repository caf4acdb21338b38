// src/ops/linear.cpp — validated entry point of y = x · W^T over stored weight formats.
#include "dsv4/ops/linear.hpp"

#include "common.hpp"
#include "dsv4/cpu/linear.hpp"
#include "dsv4/ref/linear.hpp"
#include "dsv4/ref/official.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/linear.hpp"
#endif

namespace dsv4::ops {

std::string describe(const qweight& w) {
  std::string s = w.weight.describe();
  if (!detail::is_absent(w.scale)) s += " + scale " + w.scale.describe();
  return w.name.empty() ? s : dsv4::detail::printable(w.name) + " (" + s + ")";
}

namespace detail {

namespace {
struct weight_name {
  const char* name;
  std::int64_t index;
  friend std::ostream& operator<<(std::ostream& os, const weight_name& n) {
    os << n.name;
    if (n.index >= 0) os << '[' << n.index << ']';
    return os;
  }
};
}  // namespace

ref::weight_ref bind_weight(const char* op, const char* name_, std::int64_t index, const qweight& w,
                            std::int64_t expect_n, std::int64_t expect_k, bool allow_device) {
  const weight_name name{name_, index};
  const tensor_view& t = w.weight;
  DSV4_CHECK(t.rank() == 2, op, name, " ", describe(w), ": a weight must be [N, K]");
  DSV4_CHECK(allow_device || t.dev().is_cpu(), op, name, " ", describe(w),
             ": only host weights are supported by this op so far");
  ref::weight_ref r;
  r.n = t.shape(0);
  r.k = t.shape(1);
  DSV4_CHECK((expect_n < 0 || r.n == expect_n) && (expect_k < 0 || r.k == expect_k), op, name, " is ", describe(w),
             ", expected [", expect_n < 0 ? std::string("N") : std::to_string(expect_n), ", ",
             expect_k < 0 ? std::string("K") : std::to_string(expect_k), "]");
  const bool has_scale = !is_absent(w.scale);
  auto need_scale = [&](std::int64_t sn, std::int64_t sk, const char* rule) {
    DSV4_CHECK(has_scale, op, name, " ", describe(w), ": ", dtype_name(t.dt()), " weights need a ue8m0 scale ",
               rule);
    DSV4_CHECK(w.scale.dt() == dtype::ue8m0 && w.scale.rank() == 2 && w.scale.shape(0) == sn &&
                   w.scale.shape(1) == sk,
               op, name, " scale is ", w.scale.describe(), ", expected ue8m0[", sn, ", ", sk, "] (", rule, ")");
    DSV4_CHECK(w.scale.dev() == t.dev(), op, name, " weight and scale on different devices");
    r.scale = w.scale.as<const ue8m0, 2>();
  };
  switch (t.dt()) {
    case dtype::f32:
      DSV4_CHECK(!has_scale, op, name, " ", describe(w), ": an f32 weight takes no scale");
      r.fmt = ref::wfmt::f32;
      r.f32 = t.as<const float, 2>();
      break;
    case dtype::bf16:
      DSV4_CHECK(!has_scale, op, name, " ", describe(w), ": a bf16 weight takes no scale");
      r.fmt = ref::wfmt::bf16;
      r.bf = t.as<const bf16, 2>();
      break;
    case dtype::fp8_e4m3: {
      constexpr std::int64_t b = ref::kFp8WeightTile;
      need_scale((r.n + b - 1) / b, (r.k + b - 1) / b, "one per 128x128 tile");
      r.fmt = ref::wfmt::fp8_b128;
      r.f8 = t.as<const fp8_e4m3, 2>();
      break;
    }
    case dtype::fp4_e2m1: {
      constexpr std::int64_t b = ref::kFp4WeightBlock;
      DSV4_CHECK(r.k % b == 0, op, name, " ", describe(w), ": FP4 weights need K a multiple of ", b);
      need_scale(r.n, r.k / b, "one per 1x32 block along K");
      r.fmt = ref::wfmt::fp4_b32;
      r.f4 = t.as<const fp4x2, 2>();
      break;
    }
    default:
      DSV4_FAIL(op, name, " ", describe(w), ": unsupported weight dtype (expected f32, bf16, fp8_e4m3 or fp4_e2m1)");
  }
  return r;
}

bool weight_is_cpu_friendly(const qweight& w) { return w.weight.shape(1) <= 1 || w.weight.stride(1) == 1; }

}  // namespace detail

void linear(const tensor_view& x, const qweight& w, const tensor_view& y, const exec& ex, numerics nm) {
  constexpr const char* op = "linear";
  DSV4_CHECK(x.rank() == 2, op, "x ", x.describe(), ": expected [T, K]");
  DSV4_CHECK(y.rank() == 2, op, "y ", y.describe(), ": expected [T, N]");
  detail::check_same_device(op, {&x, &y, &w.weight});
  const ref::weight_ref wr = detail::bind_weight(op, "weight", -1, w, y.shape(1), x.shape(1), true);
  DSV4_CHECK(y.shape(0) == x.shape(0), op, "x ", x.describe(), " and y ", y.describe(), " differ in T");
  detail::check_aliasing(op, x, y, false);
  detail::check_aliasing(op, w.weight, y, false);
  const char* declines = nullptr;
  if (x.shape(1) > 1 && x.stride(1) != 1) declines = "x innermost stride is not 1";
  if (!detail::weight_is_cpu_friendly(w)) declines = "weight innermost stride is not 1";
  const backend be = detail::choose_backend(op, ex, x.dev(), declines);
  if (be == backend::cuda) {
    DSV4_CHECK(nm == numerics::fp32, op, "the CUDA backend implements numerics fp32 only so far");
    DSV4_CHECK(!declines, op, "the CUDA backend needs innermost strides 1: ", declines);
  }
  std::int64_t bad = 0;
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TY>(std::type_identity<TY>) {
      const auto xv = x.as<const TX, 2>();
      const auto yv = y.as<TY, 2>();
#if DSV4_WITH_CUDA
      if (be == backend::cuda) {
        bad = cuda::linear(xv, wr, yv, detail::on_device(op, ex, x.dev()));
        return;
      }
#endif
      if (nm == numerics::official)
        bad = be == backend::ref ? ref::official::linear(xv, wr, yv) : cpu::linear_official(xv, wr, yv, ex);
      else
        bad = be == backend::ref ? ref::linear(xv, wr, yv) : cpu::linear(xv, wr, yv, ex);
    });
  });
  DSV4_CHECK(bad == 0, op, "weight ", describe(w), ": ", bad,
             " weights decode to NaN (NaN codes, or codes under a 0xFF scale); refusing to return a NaN output");
}

}  // namespace dsv4::ops
