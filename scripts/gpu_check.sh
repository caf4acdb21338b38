#!/usr/bin/env bash
# The device run of the CUDA backend (engine-interface.md §c.5), for a machine with a GPU and little time on it:
# build here first (`cmake --build --preset release`, same CUDA toolkit), carry build/release over, then run this.
# It writes everything under $OUT (default ./gpu_out) and never stops at a failure, so one run gives every number:
#   1. nvidia-smi;
#   2. the CUDA tests (dsv4_cuda_tests: every CUDA op against ref, graph capture, streams, device checks);
#   3. compute-sanitizer memcheck and racecheck on the tests minus the three large sweeps (all 2^32 floats,
#      65,600 and 70,000 rows) and the two whole-model cases (thousands of eager steps), which the sanitizer
#      would make too slow;
#   4. `dsv4 run --backend cuda` on the small preset next to `--backend cpu` (top-5 tokens of the last position), and
#      a short GPU run under memcheck;
#   5. bench_cuda as JSON (and its table).
# summary.txt has one line per step with its exit code.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
B=${BUILD:-build/release}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
step() {  # step NAME SECONDS COMMAND...: runs with a time limit, logs to $OUT/NAME.txt, records the exit code
  local name=$1 secs=$2
  shift 2
  timeout "$secs" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/summary.txt"
}
step nvidia-smi 30 nvidia-smi
step cuda_tests 240 "$B/tests/dsv4_cuda_tests" --no-intro
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
SMALL=(--no-intro "--test-case-exclude=*2^32*,*70,000*,*65,535*,*whole forward pass*,*whole decode step*")
step memcheck 300 "$CS" --tool memcheck --error-exitcode 9 "$B/tests/dsv4_cuda_tests" "${SMALL[@]}"
step racecheck 300 "$CS" --tool racecheck --error-exitcode 9 "$B/tests/dsv4_cuda_tests" "${SMALL[@]}"
D="$B/dsv4"
[ -x "$D" ] || D=$(find "$B" -maxdepth 2 -name dsv4 -type f -perm -u+x | head -1)
step synth_small 60 "$D" synth --preset small --seed 4 --out "$OUT/small_model"
for be in cpu cuda; do
  step "run_$be" 120 "$D" run --model "$OUT/small_model" --prompt 5,17,301,9,44,2,600,7,8,1000 --decode 3,4,5 --top 5 \
    --backend "$be"
done
# the whole GPU forward pass under memcheck, on a short run of the small model (the test cases above are too long)
step memcheck_run 240 "$CS" --tool memcheck --error-exitcode 9 "$D" run --model "$OUT/small_model" \
  --prompt 5,17,301,9,44,2,600,7 --decode 3,4 --top 3 --backend cuda
rm -rf "$OUT/small_model"
step bench_cuda 300 "$B/bench/bench_cuda" --benchmark_format=console --benchmark_out="$OUT/bench_cuda.json" \
  --benchmark_out_format=json
