// tests/model_harness.hpp — what the whole-model tests share: a synthetic checkpoint written to a temporary
// directory and bound, and random token ids.
#pragma once

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/model/weights.hpp"
#include "harness.hpp"

namespace dsv4::test {

// synthesize(cfg) into a temporary directory, opened and bound (the directory goes at scope exit).
struct loaded {
  temp_dir dir;
  model::model_config cfg;
  io::checkpoint ckpt;
  model::model_weights w;
  loaded(const std::string& tag, const model::model_config& c)
      : dir(tag), cfg(c), ckpt(make(c)), w(model::bind_weights(ckpt, model::load_config(dir.path))) {}
  io::checkpoint make(const model::model_config& c) {
    model::synthesize(c, dir.path, {});
    return io::checkpoint::open(dir.path);
  }
};

// n token ids uniform in [0, vocab) from seed.
inline std::vector<std::int64_t> tokens(std::int64_t n, std::int64_t vocab, unsigned seed) {
  std::mt19937 r(seed);
  std::vector<std::int64_t> t(static_cast<std::size_t>(n));
  for (auto& v : t) v = static_cast<std::int64_t>(r() % static_cast<unsigned>(vocab));
  return t;
}

// Bitwise equality of two float vectors.
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ||a - b||_2 / ||b||_2 in double.
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

}  // namespace dsv4::test
