// The Python module dsv4 (pybind11): models, sequences and the ops over any array that speaks DLPack or the buffer
// protocol (NumPy arrays, PyTorch tensors), zero copy.
//
// Arrays are borrowed for the duration of a call: `__dlpack__` first (the capsule is kept until the call returns and
// never consumed, so the producer's capsule destructor releases it), else the buffer protocol (which is how read-only
// NumPy arrays come in: DLPack 0.6 cannot say read-only). Outputs are new NumPy arrays, or the `out=` array given.
// FP8 / FP4 / E8M0 data is uint8 (fp4: two codes per byte) with the format named by an argument. dsv4::error becomes
// dsv4.Error (a RuntimeError) with the same message. The GIL is released around every computation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dsv4/dlpack.hpp"
#include "dsv4/dsv4.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/ops/attention.hpp"
#include "dsv4/ops/paged.hpp"

namespace py = pybind11;
using namespace dsv4;

namespace {

// ---- arrays ------------------------------------------------------------------------------------------------------

struct borrowed {
  py::object keep;  // the array, or its DLPack capsule: alive until the call returns
  std::optional<py::buffer_info> info;
  tensor_view v;
};

dtype from_format(const std::string& f, ssize_t itemsize, const char* name) {
  const char c = f.empty() ? '?' : f.back();
  if ((c == 'f') && itemsize == 4) return dtype::f32;
  if (c == 'e' && itemsize == 2) return dtype::f16;
  if ((c == 'b') && itemsize == 1) return dtype::i8;
  if ((c == 'B' || c == '?') && itemsize == 1) return dtype::u8;
  if ((c == 'i' || c == 'l' || c == 'q') && itemsize == 4) return dtype::i32;
  if ((c == 'i' || c == 'l' || c == 'q') && itemsize == 8) return dtype::i64;
  DSV4_FAIL("python", name, ": array format '", f, "' with ", itemsize, "-byte items is not supported ",
            "(float32, float16, int8, uint8, int32, int64; bfloat16 through DLPack)");
}

// The bytes of a uint8/int8 array re-read as FP8 / FP4 (two per byte, last dim doubled) / E8M0.
tensor_view as_bytes_of(const tensor_view& v, dtype dt, const char* name) {
  DSV4_CHECK(v.dt() == dtype::u8 || v.dt() == dtype::i8, "python", name, " is ", v.describe(), ": ", dtype_name(dt),
             " data comes as uint8 bytes");
  std::array<std::int64_t, kMaxRank> shape{}, strides{};
  for (int d = 0; d < v.rank(); ++d) {
    shape[static_cast<std::size_t>(d)] = v.shape(d);
    strides[static_cast<std::size_t>(d)] = v.stride(d);
  }
  if (dt == dtype::fp4_e2m1) {
    DSV4_CHECK(v.rank() >= 1 && (v.shape(v.rank() - 1) <= 1 || v.stride(v.rank() - 1) == 1), "python", name, " is ",
               v.describe(), ": FP4 bytes must be contiguous along the last dim");
    shape[static_cast<std::size_t>(v.rank() - 1)] *= 2;
    for (int d = 0; d + 1 < v.rank(); ++d) strides[static_cast<std::size_t>(d)] *= 2;
    strides[static_cast<std::size_t>(v.rank() - 1)] = 1;
  }
  const auto r = static_cast<std::size_t>(v.rank());
  return tensor_view(v.data(), dt, std::span<const std::int64_t>(shape.data(), r),
                     std::span<const std::int64_t>(strides.data(), r), v.dev());
}

borrowed borrow(py::handle obj, const char* name, bool writable, std::optional<dtype> bytes_as = std::nullopt) {
  DSV4_CHECK(obj && !obj.is_none(), "python", name, " is None");
  borrowed b;
  if (py::hasattr(obj, "__dlpack__")) {
    try {
      py::object cap = obj.attr("__dlpack__")();
      auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
      if (!mt) throw py::error_already_set();
      b.v = from_dlpack(mt->dl_tensor);
      b.keep = std::move(cap);
    } catch (py::error_already_set& e) {
      // NumPy refuses to export a read-only array through DLPack 0.6: read it through the buffer protocol instead.
      if (!e.matches(PyExc_BufferError) && !e.matches(PyExc_TypeError)) throw;
      b.keep = py::object();
    }
  }
  if (!b.keep) {
    DSV4_CHECK(PyObject_CheckBuffer(obj.ptr()), "python", name, " is a ", py::str(obj.get_type()).cast<std::string>(),
               ": expected an array that speaks DLPack or the buffer protocol (NumPy, PyTorch)");
    py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
    try {
      b.info = buf.request(writable);
    } catch (py::error_already_set& e) {
      if (e.matches(PyExc_BufferError) || e.matches(PyExc_ValueError))
        DSV4_FAIL("python", name, " is read-only, but it is written to");
      throw;
    }
    const py::buffer_info& i = *b.info;
    const dtype dt = from_format(i.format, i.itemsize, name);
    std::vector<std::int64_t> shape(i.shape.begin(), i.shape.end()), strides;
    for (std::size_t d = 0; d < i.strides.size(); ++d) {
      DSV4_CHECK(i.strides[d] % i.itemsize == 0, "python", name, ": stride ", i.strides[d],
                 " bytes is not a multiple of the ", i.itemsize, "-byte items");
      strides.push_back(i.strides[d] / i.itemsize);
    }
    b.v = tensor_view(i.ptr, dt, shape, strides);
    b.keep = py::reinterpret_borrow<py::object>(obj);
  }
  if (bytes_as) b.v = as_bytes_of(b.v, *bytes_as, name);
  return b;
}

std::optional<borrowed> borrow_opt(py::handle obj, const char* name, bool writable,
                                   std::optional<dtype> bytes_as = std::nullopt) {
  if (!obj || obj.is_none()) return std::nullopt;
  return borrow(obj, name, writable, bytes_as);
}

tensor_view view_or_empty(const std::optional<borrowed>& b) { return b ? b->v : tensor_view(); }

// A new NumPy array and a writable view of it.
// (zero-filled: what an op does not write reads as 0, never as stale memory)
template <class T>
std::pair<py::array, tensor_view> make(std::vector<std::int64_t> shape) {
  py::array_t<T> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), T{});
  return {a, tensor_view(a.mutable_data(), dtype_of_v<T>, shape)};
}

