#!/usr/bin/env bash
# The main job on a fresh machine: install the packages, build (Release), run the dsv4 tool's demo, then write a
# small random model in the official checkpoint format and describe it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
./build/release/dsv4 demo
./build/release/dsv4 synth --preset small --seed 1 --out build/models/small
./build/release/dsv4 info --model build/models/small
