// Subcommands of the dsv4 tool that work on model directories (see cmd_model.cpp).
#pragma once

namespace dsv4::cli {
int cmd_synth(int argc, char** argv);  // dsv4 synth --preset NAME --seed S --out DIR [--sparse] [--shards N]
int cmd_info(int argc, char** argv);   // dsv4 info --model DIR | --preset NAME
}  // namespace dsv4::cli
