// Tensor file formats: .npy (read/write), .npz (read, via libzip) and safetensors (read/write), plus the
// whole-file read and the atomic (temporary file + rename) write every writer goes through.
// Not here: PyTorch .pt checkpoints (nn/torch_checkpoint.h) and anything that knows about modules.
//
// Dtypes: float32, int64, uint8 and bool in both directions. On read, float64 arrays ('<f8' / "F64") are
// accepted and rounded to float32, because numpy writes float64 by default; load_npy_f64 reads them
// exactly. Every other dtype, big-endian data, a bad magic, a malformed header or a truncated file is an
// error that names the file and the offending value.
#include "tensor/io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tensor/zip_reader.h"

namespace sonar {

// ------------------------------------------------------------------------------------------------------
// Whole files

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SONAR_CHECK(in.good(), "read_file: cannot open '", path, "': ", std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  SONAR_CHECK(size >= 0, "read_file: cannot determine the size of '", path, "' (is it a directory?)");
  in.seekg(0, std::ios::beg);
  std::string bytes(static_cast<size_t>(size), '\0');
  if (size > 0) in.read(bytes.data(), size);
  SONAR_CHECK(in.good() || (size == 0 && !in.bad()), "read_file: error reading '", path, "'");
  return bytes;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  SONAR_CHECK(!path.empty(), "write_file_atomic: empty path");
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  SONAR_CHECK(!base.empty(), "write_file_atomic: '", path, "' names a folder, not a file");
  std::string tmpl = dir + "/." + base + ".tmp.XXXXXX";
  int fd = ::mkstemp(tmpl.data());
  SONAR_CHECK(fd >= 0, "write_file_atomic: cannot create a temporary file in '", dir, "' for '", path,
              "': ", std::strerror(errno));
  auto fail = [&](const char* what) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmpl.c_str());
    SONAR_FAIL("write_file_atomic: ", what, " '", tmpl, "' (for '", path, "'): ", std::strerror(err));
  };
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot write");
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  // mkstemp creates the file 0600; give it the usual permissions a plain create would (0666 & ~umask).
  const mode_t mask = ::umask(0);
  ::umask(mask);
  if (::fchmod(fd, 0666 & ~mask) != 0) fail("cannot set permissions of");
  if (::fsync(fd) != 0) fail("cannot flush");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmpl.c_str());
    SONAR_FAIL("write_file_atomic: cannot close '", tmpl, "' (for '", path, "'): ", std::strerror(err));
  }
  if (::rename(tmpl.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmpl.c_str());
    SONAR_FAIL("write_file_atomic: cannot rename '", tmpl, "' to '", path, "': ", std::strerror(err));
  }
}

// ------------------------------------------------------------------------------------------------------
// Helpers shared by the formats

namespace {

// Contiguous little-endian bytes of `t` (this machine is little-endian: x86-64).
std::string tensor_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  std::string out(c.nbytes(), '\0');
  if (!out.empty()) std::memcpy(out.data(), c.raw_data(), out.size());
  return out;
}

// Fresh contiguous tensor filled from raw little-endian bytes of the same dtype.
Tensor tensor_from_raw(const char* src, const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  if (t.nbytes() > 0) std::memcpy(t.raw_data(), src, t.nbytes());
  return t;
}

// Fresh float32 tensor from raw little-endian float64 bytes (rounded to nearest).
Tensor tensor_from_f64(const char* src, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::Float32);
  float* dst = t.data<float>();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    double v;
    std::memcpy(&v, src + 8 * i, 8);
    dst[i] = static_cast<float>(v);
  }
  return t;
}

// Bool tensors must hold 0 or 1 in each byte.
void check_bool_bytes(const Tensor& t, const std::string& what, const std::string& path) {
  const uint8_t* b = t.bytes();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i)
    SONAR_CHECK(b[i] <= 1, what, ": bool array in '", path, "' holds byte value ", int(b[i]), " at element ",
                i, " (expected 0 or 1)");
}

