// src/cpu/mhc.cpp — CPU backend of mHC: token blocks over oneTBB, the kernels of mhc_simd_impl.hpp.
#include "dsv4/cpu/mhc.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "dsv4/ref/mhc.hpp"
#include "mhc_simd.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

const detail::mhc_kernels& kernels() {
  static const auto k = detail::resolve_kernels<detail::mhc_kernels, detail::select_mhc_kernels>();
  return k;
}

constexpr std::int64_t kTokenBlock = 16;
constexpr std::int64_t kChunk = 256;  // values of one stream per pass; 24 fn rows x 256 fp32 = 24 KiB of L1

// fp32 pointer to x[t, j, d0 : d0+len): the row itself for fp32, else converted into tmp.
template <class TX>
const float* stream_chunk(view<const TX, 3> x, std::int64_t t, std::int64_t j, std::int64_t d0, std::int64_t len,
                          float* tmp) {
  const TX* p = &x(t, j, d0);
  if constexpr (std::is_same_v<TX, float>) {
    return p;
  } else {
    for (std::int64_t i = 0; i < len; ++i) tmp[i] = to_f32(p[i]);
    return tmp;
  }
}

// mixes[(t - t0)·m + o] = (x_t · fn_o) · rsqrt(mean(x_t²) + norm_eps) for t in [t0, t1): one fused pass per chunk.
template <class TX>
void mixes_block(const detail::mhc_kernels& k, view<const TX, 3> x, view<const float, 2> fn, float norm_eps,
                 std::int64_t t0, std::int64_t t1, std::vector<float>& mixes) {
  const std::int64_t n = x.size(1), D = x.size(2), bt = t1 - t0;
  const int m = static_cast<int>(fn.size(0)), W = k.width;
  const std::int64_t Dv = D / W * W;
  std::vector<float> acc(static_cast<std::size_t>(bt * (m + 1) * W), 0.f);
  std::vector<float> tail(static_cast<std::size_t>(bt * (m + 1)), 0.f), tmp(kChunk),
      packed(static_cast<std::size_t>(m * kChunk));
  for (std::int64_t j = 0; j < n; ++j) {
    for (std::int64_t d0 = 0; d0 < Dv; d0 += kChunk) {
      const std::int64_t len = std::min(kChunk, Dv - d0);
      // Pack fn's chunk contiguously: its rows are n·D floats apart (a multiple of 4 KiB for V4 shapes), which
      // would map all m rows onto the same L1 sets and thrash them across the block's tokens.
      // A lone token (decode) reads fn once anyway: no packing there.
      const bool pack = bt >= 4;
      if (pack)
        for (int o = 0; o < m; ++o) std::copy_n(&fn(o, j * D + d0), len, packed.data() + o * kChunk);
      const float* fp = pack ? packed.data() : &fn(0, j * D + d0);
      const std::int64_t ld = pack ? kChunk : fn.stride[0];
      for (std::int64_t t = t0; t < t1; ++t)
        k.mix_chunk(stream_chunk(x, t, j, d0, len, tmp.data()), len, fp, ld, m, acc.data() + (t - t0) * (m + 1) * W);
    }
    for (std::int64_t t = t0; t < t1; ++t)  // D % W leftovers, in order, into scalar accumulators
      for (std::int64_t d = Dv; d < D; ++d) {
        const float v = to_f32(x(t, j, d));
        float* tl = tail.data() + (t - t0) * (m + 1);
        tl[0] = std::fma(v, v, tl[0]);
        for (int o = 0; o < m; ++o) tl[1 + o] = std::fma(v, fn(o, j * D + d), tl[1 + o]);
      }
  }
  mixes.resize(static_cast<std::size_t>(bt * m));
  for (std::int64_t b = 0; b < bt; ++b) {
    const float* a = acc.data() + b * (m + 1) * W;
    const float* tl = tail.data() + b * (m + 1);
    const float ss = k.hsum(a) + tl[0];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(n * D) + norm_eps);
    for (int o = 0; o < m; ++o) mixes[static_cast<std::size_t>(b * m + o)] = (k.hsum(a + (1 + o) * W) + tl[1 + o]) * r;
  }
}

