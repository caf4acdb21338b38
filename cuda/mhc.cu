// cuda/mhc.cu — mHC on CUDA (dsv4/cuda/mhc.hpp has the orders). The per-token CTA of hc_pre / hc_head reads x
// [n, D] once per group of 8 mixes (fn rows streamed from L2), so x stays in L1 between the groups.
#include "check.cuh"
#include "dsv4/cuda/mhc.hpp"
#include "dsv4/ref/mhc.hpp"

namespace dsv4::cuda {
namespace {

constexpr unsigned kThreads = 256;
constexpr int kGroup = 8;  // mixes per pass over x

// One thread per token; the matrix in this thread's slice of shared memory (no local memory).
__global__ void sinkhorn_kernel(view<const float, 3> in, view<float, 3> out, int iters, float eps) {
  extern __shared__ float sh[];
  const int n = static_cast<int>(in.size(1));
  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= in.size(0)) return;
  float* c = sh + threadIdx.x * n * n;
  for (int i = 0; i < n * n; ++i) c[i] = in(t, i / n, i % n);
  ref::sinkhorn_knopp(c, n, iters, eps);
  for (int i = 0; i < n * n; ++i) out(t, i / n, i % n) = c[i];
}

// Sum of v over the CTA: a fixed tree over the threads' values (deterministic). red: kThreads floats of shared
// memory. Every thread gets the result.
__device__ float cta_sum(float v, float* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (unsigned h = kThreads / 2; h > 0; h >>= 1) {
    if (threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

// mixes[o] = (x_flat · fn[o]) · rsqrt(mean(x_flat²) + norm_eps) for o < m, into shared `mixes`.
template <class TX>
__device__ void token_mixes(view<const TX, 3> x, std::int64_t t, view<const float, 2> fn, float norm_eps,
                            float* mixes, float* red) {
  const int n = static_cast<int>(x.size(1));
  const std::int64_t D = x.size(2), nd = n * D;
  const int m = static_cast<int>(fn.size(0));
  // thread i owns the columns d = i (mod kThreads) of every stream, visited stream by stream (no division)
  float ss = 0.f;
  for (int j = 0; j < n; ++j)
    for (std::int64_t d = threadIdx.x; d < D; d += kThreads) {
      const float v = to_f32(x(t, j, d));
      ss = fmaf(v, v, ss);
    }
  ss = cta_sum(ss, red);
  const float r = 1.f / sqrtf(ss / static_cast<float>(nd) + norm_eps);
  for (int o0 = 0; o0 < m; o0 += kGroup) {
    float acc[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) acc[g] = 0.f;
    for (int j = 0; j < n; ++j)
      for (std::int64_t d = threadIdx.x; d < D; d += kThreads) {
        const float v = to_f32(x(t, j, d));
        const std::int64_t i = j * D + d;
#pragma unroll
        for (int g = 0; g < kGroup; ++g)
          if (o0 + g < m) acc[g] = fmaf(v, fn(o0 + g, i), acc[g]);
      }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float s = cta_sum(acc[g], red);
      if (threadIdx.x == 0 && o0 + g < m) mixes[o0 + g] = s * r;
    }
  }
  __syncthreads();
}

// y[t, d] = Σ_j w_j·x[t, j, d], fma in ascending j.
template <class TX, class TY>
__device__ void collapse(view<const TX, 3> x, std::int64_t t, const float* w, view<TY, 2> y) {
  const int n = static_cast<int>(x.size(1));
  for (std::int64_t d = threadIdx.x; d < x.size(2); d += kThreads) {
    float acc = 0.f;
    for (int j = 0; j < n; ++j) acc = fmaf(w[j], to_f32(x(t, j, d)), acc);
    y(t, d) = from_f32<TY>(acc);
  }
}

template <class TX, class TY>
__global__ void __launch_bounds__(kThreads) hc_pre_kernel(view<const TX, 3> x, view<const float, 2> fn,
                                                          view<const float, 1> scale, view<const float, 1> base,
                                                          view<TY, 2> y, view<float, 2> post, view<float, 3> comb,
                                                          int iters, float hc_eps, float norm_eps) {
  __shared__ float red[kThreads];
  __shared__ float mixes[2 * kMaxHcMult + kMaxHcMult * kMaxHcMult];
  __shared__ float pre[kMaxHcMult], p[kMaxHcMult], c[kMaxHcMult * kMaxHcMult];
  const std::int64_t t = blockIdx.x;
  const int n = static_cast<int>(x.size(1));
  token_mixes(x, t, fn, norm_eps, mixes, red);
  if (threadIdx.x == 0) {  // the gates and the projection: ref's own functions
    ref::hc_gates(mixes, n, scale, base, hc_eps, pre, p, c);
    for (int j = 0; j < n; ++j) post(t, j) = p[j];
    ref::sinkhorn_knopp(c, n, iters, hc_eps);
    for (int i = 0; i < n * n; ++i) comb(t, i / n, i % n) = c[i];
  }
  __syncthreads();
  collapse(x, t, pre, y);
}

template <class TX, class TY>
__global__ void __launch_bounds__(kThreads) hc_head_kernel(view<const TX, 3> x, view<const float, 2> fn,
                                                           view<const float, 1> scale, view<const float, 1> base,
                                                           view<TY, 2> y, float hc_eps, float norm_eps) {
  __shared__ float red[kThreads];
  __shared__ float mixes[kMaxHcMult], pre[kMaxHcMult];
  const std::int64_t t = blockIdx.x;
  const int n = static_cast<int>(x.size(1));
  token_mixes(x, t, fn, norm_eps, mixes, red);
  if (threadIdx.x == 0) ref::hc_gates(mixes, n, scale, base, hc_eps, pre, nullptr, nullptr);
  __syncthreads();
  collapse(x, t, pre, y);
}

// out[t, k, d] = post[t, k]·f[t, d] + Σ_j comb[t, j, k]·x[t, j, d]; grid.x = token, threads over d.
template <class TF, class TX, class TO>
__global__ void __launch_bounds__(kThreads) hc_post_kernel(view<const TF, 2> f, view<const TX, 3> x,
                                                           view<const float, 2> post, view<const float, 3> comb,
                                                           view<TO, 3> out) {
  const std::int64_t t = blockIdx.x;
  const int n = static_cast<int>(x.size(1));
  const std::int64_t d = static_cast<std::int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (d >= x.size(2)) return;
  float col[kMaxHcMult];
#pragma unroll
  for (int j = 0; j < kMaxHcMult; ++j) col[j] = j < n ? to_f32(x(t, j, d)) : 0.f;  // all of x before any out
  const float fv = to_f32(f(t, d));
#pragma unroll
  for (int k = 0; k < kMaxHcMult; ++k) {
    if (k >= n) break;
    float acc = post(t, k) * fv;
#pragma unroll
    for (int j = 0; j < kMaxHcMult; ++j)
      if (j < n) acc = fmaf(comb(t, j, k), col[j], acc);
    out(t, k, d) = from_f32<TO>(acc);
  }
}

// x[t, j, d] = h[t, d] for every stream j (the embedding expanded into n identical streams).
template <class TH, class TX>
__global__ void hc_expand_kernel(view<const TH, 2> h, view<TX, 3> x) {
  const std::int64_t n = x.size(1), D = x.size(2), total = x.size(0) * n * D;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t d = i % D, tj = i / D;
    x(tj / n, tj % n, d) = from_f32<TX>(to_f32(h(tj / n, d)));
  }
}

void check_n(const char* op, std::int64_t n) {
  DSV4_CHECK(n >= 1 && n <= kMaxHcMult, op, "the CUDA backend takes hc_mult n in [1, ", kMaxHcMult, "], got ", n);
}

}  // namespace

void sinkhorn_knopp(view<const float, 3> logits, view<float, 3> out, int iters, float eps, const exec& ex) {
  const std::int64_t T = logits.size(0), n = logits.size(1);
  check_n("sinkhorn_knopp", n);
  detail::launch l("sinkhorn_knopp", ex);
  constexpr unsigned threads = 64;  // 64 · 8 · 8 floats = 16 KiB of shared memory at most
  if (T > 0)
    sinkhorn_kernel<<<static_cast<unsigned>((T + threads - 1) / threads), threads,
                      threads * static_cast<unsigned>(n * n) * sizeof(float), l.stream()>>>(logits, out, iters, eps);
  l.finish();
}

template <class TX, class TY>
void hc_pre(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
            view<TY, 2> y, view<float, 2> post, view<float, 3> comb, int iters, float hc_eps, float norm_eps,
            const exec& ex) {
  check_n("hc_pre", x.size(1));
  DSV4_CHECK(x.size(0) <= 2147483647LL, "hc_pre", "too many tokens for one launch: ", x.size(0));
  detail::launch l("hc_pre", ex);
  if (x.size(0) > 0)
    hc_pre_kernel<<<static_cast<unsigned>(x.size(0)), kThreads, 0, l.stream()>>>(x, fn, scale, base, y, post, comb,
                                                                                  iters, hc_eps, norm_eps);
  l.finish();
}

template <class TF, class TX, class TO>
void hc_post(view<const TF, 2> f, view<const TX, 3> x, view<const float, 2> post, view<const float, 3> comb,
             view<TO, 3> out, const exec& ex) {
  check_n("hc_post", x.size(1));
  const std::int64_t groups = (x.size(2) + kThreads - 1) / kThreads;
  DSV4_CHECK(x.size(0) <= 2147483647LL && groups <= 65535, "hc_post", "shape beyond one launch: ", x.size(0), " x ",
             x.size(2));
  detail::launch l("hc_post", ex);
  if (x.size(0) > 0 && x.size(2) > 0)
    hc_post_kernel<<<dim3(static_cast<unsigned>(x.size(0)), static_cast<unsigned>(groups)), kThreads, 0,
                     l.stream()>>>(f, x, post, comb, out);
  l.finish();
}

template <class TX, class TY>
void hc_head(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
             view<TY, 2> y, float hc_eps, float norm_eps, const exec& ex) {
  check_n("hc_head", x.size(1));
  DSV4_CHECK(x.size(0) <= 2147483647LL, "hc_head", "too many tokens for one launch: ", x.size(0));
  detail::launch l("hc_head", ex);
  if (x.size(0) > 0)
    hc_head_kernel<<<static_cast<unsigned>(x.size(0)), kThreads, 0, l.stream()>>>(x, fn, scale, base, y, hc_eps,
                                                                                   norm_eps);
  l.finish();
}

template <class TH, class TX>
void hc_expand(view<const TH, 2> h, view<TX, 3> x, const exec& ex) {
  detail::launch l("hc_expand", ex);
  const std::int64_t total = x.size(0) * x.size(1) * x.size(2);
  if (total > 0) hc_expand_kernel<<<detail::blocks_for(total, kThreads), kThreads, 0, l.stream()>>>(h, x);
  l.finish();
}
template void hc_expand<float, float>(view<const float, 2>, view<float, 3>, const exec&);
template void hc_expand<float, bf16>(view<const float, 2>, view<bf16, 3>, const exec&);
template void hc_expand<bf16, float>(view<const bf16, 2>, view<float, 3>, const exec&);
template void hc_expand<bf16, bf16>(view<const bf16, 2>, view<bf16, 3>, const exec&);

#define DSV4_CUDA_MHC_XY(TX, TY)                                                                                   \
  template void hc_pre<TX, TY>(view<const TX, 3>, view<const float, 2>, view<const float, 1>,                     \
                               view<const float, 1>, view<TY, 2>, view<float, 2>, view<float, 3>, int, float, float, \
                               const exec&);                                                                       \
  template void hc_head<TX, TY>(view<const TX, 3>, view<const float, 2>, view<const float, 1>,                    \
                                view<const float, 1>, view<TY, 2>, float, float, const exec&);
DSV4_CUDA_MHC_XY(float, float)
DSV4_CUDA_MHC_XY(float, bf16)
DSV4_CUDA_MHC_XY(bf16, float)
DSV4_CUDA_MHC_XY(bf16, bf16)
#undef DSV4_CUDA_MHC_XY
#define DSV4_CUDA_MHC_POST(TF, TX, TO)                                                                  \
  template void hc_post<TF, TX, TO>(view<const TF, 2>, view<const TX, 3>, view<const float, 2>,         \
                                    view<const float, 3>, view<TO, 3>, const exec&);
#define DSV4_CUDA_MHC_POST_X(TF, TX) DSV4_CUDA_MHC_POST(TF, TX, float) DSV4_CUDA_MHC_POST(TF, TX, bf16)
DSV4_CUDA_MHC_POST_X(float, float)
DSV4_CUDA_MHC_POST_X(float, bf16)
DSV4_CUDA_MHC_POST_X(bf16, float)
DSV4_CUDA_MHC_POST_X(bf16, bf16)
#undef DSV4_CUDA_MHC_POST_X
#undef DSV4_CUDA_MHC_POST

}  // namespace dsv4::cuda
