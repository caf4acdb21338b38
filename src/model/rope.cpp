// rope_table: the frequencies and the rotation of spec §3.1.
#include "dsv4/model/rope.hpp"

#include <algorithm>
#include <cmath>

#include "dsv4/error.hpp"
#include "dsv4/ref/rotary.hpp"

namespace dsv4::model {

rope_table rope_table::make(std::int64_t rope_dim, double base, bool yarn, double factor, std::int64_t original_len,
                            double beta_fast, double beta_slow) {
  DSV4_CHECK(rope_dim > 0 && rope_dim % 2 == 0, "rope_table", "rope_dim ", rope_dim, " must be even and > 0");
  rope_table t;
  t.rope_dim = rope_dim;
  t.yarn = yarn;
  const std::int64_t half = rope_dim / 2;
  t.freq.resize(static_cast<std::size_t>(half));
  for (std::int64_t i = 0; i < half; ++i)
    t.freq[static_cast<std::size_t>(i)] =
        1.f / std::pow(static_cast<float>(base), static_cast<float>(2 * i) / static_cast<float>(rope_dim));
  if (!yarn) return t;
  const double dim = static_cast<double>(rope_dim);
  auto corr = [&](double rot) {
    return dim * std::log(static_cast<double>(original_len) / (rot * 2 * M_PI)) / (2 * std::log(base));
  };
  // The reference's clamps (low >= 0, high <= rope_dim - 1), plus a bound of +-2^20 on the other side applied in
  // double before the conversion: with theta barely above 1 or extreme betas the range is astronomically large and
  // converting it to int would be undefined behaviour. The bound changes no result: the ramp saturates long before.
  static constexpr double kFar = 1 << 20;
  auto to_int = [](double v) { return static_cast<int>(std::isnan(v) ? 0.0 : std::clamp(v, -kFar, kFar)); };
  const int low = std::max(to_int(std::floor(corr(beta_fast))), 0);
  const int high = std::min(to_int(std::ceil(corr(beta_slow))), static_cast<int>(rope_dim - 1));
  t.yarn_low = low;
  t.yarn_high = high;
  const float span = high == low ? 0.001f : static_cast<float>(high - low);
  for (std::int64_t i = 0; i < half; ++i) {
    const float ramp = std::clamp((static_cast<float>(i) - static_cast<float>(low)) / span, 0.f, 1.f);
    const float smooth = 1.f - ramp;
    float& f = t.freq[static_cast<std::size_t>(i)];
    f = f / static_cast<float>(factor) * (1.f - smooth) + f * smooth;
  }
  return t;
}

rope_table rope_table::for_layer(const model_config& c, std::int64_t layer) {
  const int r = c.compress_ratio(layer);
  if (r == 0) return make(c.rope_head_dim, c.rope_theta, false, 1.0, c.original_seq_len, c.beta_fast, c.beta_slow);
  return make(c.rope_head_dim, c.compress_rope_theta, true, c.rope_factor, c.original_seq_len, c.beta_fast,
              c.beta_slow);
}

void rope_table::apply(float* v, std::int64_t off, std::int64_t pos, bool inverse) const {
  ref::rope_rotate(v + off, freq.data(), static_cast<std::int64_t>(freq.size()), pos, inverse);
}

}  // namespace dsv4::model
