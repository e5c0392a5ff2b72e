// The plan half of sonar/experiment.h: reading and checking an experiment plan (JSON shape, keys, types,
// names, duplicates, files that must exist, each method's SONAR flags), its normalised JSON and the grid's
// cells. Light on purpose: it needs the flag parser of sonar/method_options.cpp but no training, model or
// audio code, so the plan fuzz target (fuzz/fuzz_experiment_plan.cpp) links it without the library. Not the
// runner, the results or the figures (sonar/experiment.cpp).
#include "sonar/experiment.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <set>
#include <system_error>

#include "sonar/method.h"
#include "tensor/error.h"
#include "tensor/io.h"

namespace sonar::method {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// At most this many cells (domains x seeds x methods). A cell is a pre-training run: a real grid has tens to
// hundreds, and ten thousand runs of even ten minutes each are ten weeks of a machine, so a plan listing more
// is a mistake. Refusing it keeps the cell list, plan.json and the results table small (a plan of 74250 cells
// took the fuzz target over 20 s, a timeout, just to list them under the sanitizers).
constexpr uint64_t kMaxGridCells = 10000;

bool is_control(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u < 0x20 || u == 0x7f;
}

// A string with its control characters shown as \xNN.
std::string printable(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (is_control(c)) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned char>(c));
      out += b;
    } else {
      out += c;
    }
  }
  return out;
}

// A plan's strings (keys and values) may not hold control characters (U+0000 to U+001F, U+007F): no name, path
// or flag value needs one, and refusing them first keeps every later error one whole line (a newline would
// split it, a NUL would cut what() short). Iterative: a plan may nest a hundred thousand levels deep.
void check_no_control_characters(const json& plan, const std::string& what) {
  auto check = [&](const std::string& s, const char* kind) {
    SONAR_CHECK(std::none_of(s.begin(), s.end(), is_control), what, ": the ", kind, " \"", printable(s),
                "\" holds a control character; names, paths and flag values may not");
  };
  std::vector<const json*> todo = {&plan};
  while (!todo.empty()) {
    const json& v = *todo.back();
    todo.pop_back();
    if (v.is_string()) {
      check(v.get_ref<const std::string&>(), "string");
    } else if (v.is_object()) {
      for (auto it = v.begin(); it != v.end(); ++it) {
        check(it.key(), "key");
        todo.push_back(&it.value());
      }
    } else if (v.is_array()) {
      for (const auto& e : v) todo.push_back(&e);
    }
  }
}

// How a value is named in an error: numbers as written, anything else by its type (never a dump of a
// structure that may nest a hundred thousand levels deep).
std::string shown(const json& v) { return v.is_number() ? v.dump() : std::string("a JSON ") + v.type_name(); }

void check_keys(const json& j, const std::set<std::string>& allowed, const std::string& where) {
  SONAR_CHECK(j.is_object(), where, ": expected a JSON object");
  for (const auto& [k, v] : j.items()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    SONAR_CHECK(allowed.count(k), where, ": unknown key '", k, "' (known: ", list, ")");
  }
}

std::string get_string(const json& j, const std::string& key, const std::string& where, bool required,
                       const std::string& fallback = "") {
  if (!j.contains(key)) {
    SONAR_CHECK(!required, where, ": missing '", key, "'");
    return fallback;
  }
  SONAR_CHECK(j[key].is_string(), where, ": '", key, "' must be a string");
  return j[key].get<std::string>();
}

