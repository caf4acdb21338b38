#!/usr/bin/env bash
# dsv4 run --batch: every sequence's .npy equals, byte for byte, `dsv4 run` on that sequence alone (same --chunk,
# same --kv, same --numerics), for sequences of different lengths, with and without decode tokens, advancing together; bad lines give
# a one-line error naming the line.
#   usage: cli_batch.sh DSV4_BINARY WORK_DIR
set -eu
D="$1"
W="$2"
rm -rf "$W"
mkdir -p "$W"
"$D" synth --preset tiny --seed 6 --out "$W/m" >/dev/null
long=$(seq -s, 1 140)
printf '5,17,301|9,44\n%s|12,13,14\n400\n7,7,7,7|1,2,3,4,5,6,7,8\n' "$long" >"$W/batch.txt"
# Both page formats under the fp32 policy, and the official numerics policy (f32 pages): same bytes batched or alone.
for mode in f32 fp8_ds_mla official; do
  kv=$mode
  nm=fp32
  if [ "$mode" = official ]; then kv=f32; nm=official; fi
  "$D" run --model "$W/m" --batch "$W/batch.txt" --logits-dir "$W/out_$mode" --chunk 16 --kv "$kv" --numerics "$nm" \
    >"$W/log_$mode"
  grep -q "4 sequences, 161 tokens in .*numerics $nm" "$W/log_$mode"
  i=0
  while IFS= read -r line; do
    prompt="${line%%|*}"
    args=(--prompt "$prompt")
    if [ "$prompt" != "$line" ]; then args+=(--decode "${line#*|}"); fi
    "$D" run --model "$W/m" "${args[@]}" --chunk 16 --kv "$kv" --numerics "$nm" --logits "$W/alone_$i.npy" >/dev/null
    cmp "$W/alone_$i.npy" "$W/out_$mode/seq$i.npy"
    i=$((i + 1))
  done <"$W/batch.txt"
  [ "$i" -eq 4 ]
done
# The policies differ: same shape, different bytes.
! cmp -s "$W/out_f32/seq1.npy" "$W/out_official/seq1.npy"
# Under official the fp8_ds_mla pages hold the KV entries exactly: the same bytes as f32 pages.
"$D" run --model "$W/m" --prompt "$long" --chunk 16 --kv fp8_ds_mla --numerics official --logits "$W/o8.npy" >/dev/null
"$D" run --model "$W/m" --prompt "$long" --chunk 16 --kv f32 --numerics official --logits "$W/o32.npy" >/dev/null
cmp "$W/o8.npy" "$W/o32.npy"
# --resident (the weights copied into memory of their own): the same bytes as reading them from the mapping.
"$D" run --model "$W/m" --prompt "$long" --chunk 16 --resident --logits "$W/res.npy" >/dev/null
"$D" run --model "$W/m" --prompt "$long" --chunk 16 --logits "$W/map.npy" >/dev/null
cmp "$W/res.npy" "$W/map.npy"
# ... and is refused with the GPU backend, before the model is read or a device is looked for.
! "$D" run --model "$W/m" --prompt 1,2 --backend cuda --resident 2>"$W/err"
grep -q -- "--resident is for the CPU backends" "$W/err"
! "$D" run --model "$W/m" --prompt 1,2 --numerics bf16 2>"$W/err"
grep -q 'unknown numerics policy "bf16" (expected fp32 or official)' "$W/err"
# The two layouts differ (BF16 rope dims in fp8_ds_mla) but only slightly: same shape, different bytes.
! cmp -s "$W/out_f32/seq1.npy" "$W/out_fp8_ds_mla/seq1.npy"
printf '1,2\n\n3\n' >"$W/bad.txt"
! "$D" run --model "$W/m" --batch "$W/bad.txt" 2>"$W/err"
grep -q "bad.txt line 2 is empty" "$W/err"
printf '1,2|3|4\n' >"$W/bad.txt"
! "$D" run --model "$W/m" --batch "$W/bad.txt" 2>"$W/err"
grep -q "line 1 has more than one '|'" "$W/err"
printf '1,2\n3,600\n' >"$W/bad.txt"
! "$D" run --model "$W/m" --batch "$W/bad.txt" 2>"$W/err"
grep -q "sequence 1 (line 2): --prompt token 600 at index 1 is outside the vocabulary" "$W/err"
[ "$(wc -l <"$W/err")" -eq 1 ]
echo "cli_batch: ok"
