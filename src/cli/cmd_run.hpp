// `dsv4 run`: the reference forward pass from the command line (see cmd_run.cpp).
#pragma once

namespace dsv4::cli {
// dsv4 run --model DIR --prompt 5,17,301 [--decode 9,44] [--chunk N] [--backend ref|cpu] [--threads N]
//          [--logits OUT.npy] [--top K]
int cmd_run(int argc, char** argv);
}  // namespace dsv4::cli
