// speculative: two sequences decoded together with speculative drafts, verification in one batched call, and
// rollback of the rejected tokens — the engine-facing side of dsv4 (README, "Engine interface").
//
//   example_speculative MODEL_DIR [STEPS]       e.g. after `dsv4 synth --preset small --out /tmp/small`
//
// Both sequences live in one page pool (FlashMLA's fp8_ds_mla KV layout, 64-entry pages). Each step:
//   1. a draft of 3 tokens per sequence (a cheap guesser: the next tokens of a fixed pattern);
//   2. one forward_batch call verifies both drafts: the logits at every draft position (every weight read once for
//      both sequences);
//   3. greedy acceptance: keep the draft tokens the model's argmax agrees with, then the model's own next token;
//   4. truncate() rolls each sequence back to its accepted length (nothing is copied: rows are keyed by position).
// At the end the accepted text is replayed through a fresh sequence token by token: the logits of every accepted
// position must be bitwise those of the speculative run — a rejected draft leaves no trace. The example also reads
// one KV entry straight from the pages through the block table, as an engine kernel would.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/ops/paged.hpp"

using namespace dsv4;
using namespace dsv4::model;

namespace {

std::int64_t argmax(const float* l, std::int64_t V) {
  std::int64_t best = 0;
  for (std::int64_t i = 1; i < V; ++i)
    if (l[i] > l[best]) best = i;  // ties: the lower id
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [STEPS]\n", argv[0]);
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const int steps = argc > 2 ? std::atoi(argv[2]) : 12;
    const model_config cfg = load_config(dir);
    const io::checkpoint ck = io::checkpoint::open(dir);
    const model_weights w = bind_weights(ck, cfg);
    pool_options po;
    po.kv = cache::kv_format::fp8_ds_mla;
    po.page_tokens = 64;
    const transformer tf(cfg, w, {}, po);
    const auto pool = tf.make_pool(po);
    const std::int64_t V = cfg.vocab_size, draft_len = 3;

    // Two prompts of different lengths, prefilled together in one call.
    std::vector<std::vector<std::int64_t>> text(2);
    for (std::int64_t i = 0; i < 37; ++i) text[0].push_back((i * 13 + 5) % V);
    for (std::int64_t i = 0; i < 9; ++i) text[1].push_back((i * 7 + 1) % V);
    sequence_state seq[2] = {tf.new_sequence(pool, 4096), tf.new_sequence(pool, 4096)};
    std::vector<float> next[2];  // the logits after the last accepted token of each sequence
    {
      std::vector<float> l0(static_cast<std::size_t>(V)), l1(static_cast<std::size_t>(V));
      const std::int64_t last0[1] = {36}, last1[1] = {8};
      const transformer::batch_entry e[2] = {{text[0], &seq[0], tensor_view(l0.data(), dtype::f32, {1, V}), last0},
                                             {text[1], &seq[1], tensor_view(l1.data(), dtype::f32, {1, V}), last1}};
      tf.forward_batch(e);
      next[0] = l0;
      next[1] = l1;
    }
    // Every accepted position's logits, to compare with the replay.
    std::vector<std::vector<float>> accepted_logits(2);
    int drafted = 0, kept = 0;
    for (int step = 0; step < steps; ++step) {
      // 1-2. Drafts: the model's own argmax first (always right), then a guessed continuation.
      std::vector<std::int64_t> draft[2];
      std::vector<float> lg[2];
      std::vector<transformer::batch_entry> e;
      for (int s = 0; s < 2; ++s) {
        draft[s].push_back(argmax(next[s].data(), V));
        for (std::int64_t k = 1; k < draft_len; ++k) draft[s].push_back((draft[s].back() * 31 + 7 + step) % V);
        lg[s].resize(static_cast<std::size_t>(draft_len * V));
        e.push_back({draft[s], &seq[s], tensor_view(lg[s].data(), dtype::f32, {draft_len, V}), {}});
      }
      tf.forward_batch(e);
      // 3-4. Greedy acceptance and rollback.
      for (int s = 0; s < 2; ++s) {
        const std::int64_t p0 = seq[s].pos() - draft_len;
        std::int64_t ok = 1;  // the first draft token is the argmax of the previous logits: accepted
        while (ok < draft_len && argmax(lg[s].data() + (ok - 1) * V, V) == draft[s][static_cast<std::size_t>(ok)]) ++ok;
        drafted += static_cast<int>(draft_len);
        kept += static_cast<int>(ok);
        seq[s].truncate(p0 + ok);
        for (std::int64_t k = 0; k < ok; ++k) text[s].push_back(draft[s][static_cast<std::size_t>(k)]);
        accepted_logits[s].insert(accepted_logits[s].end(), lg[s].begin(), lg[s].begin() + ok * V);
        next[s].assign(lg[s].begin() + (ok - 1) * V, lg[s].begin() + ok * V);
      }
    }
    std::printf("%d speculative steps for 2 sequences: %d draft tokens, %d accepted (%.0f%%); lengths %zu and %zu\n",
                steps, drafted, kept, 100.0 * kept / drafted, text[0].size(), text[1].size());

    // An engine kernel's view: the KV entry of sequence 0's last position in layer 0, found through its block table.
    const auto& table = pool->table(seq[0].id(), 0, page_pool::region::window);
    const std::int64_t pos = seq[0].pos() - 1;
    std::int32_t slot = static_cast<std::int32_t>(cache::slot_of(table.data(), pos, po.page_tokens));
    std::vector<float> entry(static_cast<std::size_t>(cfg.head_dim));
    ops::kv_load(pool->kv_view(0), tensor_view(&slot, dtype::i32, {1}),
                 tensor_view(entry.data(), dtype::f32, {1, cfg.head_dim}));
    std::printf("layer 0, sequence 0, position %lld: page %d, slot %d of %lld-byte pages (%lld B per entry); "
                "kv[0..3] = %.4f %.4f %.4f %.4f\n",
                (long long)pos, table[static_cast<std::size_t>(pos / po.page_tokens)], slot,
                (long long)pool->kv_view(0).geo.page_bytes(), (long long)pool->kv_view(0).geo.entry_bytes(), entry[0],
                entry[1], entry[2], entry[3]);

    // Replay: a fresh sequence fed the accepted text one token at a time gives bitwise the same logits.
    int mismatches = 0;
    for (int s = 0; s < 2; ++s) {
      sequence_state r = tf.new_sequence(pool, 4096);
      const std::int64_t prompt = s == 0 ? 37 : 9, n = static_cast<std::int64_t>(text[s].size());
      tf.forward(std::span<const std::int64_t>(text[s].data(), static_cast<std::size_t>(prompt)), r, {});
      std::vector<float> l(static_cast<std::size_t>(V));
      for (std::int64_t t = prompt; t < n; ++t) {
        tf.forward(std::span<const std::int64_t>(text[s].data() + t, 1), r, tensor_view(l.data(), dtype::f32, {1, V}));
        mismatches += std::memcmp(l.data(), accepted_logits[s].data() + (t - prompt) * V, sizeof(float) * V) != 0;
      }
    }
    std::printf("replay of the accepted text token by token: %d of %zu positions differ (bitwise)\n", mismatches,
                accepted_logits[0].size() / V + accepted_logits[1].size() / V);
    std::printf("pool: %lld pages in use, %.1f KB allocated\n", (long long)pool->pages_in_use(),
                double(pool->allocated_bytes()) / 1e3);
    return mismatches == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "example_speculative: %s\n", e.what());
    return 1;
  }
}
