// ZipReader (see zip_reader.h): libzip behind checks that bound every allocation by the archive's real
// bytes. Not here: .npy/.pt parsing.
#include "tensor/zip_reader.h"

#include <zip.h>

#include <filesystem>
#include <new>

#include "tensor/error.h"

namespace sonar {

ZipReader::ZipReader(zip_t* z, std::string name, std::string what, uint64_t archive_bytes)
    : z_(z), name_(std::move(name)), what_(std::move(what)), archive_bytes_(archive_bytes) {}

ZipReader::~ZipReader() { zip_discard(z_); }

std::unique_ptr<ZipReader> ZipReader::open_file(const std::string& path, const std::string& what,
                                                std::string* error) {
  std::error_code ec;
  const uintmax_t size = std::filesystem::file_size(path, ec);
  SONAR_CHECK(!ec, what, ": cannot open '", path, "': ", ec.message());
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_RDONLY, &err);
  if (z == nullptr) {
    zip_error_t ze;
    zip_error_init_with_code(&ze, err);
    if (error) *error = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    return nullptr;
  }
  return std::unique_ptr<ZipReader>(new ZipReader(z, path, what, static_cast<uint64_t>(size)));
}

std::unique_ptr<ZipReader> ZipReader::open_memory(const std::string& bytes, const std::string& name,
                                                  const std::string& what, std::string* error) {
  zip_error_t ze;
  zip_error_init(&ze);
  zip_source_t* src = zip_source_buffer_create(bytes.data(), bytes.size(), 0, &ze);
  if (src == nullptr) {
    if (error) *error = zip_error_strerror(&ze);
    zip_error_fini(&ze);
    return nullptr;
  }
  zip_t* z = zip_open_from_source(src, ZIP_RDONLY, &ze);
  if (z == nullptr) {
    if (error) *error = zip_error_strerror(&ze);
    zip_source_free(src);
    zip_error_fini(&ze);
    return nullptr;
  }
  zip_error_fini(&ze);
  return std::unique_ptr<ZipReader>(new ZipReader(z, name, what, bytes.size()));
}

int64_t ZipReader::num_entries() const { return zip_get_num_entries(z_, 0); }

std::string ZipReader::entry_name(int64_t index) const {
  const char* n = zip_get_name(z_, static_cast<zip_uint64_t>(index), 0);
  return n ? n : "";
}

int64_t ZipReader::locate(const std::string& entry) const { return zip_name_locate(z_, entry.c_str(), 0); }

std::string ZipReader::entry_label(int64_t index) const {
  return "entry '" + entry_name(index) + "' of '" + name_ + "'";
}

uint64_t ZipReader::declared_size(int64_t index) const {
  zip_stat_t st;
  zip_stat_init(&st);
  SONAR_CHECK(zip_stat_index(z_, static_cast<zip_uint64_t>(index), 0, &st) == 0 && (st.valid & ZIP_STAT_SIZE),
              what_, ": cannot stat ", entry_label(index), ": ", zip_strerror(z_));
  return st.size;
}

std::string ZipReader::read(const std::string& entry, uint64_t max_bytes) const {
  const int64_t idx = locate(entry);
  SONAR_CHECK(idx >= 0, what_, ": '", name_, "' has no entry '", entry, "'");
  return read(idx, max_bytes);
}

std::string ZipReader::read(int64_t index, uint64_t max_bytes) const {
  zip_stat_t st;
  zip_stat_init(&st);
  const zip_uint64_t need = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD;
  SONAR_CHECK(zip_stat_index(z_, static_cast<zip_uint64_t>(index), 0, &st) == 0 && (st.valid & need) == need,
              what_, ": cannot stat ", entry_label(index), ": ", zip_strerror(z_));
  const std::string label = entry_label(index);
  SONAR_CHECK(st.comp_size <= archive_bytes_, what_, ": ", label, " claims ", st.comp_size,
              " compressed bytes but the archive has only ", archive_bytes_);
  if (st.comp_method == ZIP_CM_STORE) {
    SONAR_CHECK(st.size == st.comp_size, what_, ": ", label, " is stored uncompressed but declares ", st.size,
                " bytes for ", st.comp_size, " bytes of data");
  } else if (st.comp_method == ZIP_CM_DEFLATE) {
    SONAR_CHECK(st.size / kMaxDeflateRatio <= st.comp_size, what_, ": ", label, " declares ", st.size,
                " inflated bytes from ", st.comp_size, " deflated bytes, more than deflate can produce (",
                kMaxDeflateRatio, ":1, kMaxDeflateRatio)");
  } else {
    SONAR_FAIL(what_, ": ", label, " uses compression method ", st.comp_method,
               "; only stored (0) and deflate (8) entries are read");
  }
  SONAR_CHECK(st.size <= max_bytes, what_, ": ", label, " declares ", st.size, " bytes, more than the ", max_bytes,
              " allowed here");
  zip_file_t* f = zip_fopen_index(z_, static_cast<zip_uint64_t>(index), 0);
  SONAR_CHECK(f != nullptr, what_, ": cannot open ", label, ": ", zip_strerror(z_));
  std::string out;
  try {
    out.resize(static_cast<size_t>(st.size));
  } catch (const std::bad_alloc&) {
    zip_fclose(f);
    SONAR_FAIL(what_, ": out of memory for the ", st.size, " bytes of ", label);
  }
  const zip_int64_t got = out.empty() ? 0 : zip_fread(f, out.data(), out.size());
  // One more read: 0 at the true end (libzip checks the CRC there), 1 if the data runs past its declared size.
  char extra = 0;
  const zip_int64_t more = got == static_cast<zip_int64_t>(out.size()) ? zip_fread(f, &extra, 1) : 0;
  const std::string err = got < 0 || more < 0 ? zip_error_strerror(zip_file_get_error(f)) : "";
  zip_fclose(f);
  SONAR_CHECK(got == static_cast<zip_int64_t>(out.size()) && more == 0, what_, ": cannot read ", label, " (",
              got < 0 ? 0 : got, more > 0 ? " and more" : "", " of ", out.size(), " declared bytes",
              err.empty() ? "" : ": " + err, ")");
  return out;
}

}  // namespace sonar
