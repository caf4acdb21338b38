// src/model/step_memory.hpp — where one forward step takes its memory: the activations, and the index arrays (slot
// lists, block tables, positions) the host builds and the ops read.
//
// Host steps: a buffer per request, held until the step ends (reset), and index arrays read in place.
// GPU steps: bump allocation (256-byte aligned) from device chunks for the activations, and from page-locked host
// chunks for the index arrays, each copied to the device asynchronously on the step's stream (copy_bytes under
// exec's policy: no wait under deferred / none). A chunk that runs out gets a successor — the only allocation a step
// of a seen shape could make, and one the relaxed capture mode allows while a graph records; reset() at the start of
// the next step (outside any recording) merges the chunks into one of the high-water size, so the next step of that
// shape allocates nothing. The host rewrites the staging chunks every step, so the caller must know the previous
// step's copies have run (the transformer ends every GPU step with a wait, or the graph runner waits per step).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>
#include <vector>

#include "dsv4/buffer.hpp"
#include "dsv4/error.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/graph.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model::detail {

class step_memory {
 public:
  explicit step_memory(device dev = device::cpu()) : dev_(dev) {}
  device dev() const { return dev_; }

  // Starts a step: host buffers are released; device and staging chunks rewound (merged when more than one was
  // needed and `may_free`, i.e. no graph is recording).
  void reset(bool may_free = true) {
    host_.clear();
    dev_arena_.rewind(may_free, dev_);
    pin_arena_.rewind(may_free, dev_);
  }

  // A fresh f32 / i32 / ... tensor of `shape` on the step's device (contents undefined on a device, zero on the host).
  tensor_view take(dtype dt, std::initializer_list<std::int64_t> shape) {
    if (dev_.is_cpu()) {
      host_.emplace_back(dt, shape);
      return host_.back().view();
    }
    const tensor_view probe(nullptr, dt, shape, dev_);
    return tensor_view(dev_arena_.bump(static_cast<std::size_t>(probe.nbytes()), dev_), dt, shape, dev_);
  }

  // A host array where the ops read it: in place for a host step; a device copy (through page-locked staging, on
  // ex's stream) for a GPU step.
  tensor_view stage(const void* host, dtype dt, std::initializer_list<std::int64_t> shape, const exec& ex) {
    const tensor_view h(const_cast<void*>(host), dt, shape);
    if (dev_.is_cpu()) return h;
    return stage(h, ex);
  }
  tensor_view stage(const tensor_view& h, const exec& ex) {
    if (dev_.is_cpu()) return h;
    DSV4_CHECK(h.is_contiguous(), "forward", "staging a non-contiguous ", h.describe());
    const std::size_t n = static_cast<std::size_t>(h.nbytes());
    void* pin = pin_arena_.bump(n, dev_);
    if (n > 0) std::memcpy(pin, h.data(), n);
    const tensor_view src(pin, h.dt(), h.shape());
    const tensor_view dst(dev_arena_.bump(n, dev_), h.dt(), h.shape(), dev_);
    if (n > 0) ops::copy(src, dst, ex);
    return dst;
  }

  std::int64_t device_bytes() const { return dev_arena_.capacity(); }

 private:
  // Chunks of one kind (device `buffer`s or `pinned_buffer`s); `used` bytes of chunk `at` are taken, `total` counts
  // the bytes a step took so far (tails left unused included), `high` its most.
  template <class Chunk>
  struct arena {
    std::vector<Chunk> chunks;
    std::size_t at = 0, used = 0, high = 0, total = 0;

    static std::size_t size(const Chunk& c) {
      if constexpr (std::is_same_v<Chunk, buffer>) return static_cast<std::size_t>(c.nbytes());
      else return c.bytes();
    }
    static Chunk make(std::size_t n, device dev) {
      if constexpr (std::is_same_v<Chunk, buffer>)
        return buffer(dtype::u8, std::initializer_list<std::int64_t>{static_cast<std::int64_t>(n)}, dev);
      else return pinned_buffer(n);
    }
    std::int64_t capacity() const {
      std::size_t c = 0;
      for (const Chunk& k : chunks) c += size(k);
      return static_cast<std::int64_t>(c);
    }
    void* bump(std::size_t n, device dev) {
      n = (std::max<std::size_t>(n, 1) + 255) / 256 * 256;
      while (at < chunks.size() && used + n > size(chunks[at])) {
        total += size(chunks[at]) - used;
        ++at, used = 0;
      }
      if (at == chunks.size()) {  // a new chunk: at least what the step took so far, at least 1 MiB
        chunks.push_back(make(std::max<std::size_t>({n, total, std::size_t{1} << 20}), dev));
        used = 0;
      }
      void* p = static_cast<char*>(chunks[at].data()) + used;
      used += n;
      total += n;
      high = std::max(high, total);
      return p;
    }
    void rewind(bool may_free, device dev) {
      if (may_free && chunks.size() > 1) {  // merge: one chunk of the high-water size
        chunks.clear();
        chunks.push_back(make(high, dev));
      }
      at = 0, used = 0, total = 0;
    }
  };
  device dev_;
  std::vector<buffer> host_;
  arena<buffer> dev_arena_;
  arena<pinned_buffer> pin_arena_;
};

// step_memory::stage bound to one exec: stage(ptr, dtype, {shape}) or stage(view).
struct stager {
  step_memory& mem;
  const exec& ex;
  tensor_view operator()(const void* host, dtype dt, std::initializer_list<std::int64_t> shape) const {
    return mem.stage(host, dt, shape, ex);
  }
  tensor_view operator()(const tensor_view& h) const { return mem.stage(h, ex); }
};

}  // namespace dsv4::model::detail
