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
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "args.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/weights.hpp"

namespace dsv4::cli {

namespace {

std::vector<std::int64_t> parse_ids(const std::string& opt, const std::string& s) {
  DSV4_CHECK(!s.empty(), "run", "--", opt, " is empty (expected comma-separated token ids, e.g. 5,17,301)");
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
    DSV4_CHECK(!tok.empty() && used == tok.size(), "run", "--", opt, ": \"", detail::printable(tok, 40),
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
    "usage: dsv4 run --model DIR --prompt IDS [--decode IDS] [--chunk N] [--backend ref|cpu] [--threads N]\n"
    "                [--logits OUT.npy] [--top K]\n"
    "  Loads DIR (HF config.json + safetensors), prefills the prompt (at once, or in chunks of N tokens), feeds\n"
    "  each --decode token as one step (teacher forcing), and prints the top K next tokens after the last one.\n"
    "  --prompt, --decode  comma-separated token ids in [0, vocab), e.g. 5,17,301\n"
    "  --chunk N           prefill chunk size, N >= 1 (default: the whole prompt in one call)\n"
    "  --backend           cpu (default) or ref (the scalar reference)\n"
    "  --threads N         CPU worker threads in [0, 1024] (0, the default: all cores)\n"
    "  --logits OUT.npy    float32 [n_prompt + n_decode, vocab] logits of every position, streamed as computed\n"
    "  --top K             K >= 1 most likely next tokens after the last position\n";

int cmd_run(int argc, char** argv) {
  const args a(argc, argv, 2, "run", {"model", "prompt", "decode", "chunk", "backend", "threads", "logits", "top"},
               {}, kRunUsage);
  if (a.help()) return a.print_usage();
  const std::string dir = a.str("model");
  const std::vector<std::int64_t> prompt = parse_ids("prompt", a.str("prompt"));
  const std::vector<std::int64_t> decode = a.has("decode") ? parse_ids("decode", a.str("decode"))
                                                           : std::vector<std::int64_t>{};
  const std::int64_t chunk = a.integer("chunk", 0, 1, model::limits::positions);
  const std::string be = a.str("backend", "cpu");
  DSV4_CHECK(be == "cpu" || be == "ref", "run", "--backend ", detail::printable(be, 40), " (expected ref or cpu)");
  exec ex;
  ex.prefer = be == "ref" ? backend::ref : backend::cpu;
  ex.threads = static_cast<int>(a.integer("threads", 0, 0, kMaxThreads));
  const std::int64_t top = a.integer("top", 0, 1, model::limits::vocab);

  const model::model_config cfg = model::load_config(dir);
  for (const auto* list : {&prompt, &decode})
    for (std::size_t i = 0; i < list->size(); ++i)
      DSV4_CHECK((*list)[i] >= 0 && (*list)[i] < cfg.vocab_size, "run", list == &prompt ? "--prompt" : "--decode",
                 " token ", (*list)[i], " at index ", i, " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  const std::int64_t total = static_cast<std::int64_t>(prompt.size() + decode.size());
  DSV4_CHECK(total <= cfg.max_position_embeddings, "run", total, " tokens exceed the model's context of ",
             cfg.max_position_embeddings, " positions");
  const std::int64_t V = cfg.vocab_size;
  std::unique_ptr<npy_writer> out;
  if (a.has("logits")) out = std::make_unique<npy_writer>(a.str("logits"), total, V);

  const io::checkpoint ck = io::checkpoint::open(dir);
  const model::model_weights w = model::bind_weights(ck, cfg);
  const model::transformer tf(cfg, w, ex);
  model::sequence_state seq = tf.new_sequence(total);

  // Logits held at any time: one step's rows when --logits streams them, else only the last position's row (for
  // --top), so memory does not grow with tokens x vocab.
  std::vector<float> step_logits, last(static_cast<std::size_t>(V));
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::int64_t done = 0;
  double last_report = 0;
  auto step = [&](const std::int64_t* ids, std::int64_t n) {
    const bool final_step = done + n == total;
    const std::span<const std::int64_t> toks(ids, static_cast<std::size_t>(n));
    auto progress = [&](std::int64_t layer) {
      if (elapsed() > 1.0 && elapsed() - last_report > 0.5) {
        last_report = elapsed();
        std::fprintf(stderr, "\r[dsv4 run] tokens %lld/%lld, layer %lld/%lld, %.1f tokens/s   ", (long long)done,
                     (long long)total, (long long)layer + 1, (long long)cfg.n_layers, double(done) / elapsed());
      }
    };
    if (out) {
      step_logits.resize(static_cast<std::size_t>(n * V));
      tf.forward(toks, seq, tensor_view(step_logits.data(), dtype::f32, {n, V}), nullptr, progress);
      out->rows(step_logits.data(), n);
      if (final_step) std::copy(step_logits.end() - V, step_logits.end(), last.begin());
    } else if (final_step && top > 0) {
      const std::int64_t row = n - 1;
      tf.forward_rows(toks, seq, std::span<const std::int64_t>(&row, 1), tensor_view(last.data(), dtype::f32, {1, V}),
                      nullptr, progress);
    } else {
      tf.forward(toks, seq, tensor_view(), nullptr, progress);
    }
    done += n;
  };
  const std::int64_t np = static_cast<std::int64_t>(prompt.size());
  for (std::int64_t s = 0; s < np;) {
    const std::int64_t n = chunk > 0 ? std::min(chunk, np - s) : np;
    step(prompt.data() + s, n);
    s += n;
  }
  for (const std::int64_t id : decode) step(&id, 1);
  if (last_report > 0)
    std::fprintf(stderr, "\r[dsv4 run] %lld tokens in %.2f s, %.1f tokens/s%30s\n", (long long)total, elapsed(),
                 double(total) / elapsed(), "");

  std::printf("model %s: %lld prompt + %lld decode tokens on %s%s, cache %.1f KB\n",
              detail::printable(dir, 400).c_str(), (long long)np, (long long)decode.size(), be.c_str(),
              chunk > 0 ? (" in chunks of " + std::to_string(chunk)).c_str() : "", double(seq.cache_bytes()) / 1e3);
  if (out) {
    out->finish();
    std::printf("wrote %s: float32 [%lld, %lld]\n", detail::printable(a.str("logits"), 400).c_str(), (long long)total,
                (long long)V);
  }
  if (top > 0) {
    const float* l = last.data();
    std::vector<std::int64_t> order(static_cast<std::size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    const std::int64_t kk = std::min(top, V);
    std::partial_sort(order.begin(), order.begin() + kk, order.end(),
                      [&](std::int64_t x, std::int64_t y) { return ranks_before(l, x, y); });
    const float mx = l[order[0]];
    double z = 0;
    for (std::int64_t i = 0; i < V; ++i) z += std::exp(double(l[i]) - mx);
    std::printf("top %lld next tokens after position %lld:\n", (long long)kk, (long long)total - 1);
    for (std::int64_t i = 0; i < kk; ++i) {
      const std::int64_t id = order[static_cast<std::size_t>(i)];
      std::printf("  %8lld  logit %9.4f  p %.4f\n", (long long)id, l[id], std::exp(double(l[id]) - mx) / z);
    }
  }
  return 0;
}

}  // namespace dsv4::cli
