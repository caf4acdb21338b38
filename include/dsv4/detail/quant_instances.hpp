// dsv4/detail/quant_instances.hpp — the one list of type combinations every quantizer backend instantiates
// (expanded inside dsv4::cpu in src/cpu/quant.cpp and inside dsv4::cuda in cuda/quant.cu).
#pragma once

#define DSV4_QUANT_INSTANTIATE_ROUND_TRIP(TIn, TOut)                                                              \
  template std::int64_t block_round_trip<fp8_e4m3, TIn, TOut>(view<const TIn, 2>, view<TOut, 2>, int, const exec&); \
  template std::int64_t block_round_trip<fp4_e2m1, TIn, TOut>(view<const TIn, 2>, view<TOut, 2>, int, const exec&);

#define DSV4_QUANT_INSTANTIATE_CODE(TCode)                                                                   \
  template std::int64_t block_quantize<float, TCode>(view<const float, 2>, view<TCode, 2>, view<ue8m0, 2>, int, \
                                                     const exec&);                                           \
  template std::int64_t block_quantize<bf16, TCode>(view<const bf16, 2>, view<TCode, 2>, view<ue8m0, 2>, int,   \
                                                    const exec&);                                            \
  template std::int64_t dequantize<TCode, float>(view<const TCode, 2>, view<const ue8m0, 2>, view<float, 2>,    \
                                                 int, int, const exec&);                                     \
  template std::int64_t dequantize<TCode, bf16>(view<const TCode, 2>, view<const ue8m0, 2>, view<bf16, 2>, int, \
                                                int, const exec&);

// Inputs/outputs f32 | bf16; codes fp8_e4m3 | fp4 (as fp4x2 byte pairs).
#define DSV4_QUANT_INSTANTIATE_ALL()               \
  DSV4_QUANT_INSTANTIATE_ROUND_TRIP(float, float)  \
  DSV4_QUANT_INSTANTIATE_ROUND_TRIP(float, bf16)   \
  DSV4_QUANT_INSTANTIATE_ROUND_TRIP(bf16, float)   \
  DSV4_QUANT_INSTANTIATE_ROUND_TRIP(bf16, bf16)    \
  DSV4_QUANT_INSTANTIATE_CODE(fp8_e4m3)            \
  DSV4_QUANT_INSTANTIATE_CODE(fp4x2)