// `out` if given (checked writable), else a new array of `shape`.
template <class T>
std::pair<py::object, tensor_view> out_or_new(py::handle out, std::vector<std::int64_t> shape, const char* name) {
  if (out && !out.is_none()) {
    const borrowed b = borrow(out, name, true);  // the view stays valid: `out` itself is returned (and kept)
    return {py::reinterpret_borrow<py::object>(out), b.v};
  }
  auto [a, v] = make<T>(std::move(shape));
  return {a, v};
}

std::vector<std::int64_t> shape_of(const tensor_view& v) { return {v.shape().begin(), v.shape().end()}; }

dtype parse_fmt(const std::string& f) {
  if (f == "fp8_e4m3" || f == "fp8") return dtype::fp8_e4m3;
  if (f == "fp4_e2m1" || f == "fp4") return dtype::fp4_e2m1;
  DSV4_FAIL("python", "format \"", f, "\" (expected \"fp8_e4m3\" or \"fp4_e2m1\")");
}

exec make_exec(const std::string& backend_name, int threads) {
  exec ex;
  if (backend_name == "auto") ex.prefer = backend::automatic;
  else if (backend_name == "ref") ex.prefer = backend::ref;
  else if (backend_name == "cpu") ex.prefer = backend::cpu;
  else if (backend_name == "cuda") ex.prefer = backend::cuda;
  else DSV4_FAIL("python", "backend \"", backend_name, "\" (expected auto, ref, cpu or cuda)");
  DSV4_CHECK(threads >= 0 && threads <= kMaxThreads, "python", "threads ", threads, " is outside [0, ", kMaxThreads, "]");
  ex.threads = threads;
  return ex;
}

// ---- models --------------------------------------------------------------------------------------------------------

struct model_state {
  model::model_config cfg;
  io::checkpoint ckpt;
  model::model_weights w;
  std::unique_ptr<model::transformer> tf;
  model::device_weights dw;  // backend "cuda": w copied once to GPU 0 (the transformer reads these)
};

struct Model {
  std::shared_ptr<model_state> s;
};

struct Sequence {
  std::shared_ptr<model_state> model;  // kept alive while the sequence lives, whatever happens to the Model object
  model::sequence_state seq;
};

Model load(const std::string& dir, const std::string& backend_name, int threads, const std::string& kv,
           std::int64_t page_tokens, std::int64_t max_rollback, const std::string& numerics_name) {
  const numerics nm = parse_numerics(numerics_name);
  const bool gpu = backend_name == "cuda";
  exec ex = make_exec(backend_name, threads);
  if (gpu) {  // the whole forward pass on GPU 0: weights uploaded once, pages and activations there
    DSV4_CHECK(ops::cuda_device_count() > 0, "python", "backend \"cuda\": no CUDA device is visible");
    DSV4_CHECK(nm == numerics::fp32, "python", "backend \"cuda\" runs numerics fp32 only");
    ex.prefer = backend::automatic;
  }
  model::pool_options po;
  DSV4_CHECK(kv == "f32" || kv == "fp8_ds_mla", "python", "kv \"", kv, "\" (expected f32 or fp8_ds_mla)");
  po.kv = kv == "f32" ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla;
  po.page_tokens = page_tokens;
  po.max_rollback = max_rollback;
  py::gil_scoped_release nogil;
  auto s = std::make_shared<model_state>(model_state{model::load_config(dir), io::checkpoint::open(dir), {}, nullptr});
  s->w = model::bind_weights(s->ckpt, s->cfg);
  if (gpu) s->dw = model::upload_weights(s->w, device::cuda(0));
  s->tf = std::make_unique<model::transformer>(s->cfg, gpu ? s->dw.weights : s->w, ex, po, nm);
  return Model{s};
}

