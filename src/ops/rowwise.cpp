// src/ops/rowwise.cpp — validated entry points of the row-wise steps (dsv4/ops/rowwise.hpp): ref's loops on the host,
// cuda/rowwise.cu on the device.
#include "dsv4/ops/rowwise.hpp"

#include <array>
#include <cmath>
#include <vector>
#include <type_traits>

#include "common.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/ref/rotary.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/rowwise.hpp"
#endif

namespace dsv4::ops {
namespace {

// The backend of a row-wise op: CUDA for device tensors, else ref's loop (the host backend of this family; a forced
// cpu backend runs the same loop: there is nothing to vectorize that the linears around these steps do not dwarf).
backend pick(const char* op, const exec& ex, std::initializer_list<const tensor_view*> ts) {
  detail::check_same_device(op, ts);
  const device dev = (*ts.begin())->dev();
  const backend be = detail::choose_backend(op, ex, dev, nullptr);
  return be == backend::cuda ? backend::cuda : backend::ref;
}

}  // namespace

void rms_norm(const tensor_view& x, const tensor_view& weight, double eps, const tensor_view& y, const exec& ex) {
  constexpr const char* op = "rms_norm";
  DSV4_CHECK(x.dt() == dtype::f32 && y.dt() == dtype::f32, op, "x ", x.describe(), " and y ", y.describe(),
             " must be f32");
  detail::check_same_shape(op, x, y);
  const std::int64_t n = x.rank() >= 1 ? x.shape(-1) : 0;
  DSV4_CHECK(n >= 1, op, "x ", x.describe(), ": rows of at least one value expected");
  DSV4_CHECK(std::isfinite(eps) && eps >= 0, op, "eps ", eps, " must be finite and >= 0");
  const bool has_w = !detail::is_absent(weight);
  if (has_w) {
    detail::check_tensor(op, "weight", weight, dtype::f32, {n});
    DSV4_CHECK(weight.stride(0) == 1 || n == 1, op, "weight ", weight.describe(), " must be contiguous");
  }
  [[maybe_unused]] const backend be = has_w ? pick(op, ex, {&x, &y, &weight}) : pick(op, ex, {&x, &y});
  detail::check_aliasing(op, x, y, true);
  const auto* w = has_w ? static_cast<const float*>(weight.data()) : nullptr;
  std::vector<float> row(static_cast<std::size_t>(n));
  detail::for_each_matrix<2>({x, y}, [&](const std::array<tensor_view, 2>& m) {
    const auto xv = m[0].as<const float, 2>();
    const auto yv = m[1].as<float, 2>();
#if DSV4_WITH_CUDA
    if (be == backend::cuda) return cuda::rms_norm(xv, w, eps, yv, detail::on_device(op, ex, x.dev()));
#endif
    for (std::int64_t r = 0; r < xv.size(0); ++r) {
      for (std::int64_t i = 0; i < n; ++i) row[static_cast<std::size_t>(i)] = xv(r, i);
      ref::rms_norm(row.data(), n, w, eps);
      for (std::int64_t i = 0; i < n; ++i) yv(r, i) = row[static_cast<std::size_t>(i)];
    }
  });
}

void rope(const tensor_view& x, const tensor_view& positions, const tensor_view& freq, std::int64_t off, bool inverse,
          const exec& ex) {
  constexpr const char* op = "rope";
  DSV4_CHECK((x.rank() == 2 || x.rank() == 3) && x.dt() == dtype::f32, op, "x is ", x.describe(),
             ", expected f32 [T, H, d] or [T, d]");
  const std::int64_t T = x.shape(0), d = x.shape(-1);
  detail::check_tensor(op, "positions", positions, dtype::i64, {T});
  DSV4_CHECK(freq.rank() == 1 && freq.dt() == dtype::f32, op, "freq is ", freq.describe(), ", expected f32 [pairs]");
  const std::int64_t pairs = freq.shape(0);
  DSV4_CHECK(off >= 0 && off + 2 * pairs <= d, op, "off ", off, " + 2·", pairs, " pairs runs past the last dim ", d,
             " of x ", x.describe());
  DSV4_CHECK((positions.stride(0) == 1 || T <= 1) && (freq.stride(0) == 1 || pairs <= 1), op,
             "positions and freq must be contiguous");
  [[maybe_unused]] const backend be = pick(op, ex, {&x, &positions, &freq});
  const tensor_view x3 = x.rank() == 3 ? x
                                       : tensor_view(x.data(), dtype::f32, std::array<std::int64_t, 3>{T, 1, d},
                                                     std::array<std::int64_t, 3>{x.stride(0), d, x.stride(1)}, x.dev());
  const auto xv = x3.as<float, 3>();
  const auto* pos = static_cast<const std::int64_t*>(positions.data());
  const auto* f = static_cast<const float*>(freq.data());
#if DSV4_WITH_CUDA
  if (be == backend::cuda) return cuda::rope(xv, pos, f, pairs, off, inverse, detail::on_device(op, ex, x.dev()));
#endif
  for (std::int64_t t = 0; t < T; ++t)
    DSV4_CHECK(pos[t] >= 0 && pos[t] < (std::int64_t{1} << 24), op, "position ", pos[t], " of row ", t,
               " is outside [0, 2^24) (fp32 angles are exact for integer positions below 2^24)");
  std::vector<float> v(static_cast<std::size_t>(2 * pairs));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < xv.size(1); ++h) {
      for (std::int64_t i = 0; i < 2 * pairs; ++i) v[static_cast<std::size_t>(i)] = xv(t, h, off + i);
      ref::rope_rotate(v.data(), f, pairs, pos[t], inverse);
      for (std::int64_t i = 0; i < 2 * pairs; ++i) xv(t, h, off + i) = v[static_cast<std::size_t>(i)];
    }
}

