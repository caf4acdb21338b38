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
    for (arena* a : {&dev_arena_, &pin_arena_}) a->rewind(may_free, dev_);
  }

  // A fresh f32 / i32 / ... tensor of `shape` on the step's device (contents undefined on a device, zero on the host).
  tensor_view take(dtype dt, std::initializer_list<std::int64_t> shape) {
    if (dev_.is_cpu()) {
      host_.emplace_back(dt, shape);
      return host_.back().view();
    }
    const tensor_view probe(nullptr, dt, shape, dev_);
    return tensor_view(dev_arena_.bump(static_cast<std::size_t>(probe.nbytes()), dev_, false), dt, shape, dev_);
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
    void* pin = pin_arena_.bump(n, dev_, true);
    if (n > 0) std::memcpy(pin, h.data(), n);
    const tensor_view src(pin, h.dt(), h.shape());
    const tensor_view dst(dev_arena_.bump(n, dev_, false), h.dt(), h.shape(), dev_);
    if (n > 0) ops::copy(src, dst, ex);
    return dst;
  }

  std::int64_t device_bytes() const { return dev_arena_.capacity(); }

 private:
  // Chunks of one kind; `used` bytes of chunk `at` are taken.
  struct arena {
    std::vector<buffer> dev_chunks;
    std::vector<pinned_buffer> pin_chunks;
    std::size_t at = 0, used = 0, high = 0, total = 0;
    std::size_t size(std::size_t i) const {
      return pin_chunks.empty() ? static_cast<std::size_t>(dev_chunks[i].nbytes()) : pin_chunks[i].bytes();
    }
    std::size_t count() const { return pin_chunks.empty() ? dev_chunks.size() : pin_chunks.size(); }
    char* base(std::size_t i) const {
      return static_cast<char*>(pin_chunks.empty() ? dev_chunks[i].data() : pin_chunks[i].data());
    }
    std::int64_t capacity() const {
      std::size_t c = 0;
      for (std::size_t i = 0; i < count(); ++i) c += size(i);
      return static_cast<std::int64_t>(c);
    }
    void* bump(std::size_t n, device dev, bool pinned) {
      n = (std::max<std::size_t>(n, 1) + 255) / 256 * 256;
      while (at < count() && used + n > size(at)) {
        total += size(at) - used;  // the tail left unused counts toward the high-water mark
        ++at, used = 0;
      }
      if (at == count()) {  // a new chunk: at least double what there is, at least 1 MiB
        const std::size_t want = std::max<std::size_t>({n, total, std::size_t{1} << 20});
        if (pinned) pin_chunks.emplace_back(want);
        else dev_chunks.emplace_back(dtype::u8, std::initializer_list<std::int64_t>{static_cast<std::int64_t>(want)}, dev);
        used = 0;
      }
      void* p = base(at) + used;
      used += n;
      total += n;
      high = std::max(high, total);
      return p;
    }
    void rewind(bool may_free, device dev) {
      if (may_free && count() > 1) {  // merge: one chunk of the high-water size
        const bool pinned = !pin_chunks.empty();
        dev_chunks.clear();
        pin_chunks.clear();
        if (pinned) pin_chunks.emplace_back(high);
        else dev_chunks.emplace_back(dtype::u8, std::initializer_list<std::int64_t>{static_cast<std::int64_t>(high)}, dev);
      }
      at = 0, used = 0, total = 0;
    }
  };
  device dev_;
  std::vector<buffer> host_;
  arena dev_arena_, pin_arena_;
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
