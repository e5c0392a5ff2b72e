// Scoped timers (see tensor/profile.h): a registry of part paths and phases, per-thread stacks of open
// scopes, and per-(phase, path) statistics guarded by one mutex (only touched while profiling is on).
#include "tensor/profile.h"

#include <time.h>

#include <chrono>
#include <mutex>
#include <unordered_map>

namespace sonar::profile {

namespace detail {
std::atomic<bool> g_enabled{false};
}

namespace {

constexpr int kForward = 0;  // phase ids: 0 = forward, 1 = backward, then names as they come
constexpr int kBackward = 1;

struct Stat {
  int phase = 0, part = -1;
  int64_t self_ns = 0, total_ns = 0, calls = 0;
  double flops = 0;
};

struct Registry {
  std::mutex mu;
  std::vector<std::string> paths;                 // part id -> path
  std::unordered_map<std::string, int> path_ids;  // "<parent id>|<name>" -> part id
  std::vector<std::string> phases{"forward", "backward"};
  std::vector<Stat> stats;                        // in order of first use
  std::unordered_map<int64_t, size_t> stat_ids;   // (phase << 32 | part + 1) -> index in stats
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: scopes may close during static destruction
  return *r;
}

struct Frame {
  int part;
  int phase;
  int64_t start_ns;
  int64_t child_ns = 0;
  double flops = 0;
};

thread_local std::vector<Frame> t_frames;
thread_local int t_phase = kForward;
std::atomic<ClockKind> g_clock{ClockKind::Wall};
std::atomic<bool> g_backward_by_op{false};

int64_t now_ns() {
  if (g_clock.load(std::memory_order_relaxed) == ClockKind::ProcessCpu) {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  }
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int child_part(int parent, const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const std::string key = std::to_string(parent) + "|" + name;
  auto it = r.path_ids.find(key);
  if (it != r.path_ids.end()) return it->second;
  const int id = static_cast<int>(r.paths.size());
  r.paths.push_back(parent < 0 ? name : r.paths[parent] + "/" + name);
  r.path_ids.emplace(key, id);
  return id;
}

void push(int part, int phase) { t_frames.push_back(Frame{part, phase, now_ns()}); }

void pop() {
  const int64_t end = now_ns();
  Frame f = t_frames.back();
  t_frames.pop_back();
  const int64_t elapsed = end - f.start_ns;
  if (!t_frames.empty()) t_frames.back().child_ns += elapsed;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const int64_t key = (static_cast<int64_t>(f.phase) << 32) | static_cast<int64_t>(f.part + 1);
  auto it = r.stat_ids.find(key);
  if (it == r.stat_ids.end()) {
    it = r.stat_ids.emplace(key, r.stats.size()).first;
    Stat s;
    s.phase = f.phase;
    s.part = f.part;
    r.stats.push_back(s);
  }
  Stat& s = r.stats[it->second];
  s.self_ns += elapsed - f.child_ns;
  s.total_ns += elapsed;
  s.flops += f.flops;
  ++s.calls;
}

}  // namespace

void set_enabled(bool on) { detail::g_enabled.store(on, std::memory_order_relaxed); }
void set_clock(ClockKind c) { g_clock.store(c, std::memory_order_relaxed); }
void set_backward_by_op(bool on) { g_backward_by_op.store(on, std::memory_order_relaxed); }
bool backward_by_op() { return g_backward_by_op.load(std::memory_order_relaxed); }
ClockKind clock_kind() { return g_clock.load(std::memory_order_relaxed); }
double now_seconds() { return static_cast<double>(now_ns()) * 1e-9; }

void reset() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.stats.clear();
  r.stat_ids.clear();
}

void Scope::open(const char* name, int64_t index) {
  const int parent = t_frames.empty() ? -1 : t_frames.back().part;
  const int part = child_part(parent, index < 0 ? std::string(name) : std::string(name) + "." + std::to_string(index));
  push(part, t_phase);
  active_ = true;
}

void Scope::close() { pop(); }

PhaseScope::PhaseScope(const char* phase) {
  if (!enabled()) return;
  Registry& r = registry();
  int id = -1;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    for (size_t i = 0; i < r.phases.size(); ++i)
      if (r.phases[i] == phase) id = static_cast<int>(i);
    if (id < 0) {
      id = static_cast<int>(r.phases.size());
      r.phases.emplace_back(phase);
    }
  }
  previous_ = t_phase;
  t_phase = id;
  active_ = true;
}

PhaseScope::~PhaseScope() {
  if (active_) t_phase = previous_;
}

int current_part() {
  if (!enabled() || t_frames.empty()) return -1;
  return t_frames.back().part;
}

void BackwardScope::open(int part) {
  previous_phase_ = t_phase;
  t_phase = kBackward;
  push(part, kBackward);
  active_ = true;
}

void BackwardScope::close() {
  pop();
  t_phase = previous_phase_;
}

void add_flops(double flops) {
  if (!t_frames.empty()) t_frames.back().flops += flops;
}

std::vector<Row> rows() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<Row> out;
  out.reserve(r.stats.size());
  for (const Stat& s : r.stats) {
    Row row;
    row.phase = r.phases[s.phase];
    row.path = s.part < 0 ? std::string("(untagged)") : r.paths[s.part];
    row.self_seconds = static_cast<double>(s.self_ns) * 1e-9;
    row.total_seconds = static_cast<double>(s.total_ns) * 1e-9;
    row.self_flops = s.flops;
    row.calls = s.calls;
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace sonar::profile