void embed(const tensor_view& ids, const tensor_view& table, const tensor_view& out, const exec& ex) {
  constexpr const char* op = "embed";
  DSV4_CHECK(ids.rank() == 1 && ids.dt() == dtype::i64 && (ids.stride(0) == 1 || ids.shape(0) <= 1), op, "ids is ",
             ids.describe(), ", expected contiguous i64 [T]");
  DSV4_CHECK(table.rank() == 2 && (table.dt() == dtype::f32 || table.dt() == dtype::bf16), op, "table is ",
             table.describe(), ", expected f32 or bf16 [V, D]");
  const std::int64_t T = ids.shape(0), V = table.shape(0), D = table.shape(1);
  detail::check_tensor(op, "out", out, dtype::f32, {T, D});
  [[maybe_unused]] const backend be = pick(op, ex, {&ids, &table, &out});
  const auto* id = static_cast<const std::int64_t*>(ids.data());
  const auto ov = out.as<float, 2>();
  visit_dtype<float, bf16>(table.dt(), op, [&]<class TT>(std::type_identity<TT>) {
    const auto tv = table.as<const TT, 2>();
#if DSV4_WITH_CUDA
    if (be == backend::cuda) return cuda::embed<TT>(id, tv, ov, detail::on_device(op, ex, ids.dev()));
#endif
    for (std::int64_t t = 0; t < T; ++t) {
      DSV4_CHECK(id[t] >= 0 && id[t] < V, op, "token id ", id[t], " at index ", t, " is outside the vocabulary [0, ",
                 V, ")");
      for (std::int64_t i = 0; i < D; ++i) ov(t, i) = to_f32(tv(id[t], i));
    }
  });
}

void scale(const tensor_view& x, float s, const exec& ex) {
  constexpr const char* op = "scale";
  DSV4_CHECK(x.dt() == dtype::f32, op, "x is ", x.describe(), ", expected f32");
  [[maybe_unused]] const backend be = pick(op, ex, {&x});
  if (x.numel() == 0) return;
  detail::for_each_matrix<1>({x}, [&](const std::array<tensor_view, 1>& m) {
    const auto xv = m[0].as<float, 2>();
#if DSV4_WITH_CUDA
    if (be == backend::cuda) return cuda::scale(xv, s, detail::on_device(op, ex, x.dev()));
#endif
    for (std::int64_t r = 0; r < xv.size(0); ++r)
      for (std::int64_t i = 0; i < xv.size(1); ++i) xv(r, i) *= s;
  });
}

std::int64_t count_non_finite(const tensor_view& x, const exec& ex) {
  constexpr const char* op = "count_non_finite";
  DSV4_CHECK(x.dt() == dtype::f32, op, "x is ", x.describe(), ", expected f32");
  [[maybe_unused]] const backend be = pick(op, ex, {&x});
  if (x.numel() == 0) return 0;
  std::int64_t n = 0;
  detail::for_each_matrix<1>({x}, [&](const std::array<tensor_view, 1>& m) {
    const auto xv = m[0].as<const float, 2>();
#if DSV4_WITH_CUDA
    if (be == backend::cuda) {
      n += cuda::count_non_finite(xv, detail::on_device(op, ex, x.dev()));
      return;
    }
#endif
    for (std::int64_t r = 0; r < xv.size(0); ++r)
      for (std::int64_t i = 0; i < xv.size(1); ++i) n += std::isfinite(xv(r, i)) ? 0 : 1;
  });
  return n;
}

}  // namespace dsv4::ops
