#!/usr/bin/env bash
# Hostile input against the dsv4 tool, by class (issue: "hostile input never crashes, hangs or eats memory"):
# configs with absurd, mistyped or malformed values, special files where model files belong, oversized files, bad
# options, shell metacharacters in paths, control characters in tensor names, stale directories. Each case must end
# with the expected exit status within its time limit, an error must be exactly one line on stderr naming the
# problem, and nothing may look like a crash or a sanitizer report. Run by ctest in the Release and the ASan+UBSan
# builds.
#   usage: hostile_cli.sh DSV4_BINARY WORK_DIR
set -u
D="$1"
W="$2"
rm -rf "$W"
mkdir -p "$W"
fails=0
n=0

# expect STATUS NEEDLE -- command...   (NEEDLE: a fixed string that stderr, or stdout for status 0, must contain)
expect() {
  local want="$1" needle="$2"
  shift 3
  n=$((n + 1))
  timeout 60 "$@" >"$W/out" 2>"$W/err"
  local got=$?
  local why=""
  if [ "$got" -eq 124 ]; then why="hung (no exit within 60 s)"
  elif [ "$got" -ne "$want" ]; then why="exit $got, expected $want"
  elif grep -qE 'AddressSanitizer|runtime error|Segmentation|terminate called|Aborted' "$W/err"; then why="crash report"
  elif [ "$want" -ne 0 ] && [ "$(wc -l <"$W/err")" -ne 1 ]; then why="error is $(wc -l <"$W/err") lines, not 1"
  elif [ "$want" -ne 0 ] && ! grep -qF -- "$needle" "$W/err"; then why="stderr lacks \"$needle\""
  elif [ "$want" -eq 0 ] && ! grep -qF -- "$needle" "$W/out"; then why="stdout lacks \"$needle\""
  elif grep -qF "[$(cd "$(dirname "$0")/.." && pwd)/" "$W/err"; then why="message carries the absolute source path"
  fi
  if [ -n "$why" ]; then
    fails=$((fails + 1))
    echo "FAIL [$*]: $why" >&2
    head -c 600 "$W/err" >&2
    echo >&2
  fi
}

# A tiny model, and copies of it with one config field replaced.
"$D" synth --preset tiny --seed 3 --out "$W/base" >/dev/null || { echo "synth failed" >&2; exit 1; }
variant() {  # variant NAME SED_EXPRESSION: W/NAME = base with config.json edited
  rm -rf "${W:?}/$1"
  cp -r "$W/base" "$W/$1"
  sed -i "$2" "$W/$1/config.json"
}
set_field() { variant "$1" "s/\"$2\": [^,]*,/\"$2\": $3,/"; }

# ---- sizes from the config: refused by name, never allocated -------------------------------------------------
set_field win57 sliding_window 144115188075855872
expect 1 "sliding_window" -- "$D" run --model "$W/win57" --prompt 1,2,3
set_field topk index_topk 1000000000000
expect 1 "index_topk" -- "$D" run --model "$W/topk" --prompt 1,2,3
set_field experts n_routed_experts 100000000
expect 1 "n_routed_experts" -- "$D" info --model "$W/experts"
set_field experts2 n_routed_experts 60000
expect 1 "routed experts need at least" -- "$D" run --model "$W/experts2" --prompt 1
set_field layers num_hidden_layers 200000
expect 1 "num_hidden_layers" -- "$D" info --model "$W/layers"
set_field heads num_attention_heads 4611686018427387904
expect 1 "num_attention_heads" -- "$D" info --model "$W/heads"
# A window of 1M positions on a 3-token run: accepted, sized by the run.
variant bigwin 's/"sliding_window": [^,]*,/"sliding_window": 1048576,/; s/"max_position_embeddings": [^,]*,/"max_position_embeddings": 2097152,/'
expect 0 "top 2 next tokens" -- "$D" run --model "$W/bigwin" --prompt 1,2,3 --top 2

