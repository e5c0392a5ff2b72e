// The process-wide oneDNN state: one CPU engine, one stream per thread, and a thread-safe cache of built
// primitives keyed by a string that callers compose from shapes, strides, data type, attributes and the
// OpenMP thread count, and by the calling thread: oneDNN built without DNNL_ENABLE_CONCURRENT_EXEC (Debian's
// is) shares one scratchpad per thread between its primitives, so a primitive must run in the thread that
// built it (two grid runs in two threads crashed in a convolution backward before this). This file runs no math; matmul.cpp and conv.cpp build and execute the primitives.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

namespace sonar::dnnl_ctx {

// The CPU engine, created on first use.
const dnnl::engine& engine();
// An in-order stream on engine(), one per calling thread (created on first use in that thread).
dnnl::stream& stream();

// Builds cache keys: append values with operator<< ; each value is separated so keys cannot collide.
class Key {
 public:
  explicit Key(const char* op);
  Key& operator<<(int64_t v);
  Key& operator<<(const char* s);
  Key& operator<<(const std::vector<int64_t>& v);
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

// Returns the object the calling thread cached under `key`, building it with `make` on a miss (each thread has
// its own entries, dropped when the thread ends). `make` runs outside the lock. The key must determine T.
std::shared_ptr<void> cached_object(const std::string& key, const std::function<std::shared_ptr<void>()>& make);

template <class T, class F>
std::shared_ptr<T> cached(const Key& key, F&& make) {
  return std::static_pointer_cast<T>(cached_object(key.str(), [&]() -> std::shared_ptr<void> { return make(); }));
}

// Number of cached entries and a way to drop them all (tests and benchmarks).
size_t cache_size();
void clear_cache();

// omp_get_max_threads(): part of every key, because oneDNN sizes its work split at creation time.
int max_threads();

}  // namespace sonar::dnnl_ctx
