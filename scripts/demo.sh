#!/usr/bin/env bash
# The main job on a fresh machine: install the packages, build (Release), run the dsv4 tool's demo, then write a
# small random model in the official checkpoint format, describe it, and run a real forward pass through it: a
# 300-token prompt (enough for compressed entries and a selective indexer) and two decode steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
./build/release/dsv4 demo
./build/release/dsv4 synth --preset small --seed 1 --out build/models/small --force
./build/release/dsv4 info --model build/models/small
./build/release/dsv4 run --model build/models/small --prompt "$(seq -s, 1 300)" --decode 7,8 --chunk 64 \
  --logits build/models/small/logits.npy --top 5