# ---- the config JSON path ------------------------------------------------------------------------------------
set_field tie tie_word_embeddings '"x"'
expect 1 '"tie_word_embeddings" must be true or false' -- "$D" info --model "$W/tie"
set_field norm norm_topk_prob '"fp2"'
expect 1 '"norm_topk_prob" must be true or false' -- "$D" info --model "$W/norm"
variant orig 's/"original_max_position_embeddings": [^,]*,/"original_max_position_embeddings": 1e300,/'
expect 1 "original_max_position_embeddings" -- "$D" info --model "$W/orig"
set_field theta compress_rope_theta 1
expect 1 "compress_rope_theta" -- "$D" info --model "$W/theta"
variant beta 's/"beta_fast": [^,]*,/"beta_fast": 1e308,/'
expect 1 "beta_fast" -- "$D" info --model "$W/beta"
set_field iters hc_sinkhorn_iters 4294967297
expect 1 "hc_sinkhorn_iters" -- "$D" info --model "$W/iters"
set_field half hc_sinkhorn_iters 20.5
expect 1 '"hc_sinkhorn_iters" must be an integer' -- "$D" info --model "$W/half"
set_field strlayers num_hidden_layers '"4"'
expect 1 '"num_hidden_layers" must be an integer' -- "$D" info --model "$W/strlayers"
variant dupkey 's/"hc_mult": 4,/"hc_mult": 4, "hc_mult": 8,/'
expect 1 'appears twice' -- "$D" info --model "$W/dupkey"
rm -rf "$W/deep" && cp -r "$W/base" "$W/deep"
{ printf '{"x": '; head -c 100000 /dev/zero | tr '\0' '['; head -c 100000 /dev/zero | tr '\0' ']'; printf '}'; } \
  >"$W/deep/config.json"
expect 1 "nests deeper" -- "$D" info --model "$W/deep"
rm -rf "$W/nul" && cp -r "$W/base" "$W/nul"
{ cat "$W/base/config.json"; printf '\0{"garbage": '; } >"$W/nul/config.json"
expect 1 "NUL byte" -- "$D" info --model "$W/nul"
rm -rf "$W/huge" && cp -r "$W/base" "$W/huge"
{ printf '{"pad": "'; head -c 2000000 /dev/zero | tr '\0' 'a'; printf '"}'; } >"$W/huge/config.json"
expect 1 "more than the limit" -- "$D" info --model "$W/huge"

# ---- special files: refused before any blocking open ---------------------------------------------------------
rm -rf "$W/fifo_cfg" && cp -r "$W/base" "$W/fifo_cfg" && rm "$W/fifo_cfg/config.json" && mkfifo "$W/fifo_cfg/config.json"
expect 1 "a FIFO" -- "$D" info --model "$W/fifo_cfg"
rm -rf "$W/fifo_shard" && cp -r "$W/base" "$W/fifo_shard"
rm "$W/fifo_shard/model-00001-of-00001.safetensors" && mkfifo "$W/fifo_shard/model-00001-of-00001.safetensors"
expect 1 "a FIFO" -- "$D" info --model "$W/fifo_shard"
rm -rf "$W/fifo_index" && cp -r "$W/base" "$W/fifo_index"
rm "$W/fifo_index/model.safetensors.index.json" && mkfifo "$W/fifo_index/model.safetensors.index.json"
expect 1 "a FIFO" -- "$D" info --model "$W/fifo_index"
rm -rf "$W/fifo_single" && mkdir "$W/fifo_single" && cp "$W/base/config.json" "$W/fifo_single/"
mkfifo "$W/fifo_single/model.safetensors"
expect 1 "a FIFO" -- "$D" info --model "$W/fifo_single"
rm -rf "$W/zero" && cp -r "$W/base" "$W/zero"
rm "$W/zero/model.safetensors.index.json" && ln -s /dev/zero "$W/zero/model.safetensors.index.json"
expect 1 "a character device" -- "$D" info --model "$W/zero"
rm -rf "$W/zerocfg" && cp -r "$W/base" "$W/zerocfg" && rm "$W/zerocfg/config.json"
ln -s /dev/zero "$W/zerocfg/config.json"
expect 1 "a character device" -- "$D" info --model "$W/zerocfg"

