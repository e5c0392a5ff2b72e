// Content-hashed, atomically written fbank cache (see fbank_cache.h). Not decoding or fbank computation.
#include "audio/fbank_cache.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "tensor/error.h"
#include "tensor/io.h"

namespace sonar::audio {

namespace fs = std::filesystem;

namespace {

inline uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Two lanes over 16-byte blocks (the MurmurHash3 x64 128 construction, written from its description).
struct Hasher {
  uint64_t h1, h2;
  uint64_t total = 0;
  explicit Hasher(uint64_t seed) : h1(seed), h2(seed ^ 0x9e3779b97f4a7c15ULL) {}
  static constexpr uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
  void block(uint64_t k1, uint64_t k2) {
    k1 *= c1, k1 = rotl(k1, 31), k1 *= c2, h1 ^= k1;
    h1 = rotl(h1, 27), h1 += h2, h1 = h1 * 5 + 0x52dce729;
    k2 *= c2, k2 = rotl(k2, 33), k2 *= c1, h2 ^= k2;
    h2 = rotl(h2, 31), h2 += h1, h2 = h2 * 5 + 0x38495ab5;
  }
  // Whole 16-byte blocks of p; returns how many bytes were consumed.
  size_t blocks(const unsigned char* p, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
      uint64_t a, b;
      std::memcpy(&a, p + i, 8);
      std::memcpy(&b, p + i + 8, 8);
      block(a, b);
    }
    total += i;
    return i;
  }
  Hash128 finish(const unsigned char* tail, size_t n) {
    unsigned char buf[16] = {0};
    std::memcpy(buf, tail, n);
    uint64_t a, b;
    std::memcpy(&a, buf, 8);
    std::memcpy(&b, buf + 8, 8);
    block(a ^ n, b);  // the tail (zero padded) and its length
    total += n;
    h1 ^= total, h2 ^= total;
    h1 += h2, h2 += h1;
    h1 = fmix64(h1), h2 = fmix64(h2);
    h1 += h2, h2 += h1;
    return {h1, h2};
  }
};

}  // namespace

std::string Hash128::hex() const {
  char buf[33];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", static_cast<unsigned long long>(hi),
                static_cast<unsigned long long>(lo));
  return buf;
}

Hash128 hash_bytes(const void* data, size_t n, uint64_t seed) {
  Hasher h(seed);
  const auto* p = static_cast<const unsigned char*>(data);
  const size_t used = h.blocks(p, n);
  return h.finish(p + used, n - used);
}

Hash128 hash_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SONAR_CHECK(f.good(), path, ": cannot open for hashing");
  Hasher h(0);
  std::vector<unsigned char> buf(1 << 20);
  size_t carry = 0;  // bytes left over from the previous read (< 16)
  for (;;) {
    f.read(reinterpret_cast<char*>(buf.data() + carry), static_cast<std::streamsize>(buf.size() - carry));
    const size_t got = static_cast<size_t>(f.gcount()) + carry;
    if (f.bad()) SONAR_FAIL(path, ": read error while hashing");
    const size_t used = h.blocks(buf.data(), got);
    carry = got - used;
    std::memmove(buf.data(), buf.data() + used, carry);
    if (!f) break;  // end of file reached
  }
  return h.finish(buf.data(), carry);
}

FbankCache::FbankCache(std::string dir, const FbankOptions& fbank, int sample_rate, ResampleQuality quality)
    : dir_(std::move(dir)), opts_(fbank) {
  SONAR_CHECK(!dir_.empty(), "fbank cache: empty folder name");
  settings_ = fbank.key() + " rate=" + std::to_string(sample_rate) +
              " resampler=soxr-" + std::to_string(static_cast<int>(quality)) + " cache-v1";
  settings_hash_ = hash_bytes(settings_.data(), settings_.size(), 0x5eed);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  SONAR_CHECK(fs::is_directory(dir_, ec), dir_, ": cannot create the fbank cache folder");
}

std::string FbankCache::key_for(const std::string& audio_path) const {
  const Hash128 content = hash_file(audio_path);
  return content.hex() + settings_hash_.hex().substr(0, 16);
}

std::string FbankCache::entry_path(const std::string& key) const {
  return (fs::path(dir_) / key.substr(0, 2) / (key + ".safetensors")).string();
}

std::optional<FbankCache::Entry> FbankCache::get(const std::string& key) {
  const std::string p = entry_path(key);
  std::error_code ec;
  if (!fs::exists(p, ec)) {
    ++misses_;
    return std::nullopt;
  }
  try {
    SafeTensorsFile f = load_safetensors(p);
    auto it = f.tensors.find("fbank");
    auto s = f.metadata.find("settings");
    auto n = f.metadata.find("samples");
    if (it != f.tensors.end() && s != f.metadata.end() && n != f.metadata.end() && s->second == settings_ &&
        it->second.dtype() == DType::Float32 && it->second.dim() == 2) {
      Entry e;
      e.fbank = it->second;
      e.samples = std::stoll(n->second);
      if (e.samples >= 0 && e.fbank.size(0) == fbank_num_frames(e.samples, opts_) &&
          e.fbank.size(1) == opts_.num_mel_bins) {
        ++hits_;
        return e;
      }
    }
  } catch (const std::exception&) {
    // An unreadable entry (e.g. a disk error): recompute and overwrite.
  }
  ++misses_;
  return std::nullopt;
}

void FbankCache::put(const std::string& key, const Entry& e) {
  const std::string p = entry_path(key);
  std::error_code ec;
  fs::create_directories(fs::path(p).parent_path(), ec);
  save_safetensors(p, {{"fbank", e.fbank.contiguous()}},
                   {{"settings", settings_}, {"samples", std::to_string(e.samples)}});
  ++writes_;
}

}  // namespace sonar::audio