py::dict config_dict(const model::model_config& c) {
  py::dict d;
  d["name"] = c.name;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.dim;
  d["num_hidden_layers"] = c.n_layers;
  d["num_nextn_predict_layers"] = c.n_mtp_layers;
  d["num_attention_heads"] = c.n_heads;
  d["head_dim"] = c.head_dim;
  d["qk_rope_head_dim"] = c.rope_head_dim;
  d["q_lora_rank"] = c.q_lora_rank;
  d["o_lora_rank"] = c.o_lora_rank;
  d["o_groups"] = c.o_groups;
  d["sliding_window"] = c.window_size;
  d["compress_ratios"] = c.compress_ratios;
  d["rope_theta"] = c.rope_theta;
  d["compress_rope_theta"] = c.compress_rope_theta;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["index_n_heads"] = c.index_n_heads;
  d["index_head_dim"] = c.index_head_dim;
  d["index_topk"] = c.index_topk;
  d["hc_mult"] = c.hc_mult;
  d["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  d["n_routed_experts"] = c.n_routed_experts;
  d["n_shared_experts"] = c.n_shared_experts;
  d["num_experts_per_tok"] = c.n_activated_experts;
  d["moe_intermediate_size"] = c.moe_inter_dim;
  d["scoring_func"] = ops::score_func_name(c.score);
  d["routed_scaling_factor"] = c.route_scale;
  d["swiglu_limit"] = c.swiglu_limit;
  d["num_hash_layers"] = c.n_hash_layers;
  return d;
}

// Token ids as int64, from any sequence of ints or an integer array.
std::vector<std::int64_t> token_list(py::handle tokens) {
  std::vector<std::int64_t> out;
  if (py::isinstance<py::array>(tokens) || py::hasattr(tokens, "__dlpack__")) {
    borrowed b = borrow(tokens, "tokens", false);
    DSV4_CHECK(b.v.rank() == 1 && (b.v.dt() == dtype::i64 || b.v.dt() == dtype::i32), "python", "tokens is ",
               b.v.describe(), ", expected a 1-D int32 or int64 array");
    for (std::int64_t i = 0; i < b.v.shape(0); ++i)
      out.push_back(b.v.dt() == dtype::i64 ? static_cast<const std::int64_t*>(b.v.data())[i * b.v.stride(0)]
                                           : static_cast<const std::int32_t*>(b.v.data())[i * b.v.stride(0)]);
    return out;
  }
  for (py::handle t : tokens) out.push_back(t.cast<std::int64_t>());
  return out;
}

py::array forward(Model& m, py::handle tokens, Sequence* seq) {
  const std::vector<std::int64_t> ids = token_list(tokens);
  std::optional<Sequence> fresh;
  if (!seq) {
    fresh.emplace(Sequence{m.s, m.s->tf->new_sequence(static_cast<std::int64_t>(ids.size()))});
    seq = &*fresh;
  }
  DSV4_CHECK(seq->model == m.s, "python", "the sequence belongs to another model");
  auto [a, v] = make<float>({static_cast<std::int64_t>(ids.size()), m.s->cfg.vocab_size});
  {
    py::gil_scoped_release nogil;
    m.s->tf->forward(ids, seq->seq, v);
  }
  return a;
}

py::list forward_batch(Model& m, py::list entries) {
  std::vector<std::vector<std::int64_t>> ids;
  std::vector<Sequence*> seqs;
  for (py::handle e : entries) {
    auto t = e.cast<py::tuple>();
    DSV4_CHECK(t.size() == 2, "python", "forward_batch takes (tokens, sequence) pairs");
    ids.push_back(token_list(t[0]));
    seqs.push_back(t[1].cast<Sequence*>());
    DSV4_CHECK(seqs.back()->model == m.s, "python", "a sequence of the batch belongs to another model");
  }
  py::list out;
  std::vector<model::transformer::batch_entry> b;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto [a, v] = make<float>({static_cast<std::int64_t>(ids[i].size()), m.s->cfg.vocab_size});
    out.append(a);
    b.push_back({ids[i], &seqs[i]->seq, v, {}});
  }
  {
    py::gil_scoped_release nogil;
    m.s->tf->forward_batch(b);
  }
  return out;
}

// ---- paged-cache descriptors ------------------------------------------------------------------------------------

struct KVPages {
  py::object pages;
  std::int64_t head_dim, rope_dim, page_tokens;
  std::string format;
  std::pair<cache::kv_pages, borrowed> view(bool writable) const {
    borrowed b = borrow(pages, "pages", writable);
    DSV4_CHECK(format == "f32" || format == "fp8_ds_mla", "python", "KV format \"", format,
               "\" (expected f32 or fp8_ds_mla)");
    return {cache::kv_pages{b.v, {format == "f32" ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla, head_dim,
                                  rope_dim, page_tokens}},
            std::move(b)};
  }
};

struct KeyPages {
  py::object pages;
  std::int64_t dim, page_tokens;
  std::string format;
  std::pair<cache::key_pages, borrowed> view(bool writable) const {
    borrowed b = borrow(pages, "pages", writable);
    DSV4_CHECK(format == "fp4" || format == "fp8", "python", "key format \"", format, "\" (expected fp4 or fp8)");
    return {cache::key_pages{b.v, {format == "fp4" ? cache::key_format::fp4 : cache::key_format::fp8, dim, page_tokens}},
            std::move(b)};
  }
};

ops::score_func score_of(const std::string& s) { return ops::parse_score_func(s); }

}  // namespace