# ---- tensor names with control characters are escaped ------------------------------------------------------------
rm -rf "$W/ctrl" && cp -r "$W/base" "$W/ctrl"
sed -i 's/"embed.weight"/"embed\\u001b[31m.weight"/' "$W/ctrl/model.safetensors.index.json"
expect 1 'embed\x1b[31m.weight' -- "$D" info --model "$W/ctrl"
if grep -q $'\x1b' "$W/err"; then fails=$((fails + 1)); echo "FAIL: raw ESC byte in the message" >&2; fi

# ---- options -------------------------------------------------------------------------------------------------
expect 1 "--threads 10000000 is outside" -- "$D" run --model "$W/base" --prompt 1 --threads 10000000
expect 1 "--threads -2 is outside" -- "$D" run --model "$W/base" --prompt 1 --threads -2
expect 1 "--chunk 0 is outside" -- "$D" run --model "$W/base" --prompt 1 --chunk 0
expect 1 "--top -1 is outside" -- "$D" run --model "$W/base" --prompt 1 --top -1
expect 1 "--shards -1 is outside" -- "$D" synth --preset tiny --out "$W/s1" --shards -1
expect 1 "--shard-mb -5 is outside" -- "$D" synth --preset tiny --out "$W/s2" --shard-mb -5
expect 1 "expects an integer" -- "$D" run --model "$W/base" --prompt 1 --threads 2x
expect 1 "is not a token id" -- "$D" run --model "$W/base" --prompt 1,,2
expect 1 "is not a token id" -- "$D" run --model "$W/base" --prompt 99999999999999999999999
for c in demo backends synth info run report version; do expect 0 "usage: dsv4 $c" -- "$D" "$c" --help; done
expect 0 "usage: dsv4 <command>" -- "$D" --help
# An unwritable --logits fails before the model is read.
expect 1 "cannot write --logits" -- "$D" run --model "$W/base" --prompt 1 --logits "$W/no/such/dir/l.npy"
mkfifo "$W/logits.fifo"
expect 1 "cannot write --logits" -- "$D" run --model "$W/base" --prompt 1 --logits "$W/logits.fifo"

# The --batch file: special files, control characters, a missing '|' side.
mkfifo "$W/batch.fifo"
expect 1 "a FIFO" -- "$D" run --model "$W/base" --batch "$W/batch.fifo"
printf '1,2\n3,\033[31m\n' >"$W/batch.esc"
expect 1 '"\x1b[31m" is not a token id' -- "$D" run --model "$W/base" --batch "$W/batch.esc"
if grep -q $'\x1b' "$W/err"; then fails=$((fails + 1)); echo "FAIL: raw ESC byte in the message" >&2; fi
printf '1,2|\n' >"$W/batch.empty"
expect 1 "line 1: --decode is empty" -- "$D" run --model "$W/base" --batch "$W/batch.empty"
expect 1 "give --prompt IDS (one sequence) or --batch FILE" -- "$D" run --model "$W/base" --batch "$W/batch.empty" --prompt 1

# ---- report --plot: no shell sees the directory; write failures are reported ------------------------------------
PLOT="$W/plot dir'; touch $W/pwned; echo '"
expect 0 "report.dat" -- "$D" report --plot "$PLOT"
if [ -e "$W/pwned" ] || [ ! -s "$PLOT/kv_cache.svg" ]; then fails=$((fails + 1)); echo "FAIL: --plot path" >&2; fi
touch "$W/plainfile"
expect 1 "cannot create" -- "$D" report --plot "$W/plainfile/sub"

# ---- synth into a directory that holds a checkpoint -------------------------------------------------------------
"$D" synth --preset tiny --out "$W/stale" --shards 3 >/dev/null
expect 1 "already holds a checkpoint" -- "$D" synth --preset tiny --out "$W/stale"
expect 0 "1 shard" -- "$D" synth --preset tiny --out "$W/stale" --force --shards 1
if [ "$(ls "$W/stale" | grep -c safetensors$)" -ne 1 ]; then fails=$((fails + 1)); echo "FAIL: stale shards" >&2; fi
expect 0 "every tensor present" -- "$D" info --model "$W/stale"

echo "hostile_cli: $n cases, $fails failed"
[ "$fails" -eq 0 ]
