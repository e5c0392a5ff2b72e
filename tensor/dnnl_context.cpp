// The oneDNN engine, per-thread streams and the primitive cache (see dnnl_context.h). No kernels here.
#include "tensor/dnnl_context.h"

#include <omp.h>

#include <atomic>
#include <iterator>
#include <mutex>
#include <unordered_map>

namespace sonar::dnnl_ctx {

const dnnl::engine& engine() {
  static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

Key::Key(const char* op) : s_(op) {}

Key& Key::operator<<(int64_t v) {
  s_ += '|';
  s_ += std::to_string(v);
  return *this;
}

Key& Key::operator<<(const char* s) {
  s_ += '|';
  s_ += s;
  return *this;
}

Key& Key::operator<<(const std::vector<int64_t>& v) {
  s_ += "|[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s_ += ',';
    s_ += std::to_string(v[i]);
  }
  s_ += ']';
  return *this;
}

namespace {
struct Cache {
  std::mutex mu;
  std::unordered_map<std::string, std::shared_ptr<void>> map;
};
Cache& cache() {
  static Cache c;
  return c;
}
}  // namespace

// The calling thread's key prefix: a number never reused (a thread id can be, and a primitive must not outlive
// the thread-local scratchpad of the thread that built it). The thread's entries go when it ends.
struct ThreadEntries {
  std::string prefix;
  ThreadEntries() {
    static std::atomic<uint64_t> next{0};
    prefix = 't' + std::to_string(next++);
    prefix += '|';
  }
  ~ThreadEntries() {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    for (auto it = c.map.begin(); it != c.map.end();)
      it = it->first.compare(0, prefix.size(), prefix) == 0 ? c.map.erase(it) : std::next(it);
  }
};

std::shared_ptr<void> cached_object(const std::string& op_key, const std::function<std::shared_ptr<void>()>& make) {
  Cache& c = cache();  // constructed before the thread_local below, so destroyed after it
  thread_local ThreadEntries thread_entries;
  const std::string key = thread_entries.prefix + op_key;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.map.find(key);
    if (it != c.map.end()) return it->second;
  }
  std::shared_ptr<void> obj = make();  // may be slow (JIT); built without holding the lock
  std::lock_guard<std::mutex> lock(c.mu);
  auto [it, inserted] = c.map.emplace(key, std::move(obj));
  return it->second;
}

size_t cache_size() {
  std::lock_guard<std::mutex> lock(cache().mu);
  return cache().map.size();
}

void clear_cache() {
  std::lock_guard<std::mutex> lock(cache().mu);
  cache().map.clear();
}

int max_threads() { return omp_get_max_threads(); }

}  // namespace sonar::dnnl_ctx
