// Dataset sources (class folders, CSV/TSV manifests, file lists) and deterministic splits; see dataset.h.
// Not decoding or batching.
#include "audio/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "tensor/error.h"
#include "tensor/random.h"

namespace sonar::audio {

namespace fs = std::filesystem;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string read_text(const std::string& path, const char* what) {
  std::error_code ec;
  SONAR_CHECK(fs::is_regular_file(path, ec), path, ": ", what, " not found");
  const uintmax_t size = fs::file_size(path, ec);
  SONAR_CHECK(ec || size <= kMaxManifestBytes, path, ": the ", what, " is ", size, " bytes, more than ",
              kMaxManifestBytes, " (kMaxManifestBytes)");
  std::ifstream f(path, std::ios::binary);
  SONAR_CHECK(f.good(), path, ": cannot read the ", what);
  std::string text((std::istreambuf_iterator<char>(f)), {});
  if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 BOM
  return text;
}

}  // namespace

std::vector<CsvRow> parse_csv(const std::string& text, char delim) {
  std::vector<CsvRow> rows;
  size_t i = 0;
  int64_t line = 1;
  const size_t n = text.size();
  while (i < n) {
    // Blank line.
    if (text[i] == '\n' || text[i] == '\r') {
      if (text[i] == '\n') ++line;
      ++i;
      continue;
    }
    CsvRow row;
    row.line = line;
    if (text[i] == '#') {
      size_t e = text.find('\n', i);
      if (e == std::string::npos) e = n;
      row.comment = true;
      row.raw = text.substr(i + 1, e - i - 1);
      if (!row.raw.empty() && row.raw.back() == '\r') row.raw.pop_back();
      rows.push_back(row);
      i = e;
      continue;
    }
    std::string field;
    bool quoted = false, was_quoted = false;
    for (;;) {
      if (i >= n) {
        SONAR_CHECK(!quoted, "unterminated quoted field starting on line ", row.line);
        row.fields.push_back(was_quoted ? field : trim(field));
        break;
      }
      const char c = text[i];
      if (quoted) {
        if (c == '"') {
          if (i + 1 < n && text[i + 1] == '"') {
            field += '"';
            i += 2;
          } else {
            quoted = false;
            ++i;
          }
        } else {
          if (c == '\n') ++line;
          field += c;
          ++i;
        }
        continue;
      }
      if (c == '"' && trim(field).empty()) {
        quoted = was_quoted = true;
        field.clear();
        ++i;
      } else if (c == delim) {
        SONAR_CHECK(row.fields.size() + 1 < kMaxManifestColumns, "line ", row.line, " has more than ",
                    kMaxManifestColumns, " fields (kMaxManifestColumns)");
        row.fields.push_back(was_quoted ? field : trim(field));
        field.clear();
        was_quoted = false;
        ++i;
      } else if (c == '\n' || c == '\r') {
        row.fields.push_back(was_quoted ? field : trim(field));
        if (c == '\r' && i + 1 < n && text[i + 1] == '\n') ++i;
        ++i;
        ++line;
        break;
      } else {
        if (!was_quoted) field += c;  // text after a closing quote is ignored
        ++i;
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

namespace {

// Index of the first column (case-insensitive) among `names`, or -1.
int find_column(const std::vector<std::string>& header, const std::vector<std::string>& names) {
  for (const auto& want : names)
    for (size_t c = 0; c < header.size(); ++c)
      if (lower(header[c]) == lower(want)) return static_cast<int>(c);
  return -1;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

std::vector<std::string> split_labels(const std::string& cell, const std::string& seps) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : cell) {
    if (seps.find(c) != std::string::npos) {
      if (!trim(cur).empty()) out.push_back(trim(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!trim(cur).empty()) out.push_back(trim(cur));
  return out;
}

std::string resolve(const fs::path& base, const std::string& p) {
  fs::path path(p);
  if (path.is_relative()) path = base / path;
  return path.lexically_normal().string();
}


}  // namespace

// ---- Dataset ----------------------------------------------------------------------------------------

bool Dataset::multi_label() const {
  for (const auto& it : items)
    if (it.labels.size() > 1) return true;
  return false;
}

int64_t Dataset::class_index(const std::string& label) const {
  auto it = std::lower_bound(classes.begin(), classes.end(), label);
  return it != classes.end() && *it == label ? it - classes.begin() : -1;
}

Tensor Dataset::target(int64_t i) const {
  SONAR_CHECK(i >= 0 && i < size(), "Dataset::target: index ", i, " out of range [0, ", size(), ")");
  std::vector<float> t(classes.size(), 0.0f);
  for (const auto& l : items[i].labels) {
    const int64_t c = class_index(l);
    SONAR_CHECK(c >= 0, origin, ": label '", l, "' of ", items[i].path, " is not in the class list");
    t[c] = 1.0f;
  }
  return from_vector(t, {num_classes()});
}

int64_t Dataset::label_index(int64_t i) const {
  SONAR_CHECK(i >= 0 && i < size(), "Dataset::label_index: index ", i, " out of range [0, ", size(), ")");
  if (items[i].labels.size() != 1) return -1;
  return class_index(items[i].labels[0]);
}

void Dataset::rebuild_classes() {
  std::set<std::string> s;
  for (const auto& it : items) s.insert(it.labels.begin(), it.labels.end());
  classes.assign(s.begin(), s.end());
}

Dataset Dataset::subset(const std::vector<int64_t>& indices) const {
  Dataset d;
  d.classes = classes;
  d.origin = origin;
  for (int64_t i : indices) {
    SONAR_CHECK(i >= 0 && i < size(), "Dataset::subset: index ", i, " out of range [0, ", size(), ")");
    d.items.push_back(items[i]);
  }
  return d;
}

const std::vector<std::string>& audio_extensions() {
  static const std::vector<std::string> e = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff",
                                             ".aif", ".au",   ".caf", ".w64", ".rf64", ".npy"};
  return e;
}

bool is_audio_path(const std::string& path) {
  const std::string ext = lower(fs::path(path).extension().string());
  const auto& e = audio_extensions();
  return std::find(e.begin(), e.end(), ext) != e.end();
}

// ---- sources ----------------------------------------------------------------------------------------

Dataset read_folder(const std::string& root, const FolderOptions& opts) {
  std::error_code ec;
  SONAR_CHECK(fs::is_directory(root, ec), root, ": not a folder");
  std::vector<fs::path> files;
  auto consider = [&](const fs::directory_entry& e) {
    const std::string name = e.path().filename().string();
    if (!name.empty() && name[0] == '.') return;  // hidden files and our own temporaries
    if (e.is_regular_file() && is_audio_path(name)) files.push_back(e.path());
  };
  if (opts.recursive) {
    for (auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      SONAR_CHECK(!ec, root, ": cannot list folder: ", ec.message());
      if (it->is_directory() && !it->path().filename().string().empty() &&
          it->path().filename().string()[0] == '.') {
        it.disable_recursion_pending();
        continue;
      }
      consider(*it);
    }
  } else {
    for (const auto& e : fs::directory_iterator(root, ec)) consider(e);
  }
  SONAR_CHECK(!ec, root, ": cannot list folder: ", ec.message());
  std::sort(files.begin(), files.end());
  std::regex re;
  if (!opts.label_regex.empty()) {
    try {
      re = std::regex(opts.label_regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      SONAR_FAIL("label regex '", opts.label_regex, "' is invalid: ", e.what());
    }
  }
  Dataset d;
  d.origin = root;
  const fs::path base(root);
  for (const auto& f : files) {
    AudioItem item;
    item.path = f.lexically_normal().string();
    if (opts.label_regex.empty()) {
      const fs::path rel = f.lexically_relative(base);
      if (std::distance(rel.begin(), rel.end()) >= 2) item.labels.push_back(rel.begin()->string());
    } else {
      std::smatch m;
      const std::string name = f.filename().string();
      if (std::regex_search(name, m, re)) item.labels.push_back(m.size() > 1 ? m[1].str() : m[0].str());
    }
    d.items.push_back(std::move(item));
  }
  d.rebuild_classes();
  return d;
}

Dataset read_manifest(const std::string& path, const ManifestOptions& opts) {
  return parse_manifest(read_text(path, "manifest"), path, opts);
}

Dataset parse_manifest(std::string text, const std::string& path, const ManifestOptions& opts) {
  if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 BOM
  char delim = opts.delimiter;
  if (delim == 0) {
    const std::string first_line = text.substr(0, text.find('\n'));
    delim = lower(fs::path(path).extension().string()) == ".tsv" ||
                    (first_line.find('\t') != std::string::npos && first_line.find(',') == std::string::npos)
                ? '\t'
                : ',';
  }
  std::vector<CsvRow> rows;
  try {
    rows = parse_csv(text, delim);
  } catch (const Error& e) {
    SONAR_FAIL(path, ": ", e.what());
  }
  static const std::vector<std::string> kPathNames = {"path", "filepath", "file_path", "filename", "file",
                                                      "audio", "wav", "ytid"};
  std::vector<std::string> path_names = kPathNames;
  if (!opts.path_column.empty()) path_names = {opts.path_column};

  // The header is the first row that is not a comment, unless a comment right before it names the columns
  // and it does not (AudioSet's "# YTID, start_seconds, end_seconds, positive_labels").
  size_t h = 0;
  while (h < rows.size() && rows[h].comment) ++h;
  SONAR_CHECK(h < rows.size(), path, ": no header row (an empty manifest)");
  std::vector<std::string> header = rows[h].fields;
  size_t first_data = h + 1;
  if (find_column(header, path_names) < 0 && h > 0 && rows[h - 1].comment) {
    std::vector<CsvRow> c = parse_csv(rows[h - 1].raw, delim);
    if (!c.empty() && find_column(c[0].fields, path_names) >= 0) {
      header = c[0].fields;
      first_data = h;
    }
  }
  const int path_col = find_column(header, path_names);
  SONAR_CHECK(path_col >= 0, path, ": no ", opts.path_column.empty() ? "path" : "'" + opts.path_column + "'",
              " column (columns: ", join(header, ", "), "; choose one with the path column option)");

  std::vector<int> label_cols;
  std::string seps = opts.label_separators;
  if (opts.label_columns.size() == 1 && opts.label_columns[0] == "-") {
    // unlabelled
  } else if (opts.label_columns.empty()) {
    const int c = find_column(header, {"label", "labels", "category", "class", "positive_labels", "genre",
                                       "emotion", "target"});
    if (c >= 0) label_cols.push_back(c);
  } else {
    for (const auto& name : opts.label_columns) {
      const int c = find_column(header, {name});
      SONAR_CHECK(c >= 0, path, ": no label column '", name, "' (columns: ", join(header, ", "), ")");
      label_cols.push_back(c);
    }
  }
  if (seps.empty()) {
    seps = ";";
    for (int c : label_cols)
      if (lower(header[c]) == "positive_labels") seps += ",";
  }
  auto optional_col = [&](const std::string& chosen, const std::vector<std::string>& defaults, const char* what) {
    if (chosen == "-") return -1;
    if (chosen.empty()) return find_column(header, defaults);
    const int c = find_column(header, {chosen});
    SONAR_CHECK(c >= 0, path, ": no ", what, " column '", chosen, "' (columns: ", join(header, ", "), ")");
    return c;
  };
  const int split_col = optional_col(opts.split_column, {"split", "fold", "set", "subset"}, "split");
  const int group_col = optional_col(opts.group_column, {"group", "speaker", "source_id"}, "group");

  const fs::path base = opts.audio_dir.empty() ? fs::path(path).parent_path() : fs::path(opts.audio_dir);
  Dataset d;
  d.origin = path;
  for (size_t r = first_data; r < rows.size(); ++r) {
    const CsvRow& row = rows[r];
    if (row.comment) continue;
    SONAR_CHECK(row.fields.size() == header.size(), path, ": line ", row.line, " has ", row.fields.size(),
                " fields but the header has ", header.size());
    AudioItem item;
    std::string p = row.fields[path_col];
    SONAR_CHECK(!p.empty(), path, ": line ", row.line, " has an empty '", header[path_col], "' cell");
    if (!opts.path_template.empty()) {
      std::string t = opts.path_template;
      for (size_t pos; (pos = t.find("{}")) != std::string::npos;) t.replace(pos, 2, p);
      p = t;
    }
    item.path = resolve(base, p);
    std::set<std::string> seen;  // (a linear search per label would be quadratic in a hostile cell)
    for (int c : label_cols)
      for (auto& l : split_labels(row.fields[c], seps))
        if (seen.insert(l).second) item.labels.push_back(std::move(l));
    if (split_col >= 0) item.split = row.fields[split_col];
    if (group_col >= 0) item.group = row.fields[group_col];
    for (size_t c = 0; c < header.size(); ++c) {
      const int ci = static_cast<int>(c);
      if (ci == path_col || ci == split_col || ci == group_col ||
          std::find(label_cols.begin(), label_cols.end(), ci) != label_cols.end())
        continue;
      item.extra[header[c]] = row.fields[c];
    }
    d.items.push_back(std::move(item));
  }
  d.rebuild_classes();
  return d;
}

Dataset read_file_list(const std::string& path, const std::string& audio_dir) {
  return parse_file_list(read_text(path, "file list"), path, audio_dir);
}

Dataset parse_file_list(const std::string& text, const std::string& path, const std::string& audio_dir) {
  const fs::path base = audio_dir.empty() ? fs::path(path).parent_path() : fs::path(audio_dir);
  Dataset d;
  d.origin = path;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    AudioItem item;
    item.path = resolve(base, line);
    d.items.push_back(std::move(item));
  }
  return d;
}

Dataset read_source(const std::string& source, const FolderOptions& folder, const ManifestOptions& manifest) {
  std::error_code ec;
  if (fs::is_directory(source, ec)) return read_folder(source, folder);
  SONAR_CHECK(fs::exists(source, ec), source, ": no such folder, manifest or file list");
  const std::string ext = lower(fs::path(source).extension().string());
  if (ext == ".csv" || ext == ".tsv") return read_manifest(source, manifest);
  return read_file_list(source, manifest.audio_dir);
}

// ---- splits -----------------------------------------------------------------------------------------

namespace {
bool in_values(const std::string& v, const std::vector<std::string>& values) {
  const std::string t = trim(v);
  for (const auto& x : values)
    if (trim(x) == t) return true;
  return false;
}
}  // namespace

Dataset select_split(const Dataset& ds, const std::vector<std::string>& values) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < ds.size(); ++i)
    if (in_values(ds.items[i].split, values)) idx.push_back(i);
  return ds.subset(idx);
}

Dataset exclude_split(const Dataset& ds, const std::vector<std::string>& values) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < ds.size(); ++i)
    if (!in_values(ds.items[i].split, values)) idx.push_back(i);
  return ds.subset(idx);
}

TrainValSplit split_by_value(const Dataset& ds, const std::vector<std::string>& val_values) {
  return {exclude_split(ds, val_values), select_split(ds, val_values)};
}

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  Generator g(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(v[i], v[g.next_int(0, i + 1)]);
  return v;
}

std::vector<std::vector<int64_t>> group_units(const Dataset& ds, const std::vector<int64_t>& items) {
  std::vector<std::vector<int64_t>> units;
  std::map<std::string, size_t> unit_of_group;
  for (int64_t i : items) {
    const std::string& g = ds.items[i].group;
    if (g.empty()) {
      units.push_back({i});
      continue;
    }
    auto [it, fresh] = unit_of_group.emplace(g, units.size());
    if (fresh) units.emplace_back();
    units[it->second].push_back(i);
  }
  return units;
}

std::vector<std::vector<int64_t>> group_units(const Dataset& ds) {
  std::vector<int64_t> all(ds.size());
  for (int64_t i = 0; i < ds.size(); ++i) all[i] = i;
  return group_units(ds, all);
}

TrainValSplit split_by_fraction(const Dataset& ds, double val_fraction, uint64_t seed) {
  SONAR_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "split_by_fraction: the validation fraction must be in "
              "[0, 1), got ", val_fraction);
  const std::vector<std::vector<int64_t>> units = group_units(ds);
  const auto order = shuffled_indices(static_cast<int64_t>(units.size()), seed);
  const int64_t target = static_cast<int64_t>(std::llround(val_fraction * static_cast<double>(ds.size())));
  std::vector<int64_t> train, val;
  for (int64_t u : order) {
    auto& dst = static_cast<int64_t>(val.size()) < target ? val : train;
    dst.insert(dst.end(), units[u].begin(), units[u].end());
  }
  std::sort(train.begin(), train.end());
  std::sort(val.begin(), val.end());
  return {ds.subset(train), ds.subset(val)};
}

}  // namespace sonar::audio
