// src/ops/quant.cpp — validated entry points of the block quantizers and dequantization; one backend per call.
#include "dsv4/ops/quant.hpp"

#include <type_traits>

#include "common.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/ref/quant.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/quant.hpp"
#endif

namespace dsv4::ops {
namespace {

const char* inner_stride_reason(std::initializer_list<const tensor_view*> ts) {
  for (const tensor_view* t : ts)
    if (t->rank() > 0 && t->stride(-1) != 1 && t->shape(-1) > 1) return "innermost stride is not 1";
  return nullptr;
}

void check_block(const char* op, dtype code, int block) {
  if (code == dtype::fp4_e2m1)
    DSV4_CHECK(block == 32, op, "block ", block, " unsupported for fp4_e2m1 (expected 32)");
  else
    DSV4_CHECK(block == 32 || block == 64 || block == 128, op, "block ", block,
               " unsupported for fp8_e4m3 (expected 32, 64 or 128)");
}

void check_bad(const char* op, std::int64_t bad, const tensor_view& x, const char* what) {
  DSV4_CHECK(bad == 0, op, bad, " block(s) of ", x.describe(), what);
}

}  // namespace

void block_quantize(const tensor_view& x, const tensor_view& q, const tensor_view& scale, int block,
                    const exec& ex) {
  constexpr const char* op = "block_quantize";
  DSV4_CHECK(x.rank() >= 1, op, "x must have rank >= 1, got ", x.describe());
  DSV4_CHECK(q.dt() == dtype::fp8_e4m3 || q.dt() == dtype::fp4_e2m1, op, "codes ", q.describe(),
             ": expected dtype fp8_e4m3 or fp4_e2m1");
  DSV4_CHECK(scale.dt() == dtype::ue8m0, op, "scale ", scale.describe(), ": expected dtype ue8m0");
  check_block(op, q.dt(), block);
  detail::check_same_device(op, {&x, &q, &scale});
  detail::check_same_shape(op, x, q);
  detail::check_same_shape(op, x, scale, true);
  const std::int64_t K = x.shape(-1);
  DSV4_CHECK(K % block == 0, op, "last dim ", K, " of ", x.describe(), " is not a multiple of block ", block);
  DSV4_CHECK(scale.shape(-1) == K / block, op, "scale ", scale.describe(), ": expected last dim ", K / block,
             " = ", K, " / ", block);
  detail::check_aliasing(op, x, q, false);
  detail::check_aliasing(op, x, scale, false);
  detail::check_aliasing(op, q, scale, false);
  const backend be = detail::choose_backend(op, ex, x.dev(), inner_stride_reason({&x, &q}));

  std::int64_t bad = 0;
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TIn>(std::type_identity<TIn>) {
    auto run = [&]<class TCode>(std::type_identity<TCode>) {
      detail::for_each_matrix<3>({x, q, scale}, [&](const std::array<tensor_view, 3>& m) {
        const auto xv = m[0].as<const TIn, 2>();
        const auto qv = m[1].as<TCode, 2>();
        const auto sv = m[2].as<ue8m0, 2>();
        if (be == backend::ref) bad += ref::block_quantize(xv, qv, sv, block);
        if (be == backend::cpu) bad += cpu::block_quantize(xv, qv, sv, block, ex);
#if DSV4_WITH_CUDA
        if (be == backend::cuda)
          bad += cuda::block_quantize(xv, qv, sv, block, detail::on_device(op, ex, x.dev()));
#endif
      });
    };
    if (q.dt() == dtype::fp4_e2m1)
      run(std::type_identity<fp4x2>{});
    else
      run(std::type_identity<fp8_e4m3>{});
  });
  check_bad(op, bad, x, " hold inf or NaN; quantization needs finite input");
}

