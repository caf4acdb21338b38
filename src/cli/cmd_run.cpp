// `dsv4 run`: load a model directory, prefill a prompt (whole or in chunks), teacher-force decode tokens one step at a
// time, write the logits of every processed position as a NumPy .npy file, print the top next tokens.
#include "cmd_run.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "args.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/graph.hpp"
#include "dsv4/io/file.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/ops/memory.hpp"

namespace dsv4::cli {

namespace {

// Comma-separated token ids; `where` prefixes messages (a batch file's line).
std::vector<std::int64_t> parse_ids(const std::string& opt, const std::string& s, const std::string& where = "") {
  DSV4_CHECK(!s.empty(), "run", where, "--", opt, " is empty (expected comma-separated token ids, e.g. 5,17,301)");
  std::vector<std::int64_t> out;
  std::size_t i = 0;
  while (i <= s.size()) {
    const std::size_t j = std::min(s.find(',', i), s.size());
    const std::string tok = s.substr(i, j - i);
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSV4_CHECK(!tok.empty() && used == tok.size(), "run", where, "--", opt, ": \"", detail::printable(tok, 40),
               "\" is not a token id (expected comma-separated integers, e.g. 5,17,301)");
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

// NumPy format 1.0, streamed: magic, version, little-endian u16 header length, a Python dict literal padded with
// spaces to a multiple of 64 bytes (header included) and ended by a newline, then the raw little-endian float32 rows
// as they are computed. The file is opened (and its header written) before the model is loaded, so an unwritable
// path fails at once; a failed write removes the partial file.
class npy_writer {
 public:
  npy_writer(std::string path, std::int64_t rows, std::int64_t cols) : path_(std::move(path)), rows_(rows), cols_(cols) {
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
    const std::size_t pre = 10;  // magic (6) + version (2) + length (2)
    const std::size_t total = pre + dict.size() + 1;
    dict.append((64 - total % 64) % 64, ' ');
    dict += '\n';
    // O_NONBLOCK: a FIFO with no reader fails at once (ENXIO) instead of blocking the run.
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK, 0644);
    DSV4_CHECK(fd >= 0, "run", "cannot write --logits ", detail::printable(path_, 400), ": ", std::strerror(errno));
    struct stat st {};
    regular_ = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    f_ = ::fdopen(fd, "wb");
    if (!f_) ::close(fd);
    DSV4_CHECK(f_ != nullptr, "run", "cannot write --logits ", detail::printable(path_, 400), ": ",
               std::strerror(errno));
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    const std::uint16_t len = static_cast<std::uint16_t>(dict.size());
    const unsigned char lb[2] = {static_cast<unsigned char>(len & 0xFF), static_cast<unsigned char>(len >> 8)};
    put(magic, 8);
    put(lb, 2);
    put(dict.data(), dict.size());
  }
  ~npy_writer() {
    if (!f_) return;
    std::fclose(f_);
    if (!done_ && regular_) std::remove(path_.c_str());  // an error ended the run: no truncated file left behind
  }
  npy_writer(const npy_writer&) = delete;
  npy_writer& operator=(const npy_writer&) = delete;

  void rows(const float* data, std::int64_t n) {
    put(data, static_cast<std::size_t>(n * cols_) * sizeof(float));
    written_ += n;
  }
  void finish() {
    DSV4_CHECK(written_ == rows_, "run", "internal: wrote ", written_, " of ", rows_, " logit rows");
    const int flushed = std::fflush(f_);
    const int closed = std::fclose(f_);
    f_ = nullptr;
    if (flushed != 0 || closed != 0) {
      if (regular_) std::remove(path_.c_str());
      DSV4_FAIL("run", "write failed: ", detail::printable(path_, 400), ": ", std::strerror(errno));
    }
    done_ = true;
  }

 private:
  void put(const void* p, std::size_t n) {
    DSV4_CHECK(std::fwrite(p, 1, n, f_) == n, "run", "write failed: ", detail::printable(path_, 400), ": ",
               std::strerror(errno));
  }
  std::string path_;
  std::int64_t rows_, cols_, written_ = 0;
  std::FILE* f_ = nullptr;
  bool done_ = false, regular_ = false;
};

// Ranking for --top: higher logit first, ties to the lower id, and NaN (never produced: the forward pass refuses it)
// last, so the comparison stays a strict weak order whatever the values.
bool ranks_before(const float* l, std::int64_t x, std::int64_t y) {
  if (std::isnan(l[x])) return false;
  if (std::isnan(l[y])) return true;
  return l[x] > l[y] || (l[x] == l[y] && x < y);
}

}  // namespace

const char* const kRunUsage =
    "usage: dsv4 run --model DIR --prompt IDS [--decode IDS] [--logits OUT.npy]\n"
    "       dsv4 run --model DIR --batch FILE [--logits-dir DIR]\n"
    "                [--chunk N] [--backend ref|cpu|cuda] [--threads N] [--kv f32|fp8_ds_mla] [--top K]\n"
    "                [--numerics fp32|official] [--resident]\n"
    "  Loads DIR (HF config.json + safetensors), prefills the prompt (at once, or in chunks of N tokens), feeds\n"
    "  each --decode token as one step (teacher forcing), and prints the top K next tokens after the last one.\n"
    "  --prompt, --decode  comma-separated token ids in [0, vocab), e.g. 5,17,301\n"
    "  --batch FILE        one sequence per line, PROMPT_IDS or PROMPT_IDS|DECODE_IDS; all sequences advance\n"
    "                      together, each step one batched forward call holding the next prefill chunk or decode\n"
    "                      token of every unfinished sequence (every weight is read once per step)\n"
    "  --logits-dir DIR    with --batch: DIR/seq<i>.npy per sequence (i from 0, in file order), the same contents\n"
    "                      as `dsv4 run --logits` on that sequence alone\n"
    "  --chunk N           prefill chunk size, N >= 1 (default: the whole prompt in one call)\n"
    "  --backend           cpu (default), ref (the scalar reference) or cuda (the weights uploaded once to GPU 0,\n"
    "                      pages and activations there, decode steps replayed as a CUDA graph; numerics fp32)\n"
    "  --threads N         CPU worker threads in [0, 1024] (0, the default: all cores)\n"
    "  --numerics POLICY   fp32 (default: exact weights, fp32 activations) or official (the rounding points of\n"
    "                      DeepSeek's inference code: BF16 activations, FP8 1x128 activation quantization, ...)\n"
    "  --kv FORMAT         KV page format: f32 (default; exact under the fp32 policy) or fp8_ds_mla (FlashMLA's\n"
    "                      584-byte layout: FP8 nope dims, BF16 rope dims, UE8M0 scales)\n"
    "  --logits OUT.npy    float32 [n_prompt + n_decode, vocab] logits of every position, streamed as computed\n"
    "  --top K             K >= 1 most likely next tokens after the last position (of each sequence)\n"
    "  --resident          backend cpu / ref: copy the weights once into memory of their own (2 MiB pages where the\n"
    "                      kernel gives them) instead of reading them from the file mapping; same logits, faster\n"
    "                      decode, the weights' size in RAM\n";

namespace {

// One sequence of the run: its tokens, where it is, where its logits go.
struct job {
  std::vector<std::int64_t> prompt, decode;
  std::string out_path;
  std::unique_ptr<npy_writer> out;
  model::sequence_state seq;
  std::int64_t done = 0;
  std::vector<float> step_logits, last;
  std::int64_t total() const { return static_cast<std::int64_t>(prompt.size() + decode.size()); }
  std::int64_t token(std::int64_t i) const {
    const std::int64_t np = static_cast<std::int64_t>(prompt.size());
    return i < np ? prompt[static_cast<std::size_t>(i)] : decode[static_cast<std::size_t>(i - np)];
  }
};

// The --batch file: one sequence per line, PROMPT_IDS or PROMPT_IDS|DECODE_IDS; a final newline is allowed.
std::vector<job> read_batch(const std::string& path) {
  const std::string text = io::read_text_file(path, 64u << 20, "run");
  std::vector<job> jobs;
  std::size_t at = 0;
  for (std::int64_t line = 1; at < text.size(); ++line) {
    const std::size_t end = std::min(text.find('\n', at), text.size());
    std::string l = text.substr(at, end - at);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    const std::string where = detail::printable(path, 200) + " line " + std::to_string(line);
    DSV4_CHECK(!l.empty(), "run", where, " is empty (expected PROMPT_IDS or PROMPT_IDS|DECODE_IDS)");
    const std::size_t bar = l.find('|');
    DSV4_CHECK(bar == std::string::npos || l.find('|', bar + 1) == std::string::npos, "run", where,
               " has more than one '|' (expected PROMPT_IDS or PROMPT_IDS|DECODE_IDS)");
    job j;
    j.prompt = parse_ids("prompt", l.substr(0, bar), where + ": ");
    if (bar != std::string::npos) j.decode = parse_ids("decode", l.substr(bar + 1), where + ": ");
    jobs.push_back(std::move(j));
    at = end + 1;
  }
  DSV4_CHECK(!jobs.empty(), "run", detail::printable(path, 200), " holds no sequence");
  return jobs;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  const args a(argc, argv, 2, "run",
               {"model", "prompt", "decode", "chunk", "backend", "threads", "logits", "top", "batch", "logits-dir",
                "kv", "numerics"},
               {"resident"}, kRunUsage);
  if (a.help()) return a.print_usage();
  const std::string dir = a.str("model");
  const bool batch = a.has("batch");
  DSV4_CHECK(batch != a.has("prompt"), "run", "give --prompt IDS (one sequence) or --batch FILE (several)");
  DSV4_CHECK(!batch || (!a.has("decode") && !a.has("logits")), "run",
             "--decode and --logits are for one sequence; with --batch, decode ids go after '|' on each line and "
             "logits into --logits-dir");
  DSV4_CHECK(batch || !a.has("logits-dir"), "run", "--logits-dir goes with --batch (one sequence: --logits FILE)");
  std::vector<job> jobs;
  if (batch) {
    jobs = read_batch(a.str("batch"));
  } else {
    jobs.emplace_back();
    jobs[0].prompt = parse_ids("prompt", a.str("prompt"));
    if (a.has("decode")) jobs[0].decode = parse_ids("decode", a.str("decode"));
  }
  const std::int64_t chunk = a.integer("chunk", 0, 1, model::limits::positions);
  const std::string be = a.str("backend", "cpu");
  DSV4_CHECK(be == "cpu" || be == "ref" || be == "cuda", "run", "--backend ", detail::printable(be, 40),
             " (expected ref, cpu or cuda)");
  const bool gpu = be == "cuda";
  const numerics nm = parse_numerics(a.str("numerics", "fp32"));
  DSV4_CHECK(!gpu || nm == numerics::fp32, "run", "--backend cuda runs numerics fp32 only");
  const bool resident = a.has("resident");
  DSV4_CHECK(!gpu || !resident, "run",
             "--resident is for the CPU backends (--backend cuda copies the weights to the GPU)");
  DSV4_CHECK(!gpu || ops::cuda_built(), "run", "--backend cuda: this build of dsv4 has no CUDA backend");
  DSV4_CHECK(!gpu || ops::cuda_device_count() > 0, "run", "--backend cuda: no CUDA device is visible");
  exec ex;
  ex.prefer = be == "ref" ? backend::ref : gpu ? backend::automatic : backend::cpu;
  ex.threads = static_cast<int>(a.integer("threads", 0, 0, kMaxThreads));
  const std::int64_t top = a.integer("top", 0, 1, model::limits::vocab);
  model::pool_options po;
  const std::string kv = a.str("kv", "f32");
  DSV4_CHECK(kv == "f32" || kv == "fp8_ds_mla", "run", "--kv ", detail::printable(kv, 40),
             " (expected f32 or fp8_ds_mla)");
  po.kv = kv == "f32" ? cache::kv_format::f32 : cache::kv_format::fp8_ds_mla;

  const model::model_config cfg = model::load_config(dir);
  const std::int64_t V = cfg.vocab_size;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const std::string who = batch ? "sequence " + std::to_string(i) + " (line " + std::to_string(i + 1) + "): " : "";
    for (const auto* list : {&jobs[i].prompt, &jobs[i].decode})
      for (std::size_t k = 0; k < list->size(); ++k)
        DSV4_CHECK((*list)[k] >= 0 && (*list)[k] < V, "run", who, list == &jobs[i].prompt ? "--prompt" : "--decode",
                   " token ", (*list)[k], " at index ", k, " is outside the vocabulary [0, ", V, ")");
    DSV4_CHECK(jobs[i].total() <= cfg.max_position_embeddings, "run", who, jobs[i].total(),
               " tokens exceed the model's context of ", cfg.max_position_embeddings, " positions");
  }
  // Outputs are opened before the model is read, so an unwritable path fails at once.
  if (batch && a.has("logits-dir")) {
    std::error_code ec;
    std::filesystem::create_directories(a.str("logits-dir"), ec);
    for (std::size_t i = 0; i < jobs.size(); ++i)
      jobs[i].out_path = (std::filesystem::path(a.str("logits-dir")) / ("seq" + std::to_string(i) + ".npy")).string();
  }
  if (!batch && a.has("logits")) jobs[0].out_path = a.str("logits");
  std::int64_t total = 0;
  for (job& j : jobs) {
    if (!j.out_path.empty()) j.out = std::make_unique<npy_writer>(j.out_path, j.total(), V);
    total += j.total();
  }

