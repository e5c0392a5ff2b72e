// Helpers shared by the run-folder training loops (see sonar/run_folder.h); moved unchanged from trainer.cpp.
#include "sonar/run_folder.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "tensor/error.h"
#include "tensor/io.h"

namespace sonar::method {

namespace fs = std::filesystem;
using json = nlohmann::json;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string absolute_path(const std::string& p) {
  if (p.empty()) return p;
  return fs::absolute(fs::path(p)).lexically_normal().string();
}

std::string hex_of(const audio::Hash128& h) { return h.hex(); }

void add_module_state(HashChain& hc, const nn::Module& m) {
  for (const auto& [name, t] : m.state_dict()) {
    hc.add(name);
    Tensor c = t.contiguous();
    hc.add(c.raw_data(), c.nbytes());
  }
}

audio::Dataset read_training_data(const std::string& source, const std::vector<std::string>& splits) {
  audio::Dataset data = audio::read_source(source);
  if (!splits.empty()) data = audio::select_split(data, splits);
  SONAR_CHECK(data.size() > 0, source, ": no audio clips", splits.empty() ? "" : " in the selected splits");
  return data;
}

std::string data_fingerprint(const audio::Dataset& data) {
  HashChain hc;
  for (const auto& it : data.items) hc.add(it.path + "\n");
  return hex_of(hc.h);
}

void default_log(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::map<std::string, Tensor> with_prefix_removed(const std::map<std::string, Tensor>& m, const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (const auto& [k, v] : m)
    if (k.compare(0, prefix.size(), prefix) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

std::map<std::string, std::string> meta_with_prefix_removed(const std::map<std::string, std::string>& m,
                                                            const std::string& prefix) {
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m)
    if (k.compare(0, prefix.size(), prefix) == 0) out[k.substr(prefix.size())] = v;
  return out;
}

const std::string& meta_at(const beats::CheckpointData& c, const std::string& key) {
  auto it = c.metadata.find(key);
  SONAR_CHECK(it != c.metadata.end(), c.path, ": not a trainer checkpoint (metadata has no '", key, "')");
  return it->second;
}

json meta_json(const beats::CheckpointData& c, const std::string& key) {
  const std::string& s = meta_at(c, key);
  try {
    return json::parse(s);
  } catch (const json::exception& e) {
    SONAR_FAIL(c.path, ": metadata '", key, "' is not valid JSON: ", e.what());
  }
}

std::string json_value_str(const json& j) { return j.is_null() ? "(none)" : j.dump(); }

void trim_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::string text = read_file(path), kept;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) break;  // a half-written last line is dropped
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    try {
      const json j = json::parse(line);
      if (j.contains("step") && j.at("step").get<int64_t>() <= step) kept += line + "\n";
    } catch (const json::exception&) {
      // an unreadable line is dropped
    }
  }
  write_file_atomic(path, kept);
}

void append_line(const std::string& path, const std::string& line) {
  std::FILE* f = std::fopen(path.c_str(), "ab");
  SONAR_CHECK(f != nullptr, path, ": cannot open for appending");
  const std::string l = line + "\n";
  const bool ok = std::fwrite(l.data(), 1, l.size(), f) == l.size();
  const bool closed = std::fclose(f) == 0;
  SONAR_CHECK(ok && closed, path, ": write failed (disk full?)");
}

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(); }

}  // namespace sonar::method