void block_round_trip(const tensor_view& x, const tensor_view& y, quant_format fmt, int block, const exec& ex) {
  constexpr const char* op = "block_round_trip";
  DSV4_CHECK(x.rank() >= 1, op, "x must have rank >= 1, got ", x.describe());
  const dtype code = fmt == quant_format::fp4_e2m1 ? dtype::fp4_e2m1 : dtype::fp8_e4m3;
  check_block(op, code, block);
  detail::check_same_device(op, {&x, &y});
  detail::check_same_shape(op, x, y);
  DSV4_CHECK(x.shape(-1) % block == 0, op, "last dim ", x.shape(-1), " of ", x.describe(),
             " is not a multiple of block ", block);
  detail::check_aliasing(op, x, y, true);
  const backend be = detail::choose_backend(op, ex, x.dev(), inner_stride_reason({&x, &y}));

  std::int64_t bad = 0;
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TIn>(std::type_identity<TIn>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TOut>(std::type_identity<TOut>) {
      auto run = [&]<class Code>(std::type_identity<Code>) {
        detail::for_each_matrix<2>({x, y}, [&](const std::array<tensor_view, 2>& m) {
          const auto xv = m[0].as<const TIn, 2>();
          const auto yv = m[1].as<TOut, 2>();
          if (be == backend::ref) bad += ref::block_round_trip<Code>(xv, yv, block);
          if (be == backend::cpu) bad += cpu::block_round_trip<Code>(xv, yv, block, ex);
#if DSV4_WITH_CUDA
          if (be == backend::cuda)
            bad += cuda::block_round_trip<Code>(xv, yv, block, detail::on_device(op, ex, x.dev()));
#endif
        });
      };
      if (fmt == quant_format::fp4_e2m1)
        run(std::type_identity<fp4_e2m1>{});
      else
        run(std::type_identity<fp8_e4m3>{});
    });
  });
  check_bad(op, bad, x, " hold inf or NaN; quantization needs finite input");
}

void dequantize(const tensor_view& q, const tensor_view& scale, const tensor_view& out, int block_rows,
                int block_cols, const exec& ex) {
  constexpr const char* op = "dequantize";
  DSV4_CHECK(q.rank() == 2, op, "codes must be rank 2 [N, K], got ", q.describe());
  DSV4_CHECK(scale.dt() == dtype::ue8m0 && scale.rank() == 2, op, "scale ", scale.describe(),
             ": expected rank-2 ue8m0");
  DSV4_CHECK(block_rows >= 1 && block_cols >= 1, op, "block ", block_rows, "x", block_cols, " must be positive");
  DSV4_CHECK(q.dt() != dtype::fp4_e2m1 || block_cols % 2 == 0, op, "fp4 block width ", block_cols,
             " must be even (two codes per byte)");
  detail::check_same_device(op, {&q, &scale, &out});
  detail::check_same_shape(op, q, out);
  const std::int64_t N = q.shape(0), K = q.shape(1);
  const std::int64_t sn = (N + block_rows - 1) / block_rows, sk = (K + block_cols - 1) / block_cols;
  DSV4_CHECK(scale.shape(0) == sn && scale.shape(1) == sk, op, "scale ", scale.describe(), ": expected [", sn,
             ", ", sk, "] for ", q.describe(), " in ", block_rows, "x", block_cols, " tiles");
  detail::check_aliasing(op, q, out, false);
  detail::check_aliasing(op, scale, out, false);
  const backend be = detail::choose_backend(op, ex, q.dev(), inner_stride_reason({&q, &out}));

  std::int64_t bad = 0;
  auto run = [&]<class TCode>(std::type_identity<TCode>) {
    visit_dtype<float, bf16>(out.dt(), op, [&]<class TOut>(std::type_identity<TOut>) {
      const auto qv = q.as<const TCode, 2>();
      const auto sv = scale.as<const ue8m0, 2>();
      const auto ov = out.as<TOut, 2>();
      if (be == backend::ref) bad += ref::dequantize(qv, sv, ov, block_rows, block_cols);
      if (be == backend::cpu) bad += cpu::dequantize(qv, sv, ov, block_rows, block_cols, ex);
#if DSV4_WITH_CUDA
      if (be == backend::cuda)
        bad += cuda::dequantize(qv, sv, ov, block_rows, block_cols, detail::on_device(op, ex, q.dev()));
#endif
    });
  };
  visit_dtype<fp8_e4m3, fp4x2>(q.dt(), op, run);
  DSV4_CHECK(bad == 0, op, bad, " NaN code(s) or NaN scale(s) in ", q.describe(), " / ", scale.describe());
}

}  // namespace dsv4::ops
