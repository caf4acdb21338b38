// src/ops/mhc.cpp — validated entry points of the mHC ops (spec §4); ref, cpu and cuda backends (dsv4/ops/mhc.hpp).
#include "dsv4/ops/mhc.hpp"

#include "common.hpp"
#include "dsv4/cpu/mhc.hpp"
#include "dsv4/ref/mhc.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/mhc.hpp"
#endif

namespace dsv4::ops {
namespace {

// The CPU backend needs innermost strides 1; the CUDA one (sinkhorn_knopp, hc_pre, hc_post, hc_head) takes any.
backend pick(const char* op, const exec& ex, std::initializer_list<const tensor_view*> ts, bool cuda_ok = true) {
  detail::check_same_device(op, ts);
  if (!cuda_ok) detail::check_host_only(op, "mHC", {*ts.begin()});
  const char* declines = nullptr;
  for (const tensor_view* t : ts)
    if (t->rank() > 0 && t->shape(-1) > 1 && t->stride(-1) != 1) declines = "an innermost stride is not 1";
  return detail::choose_backend(op, ex, (*ts.begin())->dev(), declines);
}

}  // namespace

void sinkhorn_knopp(const tensor_view& logits, const tensor_view& out, int iters, float eps, const exec& ex) {
  constexpr const char* op = "sinkhorn_knopp";
  DSV4_CHECK(logits.rank() == 3 && logits.shape(1) == logits.shape(2), op, "logits ", logits.describe(),
             ": expected [T, n, n]");
  DSV4_CHECK(iters >= 1, op, "iters ", iters, " must be >= 1");
  detail::check_tensor(op, "logits", logits, dtype::f32, {logits.shape(0), logits.shape(1), logits.shape(1)});
  detail::check_tensor(op, "out", out, dtype::f32, {logits.shape(0), logits.shape(1), logits.shape(1)});
  const backend be = pick(op, ex, {&logits, &out});
  detail::check_aliasing(op, logits, out, true);
  const auto in = logits.as<const float, 3>();
  const auto o = out.as<float, 3>();
#if DSV4_WITH_CUDA
  if (be == backend::cuda) return cuda::sinkhorn_knopp(in, o, iters, eps, detail::on_device(op, ex, logits.dev()));
#endif
  if (be == backend::cpu) return cpu::sinkhorn_knopp(in, o, iters, eps, ex);
  const int n = static_cast<int>(logits.shape(1));
  std::vector<float> c(static_cast<std::size_t>(n) * n);
  for (std::int64_t t = 0; t < logits.shape(0); ++t) {
    for (int i = 0; i < n * n; ++i) c[i] = in(t, i / n, i % n);
    ref::sinkhorn_knopp(c.data(), n, iters, eps);
    for (int i = 0; i < n * n; ++i) o(t, i / n, i % n) = c[i];
  }
}

void hc_expand(const tensor_view& h, const tensor_view& x, const exec& ex) {
  constexpr const char* op = "hc_expand";
  DSV4_CHECK(h.rank() == 2 && x.rank() == 3 && x.shape(0) == h.shape(0) && x.shape(2) == h.shape(1), op, "h ",
             h.describe(), " and x ", x.describe(), ": expected h [T, D] and x [T, n, D]");
  const backend be = pick(op, ex, {&h, &x});
  detail::check_aliasing(op, h, x, false);
  visit_dtype<float, bf16>(h.dt(), op, [&]<class TH>(std::type_identity<TH>) {
    visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
      const auto hv = h.as<const TH, 2>();
      const auto xv = x.as<TX, 3>();
#if DSV4_WITH_CUDA
      if (be == backend::cuda) return cuda::hc_expand<TH, TX>(hv, xv, detail::on_device(op, ex, h.dev()));
#endif
      (void)be;
      for (std::int64_t t = 0; t < xv.size(0); ++t)
        for (std::int64_t j = 0; j < xv.size(1); ++j)
          for (std::int64_t d = 0; d < xv.size(2); ++d) xv(t, j, d) = from_f32<TX>(to_f32(hv(t, d)));
    });
  });
}

