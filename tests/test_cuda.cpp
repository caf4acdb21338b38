// CUDA backend against ref: quantizers, round trips and dequantization bitwise on the adversarial inputs of the
// host tests, non-finite blocks included; the Hadamard transform bitwise too (same butterfly order as ref). Then the
// execution model (dsv4/exec.hpp): the deferred status word, CUDA-graph capture and replay with new contents, two
// streams at once, repeated runs, the device guard and the exec checks, empty inputs, strided / rank-3 views, grids
// past 65,535 rows, and the hardware conversions against the integer encoders on all 2^32 floats.
#include <thread>

#include "dsv4/cuda/quant.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/quant.hpp"
#include "dsv4/ref/quant.hpp"
#include "cuda_harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {
// f32 outputs equal bit for bit, except that any NaN equals any NaN (a GPU produces its canonical NaN).
bool same_f32_nan_equal(const buffer& a, const buffer& b) {
  const auto x = a.host_span<float>(), y = b.host_span<float>();
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!(std::isnan(x[i]) && std::isnan(y[i])) && f32_to_bits(x[i]) != f32_to_bits(y[i])) return false;
  return true;
}

// ref's bytes of a quantization, for any input (ref kernels never throw: they count non-finite blocks).
struct ref_codes {
  buffer q, s;
  std::int64_t bad = 0;
  ref_codes(const buffer& x, dtype code, int block)
      : q(code, x.view().shape()), s(dtype::ue8m0, {x.view().shape(0), x.view().shape(1) / block}) {
    const auto run = [&]<class TIn>(std::type_identity<TIn>) {
      const auto xv = x.view().as<const TIn, 2>();
      if (code == dtype::fp4_e2m1)
        bad = ref::block_quantize(xv, q.view().as<fp4x2, 2>(), s.view().as<ue8m0, 2>(), block);
      else
        bad = ref::block_quantize(xv, q.view().as<fp8_e4m3, 2>(), s.view().as<ue8m0, 2>(), block);
    };
    if (x.view().dt() == dtype::f32)
      run(std::type_identity<float>{});
    else
      run(std::type_identity<bf16>{});
  }
};
}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("block quantizers and round trips: CUDA == ref bitwise") {
  struct cfg { dtype code; ops::quant_format fmt; int block; };
  for (cfg c : {cfg{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 32}, cfg{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 64},
                cfg{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 128}, cfg{dtype::fp4_e2m1, ops::quant_format::fp4_e2m1, 32}}) {
    CAPTURE(c.block);
    const std::int64_t rows = 77, k = 512;
    const auto v = adversarial(rows, k, c.block, c.code == dtype::fp4_e2m1 ? fp4_grid() : fp8_grid(), 31 + c.block);
    for (const buffer& x : {host_f32(rows, k, v), host_bf16(rows, k, v)}) {
      buffer q(c.code, {rows, k}), s(dtype::ue8m0, {rows, k / c.block});
      ops::block_quantize(x, q, s, c.block, on(backend::ref));
      const buffer xd = clone_to(x, kGpu);
      buffer qd(c.code, {rows, k}, kGpu), sd(dtype::ue8m0, {rows, k / c.block}, kGpu);
      ops::block_quantize(xd, qd, sd, c.block);
      CHECK(bytes_of(to_host(qd)) == bytes_of(q));
      CHECK(bytes_of(to_host(sd)) == bytes_of(s));
      for (dtype out : {dtype::f32, dtype::bf16}) {
        buffer y(out, {rows, k}), yd(out, {rows, k}, kGpu);
        ops::block_round_trip(x, y, c.fmt, c.block, on(backend::ref));
        ops::block_round_trip(xd, yd, c.fmt, c.block);
        CHECK(bytes_of(to_host(yd)) == bytes_of(y));
      }
      buffer deq(dtype::f32, {rows, k}), deqd(dtype::f32, {rows, k}, kGpu);
      ops::dequantize(q, s, deq, 1, c.block, on(backend::ref));
      ops::dequantize(qd, sd, deqd, 1, c.block);
      CHECK(bytes_of(to_host(deqd)) == bytes_of(deq));
    }
  }
}