PYBIND11_MODULE(_dsv4, m) {
  m.doc() = "DeepSeek-V4 building blocks (dsv4): models, sequences and ops over DLPack / buffer-protocol arrays";
  m.attr("__version__") = kVersion;
  static py::exception<error> exc(m, "Error", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const error& e) {
      exc(e.what());
    }
  });

  py::class_<Sequence>(m, "Sequence", "One sequence of a model (its caches in the model's page pool).")
      .def_property_readonly("pos", [](const Sequence& s) { return s.seq.pos(); }, "tokens processed")
      .def_property_readonly("capacity", [](const Sequence& s) { return s.seq.capacity(); })
      .def_property_readonly("cache_bytes", [](const Sequence& s) { return s.seq.cache_bytes(); })
      .def("truncate", [](Sequence& s, std::int64_t n) { s.seq.truncate(n); }, py::arg("n"),
           "Roll back to position n (speculative decoding).");

  py::class_<Model>(m, "Model", "A loaded checkpoint and its forward pass.")
      .def_property_readonly("config", [](const Model& mm) { return config_dict(mm.s->cfg); })
      .def("new_sequence",
           [](Model& mm, std::int64_t capacity) { return Sequence{mm.s, mm.s->tf->new_sequence(capacity)}; },
           py::arg("capacity") = 0)
      .def("forward", &forward, py::arg("tokens"), py::arg("seq") = nullptr,
           "Logits float32 [len(tokens), vocab] of the tokens at the sequence's next positions (a fresh sequence "
           "when seq is None).")
      .def("forward_batch", &forward_batch, py::arg("entries"),
           "One batched step: entries is a list of (tokens, sequence); returns their logits.");

  m.def("load", &load, py::arg("model_dir"), py::arg("backend") = "cpu", py::arg("threads") = 0,
        py::arg("kv") = "f32", py::arg("page_tokens") = 64, py::arg("max_rollback") = 32, py::arg("numerics") = "fp32",
        "Load a checkpoint directory (HF config.json + safetensors with the official names); numerics is \"fp32\" "
        "or \"official\" (the rounding points of DeepSeek's inference code).");

  py::class_<KVPages>(m, "KVPages", "Engine-owned KV pages: uint8 [num_pages, page_bytes] (dsv4/cache.hpp).")
      .def(py::init<py::object, std::int64_t, std::int64_t, std::int64_t, std::string>(), py::arg("pages"),
           py::arg("head_dim"), py::arg("rope_dim"), py::arg("page_tokens"), py::arg("format") = "fp8_ds_mla")
      .def_static("page_bytes", [](std::int64_t head_dim, std::int64_t rope_dim, std::int64_t page_tokens,
                                   const std::string& format) {
        const cache::kv_geometry g{format == "f32" ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla, head_dim,
                                   rope_dim, page_tokens};
        return py::make_tuple(g.entry_bytes(), g.page_bytes());
      }, py::arg("head_dim"), py::arg("rope_dim"), py::arg("page_tokens"), py::arg("format") = "fp8_ds_mla",
         "(bytes per entry, bytes per page)");
  py::class_<KeyPages>(m, "KeyPages", "Engine-owned indexer key pages: uint8 [num_pages, page_bytes].")
      .def(py::init<py::object, std::int64_t, std::int64_t, std::string>(), py::arg("pages"), py::arg("dim"),
           py::arg("page_tokens"), py::arg("format") = "fp4")
      .def_static("page_bytes", [](std::int64_t dim, std::int64_t page_tokens, const std::string& format) {
        const cache::key_geometry g{format == "fp8" ? cache::key_format::fp8 : cache::key_format::fp4, dim, page_tokens};
        return py::make_tuple(g.key_bytes(), g.page_bytes());
      }, py::arg("dim"), py::arg("page_tokens"), py::arg("format") = "fp4");

  py::module_ o = m.def_submodule("ops", "The ops of dsv4 (include/dsv4/ops/*.hpp) over arrays.");
  // Every op: borrow the inputs, make or borrow the outputs, release the GIL, call the C++ op.
  o.def("block_quantize", [](py::handle x, const std::string& fmt, int block) {
    borrowed bx = borrow(x, "x", false);
    const dtype dt = parse_fmt(fmt);
    std::vector<std::int64_t> qs = shape_of(bx.v), ss = qs;
    DSV4_CHECK(!qs.empty() && block > 0, "python", "x needs a last dim and block > 0");
    ss.back() /= block;
    if (dt == dtype::fp4_e2m1) qs.back() /= 2;
    auto [q, qv] = make<std::uint8_t>(qs);
    auto [s, sv] = make<std::uint8_t>(ss);
    const tensor_view qt = as_bytes_of(qv, dt, "q"), st = as_bytes_of(sv, dtype::ue8m0, "scale");
    py::gil_scoped_release nogil;
    ops::block_quantize(bx.v, qt, st, block);
    py::gil_scoped_acquire gil;
    return py::make_tuple(q, s);
  }, py::arg("x"), py::arg("fmt") = "fp8_e4m3", py::arg("block") = 128,
     "(codes uint8, scales uint8): codes [..., K] (fp8) or [..., K/2] (fp4, two per byte), scales [..., K/block]");
  o.def("block_round_trip", [](py::handle x, const std::string& fmt, int block, py::handle out) {
    borrowed bx = borrow(x, "x", false);
    auto [y, yv] = out_or_new<float>(out, shape_of(bx.v), "out");
    const auto f = parse_fmt(fmt) == dtype::fp8_e4m3 ? ops::quant_format::fp8_e4m3 : ops::quant_format::fp4_e2m1;
    py::gil_scoped_release nogil;
    ops::block_round_trip(bx.v, yv, f, block);
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("x"), py::arg("fmt") = "fp8_e4m3", py::arg("block") = 128, py::arg("out") = py::none());
  o.def("dequantize", [](py::handle q, py::handle scale, const std::string& fmt, int block_rows, int block_cols,
                         py::handle out) {
    borrowed bq = borrow(q, "q", false, parse_fmt(fmt)), bs = borrow(scale, "scale", false, dtype::ue8m0);
    auto [y, yv] = out_or_new<float>(out, shape_of(bq.v), "out");
    py::gil_scoped_release nogil;
    ops::dequantize(bq.v, bs.v, yv, block_rows, block_cols);
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("q"), py::arg("scale"), py::arg("fmt") = "fp8_e4m3", py::arg("block_rows") = 128,
     py::arg("block_cols") = 128, py::arg("out") = py::none());
  o.def("hadamard", [](py::handle x, py::handle out) {
    borrowed bx = borrow(x, "x", false);
    auto [y, yv] = out_or_new<float>(out, shape_of(bx.v), "out");
    py::gil_scoped_release nogil;
    ops::hadamard(bx.v, yv);
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("x"), py::arg("out") = py::none());
  o.def("linear", [](py::handle x, py::handle w, py::handle w_scale, std::optional<std::string> w_fmt,
                     py::handle out) {
    borrowed bx = borrow(x, "x", false);
    borrowed bw = w_fmt ? borrow(w, "w", false, parse_fmt(*w_fmt)) : borrow(w, "w", false);
    auto bs = borrow_opt(w_scale, "w_scale", false, dtype::ue8m0);
    DSV4_CHECK(bx.v.rank() == 2 && bw.v.rank() == 2, "python", "linear takes x [T, K] and w [N, K]");
    auto [y, yv] = out_or_new<float>(out, {bx.v.shape(0), bw.v.shape(0)}, "out");
    const ops::qweight q{bw.v, view_or_empty(bs)};
    py::gil_scoped_release nogil;
    ops::linear(bx.v, q, yv);
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("x"), py::arg("w"), py::arg("w_scale") = py::none(), py::arg("w_fmt") = py::none(),
     py::arg("out") = py::none(), "y = x · W^T; w_fmt \"fp8_e4m3\" / \"fp4_e2m1\" for uint8 weights (then w_scale).");
  o.def("sinkhorn_knopp", [](py::handle logits, int iters, float eps, py::handle out) {
    borrowed bl = borrow(logits, "logits", false);
    auto [y, yv] = out_or_new<float>(out, shape_of(bl.v), "out");
    py::gil_scoped_release nogil;
    ops::sinkhorn_knopp(bl.v, yv, iters, eps);
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("logits"), py::arg("iters") = 20, py::arg("eps") = 1e-6f, py::arg("out") = py::none());
  o.def("hc_pre", [](py::handle x, py::handle fn, py::handle scale, py::handle base, int iters, float hc_eps,
                     float norm_eps) {
    borrowed bx = borrow(x, "x", false), bf = borrow(fn, "fn", false), bs = borrow(scale, "scale", false),
             bb = borrow(base, "base", false);
    DSV4_CHECK(bx.v.rank() == 3, "python", "x is ", bx.v.describe(), ", expected [T, n, D]");
    const std::int64_t T = bx.v.shape(0), n = bx.v.shape(1), D = bx.v.shape(2);
    auto [y, yv] = make<float>({T, D});
    auto [p, pv] = make<float>({T, n});
    auto [c, cv] = make<float>({T, n, n});
    py::gil_scoped_release nogil;
    ops::hc_pre(bx.v, bf.v, bs.v, bb.v, yv, pv, cv, ops::mhc_config{iters, hc_eps, norm_eps});
    py::gil_scoped_acquire gil;
    return py::make_tuple(y, p, c);
  }, py::arg("x"), py::arg("fn"), py::arg("scale"), py::arg("base"), py::arg("iters") = 20,
     py::arg("hc_eps") = 1e-6f, py::arg("norm_eps") = 1e-6f, "(y [T, D], post [T, n], comb [T, n, n])");
  o.def("hc_post", [](py::handle f, py::handle x, py::handle post, py::handle comb, py::handle out) {
    borrowed bf = borrow(f, "f", false), bx = borrow(x, "x", false), bp = borrow(post, "post", false),
             bc = borrow(comb, "comb", false);
    auto [y, yv] = out_or_new<float>(out, shape_of(bx.v), "out");
    py::gil_scoped_release nogil;
    ops::hc_post(bf.v, bx.v, bp.v, bc.v, yv);
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("f"), py::arg("x"), py::arg("post"), py::arg("comb"), py::arg("out") = py::none());
  o.def("hc_head", [](py::handle x, py::handle fn, py::handle scale, py::handle base, int iters, float hc_eps,
                      float norm_eps) {
    borrowed bx = borrow(x, "x", false), bf = borrow(fn, "fn", false), bs = borrow(scale, "scale", false),
             bb = borrow(base, "base", false);
    DSV4_CHECK(bx.v.rank() == 3, "python", "x is ", bx.v.describe(), ", expected [T, n, D]");
    auto [y, yv] = make<float>({bx.v.shape(0), bx.v.shape(2)});
    py::gil_scoped_release nogil;
    ops::hc_head(bx.v, bf.v, bs.v, bb.v, yv, ops::mhc_config{iters, hc_eps, norm_eps});
    py::gil_scoped_acquire gil;
    return y;
  }, py::arg("x"), py::arg("fn"), py::arg("scale"), py::arg("base"), py::arg("iters") = 20,
     py::arg("hc_eps") = 1e-6f, py::arg("norm_eps") = 1e-6f);
  o.def("moe_route", [](py::handle logits, int topk, const std::string& score, float route_scale, py::handle bias) {
    borrowed bl = borrow(logits, "logits", false);
    auto bb = borrow_opt(bias, "bias", false);
    DSV4_CHECK(bl.v.rank() == 2, "python", "logits is ", bl.v.describe(), ", expected [T, E]");
    auto [w, wv] = make<float>({bl.v.shape(0), topk});
    auto [e, ev] = make<std::int32_t>({bl.v.shape(0), topk});
    const ops::route_config rc{score_of(score), topk, route_scale};
    py::gil_scoped_release nogil;
    ops::moe_route(bl.v, rc, view_or_empty(bb), wv, ev);
    py::gil_scoped_acquire gil;
    return py::make_tuple(w, e);
  }, py::arg("logits"), py::arg("topk"), py::arg("score") = "sqrtsoftplus", py::arg("route_scale") = 1.f,
     py::arg("bias") = py::none(), "(weights float32 [T, k], experts int32 [T, k])");
  o.def("moe_hash_route", [](py::handle logits, py::handle token_ids, py::handle tid2eid, int topk,
                             const std::string& score, float route_scale) {
    borrowed bl = borrow(logits, "logits", false), bt = borrow(token_ids, "token_ids", false),
             bm = borrow(tid2eid, "tid2eid", false);
    DSV4_CHECK(bl.v.rank() == 2, "python", "logits is ", bl.v.describe(), ", expected [T, E]");
    auto [w, wv] = make<float>({bl.v.shape(0), topk});
    auto [e, ev] = make<std::int32_t>({bl.v.shape(0), topk});
    const ops::route_config rc{score_of(score), topk, route_scale};
    py::gil_scoped_release nogil;
    ops::moe_hash_route(bl.v, rc, bt.v, bm.v, wv, ev);
    py::gil_scoped_acquire gil;
    return py::make_tuple(w, e);
  }, py::arg("logits"), py::arg("token_ids"), py::arg("tid2eid"), py::arg("topk"), py::arg("score") = "sqrtsoftplus",
     py::arg("route_scale") = 1.f);
  o.def("indexer_scores", [](py::handle q, py::handle k, py::handle w, py::handle visible, py::handle out) {
    borrowed bq = borrow(q, "q", false), bk = borrow(k, "k", false), bw = borrow(w, "w", false),
             bv = borrow(visible, "visible", false);
    DSV4_CHECK(bq.v.rank() == 3 && bk.v.rank() == 2, "python", "indexer_scores takes q [T, H, c] and k [E, c]");
    auto [s, sv] = out_or_new<float>(out, {bq.v.shape(0), bk.v.shape(0)}, "out");
    py::gil_scoped_release nogil;
    ops::indexer_scores(bq.v, bk.v, bw.v, bv.v, sv);
    py::gil_scoped_acquire gil;
    return s;
  }, py::arg("q"), py::arg("k"), py::arg("w"), py::arg("visible"), py::arg("out") = py::none());
  o.def("topk_select", [](py::handle scores, py::handle count, int k) {
    borrowed bs = borrow(scores, "scores", false), bc = borrow(count, "count", false);
    auto [i, iv] = make<std::int32_t>({bs.v.shape(0), k});
    py::gil_scoped_release nogil;
    ops::topk_select(bs.v, bc.v, iv);
    py::gil_scoped_acquire gil;
    return i;
  }, py::arg("scores"), py::arg("count"), py::arg("k"));
  o.def("sparse_attention", [](py::handle q, py::handle kv_window, py::handle idx, py::handle sink, float scale,
                               py::handle kv_compressed, py::handle out) {
    borrowed bq = borrow(q, "q", false), bw = borrow(kv_window, "kv_window", false), bi = borrow(idx, "idx", false),
             bs = borrow(sink, "sink", false);
    auto bc = borrow_opt(kv_compressed, "kv_compressed", false);
    auto [o_, ov] = out_or_new<float>(out, shape_of(bq.v), "out");
    py::gil_scoped_release nogil;
    ops::sparse_attention(bq.v, bw.v, view_or_empty(bc), bi.v, bs.v, scale, ov);
    py::gil_scoped_acquire gil;
    return o_;
  }, py::arg("q"), py::arg("kv_window"), py::arg("idx"), py::arg("sink"), py::arg("scale"),
     py::arg("kv_compressed") = py::none(), py::arg("out") = py::none());

  // Paged caches.
  o.def("kv_store", [](py::handle values, py::handle slots, const KVPages& pages) {
    borrowed bv = borrow(values, "values", false), bs = borrow(slots, "slots", false);
    auto [kv, keep] = pages.view(true);
    py::gil_scoped_release nogil;
    ops::kv_store(bv.v, bs.v, kv);
  }, py::arg("values"), py::arg("slots"), py::arg("pages"));
  o.def("kv_load", [](const KVPages& pages, py::handle slots) {
    borrowed bs = borrow(slots, "slots", false);
    auto [kv, keep] = pages.view(false);
    auto [v, vv] = make<float>({bs.v.shape(0), pages.head_dim});
    py::gil_scoped_release nogil;
    ops::kv_load(kv, bs.v, vv);
    py::gil_scoped_acquire gil;
    return v;
  }, py::arg("pages"), py::arg("slots"));
  o.def("key_store", [](py::handle values, py::handle slots, const KeyPages& pages) {
    borrowed bv = borrow(values, "values", false), bs = borrow(slots, "slots", false);
    auto [kp, keep] = pages.view(true);
    py::gil_scoped_release nogil;
    ops::key_store(bv.v, bs.v, kp);
  }, py::arg("values"), py::arg("slots"), py::arg("pages"));
  o.def("key_load", [](const KeyPages& pages, py::handle slots) {
    borrowed bs = borrow(slots, "slots", false);
    auto [kp, keep] = pages.view(false);
    auto [v, vv] = make<float>({bs.v.shape(0), pages.dim});
    py::gil_scoped_release nogil;
    ops::key_load(kp, bs.v, vv);
    py::gil_scoped_acquire gil;
    return v;
  }, py::arg("pages"), py::arg("slots"));
  o.def("compressor_append", [](py::handle kv, py::handle score, py::handle ape, py::handle positions,
                                py::handle state_slot, py::handle state_rows, std::int64_t state_page_tokens, int ratio,
                                std::int64_t c, std::int64_t rope_dim, double norm_eps, bool indexer) {
    borrowed bk = borrow(kv, "kv", false), bs = borrow(score, "score", false), ba = borrow(ape, "ape", false),
             bp = borrow(positions, "positions", false), bt = borrow(state_slot, "state_slot", false),
             br = borrow(state_rows, "state_rows", true);
    ops::compressor_params p;
    p.ratio = ratio;
    p.c = c;
    p.rope_dim = rope_dim;
    p.norm_eps = norm_eps;
    p.indexer = indexer;
    py::gil_scoped_release nogil;
    ops::compressor_append(bk.v, bs.v, ba.v, bp.v, bt.v, cache::state_rows{br.v, state_page_tokens}, p);
  }, py::arg("kv"), py::arg("score"), py::arg("ape"), py::arg("positions"), py::arg("state_slot"),
     py::arg("state_rows"), py::arg("state_page_tokens"), py::arg("ratio"), py::arg("c"), py::arg("rope_dim"),
     py::arg("norm_eps") = 1e-6, py::arg("indexer") = false);
  o.def("compressor_emit", [](py::handle positions, py::handle row_req, py::handle state_table, py::handle state_rows,
                              std::int64_t state_page_tokens, py::handle norm_weight, py::handle rope_freq,
                              py::handle out_slot, py::object out_pages, int ratio, std::int64_t c,
                              std::int64_t rope_dim, double norm_eps) {
    borrowed bp = borrow(positions, "positions", false), bq = borrow(row_req, "row_req", false),
             bt = borrow(state_table, "state_table", false), br = borrow(state_rows, "state_rows", false),
             bn = borrow(norm_weight, "norm_weight", false), bf = borrow(rope_freq, "rope_freq", false),
             bo = borrow(out_slot, "out_slot", false);
    ops::compressor_params p;
    p.ratio = ratio;
    p.c = c;
    p.rope_dim = rope_dim;
    p.norm_eps = norm_eps;
    std::optional<std::pair<cache::kv_pages, borrowed>> kv;
    std::optional<std::pair<cache::key_pages, borrowed>> keys;
    if (py::isinstance<KeyPages>(out_pages)) {
      keys.emplace(out_pages.cast<const KeyPages&>().view(true));
      p.indexer = true;
    } else {
      kv.emplace(out_pages.cast<const KVPages&>().view(true));
    }
    auto [e, ev] = make<float>({bp.v.shape(0), c});
    py::gil_scoped_release nogil;
    ops::compressor_emit(bp.v, bq.v, bt.v, cache::state_rows{br.v, state_page_tokens}, bn.v, bf.v, bo.v, p,
                         kv ? &kv->first : nullptr, keys ? &keys->first : nullptr, ev);
    py::gil_scoped_acquire gil;
    return e;
  }, py::arg("positions"), py::arg("row_req"), py::arg("state_table"), py::arg("state_rows"),
     py::arg("state_page_tokens"), py::arg("norm_weight"), py::arg("rope_freq"), py::arg("out_slot"),
     py::arg("out_pages"), py::arg("ratio"), py::arg("c"), py::arg("rope_dim"), py::arg("norm_eps") = 1e-6,
     "Emit the entries of the rows that close a block into out_pages (KVPages: main, KeyPages: indexer); returns "
     "the stored values (rows that emit nothing are zero).");
  o.def("indexer_logits", [](py::handle q, py::handle w, const KeyPages& keys, py::handle block_table,
                             py::handle row_req, py::handle n_keys, std::int64_t L) {
    borrowed bq = borrow(q, "q", false), bw = borrow(w, "w", false), bt = borrow(block_table, "block_table", false),
             br = borrow(row_req, "row_req", false), bn = borrow(n_keys, "n_keys", false);
    auto [kp, keep] = keys.view(false);
    auto [l, lv] = make<float>({bq.v.shape(0), L});
    py::gil_scoped_release nogil;
    ops::indexer_logits(bq.v, bw.v, kp, bt.v, br.v, bn.v, lv);
    py::gil_scoped_acquire gil;
    return l;
  }, py::arg("q"), py::arg("w"), py::arg("keys"), py::arg("block_table"), py::arg("row_req"), py::arg("n_keys"),
     py::arg("L"));
  o.def("topk_rows", [](py::handle logits, py::handle n_keys, int k) {
    borrowed bl = borrow(logits, "logits", false), bn = borrow(n_keys, "n_keys", false);
    auto [i, iv] = make<std::int32_t>({bl.v.shape(0), k});
    auto [n, nv] = make<std::int32_t>({bl.v.shape(0)});
    py::gil_scoped_release nogil;
    ops::topk_rows(bl.v, bn.v, iv, nv);
    py::gil_scoped_acquire gil;
    return py::make_tuple(i, n);
  }, py::arg("logits"), py::arg("n_keys"), py::arg("k"), "(idx int32 [T, k], len int32 [T])");
  o.def("to_slots", [](py::handle idx, py::handle len, py::handle row_req, py::handle block_table,
                       std::int64_t page_tokens) {
    borrowed bi = borrow(idx, "idx", false), br = borrow(row_req, "row_req", false),
             bt = borrow(block_table, "block_table", false);
    auto bl = borrow_opt(len, "len", false);
    auto [s, sv] = make<std::int32_t>(shape_of(bi.v));
    py::gil_scoped_release nogil;
    ops::to_slots(bi.v, view_or_empty(bl), br.v, bt.v, page_tokens, sv);
    py::gil_scoped_acquire gil;
    return s;
  }, py::arg("idx"), py::arg("len"), py::arg("row_req"), py::arg("block_table"), py::arg("page_tokens"));
  o.def("indexer_topk", [](py::handle q, py::handle w, const KeyPages& keys, py::handle block_table,
                           py::handle row_req, py::handle n_keys, int k) {
    borrowed bq = borrow(q, "q", false), bw = borrow(w, "w", false), bt = borrow(block_table, "block_table", false),
             br = borrow(row_req, "row_req", false), bn = borrow(n_keys, "n_keys", false);
    auto [kp, keep] = keys.view(false);
    const std::int64_t T = bq.v.shape(0);
    auto [i, iv] = make<std::int32_t>({T, k});
    auto [n, nv] = make<std::int32_t>({T});
    auto [s, sv] = make<std::int32_t>({T, k});
    py::gil_scoped_release nogil;
    ops::indexer_topk(bq.v, bw.v, kp, bt.v, br.v, bn.v, iv, nv, sv);
    py::gil_scoped_acquire gil;
    return py::make_tuple(i, n, s);
  }, py::arg("q"), py::arg("w"), py::arg("keys"), py::arg("block_table"), py::arg("row_req"), py::arg("n_keys"),
     py::arg("k"), "(idx, len, slots)");
  o.def("sparse_mqa", [](py::handle q, const KVPages& pages, py::handle window_slots, py::handle window_len,
                         py::handle sink, float scale, py::handle compressed_slots, py::handle compressed_len) {
    borrowed bq = borrow(q, "q", false), bws = borrow(window_slots, "window_slots", false),
             bs = borrow(sink, "sink", false);
    auto bwl = borrow_opt(window_len, "window_len", false);
    auto bcs = borrow_opt(compressed_slots, "compressed_slots", false);
    auto bcl = borrow_opt(compressed_len, "compressed_len", false);
    auto [kv, keep] = pages.view(false);
    DSV4_CHECK(bq.v.rank() == 3, "python", "q is ", bq.v.describe(), ", expected [T, H, D]");
    auto [o_, ov] = make<float>(shape_of(bq.v));
    auto [l, lv] = make<float>({bq.v.shape(0), bq.v.shape(1)});
    const ops::sparse_segment win{kv, bws.v, view_or_empty(bwl)};
    const ops::sparse_segment comp{kv, view_or_empty(bcs), view_or_empty(bcl)};
    const bool has_comp = bcs.has_value();
    py::gil_scoped_release nogil;
    ops::sparse_mqa(bq.v, win, has_comp ? &comp : nullptr, bs.v, scale, ov, lv);
    py::gil_scoped_acquire gil;
    return py::make_tuple(o_, l);
  }, py::arg("q"), py::arg("pages"), py::arg("window_slots"), py::arg("window_len"), py::arg("sink"),
     py::arg("scale"), py::arg("compressed_slots") = py::none(), py::arg("compressed_len") = py::none(),
     "(out [T, H, D], lse [T, H]); a row with no valid lane gives out 0 and lse +inf.");
}