std::vector<std::string> get_strings(const json& j, const std::string& key, const std::string& where) {
  std::vector<std::string> out;
  if (!j.contains(key)) return out;
  SONAR_CHECK(j[key].is_array(), where, ": '", key, "' must be a list of strings");
  for (const auto& v : j[key]) {
    SONAR_CHECK(v.is_string(), where, ": '", key, "' must be a list of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

// A finite number; for an integral T a whole one within T's range (1, 1.0 and 1e3 alike), read without an
// out-of-range conversion.
template <class T>
T get_number(const json& j, const std::string& key, const std::string& where, T fallback) {
  if (!j.contains(key)) return fallback;
  const json& v = j[key];
  SONAR_CHECK(v.is_number(), where, ": '", key, "' must be a number, got ", shown(v));
  const double d = v.get<double>();
  SONAR_CHECK(std::isfinite(d), where, ": '", key, "' must be a finite number, got ", shown(v));
  if constexpr (std::is_integral_v<T>) {
    using limits = std::numeric_limits<T>;
    const auto out_of_range = [&] {
      return Error(detail::concat(where, ": '", key, "' must be a whole number from ", limits::min(), " to ",
                                  limits::max(), ", got ", shown(v)));
    };
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(limits::max())) throw out_of_range();
      return static_cast<T>(v.get<uint64_t>());
    }
    if (v.is_number_integer()) {
      const int64_t i = v.get<int64_t>();
      if (i < static_cast<int64_t>(limits::min()) || i > static_cast<int64_t>(limits::max())) throw out_of_range();
      return static_cast<T>(i);
    }
    // A float: whole and within [-2^(bits-1), 2^(bits-1)), whose ends are exact doubles.
    constexpr double lo = static_cast<double>(limits::min());
    if (std::floor(d) != d || d < lo || d >= -lo) throw out_of_range();
  }
  return static_cast<T>(d);
}

// One element of a flag's value as the command line would give it: a string as it is, a number printed.
std::string flag_scalar(const json& v, const std::string& where, const std::string& key) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_unsigned()) return std::to_string(v.get<uint64_t>());
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) {
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", v.get<double>());
    return b;
  }
  SONAR_FAIL(where, ": flag '", key, "' must be a string, a number or a list of them, got ", shown(v));
}

// A flag's value: a scalar, or a flat list of them joined with commas (e.g. distill-layers [1, 2] -> "1,2").
std::string flag_value(const json& v, const std::string& where, const std::string& key) {
  if (!v.is_array()) return flag_scalar(v, where, key);
  std::string s;
  for (const auto& e : v) {
    if (!s.empty()) s += ',';
    s += flag_scalar(e, where, key);
  }
  return s;
}

std::map<std::string, std::string> get_flags(const json& j, const std::string& where) {
  std::map<std::string, std::string> out;
  if (j.is_null()) return out;
  SONAR_CHECK(j.is_object(), where, ": 'flags' must be an object of SONAR flags");
  const auto& known = sonar_flag_names();
  for (const auto& [k, v] : j.items()) {
    SONAR_CHECK(std::find(known.begin(), known.end(), k) != known.end(), where, ": unknown flag '", k,
                "' (see `sonar pretrain --help` for the SONAR flags)");
    SONAR_CHECK(k != "prior" && k != "prior-splits", where, ": '", k, "' comes from the plan's 'prior' entry");
    out[k] = flag_value(v, where, k);
  }
  return out;
}

std::string resolve(const std::string& base, const std::string& p) {
  if (p.empty()) return p;
  const fs::path path(p);
  return (path.is_absolute() ? path : fs::path(base) / path).lexically_normal().string();
}

void check_exists(const std::string& path, const std::string& where, const std::string& what) {
  std::error_code ec;  // a name too long, a loop of links, a folder without permission: an error, not a throw
  const bool exists = fs::exists(path, ec);
  SONAR_CHECK(!ec, where, ": ", what, " ", path, ": ", ec.message());
  SONAR_CHECK(exists, where, ": ", what, " ", path, " does not exist");
}

void check_name(const std::string& name, const std::string& where, const std::string& what) {
  SONAR_CHECK(!name.empty(), where, ": empty ", what, " name");
  for (char c : name)
    SONAR_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.', where, ": ", what,
                " name '", name, "' may only hold letters, digits, '-', '_' and '.' (it names a folder)");
  SONAR_CHECK(name != "." && name != "..", where, ": ", what, " name '", name, "' is not allowed");
}

}  // namespace

std::map<std::string, std::string> cell_flags(const ExperimentPlan& plan, const PlanMethod& m) {
  std::map<std::string, std::string> f = m.flags;
  const auto it = f.find("method");
  if (it != f.end() && it->second == "sonar") {
    for (const auto& [k, v] : plan.sonar_flags) f.emplace(k, v);  // the method's own flags win
    f["prior"] = plan.prior_data;
    if (!plan.prior_splits.empty()) {
      std::string s;
      for (const auto& x : plan.prior_splits) s += (s.empty() ? "" : ",") + x;
      f["prior-splits"] = s;
    }
  }
  return f;
}