TEST_CASE("non-finite input is reported from the device too") {
  std::vector<float> v(64, 1.f);
  v[40] = std::nanf("");
  const buffer xd = clone_to(host_f32(1, 64, v), kGpu);
  buffer qd(dtype::fp8_e4m3, {1, 64}, kGpu), sd(dtype::ue8m0, {1, 2}, kGpu);
  check_error([&] { ops::block_quantize(xd, qd, sd, 32); }, {"1 block(s)", "inf or NaN"});
  check_error([&] { ops::block_quantize(xd, qd, sd, 32, on(backend::cpu)); }, {"requested but the tensors live on cuda"});
}

TEST_CASE("Hadamard: CUDA == ref bitwise, n = 1 .. 8192") {
  for (int n = 1; n <= 8192; n *= 2) {
    CAPTURE(n);
    const auto v = adversarial(3, n < 32 ? 32 : n, 32, fp4_grid(), n);
    const std::vector<float> vals(v.begin(), v.begin() + 3 * n);
    std::vector<float> finite(vals);
    for (auto& x : finite) x = std::isfinite(x) && std::fabs(x) < 1e30f ? x : 1.f;
    const buffer x = host_f32(3, n, finite);
    buffer y(dtype::f32, {3, n}), yd(dtype::f32, {3, n}, kGpu);
    ops::hadamard(x, y, on(backend::ref));
    ops::hadamard(clone_to(x, kGpu), yd);
    CHECK(bytes_of(to_host(yd)) == bytes_of(y));
  }
}

TEST_CASE("the conversions the quantizers use equal the integer RNE encoders on all 2^32 floats") {
  // FP8: cvt.rn.satfinite.e4m3x2; FP4: cvt.rn.satfinite.e2m1x2 on Blackwell family targets, else the integer
  // encoder itself (then this holds by construction and checks the kernel's NaN / clamp handling).
  CHECK(cuda::conversion_mismatches(8, exec{}) == 0);
  CHECK(cuda::conversion_mismatches(4, exec{}) == 0);
}

TEST_CASE("non-finite blocks: ref's bytes, the status bit under deferred, a dsv4::error under sync") {
  const std::int64_t rows = 40, k = 256;
  for (dtype code : {dtype::fp8_e4m3, dtype::fp4_e2m1}) {
    const int block = code == dtype::fp4_e2m1 ? 32 : 128;
    CAPTURE(block);
    auto v = adversarial(rows, k, block, code == dtype::fp4_e2m1 ? fp4_grid() : fp8_grid(), 7 + block);
    v[5] = std::nanf("");
    v[300] = -std::numeric_limits<float>::infinity();
    v[1000] = -std::nanf("");
    const buffer x = host_f32(rows, k, v);
    const ref_codes want(x, code, block);
    REQUIRE(want.bad >= 2);
    const buffer xd = clone_to(x, kGpu);
    buffer qd(code, {rows, k}, kGpu), sd(dtype::ue8m0, {rows, k / block}, kGpu);
    stream_and_status ss;
    ops::block_quantize(xd, qd, sd, block, ss.deferred());  // returns: the finding is in the word
    CHECK(drained_bytes(qd, ss.stream) == bytes_of(want.q));
    CHECK(bytes_of(to_host(sd)) == bytes_of(want.s));
    CHECK(ss.word() == status_nonfinite_input);
    check_error([&] { check_status(ss.deferred()); }, {"check_status", "non-finite input"});
    CHECK(ss.word() == 0u);  // cleared by the check
    check_status(ss.deferred());
    check_error([&] { ops::block_quantize(xd, qd, sd, block); }, {std::to_string(want.bad).c_str(), "block(s)"});
    exec none = ss.deferred();
    none.checks = check_policy::none;
    none.status = nullptr;
    ops::block_quantize(xd, qd, sd, block, none);
    CHECK(drained_bytes(qd, ss.stream) == bytes_of(want.q));
  }
}

