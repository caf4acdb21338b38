// dsv4/dlpack.hpp — O(1) conversion between tensor_view and DLPack's DLTensor.
//
// Debian ships DLPack 0.6, which has no FP8/FP4/E8M0 type codes: there those dtypes cannot cross the boundary and
// the conversion says so. DLPack >= 1.1 (kDLFloat8_e4m3fn, kDLFloat8_e8m0fnu, kDLFloat4_e2m1fn) is used when the
// header provides it. to_dlpack points the DLTensor's shape/strides at the view's own arrays, so the DLTensor is
// valid while that tensor_view object lives.
#pragma once

#include <dlpack/dlpack.h>

#include "dsv4/tensor.hpp"

#if defined(DLPACK_MAJOR_VERSION) && (DLPACK_MAJOR_VERSION > 1 || (DLPACK_MAJOR_VERSION == 1 && DLPACK_MINOR_VERSION >= 1))
#define DSV4_DLPACK_HAS_FP8_FP4 1
#else
#define DSV4_DLPACK_HAS_FP8_FP4 0
#endif

namespace dsv4 {

inline DLDataType to_dlpack_dtype(dtype t) {
  const auto b = static_cast<std::uint8_t>(dtype_bits(t));
  switch (t) {
    case dtype::f32: case dtype::f16: return {kDLFloat, b, 1};
    case dtype::bf16: return {kDLBfloat, b, 1};
    case dtype::i8: case dtype::i32: case dtype::i64: return {kDLInt, b, 1};
    case dtype::u8: return {kDLUInt, b, 1};
#if DSV4_DLPACK_HAS_FP8_FP4
    case dtype::fp8_e4m3: return {kDLFloat8_e4m3fn, b, 1};
    case dtype::ue8m0: return {kDLFloat8_e8m0fnu, b, 1};
    case dtype::fp4_e2m1: return {kDLFloat4_e2m1fn, b, 1};
#else
    case dtype::fp8_e4m3: case dtype::ue8m0: case dtype::fp4_e2m1: break;
#endif
  }
  DSV4_FAIL("to_dlpack", "dtype ", dtype_name(t), " has no DLPack code in DLPack ", DLPACK_VERSION,
            " (needs DLPack >= 1.1)");
}

inline dtype from_dlpack_dtype(DLDataType t) {
  DSV4_CHECK(t.lanes == 1, "from_dlpack", "vector dtypes (lanes ", int(t.lanes), ") are not supported");
  const int code = t.code, bits = t.bits;
  if (code == kDLFloat && bits == 32) return dtype::f32;
  if (code == kDLFloat && bits == 16) return dtype::f16;
  if (code == kDLBfloat && bits == 16) return dtype::bf16;
  if (code == kDLInt && bits == 8) return dtype::i8;
  if (code == kDLInt && bits == 32) return dtype::i32;
  if (code == kDLInt && bits == 64) return dtype::i64;
  if (code == kDLUInt && bits == 8) return dtype::u8;
#if DSV4_DLPACK_HAS_FP8_FP4
  if (code == kDLFloat8_e4m3fn && bits == 8) return dtype::fp8_e4m3;
  if (code == kDLFloat8_e8m0fnu && bits == 8) return dtype::ue8m0;
  if (code == kDLFloat4_e2m1fn && bits == 4) return dtype::fp4_e2m1;
#endif
  const char* kind = code == kDLFloat ? "float" : code == kDLInt ? "int" : code == kDLUInt ? "uint"
                    : code == kDLBfloat ? "bfloat" : "DLPack code ";
  DSV4_FAIL("from_dlpack", "dtype ", kind, code == kDLFloat || code == kDLInt || code == kDLUInt || code == kDLBfloat
                                               ? std::string()
                                               : std::to_string(code),
            bits, " is not a dsv4 dtype (float32, float16, bfloat16, int8, uint8, int32, int64)");
}

inline DLDevice to_dlpack_device(device d) {
  return d.is_cuda() ? DLDevice{kDLCUDA, d.id} : DLDevice{kDLCPU, 0};
}

inline device from_dlpack_device(DLDevice d) {
  if (d.device_type == kDLCPU || d.device_type == kDLCUDAHost) return device::cpu();
  if (d.device_type == kDLCUDA) return device::cuda(d.device_id);
  DSV4_FAIL("from_dlpack", "unsupported DLPack device type ", int(d.device_type));
}

// The returned DLTensor borrows t's shape and stride arrays: keep t alive while it is used.
inline DLTensor to_dlpack(const tensor_view& t) {
  DLTensor out{};
  out.data = t.data();
  out.device = to_dlpack_device(t.dev());
  out.ndim = t.rank();
  out.dtype = to_dlpack_dtype(t.dt());
  out.shape = const_cast<std::int64_t*>(t.shape().data());
  out.strides = const_cast<std::int64_t*>(t.strides().data());
  out.byte_offset = 0;
  return out;
}

// Copies at most kMaxRank extents and strides; a null strides pointer means compact row-major (DLPack rule).
inline tensor_view from_dlpack(const DLTensor& t) {
  DSV4_CHECK(t.ndim >= 0 && t.ndim <= kMaxRank, "from_dlpack", "ndim ", t.ndim, " exceeds kMaxRank ", kMaxRank);
  const dtype dt = from_dlpack_dtype(t.dtype);
  void* data = static_cast<char*>(t.data) + t.byte_offset;
  std::span<const std::int64_t> shape(t.shape, static_cast<std::size_t>(t.ndim));
  if (t.strides == nullptr) return tensor_view(data, dt, shape, from_dlpack_device(t.device));
  return tensor_view(data, dt, shape, std::span<const std::int64_t>(t.strides, static_cast<std::size_t>(t.ndim)),
                     from_dlpack_device(t.device));
}

}  // namespace dsv4
