// tests/harness.hpp — shared helpers: seeded inputs, the backends this machine offers, host<->device staging.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "dsv4/buffer.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/error.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/ops/moe.hpp"

namespace dsv4::test {

// Host backends available here: ref always, cpu when this CPU has SIMD kernels.
inline std::vector<backend> host_backends() {
  std::vector<backend> out{backend::ref};
  if (cpu::simd_isa()) out.push_back(backend::cpu);
  return out;
}

inline exec on(backend be, int threads = 0) {
  exec ex;
  ex.prefer = be;
  ex.threads = threads;
  return ex;
}

// Raw bytes of a host buffer, for bitwise comparisons.
inline std::vector<std::uint8_t> bytes_of(const buffer& b) {
  const auto* p = static_cast<const std::uint8_t*>(b.data());
  return {p, p + b.nbytes()};
}

inline buffer clone_to(const buffer& src, device dev) {
  buffer out(src.view().dt(), src.view().shape(), dev);
  ops::copy(src, out);
  return out;
}

// Adversarial fp32 values for the block quantizers, block by block:
//   kind 0: Gaussian times 2^e, e in [-30, 30] per block (many scales);
//   kind 1: the block max pinned at max_code·2^e so that s = 2^e exactly, the rest exact midpoints between adjacent
//           grid values times 2^e (every one a rounding tie), with random signs;
//   kind 2: values below the format's smallest normal after scaling (subnormal codes);
//   kind 3: all zeros; kind 4: fp32 subnormals; kind 5: one huge value (~1e38) next to tiny ones.
inline std::vector<float> adversarial(std::int64_t rows, std::int64_t k, int block, const std::vector<float>& grid,
                                      std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_int_distribution<int> kind_d(0, 5), exp_d(-30, 30), grid_d(0, static_cast<int>(grid.size()) - 2);
  std::bernoulli_distribution sign_d(0.5);
  std::vector<float> x(static_cast<std::size_t>(rows * k));
  for (std::int64_t b0 = 0; b0 < rows * k; b0 += block) {
    const int kind = kind_d(rng), e = exp_d(rng);
    for (int i = 0; i < block; ++i) {
      float v = 0.f;
      switch (kind) {
        case 0: v = std::ldexp(nd(rng), e); break;
        case 1: {
          const int g = grid_d(rng);
          v = std::ldexp(i == 0 ? grid.back() : 0.5f * (grid[g] + grid[g + 1]), e);
          break;
        }
        case 2: v = std::ldexp(nd(rng), e) * 1e-3f; break;
        case 3: v = 0.f; break;
        case 4: v = nd(rng) * 1e-40f; break;
        case 5: v = i == 7 ? 1e38f : nd(rng) * 1e-30f; break;
      }
      x[static_cast<std::size_t>(b0 + i)] = sign_d(rng) ? -v : v;
    }
  }
  return x;
}

// n values from N(0, sd^2), seeded.
inline std::vector<float> randn(std::size_t n, std::uint64_t seed, float sd = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Positive finite grid values of a code format, ascending.
inline std::vector<float> fp8_grid() {
  std::vector<float> g;
  for (int c = 0; c <= 0x7E; ++c) g.push_back(fp8_e4m3{static_cast<std::uint8_t>(c)}.to_float());
  return g;
}
inline std::vector<float> fp4_grid() { return {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f}; }

inline buffer host_f32(std::int64_t rows, std::int64_t k, const std::vector<float>& v) {
  buffer b(dtype::f32, {rows, k});
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

inline buffer host_bf16(std::int64_t rows, std::int64_t k, const std::vector<float>& v) {
  buffer b(dtype::bf16, {rows, k});
  auto s = b.host_span<bf16>();
  for (std::size_t i = 0; i < v.size(); ++i) s[i] = bf16::from_float(v[i]);
  return b;
}

// Runs f and checks that it throws dsv4::error whose message contains every one of `needles`.
template <class F>
void check_error(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
    FAIL("expected dsv4::error");
  } catch (const dsv4::error& e) {
    const std::string msg = e.what();
    for (const char* n : needles) CHECK_MESSAGE(msg.find(n) != std::string::npos, "message: ", msg, " lacks: ", n);
  }
}

// Every tensor of a checkpoint, copied (to rewrite a mutated checkpoint), and one of them by name.
inline std::vector<io::tensor_data> load_all(const io::checkpoint& c) {
  std::vector<io::tensor_data> out;
  for (const auto& name : c.names()) {
    const io::tensor_record* r = c.find(name);
    io::tensor_data t{name, r->dt, r->shape, {}};
    const auto b = c.bytes(name);
    t.data.assign(b.begin(), b.end());
    out.push_back(std::move(t));
  }
  return out;
}
inline io::tensor_data* find_tensor(std::vector<io::tensor_data>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return &t;
  FAIL("no tensor ", name);
  return nullptr;
}

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
struct temp_dir {
  std::filesystem::path path;
  explicit temp_dir(const std::string& tag)
      : path(std::filesystem::temp_directory_path() / ("dsv4_test_" + tag + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

// Element i of packed E2M1 codes (two per byte, the even element in the low nibble) times the UE8M0 scale byte:
// e2m1 · 2^(scale-127), decoded here independently of the library.
inline double fp4_exact(const std::uint8_t* bytes, std::int64_t i, std::uint8_t scale) {
  static constexpr double mags[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  const std::uint8_t b = bytes[i / 2], c = (i % 2) ? b >> 4 : b & 15;
  return std::ldexp((c & 8) ? -mags[c & 7] : mags[c & 7], scale - 127);
}

// A random stored weight of format `dt` [N, K] plus its exact fp32 values decoded independently.
struct test_weight {
  buffer w, s;
  std::vector<double> exact;  // [N, K]
  ops::qweight q() const { return {w.view(), s.view()}; }
};

inline test_weight make_weight(dtype dt, std::int64_t N, std::int64_t K, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> byte(0, 255), sexp(120, 134);
  std::normal_distribution<float> nd(0.f, 1.f);
  test_weight tw{buffer(dt, {N, K}), buffer(), std::vector<double>(static_cast<std::size_t>(N * K))};
  auto at = [&](std::int64_t n, std::int64_t k) -> double& { return tw.exact[static_cast<std::size_t>(n * K + k)]; };
  if (dt == dtype::f32 || dt == dtype::bf16) {
    for (std::int64_t i = 0; i < N * K; ++i) {
      const float v = nd(rng);
      if (dt == dtype::f32) {
        tw.w.host_span<float>()[i] = v;
        tw.exact[i] = v;
      } else {
        tw.w.host_span<bf16>()[i] = bf16::from_float(v);
        tw.exact[i] = bf16::from_float(v).to_float();
      }
    }
  } else if (dt == dtype::fp8_e4m3) {
    tw.s = buffer(dtype::ue8m0, {(N + 127) / 128, (K + 127) / 128});
    auto sc = tw.s.host_span<ue8m0>();
    for (auto& s : sc) s.bits = static_cast<std::uint8_t>(sexp(rng));
    auto codes = tw.w.host_span<fp8_e4m3>();
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k) {
        std::uint8_t c;
        do c = static_cast<std::uint8_t>(byte(rng));
        while ((c & 0x7F) == 0x7F);
        codes[n * K + k].bits = c;
        const int e = (c >> 3) & 15, m = c & 7;
        const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
        at(n, k) = std::ldexp((c & 0x80) ? -mag : mag, sc[(n / 128) * ((K + 127) / 128) + k / 128].bits - 127);
      }
  } else {
    tw.s = buffer(dtype::ue8m0, {N, K / 32});
    auto sc = tw.s.host_span<ue8m0>();
    for (auto& s : sc) s.bits = static_cast<std::uint8_t>(sexp(rng));
    auto* bytes = static_cast<std::uint8_t*>(tw.w.data());
    for (std::int64_t i = 0; i < N * K / 2; ++i) bytes[i] = static_cast<std::uint8_t>(byte(rng));
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k) at(n, k) = fp4_exact(bytes, n * K + k, sc[n * (K / 32) + k / 32].bits);
  }
  return tw;
}

// MoE expert weights shared by the host and CUDA MoE tests.
// A random FP4 weight [N, K] (scales 2^-4 .. 2^-2 so activations stay O(1)).
struct fp4w {
  buffer w, s;
  fp4w(std::int64_t N, std::int64_t K, std::uint64_t seed) : w(dtype::fp4_e2m1, {N, K}), s(dtype::ue8m0, {N, K / 32}) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> byte(0, 255), e(123, 125);
    auto* p = static_cast<std::uint8_t*>(w.data());
    for (std::int64_t i = 0; i < N * K / 2; ++i) p[i] = static_cast<std::uint8_t>(byte(rng));
    for (auto& x : s.host_span<ue8m0>()) x.bits = static_cast<std::uint8_t>(e(rng));
  }
  ops::qweight q() const { return {w.view(), s.view()}; }
};
struct fp8w {
  buffer w, s;
  fp8w(std::int64_t N, std::int64_t K, std::uint64_t seed)
      : w(dtype::fp8_e4m3, {N, K}), s(dtype::ue8m0, {(N + 127) / 128, (K + 127) / 128}) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& c : w.host_span<fp8_e4m3>()) c = fp8_e4m3::from_float(nd(rng) * 8.f);
    for (auto& x : s.host_span<ue8m0>()) x.bits = 121;  // 2^-6 · N(0, 8^2): entries ~ N(0, 1/64)
  }
  ops::qweight q() const { return {w.view(), s.view()}; }
};

// E routed FP4 experts (w1, w2, w3 seeded r + e, r + 100 + e, r + 200 + e) and an FP8 shared expert (seeds sh,
// sh + 1, sh + 2), SwiGLU shapes D -> I -> D. Not movable: the ffn_weights view its own buffers.
struct expert_set {
  std::vector<fp4w> w1, w2, w3;
  fp8w s1, s2, s3;
  std::vector<ops::ffn_weights> routed;
  ops::ffn_weights shared;
  expert_set(std::int64_t D, std::int64_t I, int E, std::uint64_t r, std::uint64_t sh)
      : s1(I, D, sh), s2(D, I, sh + 1), s3(I, D, sh + 2), shared{s1.q(), s2.q(), s3.q()} {
    for (int e = 0; e < E; ++e) {
      w1.emplace_back(I, D, r + static_cast<std::uint64_t>(e));
      w2.emplace_back(D, I, r + 100 + static_cast<std::uint64_t>(e));
      w3.emplace_back(I, D, r + 200 + static_cast<std::uint64_t>(e));
    }
    for (int e = 0; e < E; ++e) routed.push_back({w1[e].q(), w2[e].q(), w3[e].q()});
  }
  expert_set(const expert_set&) = delete;
  expert_set& operator=(const expert_set&) = delete;
};

}  // namespace dsv4::test