TEST_CASE("NaN codes and scales in dequantize: counted per value under sync, a bit under deferred") {
  buffer q(dtype::fp8_e4m3, {2, 256}), s(dtype::ue8m0, {2, 2});
  auto qs = q.host_span<fp8_e4m3>();
  for (std::size_t i = 0; i < qs.size(); ++i) qs[i] = fp8_e4m3{static_cast<std::uint8_t>(i % 120)};
  qs[3] = fp8_e4m3{0x7F};
  qs[400] = fp8_e4m3{0xFF};
  s.host_span<ue8m0>()[1] = ue8m0{0xFF};  // 128 values of row 0
  const buffer qd = clone_to(q, kGpu), sd = clone_to(s, kGpu);
  buffer out(dtype::f32, {2, 256}), outd(dtype::f32, {2, 256}, kGpu);
  CHECK(ref::dequantize(q.view().as<const fp8_e4m3, 2>(), s.view().as<const ue8m0, 2>(), out.view().as<float, 2>(),
                        1, 128) == 130);
  check_error([&] { ops::dequantize(qd, sd, outd, 1, 128); }, {"130 NaN code(s)"});
  stream_and_status ss;
  ops::dequantize(qd, sd, outd, 1, 128, ss.deferred());
  REQUIRE(cudaStreamSynchronize(ss.stream) == cudaSuccess);
  CHECK(same_f32_nan_equal(to_host(outd), out));
  CHECK(ss.word() == status_nan_code);
}

TEST_CASE("graph capture: quantize -> dequantize -> Hadamard captured once, replayed on new contents == eager") {
  const std::int64_t rows = 33, k = 512;
  stream_and_status ss;
  const exec ex = ss.deferred();
  buffer xd(dtype::f32, {rows, k}, kGpu), qd(dtype::fp8_e4m3, {rows, k}, kGpu), sd(dtype::ue8m0, {rows, k / 128}, kGpu),
      deqd(dtype::f32, {rows, k}, kGpu), hd(dtype::bf16, {rows, k}, kGpu), rtd(dtype::bf16, {rows, k}, kGpu);
  const captured_graph g(ss.stream, [&] {
    ops::block_quantize(xd, qd, sd, 128, ex);
    ops::dequantize(qd, sd, deqd, 1, 128, ex);
    ops::hadamard(deqd, hd, ex);
    ops::block_round_trip(xd, rtd, ops::quant_format::fp4_e2m1, 32, ex);
  });
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    const buffer x = host_f32(rows, k, adversarial(rows, k, 128, fp8_grid(), 100 + round));
    ops::copy(x, xd);  // new contents, same addresses
    g.launch();
    const auto got_h = bytes_of(to_host(hd)), got_rt = bytes_of(to_host(rtd));
    // eager, sync policy, fresh buffers
    buffer q2(dtype::fp8_e4m3, {rows, k}, kGpu), s2(dtype::ue8m0, {rows, k / 128}, kGpu),
        d2(dtype::f32, {rows, k}, kGpu), h2(dtype::bf16, {rows, k}, kGpu), rt2(dtype::bf16, {rows, k}, kGpu);
    ops::block_quantize(xd, q2, s2, 128);
    ops::dequantize(q2, s2, d2, 1, 128);
    ops::hadamard(d2, h2);
    ops::block_round_trip(xd, rt2, ops::quant_format::fp4_e2m1, 32);
    CHECK(got_h == bytes_of(to_host(h2)));
    CHECK(got_rt == bytes_of(to_host(rt2)));
  }
  check_status(ex);
}

TEST_CASE("two streams at once, 20 runs each, every run bitwise the first") {
  const std::int64_t rows = 64, k = 1024;
  auto worker = [&](std::uint64_t seed, std::vector<std::string>* errors) {
    try {
      stream_and_status ss;
      const buffer xd = clone_to(host_f32(rows, k, randn(static_cast<std::size_t>(rows * k), seed)), kGpu);
      buffer qd(dtype::fp4_e2m1, {rows, k}, kGpu), sd(dtype::ue8m0, {rows, k / 32}, kGpu),
          yd(dtype::f32, {rows, k}, kGpu);
      std::vector<std::uint8_t> first;
      for (int run = 0; run < 20; ++run) {
        ops::block_quantize(xd, qd, sd, 32, ss.deferred());
        ops::dequantize(qd, sd, yd, 1, 32, ss.deferred());
        const auto got = drained_bytes(yd, ss.stream);
        if (run == 0) first = got;
        if (got != first) errors->push_back("run " + std::to_string(run) + " differs");
      }
      if (ss.word() != 0) errors->push_back("status set");
    } catch (const std::exception& e) {
      errors->push_back(e.what());
    }
  };
  std::vector<std::string> e1, e2;
  std::thread t1(worker, 1, &e1), t2(worker, 2, &e2);
  t1.join();
  t2.join();
  CHECK(e1.empty());
  CHECK(e2.empty());
}

