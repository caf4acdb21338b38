// cuda/rotary.cuh — sin and cos of RoPE angles on the device, shared by the compressor's emit (cuda/paged.cu) and
// ops::rope (cuda/rowwise.cu).
#pragma once

namespace dsv4::cuda::detail {

// sin and cos of an fp32 angle, as floats: the argument reduced by π/2 in double (two-part constant, fma: exact for
// the angles RoPE makes, |x| < 2^30) and Taylor series in double on |r| <= π/4 (error far below fp32's ulp). Unlike
// sinf / cosf, there is no Payne–Hanek slow path with a local-memory table (the cuda-dev preset forbids local memory).
__device__ inline void sin_cos(float ang, float& s, float& c) {
  const double x = ang;
  const double k = rint(x * 0.63661977236758134308);
  double r = fma(-k, 1.5707963267948966192e0, x);
  r = fma(-k, 6.123233995736766036e-17, r);
  const double r2 = r * r;
  const double sn = r * (1 - r2 / 6 * (1 - r2 / 20 * (1 - r2 / 42 * (1 - r2 / 72 * (1 - r2 / 110 * (1 - r2 / 156 *
                         (1 - r2 / 210 * (1 - r2 / 272))))))));
  const double cs = 1 - r2 / 2 * (1 - r2 / 12 * (1 - r2 / 30 * (1 - r2 / 56 * (1 - r2 / 90 * (1 - r2 / 132 *
                         (1 - r2 / 182 * (1 - r2 / 240)))))));
  switch (static_cast<long long>(k) & 3) {
    case 0: s = static_cast<float>(sn), c = static_cast<float>(cs); break;
    case 1: s = static_cast<float>(cs), c = static_cast<float>(-sn); break;
    case 2: s = static_cast<float>(-sn), c = static_cast<float>(-cs); break;
    default: s = static_cast<float>(-cs), c = static_cast<float>(sn); break;
  }
}

}  // namespace dsv4::cuda::detail