// Product of sizes with overflow checking; `what` names the caller and the file. The product of the
// non-zero sizes must fit too (an empty [0, 2^62, 2^62] has no bytes but its row-major strides overflow).
int64_t checked_numel(const Shape& shape, size_t elem, const std::string& what) {
  int64_t n = 1, nonzero = 1;
  for (int64_t s : shape) {
    SONAR_CHECK(s >= 0, what, ": negative size in shape ", shape_str(shape));
    if (s != 0 && nonzero > (INT64_MAX / static_cast<int64_t>(elem)) / s)
      SONAR_FAIL(what, ": shape ", shape_str(shape), " is too large");
    if (s != 0) nonzero *= s;
    n *= s;
  }
  return n;
}

// ------------------------------------------------------------------------------------------------------
// .npy

constexpr char kNpyMagic[] = "\x93NUMPY";
constexpr size_t kNpyMagicLen = 6;
constexpr size_t kNpyAlign = 64;  // numpy pads the header so that the data starts on a 64-byte boundary

enum class NpyType { F32, F64, I64, U8, B1 };

struct NpyHeader {
  NpyType type;
  bool fortran = false;
  Shape shape;
  size_t data_offset = 0;  // bytes from the start of the buffer
};

size_t npy_elem_size(NpyType t) {
  switch (t) {
    case NpyType::F32: return 4;
    case NpyType::F64:
    case NpyType::I64: return 8;
    case NpyType::U8:
    case NpyType::B1: return 1;
  }
  return 0;
}

// A tiny reader for the Python dict literal in the .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 16000), }
class NpyDictParser {
 public:
  NpyDictParser(const std::string& s, const std::string& path) : s_(s), path_(path) {}

  NpyHeader parse(NpyHeader h) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip_ws();
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') { ++i_; break; }
      const std::string key = quoted();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        h.type = descr_type(quoted());
        have_descr = true;
      } else if (key == "fortran_order") {
        h.fortran = boolean();
        have_order = true;
      } else if (key == "shape") {
        h.shape = tuple();
        have_shape = true;
      } else {
        fail("unknown key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') { ++i_; continue; }
      skip_ws();
      expect('}');
      break;
    }
    if (!have_descr || !have_order || !have_shape)
      fail("header misses one of 'descr', 'fortran_order', 'shape'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    constexpr size_t kShown = 200;  // a hostile header can be megabytes of anything
    SONAR_FAIL("load_npy: malformed header in '", path_, "': ", why, " (header: ",
               s_.size() > kShown ? s_.substr(0, kShown) + "..." : s_, ")");
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "' at position " + std::to_string(i_));
    ++i_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string at position " + std::to_string(i_));
    ++i_;
    const size_t end = s_.find(q, i_);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(i_, end - i_);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) { i_ += 4; return true; }
    if (s_.compare(i_, 5, "False") == 0) { i_ += 5; return false; }
    fail("expected True or False for 'fortran_order'");
  }
  Shape tuple() {
    Shape out;
    expect('(');
    while (true) {
      skip_ws();
      if (peek() == ')') { ++i_; break; }
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a size in 'shape'");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (v > (INT64_MAX - 9) / 10) fail("size in 'shape' is too large");
        v = v * 10 + (s_[i_++] - '0');
      }
      if (peek() == 'L') ++i_;  // Python 2 long suffix
      out.push_back(v);
      skip_ws();
      if (peek() == ',') { ++i_; continue; }
      skip_ws();
      expect(')');
      break;
    }
    return out;
  }
  NpyType descr_type(const std::string& d) const {
    if (d == "<f4") return NpyType::F32;
    if (d == "<f8") return NpyType::F64;
    if (d == "<i8") return NpyType::I64;
    if (d == "|u1" || d == "<u1" || d == "u1") return NpyType::U8;
    if (d == "|b1" || d == "<b1" || d == "b1") return NpyType::B1;
    SONAR_FAIL("load_npy: unsupported dtype descr '", d, "' in '", path_,
               "' (supported: '<f4', '<i8', '|u1', '|b1', and '<f8' converted to float32)");
  }

  const std::string& s_;
  const std::string& path_;
  size_t i_ = 0;
};

