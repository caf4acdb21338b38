// Uses the installed library: round-trips a block through FP4 and checks one hand-computed value.
#include <cstdio>

#include "dsv4/dsv4.hpp"

int main() {
  float x[32] = {6.f, 2.5f};  // amax 6 -> s = 1; 2.5 ties to 2 (round to nearest even)
  dsv4::tensor_view xv(x, dsv4::dtype::f32, {1, 32});
  dsv4::ops::block_round_trip(xv, xv, dsv4::ops::quant_format::fp4_e2m1, 32);
  const bool ok = x[0] == 6.f && x[1] == 2.f;
  std::printf("consumer: fp4 round trip %s (%g %g)\n", ok ? "ok" : "WRONG", x[0], x[1]);
  return ok ? 0 : 1;
}