  const io::checkpoint ck = io::checkpoint::open(dir);
  const model::model_weights host_w = model::bind_weights(ck, cfg);
  model::device_weights dev_w;
  if (gpu || resident) {
    const auto t_up = std::chrono::steady_clock::now();
    const char* what = gpu ? "uploading" : "copying";
    const device to = gpu ? device::cuda(0) : device::cpu();
    dev_w = model::upload_weights(host_w, to, [&](std::int64_t done, std::int64_t all) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t_up).count() > 1.0)
        std::fprintf(stderr, "\r[dsv4 run] %s weights: %lld / %lld MB   %s", what, (long long)(done >> 20),
                     (long long)(all >> 20), done == all ? "\n" : "");
    });
  }
  const model::model_weights& w = gpu || resident ? dev_w.weights : host_w;
  // On the GPU the engine's way: a stream of our own under check_policy::deferred (one wait per step), prompts run
  // eagerly, decode steps recorded into a CUDA graph and replayed (model::graph_runner).
  std::unique_ptr<device_stream> stream;
  if (gpu) {
    stream = std::make_unique<device_stream>(0);
    ex = stream->deferred();
  }
  const model::transformer tf(cfg, w, ex, po, nm);
  std::unique_ptr<model::graph_runner> runner;
  buffer dev_logits;
  if (gpu) {
    runner = std::make_unique<model::graph_runner>(tf);
    dev_logits = buffer(dtype::f32, {static_cast<std::int64_t>(jobs.size()), V}, device::cuda(0));
  }
  for (job& j : jobs) {
    j.seq = tf.new_sequence(j.total());
    j.last.assign(static_cast<std::size_t>(V), 0.f);
  }

  // Steps: every unfinished sequence contributes its next prefill chunk or decode token to one batched call. Logits
  // held at any time: one step's rows of a sequence whose logits are streamed, else only the last position's row of
  // a finishing sequence (for --top); memory does not grow with tokens x vocab.
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::int64_t done = 0, steps = 0;
  double last_report = 0;
  for (;;) {
    std::vector<model::transformer::batch_entry> entries;
    std::vector<job*> in_step;
    std::vector<std::int64_t> counts;
    for (job& j : jobs) {
      const std::int64_t np = static_cast<std::int64_t>(j.prompt.size());
      if (j.done >= j.total()) continue;
      const std::int64_t n = j.done < np ? (chunk > 0 ? std::min(chunk, np - j.done) : np - j.done) : 1;
      in_step.push_back(&j);
      counts.push_back(n);
    }
    if (in_step.empty()) break;
    std::vector<std::vector<std::int64_t>> toks(in_step.size());
    std::vector<std::int64_t> last_rows(in_step.size());
    for (std::size_t i = 0; i < in_step.size(); ++i) {
      job& j = *in_step[i];
      const std::int64_t n = counts[i];
      for (std::int64_t t = 0; t < n; ++t) toks[i].push_back(j.token(j.done + t));
      model::transformer::batch_entry e{toks[i], &j.seq, {}, {}};
      const bool final_step = j.done + n == j.total();
      if (j.out) {
        j.step_logits.resize(static_cast<std::size_t>(n * V));
        e.logits = tensor_view(j.step_logits.data(), dtype::f32, {n, V});
      } else if (final_step && top > 0) {
        last_rows[i] = n - 1;
        e.rows = std::span<const std::int64_t>(&last_rows[i], 1);
        e.logits = tensor_view(j.last.data(), dtype::f32, {1, V});
      }
      entries.push_back(e);
    }
    const bool decode_only = std::all_of(counts.begin(), counts.end(), [](std::int64_t n) { return n == 1; });
    if (runner && decode_only) {
      // A decode step on the GPU: recorded into the CUDA graph and replayed (logits through device rows).
      std::vector<model::transformer::batch_entry> dev_entries = entries;
      for (std::size_t i = 0; i < entries.size(); ++i)
        if (entries[i].logits.data() != nullptr)
          dev_entries[i].logits = dev_logits.view().narrow(0, static_cast<std::int64_t>(i), 1);
      runner->step(dev_entries);
      for (std::size_t i = 0; i < entries.size(); ++i)
        if (entries[i].logits.data() != nullptr)
          ops::copy(dev_logits.view().narrow(0, static_cast<std::int64_t>(i), 1), entries[i].logits);
    } else {
      tf.forward_batch(entries, nullptr, [&](std::int64_t layer) {
        if (elapsed() > 1.0 && elapsed() - last_report > 0.5) {
          last_report = elapsed();
          std::fprintf(stderr, "\r[dsv4 run] tokens %lld/%lld, step %lld, layer %lld/%lld, %.1f tokens/s   ",
                       (long long)done, (long long)total, (long long)steps + 1, (long long)layer + 1,
                       (long long)cfg.n_layers, double(done) / elapsed());
        }
      });
    }
    for (std::size_t i = 0; i < in_step.size(); ++i) {
      job& j = *in_step[i];
      const std::int64_t n = counts[i];
      if (j.out) {
        j.out->rows(j.step_logits.data(), n);
        if (j.done + n == j.total()) std::copy(j.step_logits.end() - V, j.step_logits.end(), j.last.begin());
      }
      j.done += n;
      done += n;
    }
    ++steps;
  }
  if (last_report > 0)
    std::fprintf(stderr, "\r[dsv4 run] %lld tokens in %.2f s, %.1f tokens/s%40s\n", (long long)total, elapsed(),
                 double(total) / elapsed(), "");

  auto print_top = [&](const std::vector<float>& last, std::int64_t position, const std::string& what) {
    const float* l = last.data();
    std::vector<std::int64_t> order(static_cast<std::size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    const std::int64_t kk = std::min(top, V);
    std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                      [&](std::int64_t x, std::int64_t y) { return ranks_before(l, x, y); });
    const float mx = l[order[0]];
    double z = 0;
    for (std::int64_t i = 0; i < V; ++i) z += std::exp(double(l[i]) - mx);
    std::printf("top %lld next tokens%s after position %lld:\n", (long long)kk, what.c_str(), (long long)position);
    for (std::int64_t i = 0; i < kk; ++i) {
      const std::int64_t id = order[static_cast<std::size_t>(i)];
      std::printf("  %8lld  logit %9.4f  p %.4f\n", (long long)id, l[id], std::exp(double(l[id]) - mx) / z);
    }
  };
  if (!batch) {
    job& j = jobs[0];
    std::printf("model %s: %lld prompt + %lld decode tokens on %s%s, %s KV pages, numerics %s, cache %.1f KB\n",
                detail::printable(dir, 400).c_str(), (long long)j.prompt.size(), (long long)j.decode.size(),
                be.c_str(), chunk > 0 ? (" in chunks of " + std::to_string(chunk)).c_str() : "", kv.c_str(),
                numerics_name(nm), double(j.seq.cache_bytes()) / 1e3);
  } else {
    std::printf("model %s: %zu sequences, %lld tokens in %lld batched steps on %s%s, %s KV pages, numerics %s\n",
                detail::printable(dir, 400).c_str(), jobs.size(), (long long)total, (long long)steps, be.c_str(),
                chunk > 0 ? (", prefill chunks of " + std::to_string(chunk)).c_str() : "", kv.c_str(),
                numerics_name(nm));
  }
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    job& j = jobs[i];
    if (j.out) {
      j.out->finish();
      std::printf("wrote %s: float32 [%lld, %lld]\n", detail::printable(j.out_path, 400).c_str(),
                  (long long)j.total(), (long long)V);
    }
    if (top > 0) print_top(j.last, j.total() - 1, batch ? " of sequence " + std::to_string(i) : std::string());
  }
  return 0;
}

}  // namespace dsv4::cli
