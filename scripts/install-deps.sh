#!/usr/bin/env bash
# Installs the Debian packages dsv4 builds with (skips apt when they are all present). CUDA comes from the toolkit
# already on the machine (/usr/local/cuda); without it the CUDA backend is simply not built.
set -euo pipefail
pkgs=(cmake ninja-build g++ libeigen3-dev libxsimd-dev libtbb-dev libbenchmark-dev doctest-dev libdlpack-dev
      nlohmann-json3-dev
      clang libfuzzer-14-dev libclang-rt-14-dev      # the fuzz preset (scripts/fuzz.sh)
      pkg-config pybind11-dev python3-dev python3-numpy python3-pytest python3-torch)  # the C ABI and Python tests
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
