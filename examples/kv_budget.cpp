// kv_budget: how many tokens of context fit in a memory budget, per model and cache layout.
//
//   example_kv_budget [GB ...]      (default: 8 16 40 80 GB; GB = 10^9 bytes)
//
// For each budget, model (V3.2, V4-Pro, V4-Flash, plus a BF16 GQA8 cache with V4-Pro's 61 layers) and layout
// (deployed FP8/BF16/FP4 or all BF16), the largest context L whose accumulated KV cache (dsv4::model::decode_costs:
// window rings, compressed entries, indexer keys, compressor state) fits, found by bisection (the cache only
// grows with L).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "dsv4/model/config.hpp"
#include "dsv4/model/costs.hpp"

using namespace dsv4::model;

namespace {

// Largest L in [0, 2^34] with bytes(L) <= budget.
template <class F>
long long fit(double budget, F&& bytes) {
  long long lo = 0, hi = 1LL << 34;
  if (bytes(1) > budget) return 0;
  while (lo < hi) {
    const long long mid = lo + (hi - lo + 1) / 2;
    if (bytes(mid) <= budget) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

std::string tokens(long long n) {
  char b[32];
  if (n >= 1'000'000) std::snprintf(b, sizeof b, "%.2fM", double(n) / 1e6);
  else if (n >= 10'000) std::snprintf(b, sizeof b, "%.0fK", double(n) / 1e3);
  else std::snprintf(b, sizeof b, "%lld", n);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<double> budgets;
  for (int i = 1; i < argc; ++i) budgets.push_back(std::atof(argv[i]));
  if (budgets.empty()) budgets = {8, 16, 40, 80};

  std::printf("Tokens of context whose KV cache fits in a budget (one sequence; GB = 1e9 bytes)\n\n");
  std::printf("%8s  %-24s %12s %12s\n", "budget", "model", "deployed", "all BF16");
  for (double gb : budgets) {
    const double budget = gb * 1e9;
    for (const char* name : {"v3.2", "v4-pro", "v4-flash"}) {
      const model_config c = preset(name);
      long long n[2];
      for (int l = 0; l < 2; ++l) {
        cost_assumptions a;
        a.layout = l == 0 ? kv_layout::deployed : kv_layout::bf16;
        n[l] = fit(budget, [&](long long L) { return decode_costs(c, L, a).kv_total(); });
      }
      // '*': more than the model's max_position_embeddings (the cache would fit, the model cannot use it).
      auto cell = [&](long long v) { return tokens(v) + (v > c.max_position_embeddings ? "*" : " "); };
      std::printf("%6.0f GB  %-24s %12s %12s\n", gb, name, cell(n[0]).c_str(), cell(n[1]).c_str());
    }
    const long long g = fit(budget, [](long long L) { return gqa_kv_bytes(61, L); });
    std::printf("%6.0f GB  %-24s %12s %12s\n\n", gb, "GQA8 BF16, 61 layers", "- ", (tokens(g) + " ").c_str());
  }
  std::printf("* beyond the model's position limit (V4: 1,048,576; V3.2: 163,840).\n"
              "Deployed: V4 entries 448 FP8 + 64 BF16 + 7 E8M0 (+1 pad) = 584 B, indexer keys 68 B (FP4);\n"
              "V3.2 656 B latent + 132 B indexer key per token per layer. See include/dsv4/model/costs.hpp.\n");
  return 0;
}
