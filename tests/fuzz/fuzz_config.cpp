// libFuzzer harness: config.json text through parse_config (both spellings, validation). An accepted config then
// drives what is computed from it before any weight is read: each layer's kind and RoPE/YaRN table, the KV-cache and
// FLOPs calculator, the parameter count and the HF serialization (which must parse back to the same config).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dsv4/error.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/costs.hpp"
#include "dsv4/model/rope.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dsv4::model;
  model_config c;
  try {
    c = parse_config(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
  } catch (const dsv4::error&) {
    return 0;
  }
  if (c.family != model_family::v4) return 0;
  for (std::int64_t l = 0; l < c.n_layers + c.n_mtp_layers; ++l) {
    (void)c.kind(l);
    (void)rope_table::for_layer(c, l);
  }
  (void)decode_costs(c, 1 << 20);
  (void)count_params(c);
  (void)kv_entry_bytes(c, kv_layout::deployed);
  const model_config back = parse_config(to_hf_json(c), c.name);
  if (back.dim != c.dim || back.compress_ratios != c.compress_ratios) __builtin_trap();
  return 0;
}
