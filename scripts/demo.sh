#!/usr/bin/env bash
# The main job on a fresh machine: install the packages, build (Release), run the dsv4 tool's demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
./build/release/dsv4 demo