void sinkhorn_residuals(const tensor_view& logits, int iters, float eps, const tensor_view& residuals) {
  constexpr const char* op = "sinkhorn_residuals";
  DSV4_CHECK(logits.rank() == 3 && logits.shape(1) == logits.shape(2), op, "logits ", logits.describe(),
             ": expected [T, n, n]");
  DSV4_CHECK(iters >= 1, op, "iters ", iters, " must be >= 1");
  detail::check_tensor(op, "logits", logits, dtype::f32, {logits.shape(0), logits.shape(1), logits.shape(1)});
  detail::check_tensor(op, "residuals", residuals, dtype::f32, {iters, 2});
  DSV4_CHECK(logits.dev().is_cpu() && residuals.dev().is_cpu(), op, "diagnostics run on host tensors");
  detail::check_aliasing(op, logits, residuals, false);
  const auto in = logits.as<const float, 3>();
  const auto res = residuals.as<float, 2>();
  const int n = static_cast<int>(logits.shape(1));
  std::vector<double> worst(static_cast<std::size_t>(2 * iters), 0.0);
  std::vector<float> c(static_cast<std::size_t>(n) * n);
  for (std::int64_t t = 0; t < logits.shape(0); ++t) {
    for (int i = 0; i < n * n; ++i) c[i] = in(t, i / n, i % n);
    ref::sinkhorn_knopp(c.data(), n, iters, eps, [&](int it, const float* m) {
      double row, col;
      ref::stochastic_residuals(m, n, row, col);
      worst[2 * (it - 1)] = std::max(worst[2 * (it - 1)], row);
      worst[2 * (it - 1) + 1] = std::max(worst[2 * (it - 1) + 1], col);
    });
  }
  for (int i = 0; i < iters; ++i) {
    res(i, 0) = static_cast<float>(worst[2 * i]);
    res(i, 1) = static_cast<float>(worst[2 * i + 1]);
  }
}

void hc_pre(const tensor_view& x, const tensor_view& fn, const tensor_view& scale, const tensor_view& base,
            const tensor_view& y, const tensor_view& post, const tensor_view& comb, const mhc_config& cfg,
            const exec& ex) {
  constexpr const char* op = "hc_pre";
  DSV4_CHECK(x.rank() == 3, op, "x ", x.describe(), ": expected [T, n, D]");
  const std::int64_t T = x.shape(0), n = x.shape(1), D = x.shape(2), m = 2 * n + n * n;
  detail::check_tensor(op, "fn", fn, dtype::f32, {m, n * D});
  detail::check_tensor(op, "scale", scale, dtype::f32, {3});
  detail::check_tensor(op, "base", base, dtype::f32, {m});
  detail::check_tensor(op, "y", y, y.dt(), {T, D});
  detail::check_tensor(op, "post", post, dtype::f32, {T, n});
  detail::check_tensor(op, "comb", comb, dtype::f32, {T, n, n});
  DSV4_CHECK(cfg.sinkhorn_iters >= 1, op, "sinkhorn_iters ", cfg.sinkhorn_iters, " must be >= 1");
  const backend be = pick(op, ex, {&x, &fn, &scale, &base, &y, &post, &comb});
  for (const tensor_view* o : {&y, &post, &comb}) detail::check_aliasing(op, x, *o, false);
  detail::check_aliasing(op, y, post, false);
  detail::check_aliasing(op, y, comb, false);
  detail::check_aliasing(op, post, comb, false);
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TY>(std::type_identity<TY>) {
#if DSV4_WITH_CUDA
      if (be == backend::cuda)
        return cuda::hc_pre(x.as<const TX, 3>(), fn.as<const float, 2>(), scale.as<const float, 1>(),
                            base.as<const float, 1>(), y.as<TY, 2>(), post.as<float, 2>(), comb.as<float, 3>(),
                            cfg.sinkhorn_iters, cfg.hc_eps, cfg.norm_eps, detail::on_device(op, ex, x.dev()));
#endif
      if (be == backend::cpu)
        cpu::hc_pre(x.as<const TX, 3>(), fn.as<const float, 2>(), scale.as<const float, 1>(),
                    base.as<const float, 1>(), y.as<TY, 2>(), post.as<float, 2>(), comb.as<float, 3>(),
                    cfg.sinkhorn_iters, cfg.hc_eps, cfg.norm_eps, ex);
      else
        ref::hc_pre(x.as<const TX, 3>(), fn.as<const float, 2>(), scale.as<const float, 1>(),
                    base.as<const float, 1>(), y.as<TY, 2>(), post.as<float, 2>(), comb.as<float, 3>(),
                    cfg.sinkhorn_iters, cfg.hc_eps, cfg.norm_eps);
    });
  });
}

