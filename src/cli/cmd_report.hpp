// `dsv4 report`: the FLOPs / KV-cache comparison with the V4 paper's figures (see cmd_report.cpp).
#pragma once

namespace dsv4::cli {
int cmd_report(int argc, char** argv);  // dsv4 report [--context N] [--json] [--plot DIR] [--layout deployed|bf16]
}  // namespace dsv4::cli
