// src/ops/common.hpp — what every ops:: entry point shares: argument checks that name the op, the backend choice,
// and the walk over [rows, K] matrices that lets kernels see only rank-2 views.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "dsv4/error.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops::detail {

bool have_cuda() noexcept;

// The backend for an op whose tensors live on `dev`: CUDA for CUDA tensors; for host tensors the CPU SIMD backend
// unless it declines (cpu_declines != nullptr says why) or exec::prefer names ref. A forced backend that cannot
// take the input is an error that says why.
backend choose_backend(const char* op, const exec& ex, device dev, const char* cpu_declines);

// All tensors on the same device.
void check_same_device(const char* op, std::initializer_list<const tensor_view*> ts);

// The exec a CUDA launcher gets: ex with exec::device set to the tensors' device (an error when ex names another).
exec on_device(const char* op, const exec& ex, device dev);

// For ops with no CUDA backend yet: every tensor on the host, else "<tensor>: the <family> CUDA backend is not
// implemented yet".
void check_host_only(const char* op, const char* family, std::initializer_list<const tensor_view*> ts);

// a and b either do not overlap in memory, or (when allow_identical) are the very same view.
void check_aliasing(const char* op, const tensor_view& a, const tensor_view& b, bool allow_identical);

// t has dtype dt and exactly `shape`, else "<name> is <t>, expected <dt>[<shape>]".
void check_tensor(const char* op, const char* name, const tensor_view& t, dtype dt,
                  std::initializer_list<std::int64_t> shape);

// An optional tensor left out by the caller: the default tensor_view (rank 0, no data).
inline bool is_absent(const tensor_view& t) { return t.rank() == 0 && t.data() == nullptr; }

// Shapes equal in every dim except (optionally) the last.
void check_same_shape(const char* op, const tensor_view& a, const tensor_view& b, bool except_last = false);

// Calls fn(std::array<tensor_view, N>) on rank-2 [rows, last] slices of tensors that share all leading extents.
// Leading dims are merged when every tensor's strides allow it; otherwise the outermost dim is looped over.
template <std::size_t N, class Fn>
void for_each_matrix(const std::array<tensor_view, N>& ts, Fn&& fn) {
  const int r = ts[0].rank();
  if (r == 2) return fn(ts);
  std::array<tensor_view, N> out;
  if (r == 1) {
    for (std::size_t i = 0; i < N; ++i) {
      const std::int64_t shape[2] = {1, ts[i].shape(0)}, stride[2] = {ts[i].shape(0), ts[i].stride(0)};
      out[i] = tensor_view(ts[i].data(), ts[i].dt(), shape, stride, ts[i].dev());
    }
    return fn(out);
  }
  bool mergeable = true;
  for (const auto& t : ts) mergeable = mergeable && (t.shape(1) == 1 || t.shape(0) == 1 || t.stride(0) == t.stride(1) * t.shape(1));
  if (!mergeable) {
    for (std::int64_t i = 0; i < ts[0].shape(0); ++i) {
      for (std::size_t k = 0; k < N; ++k) out[k] = ts[k].select(0, i);
      for_each_matrix(out, fn);
    }
    return;
  }
  for (std::size_t k = 0; k < N; ++k) {
    const auto& t = ts[k];
    std::array<std::int64_t, kMaxRank> shape{}, stride{};
    shape[0] = t.shape(0) * t.shape(1);
    stride[0] = t.shape(1) == 1 ? t.stride(0) : t.stride(1);
    for (int d = 2; d < r; ++d) {
      shape[d - 1] = t.shape(d);
      stride[d - 1] = t.stride(d);
    }
    out[k] = tensor_view(t.data(), t.dt(), std::span<const std::int64_t>(shape.data(), r - 1),
                         std::span<const std::int64_t>(stride.data(), r - 1), t.dev());
  }
  for_each_matrix(out, fn);
}

}  // namespace dsv4::ops::detail

namespace dsv4::ref {
struct weight_ref;
}
namespace dsv4::ops {
struct qweight;
}
namespace dsv4::ops::detail {

// Validates a stored weight (dtype, packing, scale tensor shape for its format; host memory unless allow_device)
// and returns its typed form. `name` (with `index` >= 0: "name[index]") names the weight in messages; expect_n /
// expect_k (-1 = any) pin its shape [N, K]. Cheap when valid: messages are only built on failure.
ref::weight_ref bind_weight(const char* op, const char* name, std::int64_t index, const qweight& w,
                            std::int64_t expect_n, std::int64_t expect_k, bool allow_device = false);

// True when the CPU backend can read the weight (innermost strides 1).
bool weight_is_cpu_friendly(const qweight& w);

}  // namespace dsv4::ops::detail