TEST_CASE("exec checks: stream, status word, device") {
  const buffer xd = clone_to(host_f32(2, 64, std::vector<float>(128, 1.f)), kGpu);
  buffer qd(dtype::fp8_e4m3, {2, 64}, kGpu), sd(dtype::ue8m0, {2, 2}, kGpu);
  stream_and_status ss;
  exec e = ss.deferred();
  e.cuda_stream = nullptr;
  check_error([&] { ops::block_quantize(xd, qd, sd, 32, e); }, {"block_quantize", "needs exec.cuda_stream"});
  e = ss.deferred();
  e.status = nullptr;
  check_error([&] { ops::block_quantize(xd, qd, sd, 32, e); }, {"needs exec.status"});
  e = ss.deferred();
  e.device = 5;
  check_error([&] { ops::block_quantize(xd, qd, sd, 32, e); }, {"exec.device = 5", "cuda:0"});
  check_error([&] { check_status(exec{}); }, {"check_status", "not check_policy::deferred"});
  int n = 0;
  REQUIRE(cudaGetDeviceCount(&n) == cudaSuccess);
  if (n < 2) {
    MESSAGE("one CUDA device: the cross-device cases need two");
    return;
  }
  // tensors on cuda:1 while cuda:0 is current: the launcher switches and restores
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  const device d1 = device::cuda(1);
  const auto v = adversarial(8, 256, 128, fp8_grid(), 5);
  const buffer x = host_f32(8, 256, v);
  const ref_codes want(x, dtype::fp8_e4m3, 128);
  const buffer x1 = clone_to(x, d1);
  buffer q1(dtype::fp8_e4m3, {8, 256}, d1), s1(dtype::ue8m0, {8, 2}, d1);
  ops::block_quantize(x1, q1, s1, 128);
  CHECK(bytes_of(to_host(q1)) == bytes_of(want.q));
  int cur = -1;
  REQUIRE(cudaGetDevice(&cur) == cudaSuccess);
  CHECK(cur == 0);
  // a stream of cuda:0 with tensors on cuda:1
  check_error([&] { ops::block_quantize(x1, q1, s1, 128, ss.deferred()); }, {"belongs to cuda:0", "cuda:1"});
}

TEST_CASE("empty inputs launch nothing and report nothing") {
  stream_and_status ss;
  buffer xd(dtype::f32, {0, 128}, kGpu), qd(dtype::fp8_e4m3, {0, 128}, kGpu), sd(dtype::ue8m0, {0, 1}, kGpu),
      yd(dtype::f32, {0, 128}, kGpu);
  ops::block_quantize(xd, qd, sd, 128, ss.deferred());
  ops::block_round_trip(xd, yd, ops::quant_format::fp8_e4m3, 128, ss.deferred());
  ops::dequantize(qd, sd, yd, 1, 128, ss.deferred());
  ops::hadamard(xd, yd, ss.deferred());
  ops::block_quantize(xd, qd, sd, 128);
  CHECK(ss.word() == 0u);
}

