// Shared run flags and the stop-on-signal guard of the training commands (see run_flags.h).
#include "apps/run_flags.h"

#include <unistd.h>

#include <pthread.h>

#include <csignal>
#include <cstdlib>
#include <thread>

namespace sonar::app {

namespace {

std::atomic<bool> g_stop{false};
std::atomic<bool> g_closing{false};  // set by the destructor before it wakes the waiter for the last time
std::string g_stop_message;          // set before the waiter starts; only read by it

// The signals the guard takes, and the set of them.
sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// A thread that did not block the signals (one a library started before the guard, such as OpenBLAS's pool)
// may still receive one: it only forwards it to the waiter, which blocks it and so takes it from sigwait.
pthread_t g_waiter;
extern "C" void forward_stop_signal(int sig) { pthread_kill(g_waiter, sig); }

// The waiter: the first signal asks the run to stop and says so; a second one ends the process at once, as the
// default action would (exit status 128 + signal).
void wait_for_signals() {
  const sigset_t set = stop_signals();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (g_closing.load()) return;
    if (g_stop.exchange(true)) {
      static const char msg[] = "\nstopped at once (second signal)\n";
      ssize_t ignored = ::write(2, msg, sizeof msg - 1);
      (void)ignored;
      std::_Exit(128 + sig);
    }
    ssize_t ignored = ::write(2, g_stop_message.data(), g_stop_message.size());
    (void)ignored;
  }
}

std::thread g_waiter_thread;
sigset_t g_old_mask;

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

// The signals are blocked in the calling thread, so every thread it starts afterwards (the OpenMP team, the
// data loaders) inherits the block, and a dedicated thread takes them with sigwait. A signal handler never runs
// in the middle of a computation: a Ctrl-C that interrupted a oneDNN kernel on a compute thread was seen to
// corrupt the heap (about 1 run in 35 of `sonar train-tokenizer` with 2 threads).
StopOnSignal::StopOnSignal(const std::string& command) {
  g_stop_message = "\n" + command + ": stopping after this step and saving a checkpoint (again to quit at once)\n";
  g_stop.store(false);
  g_closing.store(false);
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, &g_old_mask);
  g_waiter_thread = std::thread(wait_for_signals);
  g_waiter = g_waiter_thread.native_handle();
  std::signal(SIGINT, forward_stop_signal);
  std::signal(SIGTERM, forward_stop_signal);
}

StopOnSignal::~StopOnSignal() {
  g_closing.store(true);
  pthread_kill(g_waiter, SIGTERM);  // wakes the waiter, which sees g_closing and returns
  g_waiter_thread.join();
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  pthread_sigmask(SIG_SETMASK, &g_old_mask, nullptr);
}

std::atomic<bool>* StopOnSignal::flag() { return &g_stop; }

}  // namespace sonar::app
