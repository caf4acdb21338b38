// examples/quantize.cpp — the smallest use of the library: wrap your own memory in a tensor_view, quantize it to
// FP8 with UE8M0 block scales (spec §6.2), and decode it back.
#include <cstdio>
#include <vector>

#include "dsv4/dsv4.hpp"

int main() {
  constexpr int kRows = 2, kCols = 256, kBlock = 128;
  std::vector<float> x(kRows * kCols);
  for (int i = 0; i < kRows * kCols; ++i) x[i] = 0.01f * static_cast<float>(i % 97) - 0.4f;

  dsv4::tensor_view xv(x.data(), dsv4::dtype::f32, {kRows, kCols});
  dsv4::buffer q(dsv4::dtype::fp8_e4m3, {kRows, kCols});
  dsv4::buffer s(dsv4::dtype::ue8m0, {kRows, kCols / kBlock});
  dsv4::ops::block_quantize(xv, q, s, kBlock);  // the backend follows from where the data lives

  dsv4::buffer back(dsv4::dtype::f32, {kRows, kCols});
  dsv4::ops::dequantize(q, s, back, 1, kBlock);
  float worst = 0;
  for (int i = 0; i < kRows * kCols; ++i) {
    const float e = back.host_span<float>()[i] - x[i];
    worst = e > worst ? e : (-e > worst ? -e : worst);
  }
  std::printf("quantized %dx%d to fp8 (block %d); max |dequant - x| = %g\n", kRows, kCols, kBlock, worst);
  return 0;
}