NpyHeader parse_npy_header(const std::string& bytes, const std::string& path) {
  SONAR_CHECK(bytes.size() >= kNpyMagicLen + 2 && std::memcmp(bytes.data(), kNpyMagic, kNpyMagicLen) == 0,
              "load_npy: '", path, "' is not a .npy file (bad magic; ", bytes.size(), " bytes)");
  const uint8_t major = static_cast<uint8_t>(bytes[6]);
  const uint8_t minor = static_cast<uint8_t>(bytes[7]);
  size_t len_bytes = 0;
  if (major == 1) len_bytes = 2;
  else if (major == 2 || major == 3) len_bytes = 4;
  else SONAR_FAIL("load_npy: unsupported .npy version ", int(major), ".", int(minor), " in '", path, "'");
  SONAR_CHECK(bytes.size() >= 8 + len_bytes, "load_npy: '", path, "' is truncated inside the header length");
  size_t hlen = 0;
  for (size_t k = 0; k < len_bytes; ++k) hlen |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + k])) << (8 * k);
  const size_t start = 8 + len_bytes;
  SONAR_CHECK(bytes.size() >= start + hlen, "load_npy: '", path, "' is truncated: header needs ", hlen,
              " bytes, file has ", bytes.size() - start, " after the magic");
  const std::string header = bytes.substr(start, hlen);  // latin-1 (v1, v2) or utf-8 (v3): ASCII in practice
  NpyHeader h;
  h.type = NpyType::F32;
  h = NpyDictParser(header, path).parse(h);
  h.data_offset = start + hlen;
  SONAR_CHECK(h.shape.size() <= static_cast<size_t>(kMaxDims), "load_npy: '", path, "' has shape ",
              shape_str(h.shape), " with more than ", kMaxDims, " dims");
  const int64_t n = checked_numel(h.shape, npy_elem_size(h.type), "load_npy: '" + path + "'");
  const size_t need = static_cast<size_t>(n) * npy_elem_size(h.type);
  SONAR_CHECK(bytes.size() - h.data_offset >= need, "load_npy: '", path, "' is truncated: shape ",
              shape_str(h.shape), " needs ", need, " data bytes, file has ", bytes.size() - h.data_offset);
  return h;
}

// Fortran order: the bytes are the C-order array of the reversed shape; transposing it back gives the
// array. Returns the C-order tensor.
Tensor fortran_to_c(const Tensor& reversed) {
  std::vector<int64_t> perm(reversed.dim());
  for (int64_t i = 0; i < reversed.dim(); ++i) perm[i] = reversed.dim() - 1 - i;
  return reversed.permute(perm).contiguous();
}

Tensor parse_npy(const std::string& bytes, const std::string& path) {
  const NpyHeader h = parse_npy_header(bytes, path);
  Shape stored = h.shape;
  if (h.fortran) std::reverse(stored.begin(), stored.end());
  const char* src = bytes.data() + h.data_offset;
  Tensor t;
  switch (h.type) {
    case NpyType::F32: t = tensor_from_raw(src, stored, DType::Float32); break;
    case NpyType::F64: t = tensor_from_f64(src, stored); break;
    case NpyType::I64: t = tensor_from_raw(src, stored, DType::Int64); break;
    case NpyType::U8: t = tensor_from_raw(src, stored, DType::UInt8); break;
    case NpyType::B1:
      t = tensor_from_raw(src, stored, DType::Bool);
      check_bool_bytes(t, "load_npy", path);
      break;
  }
  return h.fortran ? fortran_to_c(t) : t;
}

const char* npy_descr(DType d) {
  switch (d) {
    case DType::Float32: return "<f4";
    case DType::Int64: return "<i8";
    case DType::UInt8: return "|u1";
    case DType::Bool: return "|b1";
  }
  return "?";
}

