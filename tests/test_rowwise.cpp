// The row-wise ops of the forward pass (dsv4/ops/rowwise.hpp) on host tensors: each row equals ref's per-vector
// routine bitwise (the host backend is ref's loop, so any difference is a bug in the row walk: strides, offsets,
// heads), inverse RoPE undoes RoPE to fp32 rounding, hand-computed values, and the errors.
#include <cmath>
#include <cstring>

#include "dsv4/ops/rowwise.hpp"
#include "dsv4/ref/rotary.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

TEST_SUITE("rowwise") {
  TEST_CASE("rms_norm: each row equals ref::rms_norm; rank 3, a strided row view, in place, no weight") {
    const std::int64_t R = 7, n = 96;
    const std::vector<float> xv = randn(static_cast<std::size_t>(R * n), 11, 3.f), wv = randn(n, 12);
    const buffer x = host_f32(R, n, xv), w = host_f32(1, n, wv);
    const tensor_view w1(w.data(), dtype::f32, {n});
    for (const bool weighted : {true, false}) {
      buffer y(dtype::f32, {R, n});
      ops::rms_norm(x, weighted ? w1 : tensor_view(), 1e-6, y);
      for (std::int64_t r = 0; r < R; ++r) {
        std::vector<float> e(xv.begin() + r * n, xv.begin() + (r + 1) * n);
        ref::rms_norm(e.data(), n, weighted ? wv.data() : nullptr, 1e-6);
        CHECK(std::memcmp(e.data(), static_cast<float*>(y.data()) + r * n, n * sizeof(float)) == 0);
      }
      // [R, 2, n/2] rows of n/2 (the per-head form): row (r, h) is the half h of row r, normalized alone
      buffer y3 = clone_to(x, device::cpu());
      const tensor_view v3(y3.data(), dtype::f32, {R, 2, n / 2});
      ops::rms_norm(v3, tensor_view(), 1e-6, v3);  // in place
      for (std::int64_t r = 0; r < R; ++r)
        for (std::int64_t h = 0; h < 2; ++h) {
          std::vector<float> e(xv.begin() + r * n + h * n / 2, xv.begin() + r * n + (h + 1) * n / 2);
          ref::rms_norm(e.data(), n / 2, nullptr, 1e-6);
          CHECK(std::memcmp(e.data(), static_cast<float*>(y3.data()) + r * n + h * n / 2, n / 2 * sizeof(float)) == 0);
        }
    }
    // every other row (stride 2n): the rows in between stay untouched
    buffer z = clone_to(x, device::cpu());
    const std::int64_t shape[2] = {R / 2, n}, stride[2] = {2 * n, 1};
    const tensor_view alt(z.data(), dtype::f32, shape, stride);
    ops::rms_norm(alt, w1, 1e-6, alt);
    for (std::int64_t r = 0; r < R; ++r) {
      std::vector<float> e(xv.begin() + r * n, xv.begin() + (r + 1) * n);
      if (r % 2 == 0 && r / 2 < R / 2) ref::rms_norm(e.data(), n, wv.data(), 1e-6);
      CHECK(std::memcmp(e.data(), static_cast<float*>(z.data()) + r * n, n * sizeof(float)) == 0);
    }
    // hand value: [3, 4] -> rms = sqrt(12.5) -> [3, 4] / 3.5355339
    float hv[2] = {3.f, 4.f};
    ops::rms_norm(tensor_view(hv, dtype::f32, {1, 2}), tensor_view(), 0.0, tensor_view(hv, dtype::f32, {1, 2}));
    CHECK(hv[0] == doctest::Approx(0.8485281).epsilon(1e-6));
    CHECK(hv[1] == doctest::Approx(1.1313708).epsilon(1e-6));
  }

  TEST_CASE("rope: each head's pairs after `off` equal ref::rope_rotate at the row's position; inverse undoes it") {
    const std::int64_t T = 5, H = 3, d = 24, off = 8, pairs = 8;
    const std::vector<float> xv = randn(static_cast<std::size_t>(T * H * d), 21, 2.f), fv = [] {
      std::vector<float> f(8);
      for (int i = 0; i < 8; ++i) f[i] = 1.f / std::pow(10000.f, 2.f * i / 16.f);
      return f;
    }();
    std::vector<std::int64_t> pos = {0, 1, 7, 4095, 1000000};
    buffer x = host_f32(T, H * d, xv);
    const tensor_view x3(x.data(), dtype::f32, {T, H, d}), pv(pos.data(), dtype::i64, {T}),
        fq(const_cast<float*>(fv.data()), dtype::f32, {pairs});
    ops::rope(x3, pv, fq, off, false);
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t h = 0; h < H; ++h) {
        std::vector<float> e(xv.begin() + (t * H + h) * d, xv.begin() + (t * H + h + 1) * d);
        ref::rope_rotate(e.data() + off, fv.data(), pairs, pos[t], false);
        CHECK(std::memcmp(e.data(), static_cast<float*>(x.data()) + (t * H + h) * d, d * sizeof(float)) == 0);
      }
    ops::rope(x3, pv, fq, off, true);
    double worst = 0;
    for (std::size_t i = 0; i < xv.size(); ++i)
      worst = std::max(worst, std::fabs(double(static_cast<float*>(x.data())[i]) - xv[i]) / (1 + std::fabs(xv[i])));
    MESSAGE("rope then inverse rope: max relative error ", worst);
    CHECK(worst < 4e-7);  // two rotations of fp32 values by unit-norm fp32 (cos, sin): a few ulp
    // [T, d] (one head) is the same walk
    buffer y = host_f32(T, d, std::vector<float>(xv.begin(), xv.begin() + T * d));
    ops::rope(y, pv, fq, off, false);
    for (std::int64_t t = 0; t < T; ++t) {
      std::vector<float> e(xv.begin() + t * d, xv.begin() + (t + 1) * d);
      ref::rope_rotate(e.data() + off, fv.data(), pairs, pos[t], false);
      CHECK(std::memcmp(e.data(), static_cast<float*>(y.data()) + t * d, d * sizeof(float)) == 0);
    }
    // hand value: (1, 0) at position 1 with frequency π/2 -> (cos, sin) = (~0, 1)
    float hv[2] = {1.f, 0.f}, hf[1] = {1.5707963f};
    std::int64_t hp[1] = {1};
    ops::rope(tensor_view(hv, dtype::f32, {1, 2}), tensor_view(hp, dtype::i64, {1}), tensor_view(hf, dtype::f32, {1}),
              0, false);
    CHECK(std::fabs(hv[0]) < 1e-7);
    CHECK(hv[1] == 1.f);
  }

  TEST_CASE("embed (f32 and bf16 tables), scale, count_non_finite") {
    const std::int64_t V = 9, D = 6;
    const std::vector<float> tv = randn(static_cast<std::size_t>(V * D), 31);
    const buffer tf = host_f32(V, D, tv), tb = host_bf16(V, D, tv);
    std::vector<std::int64_t> ids = {8, 0, 3, 3};
    const tensor_view iv(ids.data(), dtype::i64, {4});
    for (const buffer* t : {&tf, &tb}) {
      buffer out(dtype::f32, {4, D});
      ops::embed(iv, *t, out);
      for (std::int64_t r = 0; r < 4; ++r)
        for (std::int64_t i = 0; i < D; ++i) {
          const float want = t == &tf ? tv[ids[r] * D + i] : static_cast<const bf16*>(tb.data())[ids[r] * D + i].to_float();
          CHECK(static_cast<float*>(out.data())[r * D + i] == want);
        }
    }
    buffer out(dtype::f32, {4, D});
    std::vector<std::int64_t> bad = {1, 9, 0, 2};
    check_error([&] { ops::embed(tensor_view(bad.data(), dtype::i64, {4}), tf, out); },
                {"embed", "token id 9 at index 1", "[0, 9)"});
    buffer s = host_f32(2, 3, {1, -2, 3, 0.5f, 0, -8});
    ops::scale(s, 0.25f);
    CHECK(std::vector<float>(s.host_span<float>().begin(), s.host_span<float>().end()) ==
          std::vector<float>{0.25f, -0.5f, 0.75f, 0.125f, 0.f, -2.f});
    buffer nf = host_f32(2, 3, {1, NAN, 3, INFINITY, 0, -INFINITY});
    CHECK(ops::count_non_finite(nf) == 3);
    CHECK(ops::count_non_finite(s) == 0);
  }

  TEST_CASE("errors: shapes, dtypes, ranges") {
    buffer x(dtype::f32, {2, 8}), y(dtype::f32, {2, 7}), w(dtype::f32, {7});
    check_error([&] { ops::rms_norm(x, tensor_view(), 1e-6, y); }, {"rms_norm"});
    check_error([&] { ops::rms_norm(x, w, 1e-6, x); }, {"rms_norm", "weight", "f32[8]"});
    check_error([&] { ops::rms_norm(x, tensor_view(), -1.0, x); }, {"rms_norm", "eps"});
    std::vector<std::int64_t> pos = {0, 1};
    buffer f(dtype::f32, {4});
    check_error([&] { ops::rope(x, tensor_view(pos.data(), dtype::i64, {2}), f, 2, false); },
                {"rope", "runs past the last dim 8"});
    check_error([&] { ops::rope(x, tensor_view(pos.data(), dtype::i64, {1}), f, 0, false); }, {"rope", "positions"});
    pos[1] = -3;
    check_error([&] { ops::rope(x, tensor_view(pos.data(), dtype::i64, {2}), f, 0, false); },
                {"rope", "position -3 of row 1"});
    buffer bi(dtype::i32, {2, 8});
    check_error([&] { ops::scale(bi, 2.f); }, {"scale", "expected f32"});
    check_error([&] { (void)ops::count_non_finite(bi); }, {"count_non_finite", "expected f32"});
  }
}
