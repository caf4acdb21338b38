#!/usr/bin/env bash
# Fuzzes the two parsers of untrusted files (safetensors headers, config.json) with libFuzzer under ASan + UBSan for
# FUZZ_SECONDS each (default 60), starting from a seed corpus, then replays every reproducer in
# tests/fuzz/regressions/. Skipped (exit 0, with a note) when clang++ or libFuzzer is missing; scripts/install-deps.sh
# installs both. A crash leaves its input in build/fuzz/artifacts/: add it to tests/fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
if ! command -v clang++ >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
     >/dev/null 2>&1; then
  echo "=== fuzz: skipped (clang++ and libFuzzer not installed: apt-get install clang libfuzzer-14-dev)" >&2
  exit 0
fi
echo "=== fuzz ($seconds s per target)" >&2
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
out=build/fuzz
rm -rf "$out/corpus" "$out/artifacts"
mkdir -p "$out/corpus/safetensors" "$out/corpus/config" "$out/artifacts"

# Seeds. safetensors: small valid files in the reference layout (u64 length, header padded with spaces to 8, data).
seed_st() {  # seed_st NAME HEADER_JSON DATA_BYTES
  local h="$2" len
  while [ $(((8 + ${#h}) % 8)) -ne 0 ]; do h="$h "; done
  len=${#h}
  {
    printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((len & 255)) $(((len >> 8) & 255)) \
      $(((len >> 16) & 255)) $(((len >> 24) & 255)))"
    printf '%s' "$h"
    head -c "$3" /dev/urandom
  } >"$out/corpus/safetensors/$1"
}
seed_st one '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' 8
seed_st meta '{"__metadata__":{"format":"pt"},"w":{"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[8,14]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}' 14
seed_st v4 '{"layers.0.attn.wq_a.weight":{"dtype":"F8_E4M3","shape":[4,4],"data_offsets":[8,24]},"layers.0.attn.wq_a.scale":{"dtype":"F8_E8M0","shape":[1,1],"data_offsets":[24,25]},"layers.0.ffn.gate.tid2eid":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]},"layers.0.ffn.experts.0.w1.weight":{"dtype":"I8","shape":[2,16],"data_offsets":[25,57]}}' 57
seed_st empty '{"e":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},"s":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}' 4
# config: the official V4-Flash / V4-Pro files and the inference-code spelling.
cp tests/data/v4-flash.config.json tests/data/v4-pro.config.json "$out/corpus/config/"
cat >"$out/corpus/config/inference.json" <<'JSON'
{"vocab_size": 512, "dim": 64, "n_layers": 2, "n_mtp_layers": 0, "n_heads": 2, "head_dim": 96, "rope_head_dim": 32,
 "q_lora_rank": 64, "o_lora_rank": 32, "o_groups": 2, "window_size": 16, "compress_ratios": [4, 128],
 "index_n_heads": 2, "index_head_dim": 64, "index_topk": 4, "n_routed_experts": 8, "n_activated_experts": 2,
 "moe_inter_dim": 64, "n_hash_layers": 1, "score_func": "sqrtsoftplus", "scale_fmt": "ue8m0"}
JSON

opts=(-rss_limit_mb=4096 -timeout=10 -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$out/artifacts/")
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
"$out/tests/fuzz/fuzz_safetensors" "${opts[@]}" -max_len=4096 -dict=tests/fuzz/safetensors.dict \
  "$out/corpus/safetensors" 2>"$out/fuzz_safetensors.log" || { tail -40 "$out/fuzz_safetensors.log" >&2; exit 1; }
grep -E "stat::number_of_executed_units|cov:" "$out/fuzz_safetensors.log" | tail -2 >&2
"$out/tests/fuzz/fuzz_config" "${opts[@]}" -max_len=8192 -dict=tests/fuzz/config.dict \
  "$out/corpus/config" 2>"$out/fuzz_config.log" || { tail -40 "$out/fuzz_config.log" >&2; exit 1; }
grep -E "stat::number_of_executed_units|cov:" "$out/fuzz_config.log" | tail -2 >&2

# Every reproducer found so far, replayed (libFuzzer runs each file once when given files).
for target in safetensors config; do
  files=(tests/fuzz/regressions/$target/*)
  if [ -e "${files[0]}" ]; then
    "$out/tests/fuzz/fuzz_$target" "${files[@]}" 2>"$out/regress_$target.log" || {
      tail -40 "$out/regress_$target.log" >&2
      exit 1
    }
    echo "fuzz_$target: ${#files[@]} regression inputs replayed" >&2
  fi
done