std::string npy_bytes(const Tensor& t) {
  SONAR_CHECK(t.defined(), "save_npy: undefined tensor");
  std::string dict = std::string("{'descr': '") + npy_descr(t.dtype()) + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < t.shape().size(); ++i) {
    dict += std::to_string(t.shape()[i]);
    dict += (t.shape().size() == 1 || i + 1 < t.shape().size()) ? ", " : "";
  }
  if (t.shape().size() == 1) dict.pop_back();  // "(5,)" as numpy writes it
  dict += "), }";
  // Version 1.0 has a 2-byte header length; use 2.0 (4 bytes) only when the header does not fit.
  size_t len_bytes = 2;
  uint8_t major = 1;
  size_t total = kNpyMagicLen + 2 + len_bytes + dict.size() + 1;
  if ((total + kNpyAlign - 1) / kNpyAlign * kNpyAlign - (kNpyMagicLen + 2 + len_bytes) > 65535) {
    len_bytes = 4;
    major = 2;
    total = kNpyMagicLen + 2 + len_bytes + dict.size() + 1;
  }
  const size_t padded = (total + kNpyAlign - 1) / kNpyAlign * kNpyAlign;
  dict.append(padded - total, ' ');
  dict += '\n';
  const size_t hlen = dict.size();
  std::string out(kNpyMagic, kNpyMagicLen);
  out += static_cast<char>(major);
  out += '\0';
  for (size_t k = 0; k < len_bytes; ++k) out += static_cast<char>((hlen >> (8 * k)) & 0xff);
  out += dict;
  out += tensor_bytes(t);
  return out;
}

}  // namespace

Tensor load_npy(const std::string& path) { return parse_npy(read_file(path), path); }
Tensor load_npy_bytes(const std::string& bytes, const std::string& name) { return parse_npy(bytes, name); }

NpyF64 load_npy_f64(const std::string& path) {
  const std::string bytes = read_file(path);
  const NpyHeader h = parse_npy_header(bytes, path);
  SONAR_CHECK(h.type == NpyType::F64, "load_npy_f64: '", path, "' does not hold float64 ('<f8') data");
  NpyF64 out;
  out.shape = h.shape;
  const size_t n = static_cast<size_t>(shape_numel(h.shape));
  out.values.resize(n);
  if (n > 0) std::memcpy(out.values.data(), bytes.data() + h.data_offset, n * 8);
  if (h.fortran && h.shape.size() > 1) {
    // Element (i0..ik) lives at column-major offset; rewrite in row-major order.
    std::vector<double> c(n);
    const Shape cs = contiguous_strides(h.shape);
    const int nd = static_cast<int>(h.shape.size());
    Shape fs(nd);
    int64_t acc = 1;
    for (int d = 0; d < nd; ++d) { fs[d] = acc; acc *= std::max<int64_t>(h.shape[d], 1); }
    for (size_t lin = 0; lin < n; ++lin) {
      int64_t rem = static_cast<int64_t>(lin), foff = 0;
      for (int d = 0; d < nd; ++d) {
        const int64_t idx = rem / cs[d];
        rem %= cs[d];
        foff += idx * fs[d];
      }
      c[lin] = out.values[static_cast<size_t>(foff)];
    }
    out.values.swap(c);
  }
  return out;
}

void save_npy(const std::string& path, const Tensor& t) { write_file_atomic(path, npy_bytes(t)); }

namespace {

std::map<std::string, Tensor> read_npz(const ZipReader& za, const std::string& path) {
  std::map<std::string, Tensor> out;
  const int64_t n = za.num_entries();
  for (int64_t i = 0; i < n; ++i) {
    const std::string name = za.entry_name(i);
    if (!name.empty() && name.back() == '/') continue;  // a folder entry
    SONAR_CHECK(name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0, "load_npz: entry '", name,
                "' of '", path, "' is not a .npy file");
    // No cap beyond what the entry's own bytes can inflate to (ZipReader): an array may be large.
    const std::string data = za.read(i, UINT64_MAX);
    out[name.substr(0, name.size() - 4)] = parse_npy(data, path + ":" + name);
  }
  return out;
}

}  // namespace

std::map<std::string, Tensor> load_npz(const std::string& path) {
  // Read the file ourselves so that "cannot open" and "not a zip" get distinct messages.
  const std::string bytes = read_file(path);
  return load_npz_bytes(bytes, path);
}