void hc_post(const tensor_view& f, const tensor_view& x, const tensor_view& post, const tensor_view& comb,
             const tensor_view& out, const exec& ex) {
  constexpr const char* op = "hc_post";
  DSV4_CHECK(x.rank() == 3, op, "x ", x.describe(), ": expected [T, n, D]");
  const std::int64_t T = x.shape(0), n = x.shape(1), D = x.shape(2);
  detail::check_tensor(op, "f", f, f.dt(), {T, D});
  detail::check_tensor(op, "post", post, dtype::f32, {T, n});
  detail::check_tensor(op, "comb", comb, dtype::f32, {T, n, n});
  detail::check_tensor(op, "out", out, out.dt(), {T, n, D});
  const backend be = pick(op, ex, {&f, &x, &post, &comb, &out});
  detail::check_aliasing(op, x, out, true);
  for (const tensor_view* i : {&f, &post, &comb}) detail::check_aliasing(op, *i, out, false);
  visit_dtype<float, bf16>(f.dt(), op, [&]<class TF>(std::type_identity<TF>) {
    visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
      visit_dtype<float, bf16>(out.dt(), op, [&]<class TO>(std::type_identity<TO>) {
#if DSV4_WITH_CUDA
        if (be == backend::cuda)
          return cuda::hc_post(f.as<const TF, 2>(), x.as<const TX, 3>(), post.as<const float, 2>(),
                               comb.as<const float, 3>(), out.as<TO, 3>(), detail::on_device(op, ex, x.dev()));
#endif
        if (be == backend::cpu)
          cpu::hc_post(f.as<const TF, 2>(), x.as<const TX, 3>(), post.as<const float, 2>(),
                       comb.as<const float, 3>(), out.as<TO, 3>(), ex);
        else
          ref::hc_post(f.as<const TF, 2>(), x.as<const TX, 3>(), post.as<const float, 2>(),
                       comb.as<const float, 3>(), out.as<TO, 3>());
      });
    });
  });
}

void hc_head(const tensor_view& x, const tensor_view& fn, const tensor_view& scale, const tensor_view& base,
             const tensor_view& y, const mhc_config& cfg, const exec& ex) {
  constexpr const char* op = "hc_head";
  DSV4_CHECK(x.rank() == 3, op, "x ", x.describe(), ": expected [T, n, D]");
  const std::int64_t T = x.shape(0), n = x.shape(1), D = x.shape(2);
  detail::check_tensor(op, "fn", fn, dtype::f32, {n, n * D});
  detail::check_tensor(op, "scale", scale, dtype::f32, {1});
  detail::check_tensor(op, "base", base, dtype::f32, {n});
  detail::check_tensor(op, "y", y, y.dt(), {T, D});
  const backend be = pick(op, ex, {&x, &fn, &scale, &base, &y});
  detail::check_aliasing(op, x, y, false);
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TY>(std::type_identity<TY>) {
#if DSV4_WITH_CUDA
      if (be == backend::cuda)
        return cuda::hc_head(x.as<const TX, 3>(), fn.as<const float, 2>(), scale.as<const float, 1>(),
                             base.as<const float, 1>(), y.as<TY, 2>(), cfg.hc_eps, cfg.norm_eps,
                             detail::on_device(op, ex, x.dev()));
#endif
      if (be == backend::cpu)
        cpu::hc_head(x.as<const TX, 3>(), fn.as<const float, 2>(), scale.as<const float, 1>(),
                     base.as<const float, 1>(), y.as<TY, 2>(), cfg.hc_eps, cfg.norm_eps, ex);
      else
        ref::hc_head(x.as<const TX, 3>(), fn.as<const float, 2>(), scale.as<const float, 1>(),
                     base.as<const float, 1>(), y.as<TY, 2>(), cfg.hc_eps, cfg.norm_eps);
    });
  });
}

}  // namespace dsv4::ops