ExperimentPlan parse_plan(const json& j, const std::string& base_dir, const std::string& what) {
  check_no_control_characters(j, what);
  check_keys(j, {"name", "start", "prior", "domains", "tasks", "methods", "seeds", "flags", "train", "probe"}, what);
  ExperimentPlan p;
  p.name = get_string(j, "name", what, false, p.name);

  SONAR_CHECK(j.contains("start"), what, ": missing 'start' (the start model: {\"model\": ..., \"tokenizer\": ...})");
  const std::string ws = what + ": start";
  check_keys(j["start"], {"model", "tokenizer"}, ws);
  p.start_model = resolve(base_dir, get_string(j["start"], "model", ws, true));
  p.start_tokenizer = resolve(base_dir, get_string(j["start"], "tokenizer", ws, true));
  check_exists(p.start_model, ws, "model");
  check_exists(p.start_tokenizer, ws, "tokenizer");

  SONAR_CHECK(j.contains("prior"), what, ": missing 'prior' (the prior pool: {\"data\": ..., \"task\": ...})");
  const std::string wp = what + ": prior";
  check_keys(j["prior"], {"data", "splits", "task"}, wp);
  p.prior_data = resolve(base_dir, get_string(j["prior"], "data", wp, true));
  p.prior_splits = get_strings(j["prior"], "splits", wp);
  p.prior_task = resolve(base_dir, get_string(j["prior"], "task", wp, false, get_string(j["prior"], "data", wp, true)));
  check_exists(p.prior_data, wp, "data");
  check_exists(p.prior_task, wp, "task manifest");

  std::set<std::string> task_names = {"prior"};
  SONAR_CHECK(j.contains("domains") && j["domains"].is_array() && !j["domains"].empty(), what,
              ": 'domains' must be a non-empty list of {\"name\", \"data\", \"splits\", \"task\"}");
  for (const auto& d : j["domains"]) {
    const std::string wd = what + ": domain";
    check_keys(d, {"name", "data", "splits", "task"}, wd);
    PlanDomain pd;
    pd.name = get_string(d, "name", wd, true);
    check_name(pd.name, wd, "domain");
    const std::string wn = what + ": domain '" + pd.name + "'";
    SONAR_CHECK(task_names.insert(pd.name).second, what, ": duplicate run name: domain '", pd.name,
                "' is listed twice (or clashes with the 'prior' task)");
    pd.data = resolve(base_dir, get_string(d, "data", wn, true));
    pd.splits = get_strings(d, "splits", wn);
    pd.task = resolve(base_dir, get_string(d, "task", wn, false, get_string(d, "data", wn, true)));
    check_exists(pd.data, wn, "data manifest");
    check_exists(pd.task, wn, "task manifest");
    p.domains.push_back(pd);
  }
  if (j.contains("tasks")) {
    SONAR_CHECK(j["tasks"].is_object(), what, ": 'tasks' must be an object {name: manifest}");
    for (const auto& [k, v] : j["tasks"].items()) {
      check_name(k, what + ": tasks", "task");
      SONAR_CHECK(v.is_string(), what, ": tasks: '", k, "' must name a manifest");
      SONAR_CHECK(task_names.insert(k).second, what, ": duplicate task name '", k, "'");
      p.extra_tasks[k] = resolve(base_dir, v.get<std::string>());
      check_exists(p.extra_tasks[k], what + ": task '" + k + "'", "manifest");
    }
  }

  if (j.contains("flags")) p.sonar_flags = get_flags(j["flags"], what + ": flags");
  SONAR_CHECK(!p.sonar_flags.count("method"), what, ": flags: 'method' is chosen per method, not for all");

  SONAR_CHECK(j.contains("methods") && j["methods"].is_array() && !j["methods"].empty(), what,
              ": 'methods' must be a non-empty list (names such as \"dcpt\", \"sonar\", or {\"name\", \"base\", \"flags\"})");
  std::set<std::string> method_names_seen;
  for (const auto& m : j["methods"]) {
    PlanMethod pm;
    if (m.is_string()) {
      pm.name = m.get<std::string>();
      SONAR_CHECK(pm.name != kStartMethodName, what, ": 'start' is always in the grid; do not list it as a method");
      try {
        pm.flags = method_flags(pm.name);
      } catch (const Error& e) {
        SONAR_FAIL(what, ": ", e.what());
      }
    } else {
      const std::string wm = what + ": method";
      check_keys(m, {"name", "base", "flags"}, wm);
      pm.name = get_string(m, "name", wm, true);
      const std::string base = get_string(m, "base", wm, false, "sonar");
      try {
        pm.flags = method_flags(base);
      } catch (const Error& e) {
        SONAR_FAIL(wm, " '", pm.name, "': ", e.what());
      }
      if (m.contains("flags"))  // by reference: a copy of a deeply nested value would recurse as deep
        for (const auto& [k, v] : get_flags(m["flags"], wm + " '" + pm.name + "'")) pm.flags[k] = v;
    }
    check_name(pm.name, what + ": method", "method");
    SONAR_CHECK(pm.name != kStartMethodName, what, ": the method name 'start' is reserved for the start model");
    SONAR_CHECK(method_names_seen.insert(pm.name).second, what, ": duplicate run name: method '", pm.name,
                "' is listed twice");
    p.methods.push_back(pm);
  }

  SONAR_CHECK(j.contains("seeds") && j["seeds"].is_array() && !j["seeds"].empty(), what,
              ": 'seeds' must be a non-empty list of whole numbers >= 0");
  std::set<uint64_t> seeds_seen;
  for (const auto& s : j["seeds"]) {
    // Seeds are 64-bit: JSON's non-negative integers up to 2^64 - 1 (a C++-built plan may hold them signed).
    SONAR_CHECK(s.is_number_unsigned() || (s.is_number_integer() && s.get<int64_t>() >= 0), what,
                ": seeds must be whole numbers >= 0, got ", shown(s));
    const uint64_t v = s.is_number_unsigned() ? s.get<uint64_t>() : static_cast<uint64_t>(s.get<int64_t>());
    SONAR_CHECK(seeds_seen.insert(v).second, what, ": duplicate run name: seed ", v, " is listed twice");
    p.seeds.push_back(v);
  }
  const uint64_t cells = static_cast<uint64_t>(p.domains.size()) * p.seeds.size() * p.methods.size();
  SONAR_CHECK(cells <= kMaxGridCells, what, ": the grid has ", p.domains.size(), " domains x ", p.seeds.size(),
              " seeds x ", p.methods.size(), " methods = ", cells, " runs, more than ", kMaxGridCells,
              " (kMaxGridCells)");

  if (j.contains("train")) {
    const json& t = j["train"];
    const std::string wt = what + ": train";
    check_keys(t, {"steps", "batch", "warmup", "log_every", "save_every", "crop_seconds", "lr", "final_lr",
                   "max_clip_seconds", "threads", "workers"}, wt);
    PlanTraining& r = p.train;
    r.steps = get_number(t, "steps", wt, r.steps);
    r.batch = get_number(t, "batch", wt, r.batch);
    r.warmup = get_number(t, "warmup", wt, r.warmup);
    r.log_every = get_number(t, "log_every", wt, r.log_every);
    r.save_every = get_number(t, "save_every", wt, r.save_every);
    r.crop_seconds = get_number(t, "crop_seconds", wt, r.crop_seconds);
    r.lr = get_number(t, "lr", wt, r.lr);
    r.final_lr = get_number(t, "final_lr", wt, r.final_lr);
    r.max_clip_seconds = get_number(t, "max_clip_seconds", wt, r.max_clip_seconds);
    r.threads = get_number(t, "threads", wt, r.threads);
    r.workers = get_number(t, "workers", wt, r.workers);
    SONAR_CHECK(r.steps > 0 && r.batch > 0 && r.log_every > 0 && r.save_every > 0 && r.crop_seconds > 0 && r.lr > 0 &&
                r.threads >= 0 && r.workers >= 0, wt, ": steps, batch, log_every, save_every, crop_seconds and lr "
                "must be positive, threads and workers >= 0");
  }
  if (j.contains("probe")) {
    const json& t = j["probe"];
    const std::string wt = what + ": probe";
    check_keys(t, {"epochs", "patience", "layer", "batch", "max_seconds", "group_folds"}, wt);
    PlanProbe& r = p.probe;
    r.epochs = get_number(t, "epochs", wt, r.epochs);
    r.patience = get_number(t, "patience", wt, r.patience);
    r.layer = get_number(t, "layer", wt, r.layer);
    r.batch = get_number(t, "batch", wt, r.batch);
    r.max_seconds = get_number(t, "max_seconds", wt, r.max_seconds);
    r.group_folds = get_number(t, "group_folds", wt, r.group_folds);
    SONAR_CHECK(r.epochs > 0 && r.patience > 0 && r.layer >= 0 && r.batch > 0 && r.max_seconds > 0, wt,
                ": epochs, patience, batch and max_seconds must be positive, layer >= 0");
    SONAR_CHECK(r.group_folds == 0 || r.group_folds >= 2, wt, ": group_folds must be 0 (the manifests' splits) or "
                "at least 2, got ", r.group_folds);
  }

  // Every method's flags must make valid options (the same check `sonar pretrain` does), before anything runs.
  // sonar_options_from_flags validates each part's options, the same validate() each extension's constructor
  // runs, so building the extensions here would check nothing more.
  for (const auto& m : p.methods) {
    try {
      (void)sonar_options_from_flags(cell_flags(p, m));
    } catch (const Error& e) {
      SONAR_FAIL(what, ": method '", m.name, "': ", e.what());
    }
  }
  return p;
}

