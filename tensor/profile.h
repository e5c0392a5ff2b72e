// Scoped timers for per-part profiles of real model code (`sonar profile`): model code opens a Scope per part
// ("encoder", "layers.3", "attention"); scopes nest into paths ("encoder/layers.3/attention"), and each
// (phase, path) collects its self time (time inside the scope minus its child scopes), its total time, its
// call count and the floating-point operations the matrix kernels reported while it was the innermost scope.
// Phases separate the passes: "forward" (the default), "backward" (the autograd engine runs each node under
// the path that was open when the node was recorded, see autograd/var.cpp) and whatever a caller names
// ("optimizer").
//
// Off by default. When off, a Scope costs one relaxed atomic load and a branch: no clock, no allocation, no
// lock. Only the thread that opens scopes is timed (kernels' OpenMP workers never open any), so work done
// in parallel inside a scope counts once, as wall time.
//
// Not here: the report (apps/cmd_profile.cpp formats the rows), the FLOP counts of kernels (each kernel calls
// add_flops), memory statistics.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace sonar::profile {

namespace detail {
extern std::atomic<bool> g_enabled;
}

inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }
// Turns timing on or off for the whole process. Scopes open while it changes close harmlessly.
void set_enabled(bool on);
// Forgets every collected statistic (the part names stay registered).
void reset();

// What the timers read: Wall (steady wall-clock time, the default) or ProcessCpu (CPU time of the whole
// process, every thread summed: per-core figures that stay meaningful when other jobs share the cores, since
// time spent descheduled is not counted; with N busy threads a part's time is N x its wall time).
enum class ClockKind { Wall, ProcessCpu };
void set_clock(ClockKind c);
ClockKind clock_kind();
// The current reading of that clock, in seconds (for timing around scopes with the same clock).
double now_seconds();

// Times the part `name` (a child of the innermost open scope of this thread) for its lifetime.
class Scope {
 public:
  explicit Scope(const char* name) {
    if (enabled()) open(name, -1);
  }
  // name.index, e.g. Scope("layers", 3) is "layers.3" (the string is only built when profiling is on).
  Scope(const char* name, int64_t index) {
    if (enabled()) open(name, index);
  }
  ~Scope() {
    if (active_) close();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void open(const char* name, int64_t index);
  void close();
  bool active_ = false;
};

// Switches the phase of this thread (e.g. "optimizer") for its lifetime; scopes opened inside count there.
class PhaseScope {
 public:
  explicit PhaseScope(const char* phase);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  bool active_ = false;
  int previous_ = 0;
};

// With this on, the autograd engine also times each backward node in a child of its part named after the
// node's op ("linear", "attention", "gelu", ...), so that the backward rows split by op (`sonar profile
// --ops`). Off by default; the forward has no op scopes (its parts are the model's own).
void set_backward_by_op(bool on);
bool backward_by_op();

// The path id of this thread's innermost open scope (-1 when none or when profiling is off). The autograd
// engine stores it on each recorded node.
int current_part();

// Times a backward step of a node recorded under `part` (an id from current_part(), -1 = no part), in phase
// "backward", regardless of the scopes open around it.
class BackwardScope {
 public:
  explicit BackwardScope(int part) {
    if (enabled()) open(part);
  }
  ~BackwardScope() {
    if (active_) close();
  }
  BackwardScope(const BackwardScope&) = delete;
  BackwardScope& operator=(const BackwardScope&) = delete;

 private:
  void open(int part);
  void close();
  bool active_ = false;
  int previous_phase_ = 0;
};

// Adds floating-point operations (a multiply-add counts 2) to this thread's innermost open scope. Called by
// the matrix-product, convolution and attention kernels; a no-op when profiling is off or no scope is open.
void add_flops(double flops);
inline void count_flops(double flops) {
  if (enabled()) add_flops(flops);
}

struct Row {
  std::string phase;       // "forward", "backward", "optimizer", ...
  std::string path;        // "encoder/layers.3/attention"; "(untagged)" for backward nodes recorded outside scopes
  double self_seconds = 0;  // inside this scope, outside its children
  double total_seconds = 0;
  double self_flops = 0;
  int64_t calls = 0;
};
// Every (phase, path) seen since the last reset, in the order they were first opened.
std::vector<Row> rows();

}  // namespace sonar::profile
