// ZipReader: read-only access to a zip archive (libzip) that never inflates an entry before checking the
// size it declares: against the caller's cap, against what its compressed bytes can possibly produce
// (stored: exactly as many bytes; deflate: at most kMaxDeflateRatio times as many) and against the archive's
// real size. Other compression methods (bzip2, xz, zstd, ...) are refused: neither torch.save nor numpy
// write them, and they inflate far more per byte. Shared by .npz (tensor/io.cpp) and .pt
// (nn/torch_checkpoint.cpp). Not here: what the entries hold, and writing zips.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

struct zip;

namespace sonar {

// Deflate encodes at most 258 bytes per 2 bits (a length-258 match with 1-bit codes), so no deflate stream
// inflates by more than 1032:1; a declared size beyond that is a lie, refused before any allocation.
constexpr uint64_t kMaxDeflateRatio = 1032;

class ZipReader {
 public:
  // nullptr (and `*error` set to libzip's message) when the file is not a readable zip archive.
  // `what` starts every error message (e.g. "load_npz"); `name` names the archive in them.
  static std::unique_ptr<ZipReader> open_file(const std::string& path, const std::string& what, std::string* error);
  // The same over bytes in memory, which the caller keeps alive as long as the reader.
  static std::unique_ptr<ZipReader> open_memory(const std::string& bytes, const std::string& name,
                                                const std::string& what, std::string* error);
  ~ZipReader();
  ZipReader(const ZipReader&) = delete;
  ZipReader& operator=(const ZipReader&) = delete;

  int64_t num_entries() const;
  std::string entry_name(int64_t index) const;       // "" for an entry without a name
  int64_t locate(const std::string& entry) const;     // -1 when absent
  uint64_t declared_size(int64_t index) const;        // inflated size from the central directory (unchecked)
  // The inflated bytes of entry `index`. Throws, before allocating, when the declared size exceeds
  // `max_bytes` or what the entry's compressed bytes can produce; and after reading when the data is
  // shorter or longer than declared or fails its CRC.
  std::string read(int64_t index, uint64_t max_bytes) const;
  std::string read(const std::string& entry, uint64_t max_bytes) const;  // throws when absent

 private:
  ZipReader(struct zip* z, std::string name, std::string what, uint64_t archive_bytes);
  std::string entry_label(int64_t index) const;

  struct zip* z_;
  std::string name_, what_;
  uint64_t archive_bytes_;
};

}  // namespace sonar