ExperimentPlan parse_plan_text(const std::string& text, const std::string& base_dir, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    SONAR_FAIL(what, ": not valid JSON: ", e.what());
  }
  return parse_plan(j, base_dir, what);
}

ExperimentPlan read_plan(const std::string& path) {
  SONAR_CHECK(fs::exists(path), "plan ", path, " does not exist");
  return parse_plan_text(read_file(path), fs::absolute(path).parent_path().string(), "plan " + path);
}

json ExperimentPlan::to_json() const {
  json j;
  j["name"] = name;
  j["start"] = {{"model", start_model}, {"tokenizer", start_tokenizer}};
  j["prior"] = {{"data", prior_data}, {"splits", prior_splits}, {"task", prior_task}};
  j["domains"] = json::array();
  for (const auto& d : domains)
    j["domains"].push_back({{"name", d.name}, {"data", d.data}, {"splits", d.splits}, {"task", d.task}});
  j["tasks"] = json::object();
  for (const auto& [k, v] : extra_tasks) j["tasks"][k] = v;
  j["methods"] = json::array();
  for (const auto& m : methods) {
    json f = json::object();
    for (const auto& [k, v] : m.flags)
      if (k != "method") f[k] = v;
    j["methods"].push_back({{"name", m.name}, {"base", m.flags.count("method") ? m.flags.at("method") : "dcpt"},
                            {"flags", f}});
  }
  j["seeds"] = seeds;
  j["flags"] = json::object();
  for (const auto& [k, v] : sonar_flags) j["flags"][k] = v;
  j["train"] = {{"steps", train.steps},         {"batch", train.batch},
                {"warmup", train.warmup},       {"log_every", train.log_every},
                {"save_every", train.save_every}, {"crop_seconds", train.crop_seconds},
                {"lr", train.lr},               {"final_lr", train.final_lr},
                {"max_clip_seconds", train.max_clip_seconds}, {"threads", train.threads},
                {"workers", train.workers}};
  j["probe"] = {{"epochs", probe.epochs}, {"patience", probe.patience}, {"layer", probe.layer},
                {"batch", probe.batch}, {"max_seconds", probe.max_seconds}, {"group_folds", probe.group_folds}};
  return j;
}

std::vector<GridCell> grid_cells(const ExperimentPlan& plan, const std::string& out_dir) {
  std::vector<GridCell> cells;
  for (const auto& d : plan.domains)
    for (uint64_t s : plan.seeds)
      for (const auto& m : plan.methods)
        cells.push_back({d.name, m.name, s,
                         (fs::path(out_dir) / "runs" / d.name / m.name / ("seed" + std::to_string(s))).string()});
  return cells;
}

}  // namespace sonar::method