std::map<std::string, Tensor> load_npz_bytes(const std::string& bytes, const std::string& name) {
  std::string zip_msg;
  std::unique_ptr<ZipReader> za = ZipReader::open_memory(bytes, name, "load_npz", &zip_msg);
  SONAR_CHECK(za != nullptr, "load_npz: '", name, "' is not a readable zip archive: ", zip_msg);
  return read_npz(*za, name);
}

// ------------------------------------------------------------------------------------------------------
// safetensors

namespace {

constexpr uint64_t kSafetensorsMaxHeader = 100u * 1024 * 1024;  // the reference implementation's limit
constexpr size_t kSafetensorsAlign = 8;
constexpr int kSafetensorsMaxDepth = 8;  // a valid header nests 3 deep

const char* st_dtype(DType d) {
  switch (d) {
    case DType::Float32: return "F32";
    case DType::Int64: return "I64";
    case DType::UInt8: return "U8";
    case DType::Bool: return "BOOL";
  }
  return "?";
}

}  // namespace

namespace {

uint64_t safetensors_header_length(const char* first8) {
  uint64_t hlen = 0;
  for (int k = 0; k < 8; ++k) hlen |= static_cast<uint64_t>(static_cast<uint8_t>(first8[k])) << (8 * k);
  return hlen;
}

}  // namespace

SafeTensorsFile load_safetensors(const std::string& path) {
  // The header length is checked against the cap and the file's size before the file is read at all.
  std::ifstream in(path, std::ios::binary);
  SONAR_CHECK(in.good(), "load_safetensors: cannot open '", path, "': ", std::strerror(errno));
  char first8[8];
  in.read(first8, 8);
  if (in.gcount() == 8) {
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    const uint64_t hlen = safetensors_header_length(first8);
    SONAR_CHECK(hlen <= kSafetensorsMaxHeader, "load_safetensors: '", path, "' declares a header of ", hlen,
                " bytes (limit ", kSafetensorsMaxHeader, "): not a safetensors file?");
    SONAR_CHECK(size >= 8 && hlen <= static_cast<uint64_t>(size) - 8, "load_safetensors: '", path,
                "' is truncated: header of ", hlen, " bytes, file has ", size - 8, " after the length");
  }
  in.close();
  return load_safetensors_bytes(read_file(path), path);
}

