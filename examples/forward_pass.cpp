// forward_pass: the teaching trace of a prompt going through DeepSeek-V4.
//
//   example_forward_pass MODEL_DIR [TOKENS]     e.g. after `dsv4 synth --preset small --out /tmp/small`:
//   example_forward_pass /tmp/small             (default prompt: 300 tokens 1, 2, ..., 300)
//
// Loads the checkpoint (HF config.json + safetensors, official names), prints the layer schedule, runs the prompt
// through the reference forward pass (dsv4/model/forward.hpp) and prints, per layer, what each block did: the
// attention type, the compressed entries and indexer keys it emitted for this prompt, what the last token attended
// (window rows, compressed entries, and for CSA the entries the lightning indexer picked), how its MoE routed the
// last token (hash table or scores; experts and weights), and the time spent per sub-block. Then the top next tokens.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"

using namespace dsv4;
using namespace dsv4::model;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL_DIR [N_TOKENS]\n", argv[0]);
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const std::int64_t n = argc > 2 ? std::atoll(argv[2]) : 300;
    const model_config cfg = load_config(dir);
    const io::checkpoint ck = io::checkpoint::open(dir);
    const model_weights w = bind_weights(ck, cfg);
    const transformer tf(cfg, w);

    std::printf("%s: %lld layers, hidden %lld, %lld heads x %lld, window %lld, %lld experts (top-%lld), %lld mHC "
                "streams\n",
                dir.c_str(), (long long)cfg.n_layers, (long long)cfg.dim, (long long)cfg.n_heads,
                (long long)cfg.head_dim, (long long)cfg.window_size, (long long)cfg.n_routed_experts,
                (long long)cfg.n_activated_experts, (long long)cfg.hc_mult);
    std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = (i + 1) % cfg.vocab_size;

    sequence_state seq = tf.new_sequence(n);
    std::vector<float> logits(static_cast<std::size_t>(n * cfg.vocab_size));
    forward_trace tr;
    tf.forward(ids, seq, tensor_view(logits.data(), dtype::f32, {n, cfg.vocab_size}), &tr);

    std::printf("\n%lld tokens in one prefill. Per layer, for this prompt and its last token (position %lld):\n",
                (long long)n, (long long)n - 1);
    for (std::size_t l = 0; l < tr.layers.size(); ++l) {
      const layer_trace& t = tr.layers[l];
      const int r = cfg.compress_ratio(static_cast<std::int64_t>(l));
      std::printf("layer %zu  %s", l, attn_kind_name(cfg.kind(static_cast<std::int64_t>(l))));
      if (r) std::printf(" (ratio %d)", r);
      std::printf(": emitted %lld compressed entries", (long long)t.attn.emitted);
      if (r == 4) std::printf(" + %lld indexer keys", (long long)t.attn.emitted_index);
      std::printf("; last token attends %lld window rows + %lld compressed", (long long)t.attn.last_window,
                  (long long)t.attn.last_compressed);
      if (r == 4) {
        std::printf(" (indexer picks:");
        for (std::int32_t e : t.attn.last_picks) std::printf(" %d", e);
        std::printf(")");
      }
      std::printf("\n          MoE %s: experts", t.hash_routed ? "hash-routed (tid2eid)" : "score-routed");
      for (std::size_t i = 0; i < t.last_experts.size(); ++i)
        std::printf(" %d(%.3f)", t.last_experts[i], t.last_weights[i]);
      std::printf("  [attention %.1f ms, MoE %.1f ms, mHC+norms %.1f ms]\n", 1e3 * t.attn_s, 1e3 * t.moe_s,
                  1e3 * t.mhc_s);
    }
    std::printf("caches hold %.1f KB for this sequence\n", double(seq.cache_bytes()) / 1e3);

    const float* last = logits.data() + (n - 1) * cfg.vocab_size;
    std::vector<std::int64_t> order(static_cast<std::size_t>(cfg.vocab_size));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                      [&](std::int64_t a, std::int64_t b) { return last[a] > last[b] || (last[a] == last[b] && a < b); });
    std::printf("top next tokens:");
    for (int i = 0; i < 5; ++i) std::printf(" %lld (%.3f)", (long long)order[static_cast<std::size_t>(i)], last[order[static_cast<std::size_t>(i)]]);
    std::printf("\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "forward_pass: %s\n", e.what());
    return 1;
  }
}