// y[t] = Σ_j w_j·x[t, j] over D in chunks.
template <class TX, class TY>
void collapse(const detail::mhc_kernels& k, view<const TX, 3> x, std::int64_t t, const float* w, view<TY, 2> y) {
  const std::int64_t n = x.size(1), D = x.size(2);
  std::vector<float> tmp(static_cast<std::size_t>(n * kChunk)), out(kChunk);
  std::vector<const float*> xs(static_cast<std::size_t>(n));
  for (std::int64_t d0 = 0; d0 < D; d0 += kChunk) {
    const std::int64_t len = std::min(kChunk, D - d0);
    for (std::int64_t j = 0; j < n; ++j) xs[j] = stream_chunk(x, t, j, d0, len, tmp.data() + j * kChunk);
    if constexpr (std::is_same_v<TY, float>) {
      k.combine(xs.data(), w, static_cast<int>(n), nullptr, 0.f, len, &y(t, d0));
    } else {
      k.combine(xs.data(), w, static_cast<int>(n), nullptr, 0.f, len, out.data());
      for (std::int64_t d = 0; d < len; ++d) y(t, d0 + d) = from_f32<TY>(out[d]);
    }
  }
}

// Sinkhorn for `count` matrices c[b·n² + i] (AoS), W at a time through the SoA kernel.
void sinkhorn_many(const detail::mhc_kernels& k, float* c, std::int64_t count, int n, int iters, float eps) {
  const int W = k.width, nn = n * n;
  std::vector<float> soa(static_cast<std::size_t>(nn * W));
  for (std::int64_t b0 = 0; b0 < count; b0 += W) {
    const std::int64_t lanes = std::min<std::int64_t>(W, count - b0);
    std::fill(soa.begin(), soa.end(), 0.f);  // unused lanes: zero logits, harmless
    for (std::int64_t l = 0; l < lanes; ++l)
      for (int i = 0; i < nn; ++i) soa[static_cast<std::size_t>(i * W + l)] = c[(b0 + l) * nn + i];
    k.sinkhorn(soa.data(), n, iters, eps);
    for (std::int64_t l = 0; l < lanes; ++l)
      for (int i = 0; i < nn; ++i) c[(b0 + l) * nn + i] = soa[static_cast<std::size_t>(i * W + l)];
  }
}

}  // namespace

template <class TX, class TY>
void hc_pre(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
            view<TY, 2> y, view<float, 2> post, view<float, 3> comb, int iters, float hc_eps, float norm_eps,
            const exec& ex) {
  const auto& k = kernels();
  const std::int64_t T = x.size(0), n = x.size(1), nn = n * n;
  const int m = static_cast<int>(fn.size(0));
  detail::parallel_rows((T + kTokenBlock - 1) / kTokenBlock, 1, ex, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<float> mixes, c, pres, posts;
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t t0 = b * kTokenBlock, t1 = std::min(T, t0 + kTokenBlock), bt = t1 - t0;
      mixes_block(k, x, fn, norm_eps, t0, t1, mixes);
      // the block's gates; its comb logits go through Sinkhorn together
      c.resize(static_cast<std::size_t>(bt * nn));
      pres.resize(static_cast<std::size_t>(bt * n));
      posts.resize(pres.size());
      for (std::int64_t i = 0; i < bt; ++i)
        ref::hc_gates(mixes.data() + i * m, n, scale, base, hc_eps, pres.data() + i * n, posts.data() + i * n,
                      c.data() + i * nn);
      sinkhorn_many(k, c.data(), bt, static_cast<int>(n), iters, hc_eps);
      for (std::int64_t t = t0; t < t1; ++t) {
        for (std::int64_t j = 0; j < n; ++j) post(t, j) = posts[static_cast<std::size_t>((t - t0) * n + j)];
        for (std::int64_t q = 0; q < nn; ++q) comb(t, q / n, q % n) = c[(t - t0) * nn + q];
        collapse(k, x, t, pres.data() + (t - t0) * n, y);
      }
    }
  });
}

template <class TX, class TY>
void hc_head(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
             view<TY, 2> y, float hc_eps, float norm_eps, const exec& ex) {
  const auto& k = kernels();
  const std::int64_t T = x.size(0), n = x.size(1);
  detail::parallel_rows((T + kTokenBlock - 1) / kTokenBlock, 1, ex, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<float> mixes, pre(static_cast<std::size_t>(n));
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t t0 = b * kTokenBlock, t1 = std::min(T, t0 + kTokenBlock);
      mixes_block(k, x, fn, norm_eps, t0, t1, mixes);
      for (std::int64_t t = t0; t < t1; ++t) {
        ref::hc_gates(mixes.data() + (t - t0) * n, n, scale, base, hc_eps, pre.data(), nullptr, nullptr);
        collapse(k, x, t, pre.data(), y);
      }
    }
  });
}

