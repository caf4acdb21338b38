// Untrusted files: non-blocking regular-file opens, capped reads, and the registry behind the SIGBUS handler.
#include "dsv4/io/file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "dsv4/error.hpp"

namespace dsv4::io {

namespace {

std::string sys_error(const char* what, const std::filesystem::path& p) {
  return detail::concat(detail::printable(p.string(), 400), ": ", what, " failed: ", std::strerror(errno));
}

const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

}  // namespace

regular_file::regular_file(const std::filesystem::path& p, const char* op) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. It has no effect on the
  // reads of a regular file, the only kind accepted below.
  fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  DSV4_CHECK(fd >= 0, op, sys_error("open", p));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string msg = sys_error("stat", p);
    ::close(fd);
    DSV4_FAIL(op, msg);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    DSV4_FAIL(op, detail::printable(p.string(), 400), ": ", file_kind(st.st_mode),
              ", expected a regular file");
  }
  size = static_cast<std::uint64_t>(st.st_size);
}

regular_file::~regular_file() {
  if (fd >= 0) ::close(fd);
}

std::string read_text_file(const std::filesystem::path& p, std::uint64_t max_bytes, const char* op) {
  const regular_file f(p, op);
  DSV4_CHECK(f.size <= max_bytes, op, detail::printable(p.string(), 400), ": ", f.size,
             " bytes, more than the limit of ", max_bytes, " bytes for this file");
  std::string text(static_cast<std::size_t>(f.size), '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t r = ::pread(f.fd, text.data() + got, text.size() - got, static_cast<off_t>(got));
    DSV4_CHECK(r >= 0, op, sys_error("read", p));
    if (r == 0) break;  // shrank while reading: take what is there
    got += static_cast<std::size_t>(r);
  }
  text.resize(got);
  return text;
}

// ---- the mapping registry and the SIGBUS handler -----------------------------------------------------------------

namespace {

constexpr int kSlots = 512;
constexpr std::size_t kPathBytes = 512;

struct slot {
  std::atomic<bool> used{false};
  std::atomic<std::uintptr_t> base{0};
  std::atomic<std::size_t> len{0};
  char path[kPathBytes] = {};
};
slot g_slots[kSlots];
std::atomic<bool> g_installed{false};
struct sigaction g_previous {};

void put(const char* s) {
  const std::size_t n = std::strlen(s);
  std::size_t done = 0;
  while (done < n) {
    const ssize_t w = ::write(2, s + done, n - done);
    if (w <= 0) return;
    done += static_cast<std::size_t>(w);
  }
}

void on_sigbus(int sig, siginfo_t* info, void*) {
  const auto addr = reinterpret_cast<std::uintptr_t>(info ? info->si_addr : nullptr);
  for (auto& s : g_slots) {
    const std::uintptr_t b = s.base.load(std::memory_order_acquire);
    if (b == 0 || addr < b || addr - b >= s.len.load(std::memory_order_acquire)) continue;
    put("\ndsv4: ");
    put(s.path);
    put(": the file was truncated or changed on disk while dsv4 had it mapped (SIGBUS reading it); checkpoint "
        "files must not be modified in place while in use (replace them with a rename instead)\n");
    ::_exit(1);
  }
  // Not ours: the action that was there before (the default one terminates with a core dump).
  ::sigaction(sig, &g_previous, nullptr);
}

}  // namespace

int register_mapping(const void* base, std::size_t len, const std::filesystem::path& p) {
  for (int i = 0; i < kSlots; ++i) {
    bool expect = false;
    if (!g_slots[i].used.compare_exchange_strong(expect, true)) continue;
    const std::string shown = detail::printable(p.string(), kPathBytes - 32);
    std::memcpy(g_slots[i].path, shown.c_str(), std::min(shown.size() + 1, kPathBytes - 1));
    g_slots[i].path[kPathBytes - 1] = '\0';
    g_slots[i].len.store(len, std::memory_order_release);
    g_slots[i].base.store(reinterpret_cast<std::uintptr_t>(base), std::memory_order_release);
    return i;
  }
  return -1;
}

void unregister_mapping(int i) {
  if (i < 0 || i >= kSlots) return;
  g_slots[i].base.store(0, std::memory_order_release);
  g_slots[i].len.store(0, std::memory_order_release);
  g_slots[i].used.store(false, std::memory_order_release);
}

void install_sigbus_handler() {
  bool expect = false;
  if (!g_installed.compare_exchange_strong(expect, true)) return;
  struct sigaction sa {};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, &g_previous);
}

}  // namespace dsv4::io
