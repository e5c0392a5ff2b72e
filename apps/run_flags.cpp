// Shared run flags and the stop-on-signal guard of the training commands (see run_flags.h).
#include "apps/run_flags.h"

#include <unistd.h>

#include <csignal>

namespace sonar::app {

namespace {

std::atomic<bool> g_stop{false};
std::string g_stop_message;  // set before the handlers are installed; only read by the handler

// First signal: ask the run to stop and say so. A second one ends the process at once (default action).
extern "C" void on_run_stop_signal(int sig) {
  if (g_stop.exchange(true)) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  ssize_t ignored = ::write(2, g_stop_message.data(), g_stop_message.size());
  (void)ignored;
}

}  // namespace

const std::set<std::string>& run_flag_names() {
  static const std::set<std::string> names = {"steps",     "batch",      "crop-seconds", "max-clip-seconds",
                                              "lr",        "warmup",     "final-lr",     "weight-decay",
                                              "clip-grad", "seed",       "log-every",    "save-every",
                                              "threads",   "workers",    "cache",        "precision"};
  return names;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

StopOnSignal::StopOnSignal(const std::string& command) {
  g_stop_message = "\n" + command + ": stopping after this step and saving a checkpoint (again to quit at once)\n";
  g_stop.store(false);
  std::signal(SIGINT, on_run_stop_signal);
  std::signal(SIGTERM, on_run_stop_signal);
}

StopOnSignal::~StopOnSignal() {
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

std::atomic<bool>* StopOnSignal::flag() { return &g_stop; }

}  // namespace sonar::app