template <class TF, class TX, class TO>
void hc_post(view<const TF, 2> f, view<const TX, 3> x, view<const float, 2> post, view<const float, 3> comb,
             view<TO, 3> out, const exec& ex) {
  const auto& k = kernels();
  const std::int64_t T = x.size(0), n = x.size(1), D = x.size(2);
  const std::int64_t chunks = (D + kChunk - 1) / kChunk;
  // Tasks are (token, chunk) pairs; each stages its n input chunks before writing (out may alias x).
  detail::parallel_rows(T * chunks, 32, ex, [&](std::int64_t p0, std::int64_t p1) {  // 32 chunks ~ 4 us
    std::vector<float> xt(static_cast<std::size_t>(n * kChunk)), ft(kChunk), o(kChunk), col(static_cast<std::size_t>(n));
    std::vector<const float*> xs(static_cast<std::size_t>(n));
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t t = p / chunks, d0 = (p % chunks) * kChunk, len = std::min(kChunk, D - d0);
      for (std::int64_t j = 0; j < n; ++j) {
        for (std::int64_t d = 0; d < len; ++d) xt[static_cast<std::size_t>(j * kChunk + d)] = to_f32(x(t, j, d0 + d));
        xs[j] = xt.data() + j * kChunk;
      }
      for (std::int64_t d = 0; d < len; ++d) ft[d] = to_f32(f(t, d0 + d));
      for (std::int64_t kk = 0; kk < n; ++kk) {
        for (std::int64_t j = 0; j < n; ++j) col[j] = comb(t, j, kk);  // column kk: X_new[k] mixes comb[j][k]·X[j]
        k.combine(xs.data(), col.data(), static_cast<int>(n), ft.data(), post(t, kk), len, o.data());
        for (std::int64_t d = 0; d < len; ++d) out(t, kk, d0 + d) = from_f32<TO>(o[d]);
      }
    }
  });
}

void sinkhorn_knopp(view<const float, 3> logits, view<float, 3> out, int iters, float eps, const exec& ex) {
  const auto& k = kernels();
  const std::int64_t T = logits.size(0);
  const int n = static_cast<int>(logits.size(1)), nn = n * n;
  detail::parallel_rows((T + 63) / 64, 1, ex, [&](std::int64_t b0, std::int64_t b1) {
    std::vector<float> c;
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t t0 = b * 64, t1 = std::min(T, t0 + 64);
      c.resize(static_cast<std::size_t>((t1 - t0) * nn));
      for (std::int64_t t = t0; t < t1; ++t)
        for (int i = 0; i < nn; ++i) c[(t - t0) * nn + i] = logits(t, i / n, i % n);
      sinkhorn_many(k, c.data(), t1 - t0, n, iters, eps);
      for (std::int64_t t = t0; t < t1; ++t)
        for (int i = 0; i < nn; ++i) out(t, i / n, i % n) = c[(t - t0) * nn + i];
    }
  });
}

#define DSV4_MHC_XY(TX, TY)                                                                                        \
  template void hc_pre<TX, TY>(view<const TX, 3>, view<const float, 2>, view<const float, 1>, view<const float, 1>, \
                               view<TY, 2>, view<float, 2>, view<float, 3>, int, float, float, const exec&);       \
  template void hc_head<TX, TY>(view<const TX, 3>, view<const float, 2>, view<const float, 1>,                     \
                                view<const float, 1>, view<TY, 2>, float, float, const exec&);
DSV4_MHC_XY(float, float)
DSV4_MHC_XY(float, bf16)
DSV4_MHC_XY(bf16, float)
DSV4_MHC_XY(bf16, bf16)
#undef DSV4_MHC_XY
#define DSV4_MHC_POST(TF, TX, TO)                                                                                  \
  template void hc_post<TF, TX, TO>(view<const TF, 2>, view<const TX, 3>, view<const float, 2>,                    \
                                    view<const float, 3>, view<TO, 3>, const exec&);
#define DSV4_MHC_POST_O(TF, TX) DSV4_MHC_POST(TF, TX, float) DSV4_MHC_POST(TF, TX, bf16)
DSV4_MHC_POST_O(float, float)
DSV4_MHC_POST_O(float, bf16)
DSV4_MHC_POST_O(bf16, float)
DSV4_MHC_POST_O(bf16, bf16)
#undef DSV4_MHC_POST_O
#undef DSV4_MHC_POST

}  // namespace dsv4::cpu