SafeTensorsFile load_safetensors_bytes(const std::string& bytes, const std::string& path) {
  SONAR_CHECK(bytes.size() >= 8, "load_safetensors: '", path, "' is truncated (", bytes.size(),
              " bytes, need at least 8 for the header length)");
  const uint64_t hlen = safetensors_header_length(bytes.data());
  SONAR_CHECK(hlen <= kSafetensorsMaxHeader, "load_safetensors: '", path, "' declares a header of ", hlen,
              " bytes (limit ", kSafetensorsMaxHeader, "): not a safetensors file?");
  SONAR_CHECK(hlen <= bytes.size() - 8, "load_safetensors: '", path, "' is truncated: header of ", hlen,
              " bytes, file has ", bytes.size() - 8, " after the length");
  nlohmann::json header;
  try {
    // A valid header nests 3 deep ({name: {shape: [...]}}); deeper nesting is refused while parsing, so a
    // header of brackets cannot build a deep tree.
    header = nlohmann::json::parse(
        bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(hlen),
        [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
          SONAR_CHECK(depth <= kSafetensorsMaxDepth, "load_safetensors: header of '", path, "' nests deeper than ",
                      kSafetensorsMaxDepth, " levels (kSafetensorsMaxDepth)");
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    SONAR_FAIL("load_safetensors: header of '", path, "' is not valid JSON: ", e.what());
  }
  SONAR_CHECK(header.is_object(), "load_safetensors: header of '", path, "' is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(hlen);
  const uint64_t data_size = bytes.size() - data_start;

  SafeTensorsFile out;
  struct Span { uint64_t begin, end; std::string name; };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      SONAR_CHECK(e.is_object(), "load_safetensors: '__metadata__' of '", path, "' is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        SONAR_CHECK(m.value().is_string(), "load_safetensors: metadata '", m.key(), "' of '", path,
                    "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "load_safetensors: tensor '" + name + "' in '" + path + "'";
    SONAR_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), what,
                ": entry needs 'dtype', 'shape' and 'data_offsets'");
    SONAR_CHECK(e["dtype"].is_string(), what, ": 'dtype' is not a string");
    const std::string dt = e["dtype"].get<std::string>();
    SONAR_CHECK(e["shape"].is_array(), what, ": 'shape' is not an array");
    Shape shape;
    for (const auto& s : e["shape"]) {
      SONAR_CHECK(s.is_number_unsigned() || (s.is_number_integer() && s.get<int64_t>() >= 0), what,
                  ": 'shape' holds ", s.dump(), ", not a non-negative integer");
      shape.push_back(s.get<int64_t>());
    }
    SONAR_CHECK(shape.size() <= static_cast<size_t>(kMaxDims), what, ": shape ", shape_str(shape), " has more than ",
                kMaxDims, " dims");
    const auto& offs = e["data_offsets"];
    SONAR_CHECK(offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() && offs[1].is_number_unsigned(),
                what, ": 'data_offsets' must be two non-negative integers, got ", offs.dump());
    const uint64_t b = offs[0].get<uint64_t>(), en = offs[1].get<uint64_t>();
    size_t elem = 0;
    bool f64 = false;
    DType dtype = DType::Float32;
    if (dt == "F32") { dtype = DType::Float32; elem = 4; }
    else if (dt == "F64") { dtype = DType::Float32; elem = 8; f64 = true; }
    else if (dt == "I64") { dtype = DType::Int64; elem = 8; }
    else if (dt == "U8") { dtype = DType::UInt8; elem = 1; }
    else if (dt == "BOOL") { dtype = DType::Bool; elem = 1; }
    else SONAR_FAIL(what, ": unsupported dtype '", dt, "' (supported: F32, I64, U8, BOOL, and F64 read as F32)");
    const int64_t n = checked_numel(shape, elem, what);
    SONAR_CHECK(b <= en && en <= data_size, what, ": data_offsets [", b, ", ", en, "] outside the data section of ",
                data_size, " bytes");
    SONAR_CHECK(en - b == static_cast<uint64_t>(n) * elem, what, ": data_offsets [", b, ", ", en, "] span ",
                en - b, " bytes but shape ", shape_str(shape), " of ", dt, " needs ", static_cast<uint64_t>(n) * elem);
    const char* src = bytes.data() + data_start + b;
    Tensor t = f64 ? tensor_from_f64(src, shape) : tensor_from_raw(src, shape, dtype);
    if (dtype == DType::Bool) check_bool_bytes(t, "load_safetensors", path + ":" + name);
    out.tensors[name] = t;
    spans.push_back({b, en, name});
  }
  // The format requires the tensors to tile the data section exactly: no overlap, no holes.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const Span& s : spans) {
    SONAR_CHECK(s.begin == pos, "load_safetensors: tensor '", s.name, "' in '", path, "' starts at byte ", s.begin,
                " of the data section, expected ", pos, s.begin < pos ? " (overlaps the previous tensor)" : " (hole)");
    pos = s.end;
  }
  SONAR_CHECK(pos == data_size, "load_safetensors: '", path, "' has ", data_size, " data bytes but its tensors cover ",
              pos);
  return out;
}

std::string safetensors_bytes(const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  // nlohmann::json objects are sorted by key; the data follows the same (name) order.
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::string data;
  for (const auto& [name, t] : tensors) {
    SONAR_CHECK(name != "__metadata__", "save_safetensors: '__metadata__' is reserved and cannot name a tensor");
    SONAR_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    const uint64_t begin = data.size();
    data += tensor_bytes(t);
    header[name] = {{"dtype", st_dtype(t.dtype())},
                    {"shape", t.shape()},
                    {"data_offsets", {begin, static_cast<uint64_t>(data.size())}}};
  }
  std::string h = header.dump();
  h.append((kSafetensorsAlign - h.size() % kSafetensorsAlign) % kSafetensorsAlign, ' ');
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((static_cast<uint64_t>(h.size()) >> (8 * k)) & 0xff);
  out += h;
  out += data;
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, safetensors_bytes(tensors, metadata));
}

}  // namespace sonar