TEST_CASE("rank-3 and strided views, bf16 Hadamard, 70,000 rows, ragged 128x128 tiles: CUDA == ref bitwise") {
  SUBCASE("rank 3") {
    const auto v = adversarial(150, 256, 64, fp8_grid(), 11);
    const buffer x2 = host_f32(150, 256, v);
    const ref_codes want(x2, dtype::fp8_e4m3, 64);
    buffer x3(dtype::f32, {3, 50, 256});
    std::memcpy(x3.data(), v.data(), v.size() * sizeof(float));
    const buffer xd = clone_to(x3, kGpu);
    buffer qd(dtype::fp8_e4m3, {3, 50, 256}, kGpu), sd(dtype::ue8m0, {3, 50, 4}, kGpu);
    ops::block_quantize(xd, qd, sd, 64);
    CHECK(bytes_of(to_host(qd)) == bytes_of(want.q));
    CHECK(bytes_of(to_host(sd)) == bytes_of(want.s));
  }
  SUBCASE("columns 128..383 of a [40, 512] tensor") {
    const auto v = adversarial(40, 512, 128, fp8_grid(), 12);
    std::vector<float> mid;
    for (int r = 0; r < 40; ++r) mid.insert(mid.end(), v.begin() + r * 512 + 128, v.begin() + r * 512 + 384);
    const ref_codes want(host_f32(40, 256, mid), dtype::fp8_e4m3, 128);
    const buffer xd = clone_to(host_f32(40, 512, v), kGpu);
    buffer qd(dtype::fp8_e4m3, {40, 256}, kGpu), sd(dtype::ue8m0, {40, 2}, kGpu);
    ops::block_quantize(xd.view().narrow(1, 128, 256), qd, sd, 128);
    CHECK(bytes_of(to_host(qd)) == bytes_of(want.q));
  }
  SUBCASE("columns 1..512 of a [40, 513] tensor: rows not 16-byte aligned, the strided loads") {
    const auto v = adversarial(40, 513, 1, fp8_grid(), 15);
    std::vector<float> mid;
    for (int r = 0; r < 40; ++r) mid.insert(mid.end(), v.begin() + r * 513 + 1, v.begin() + r * 513 + 513);
    const ref_codes want(host_f32(40, 512, mid), dtype::fp8_e4m3, 128);
    const buffer xd = clone_to(host_f32(40, 513, v), kGpu);
    buffer qd(dtype::fp8_e4m3, {40, 512}, kGpu), sd(dtype::ue8m0, {40, 4}, kGpu);
    ops::block_quantize(xd.view().narrow(1, 1, 512), qd, sd, 128);
    CHECK(bytes_of(to_host(qd)) == bytes_of(want.q));
    CHECK(bytes_of(to_host(sd)) == bytes_of(want.s));
  }
  SUBCASE("70,000 rows (grid.x past 65,535)") {
    const std::int64_t rows = 70000;
    const auto v = randn(static_cast<std::size_t>(rows * 32), 13);
    const buffer x = host_f32(rows, 32, v);
    buffer y(dtype::bf16, {rows, 32}), yd(dtype::bf16, {rows, 32}, kGpu);
    REQUIRE(ref::block_round_trip<fp4_e2m1>(x.view().as<const float, 2>(), y.view().as<bf16, 2>(), 32) == 0);
    ops::block_round_trip(clone_to(x, kGpu), yd, ops::quant_format::fp4_e2m1, 32);
    CHECK(bytes_of(to_host(yd)) == bytes_of(y));
  }
  SUBCASE("bf16 Hadamard, in place") {
    const auto v = randn(9 * 128, 14);
    const buffer x = host_bf16(9, 128, v);
    buffer y(dtype::bf16, {9, 128});
    ops::hadamard(x, y, on(backend::ref));
    buffer xd = clone_to(x, kGpu);
    ops::hadamard(xd, xd);
    CHECK(bytes_of(to_host(xd)) == bytes_of(y));
  }
  SUBCASE("FP8 dequantize in 128x128 tiles, ragged at both edges") {
    buffer q(dtype::fp8_e4m3, {300, 200}), s(dtype::ue8m0, {3, 2});
    auto qs = q.host_span<fp8_e4m3>();
    for (std::size_t i = 0; i < qs.size(); ++i) qs[i] = fp8_e4m3{static_cast<std::uint8_t>((i * 37) % 0x7E)};
    auto ss = s.host_span<ue8m0>();
    for (std::size_t i = 0; i < ss.size(); ++i) ss[i] = ue8m0{static_cast<std::uint8_t>(120 + i)};
    buffer out(dtype::f32, {300, 200}), outd(dtype::f32, {300, 200}, kGpu);
    ops::dequantize(q, s, out, 128, 128, on(backend::ref));
    ops::dequantize(clone_to(q, kGpu), clone_to(s, kGpu), outd, 128, 128);
    CHECK(bytes_of(to_host(outd)) == bytes_of(out));
  }
}

}  // TEST_SUITE
