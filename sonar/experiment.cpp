// Experiment grids (see sonar/experiment.h): the grid runner with reuse and resume, probe caching, results
// aggregation and the figures. Not the plan's parsing and checking (sonar/experiment_plan.cpp), the training
// loop, the method or the probe protocol themselves.
#include "sonar/experiment.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <mutex>
#include <thread>
#include <tuple>

#include <omp.h>

#include "sonar/method.h"
#include "sonar/plot.h"
#include "sonar/probe.h"
#include "sonar/trainer.h"
#include "tensor/error.h"
#include "tensor/io.h"

namespace sonar::method {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr const char* kGridRunFile = "grid_run.json";
constexpr const char* kResultsHeader = "domain,method,seed,task,role,test_clips,accuracy,macro_f1,mAP,score";

}  // namespace

// ---- results ----

namespace {

std::string fmt_number(double v) {
  if (!std::isfinite(v)) return "nan";
  char b[40];
  std::snprintf(b, sizeof b, "%.6f", v);
  return b;
}

double parse_double_field(const std::string& s, const std::string& where) {
  if (s == "nan" || s == "NaN" || s.empty()) return kNaN;
  char* end = nullptr;
  const double d = std::strtod(s.c_str(), &end);
  SONAR_CHECK(end && *end == '\0', where, ": '", s, "' is not a number");
  return d;
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> f;
  std::string cur;
  for (char c : line) {
    if (c == ',') {
      f.push_back(cur);
      cur.clear();
    } else if (c != '\r') {
      cur += c;
    }
  }
  f.push_back(cur);
  return f;
}

}  // namespace

std::string results_csv(const std::vector<ResultRow>& rows) {
  std::ostringstream o;
  o << kResultsHeader << "\n";
  for (const auto& r : rows)
    o << r.domain << ',' << r.method << ',' << r.seed << ',' << r.task << ',' << r.role << ',' << r.test_clips << ','
      << fmt_number(r.accuracy) << ',' << fmt_number(r.macro_f1) << ',' << fmt_number(r.mAP) << ','
      << fmt_number(r.score) << "\n";
  return o.str();
}

std::vector<ResultRow> parse_results_csv(const std::string& text, const std::string& what) {
  std::istringstream in(text);
  std::string line;
  SONAR_CHECK(std::getline(in, line), what, ": empty");
  if (!line.empty() && line.back() == '\r') line.pop_back();
  SONAR_CHECK(line == kResultsHeader, what, ": the header must be '", kResultsHeader, "', got '", line, "'");
  std::vector<ResultRow> rows;
  for (int64_t n = 2; std::getline(in, line); ++n) {
    if (line.empty() || line == "\r") continue;
    const std::string where = what + " line " + std::to_string(n);
    const auto f = split_csv_line(line);
    SONAR_CHECK(f.size() == 10, where, ": ", f.size(), " fields, expected 10");
    ResultRow r;
    r.domain = f[0];
    r.method = f[1];
    const double seed = parse_double_field(f[2], where);
    SONAR_CHECK(std::isfinite(seed) && seed >= 0 && std::floor(seed) == seed, where, ": bad seed '", f[2], "'");
    r.seed = static_cast<uint64_t>(seed);
    r.task = f[3];
    r.role = f[4];
    SONAR_CHECK(r.role == "new" || r.role == "prior" || r.role == "other", where, ": role must be new, prior or "
                "other, got '", r.role, "'");
    const double clips = parse_double_field(f[5], where);
    r.test_clips = std::isfinite(clips) ? static_cast<int64_t>(clips) : 0;
    r.accuracy = parse_double_field(f[6], where);
    r.macro_f1 = parse_double_field(f[7], where);
    r.mAP = parse_double_field(f[8], where);
    r.score = parse_double_field(f[9], where);
    rows.push_back(r);
  }
  return rows;
}

Stat stat_of(const std::vector<double>& v) {
  Stat s;
  double sum = 0;
  for (double x : v)
    if (std::isfinite(x)) {
      sum += x;
      ++s.n;
    }
  if (s.n == 0) {
    s.mean = s.std = kNaN;
    return s;
  }
  s.mean = sum / static_cast<double>(s.n);
  if (s.n < 2) {
    s.std = kNaN;
    return s;
  }
  double ss = 0;
  for (double x : v)
    if (std::isfinite(x)) ss += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(ss / static_cast<double>(s.n - 1));
  return s;
}

namespace {

// (domain, method, seed, task) -> row
using RowIndex = std::map<std::tuple<std::string, std::string, uint64_t, std::string>, const ResultRow*>;

// The mean of a seed's per-task values over the "other" tasks; NaN when any is NaN (a partial mean would
// compare different task sets between seeds).
double mean_if_all_finite(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) {
    if (!std::isfinite(x)) return kNaN;
    sum += x;
  }
  return sum / static_cast<double>(v.size());
}

}  // namespace

std::vector<SummaryRow> summarise(const std::vector<ResultRow>& rows) {
  RowIndex at;
  std::vector<std::pair<std::string, std::string>> order;
  std::set<std::pair<std::string, std::string>> seen;
  std::map<std::pair<std::string, std::string>, std::set<uint64_t>> seeds;
  for (const auto& r : rows) {
    at[{r.domain, r.method, r.seed, r.task}] = &r;
    if (seen.insert({r.domain, r.method}).second) order.emplace_back(r.domain, r.method);
    seeds[{r.domain, r.method}].insert(r.seed);
  }
  auto start_of = [&](const ResultRow& r) -> const ResultRow* {
    const auto it = at.find({r.domain, kStartMethodName, r.seed, r.task});
    return it == at.end() ? nullptr : it->second;
  };
  std::vector<SummaryRow> out;
  for (const auto& [domain, method] : order) {
    SummaryRow s;
    s.domain = domain;
    s.method = method;
    s.seeds = static_cast<int64_t>(seeds[{domain, method}].size());
    std::vector<double> f1, acc, gain, prior, forget, rel, general;
    for (uint64_t seed : seeds[{domain, method}]) {
      std::vector<double> drops;
      for (const auto& r : rows) {
        if (r.domain != domain || r.method != method || r.seed != seed) continue;
        const ResultRow* st = start_of(r);
        const double drop = st ? st->score - r.score : kNaN;
        if (r.role == "new") {
          f1.push_back(r.macro_f1);
          acc.push_back(r.accuracy);
          gain.push_back(st ? r.score - st->score : kNaN);
        } else if (r.role == "prior") {
          prior.push_back(r.score);
          forget.push_back(drop);
          rel.push_back(st && st->score != 0 ? drop / st->score : kNaN);
        } else {
          drops.push_back(drop);
        }
      }
      if (!drops.empty()) general.push_back(mean_if_all_finite(drops));
    }
    s.new_f1 = stat_of(f1);
    s.new_acc = stat_of(acc);
    s.new_gain = stat_of(gain);
    s.prior = stat_of(prior);
    s.forgetting = stat_of(forget);
    s.relative_forgetting = stat_of(rel);
    s.general_drop = stat_of(general);
    out.push_back(s);
  }
  return out;
}

double sign_test_p(int64_t wins, int64_t losses) {
  SONAR_CHECK(wins >= 0 && losses >= 0, "sign_test_p: counts must be >= 0, got ", wins, " and ", losses);
  const int64_t n = wins + losses;
  if (n == 0) return 1.0;
  // 2 P(X <= min) for X ~ Binomial(n, 1/2), each term in logs so that large n stays finite.
  const double dn = static_cast<double>(n);
  double tail = 0;
  for (int64_t i = 0; i <= std::min(wins, losses); ++i) {
    const double di = static_cast<double>(i);
    tail += std::exp(std::lgamma(dn + 1) - std::lgamma(di + 1) - std::lgamma(dn - di + 1) - dn * std::log(2.0));
  }
  return std::min(1.0, 2.0 * tail);
}

std::vector<PairedRow> compare_paired(const std::vector<ResultRow>& rows, const std::string& method,
                                      const std::string& reference) {
  RowIndex at;
  std::vector<std::string> domains;
  std::map<std::string, std::set<uint64_t>> seeds;  // the method's seeds per domain
  for (const auto& r : rows) {
    at[{r.domain, r.method, r.seed, r.task}] = &r;
    if (r.method != method) continue;
    if (std::find(domains.begin(), domains.end(), r.domain) == domains.end()) domains.push_back(r.domain);
    seeds[r.domain].insert(r.seed);
  }
  struct Diffs {
    std::vector<double> new_f1, prior, other;
    int64_t pairs = 0, new_wins = 0, new_losses = 0, prior_wins = 0, prior_losses = 0;
  };
  auto row_of = [&](const std::string& domain, const Diffs& d) {
    PairedRow p;
    p.domain = domain;
    p.method = method;
    p.reference = reference;
    p.pairs = d.pairs;
    p.new_f1 = stat_of(d.new_f1);
    p.prior = stat_of(d.prior);
    p.other = stat_of(d.other);
    p.new_wins = d.new_wins;
    p.new_losses = d.new_losses;
    p.prior_wins = d.prior_wins;
    p.prior_losses = d.prior_losses;
    p.new_p = d.new_f1.empty() ? kNaN : sign_test_p(d.new_wins, d.new_losses);
    p.prior_p = d.prior.empty() ? kNaN : sign_test_p(d.prior_wins, d.prior_losses);
    return p;
  };
  auto tally = [](double diff, std::vector<double>& into, int64_t& wins, int64_t& losses) {
    if (!std::isfinite(diff)) return;
    into.push_back(diff);
    wins += diff > 0 ? 1 : 0;
    losses += diff < 0 ? 1 : 0;
  };
  std::vector<PairedRow> out;
  Diffs all;
  for (const auto& domain : domains) {
    Diffs d;
    for (uint64_t seed : seeds[domain]) {
      bool paired = false;
      std::vector<double> other;
      for (const auto& r : rows) {
        if (r.domain != domain || r.method != method || r.seed != seed) continue;
        const auto it = at.find({domain, reference, seed, r.task});
        if (it == at.end()) continue;
        paired = true;
        const double diff = r.score - it->second->score;
        if (r.role == "new") {
          tally(diff, d.new_f1, d.new_wins, d.new_losses);
        } else if (r.role == "prior") {
          tally(diff, d.prior, d.prior_wins, d.prior_losses);
        } else {
          other.push_back(diff);
        }
      }
      if (!paired) continue;
      ++d.pairs;
      if (!other.empty()) d.other.push_back(mean_if_all_finite(other));
    }
    if (d.pairs == 0) continue;
    out.push_back(row_of(domain, d));
    all.pairs += d.pairs;
    all.new_f1.insert(all.new_f1.end(), d.new_f1.begin(), d.new_f1.end());
    all.prior.insert(all.prior.end(), d.prior.begin(), d.prior.end());
    all.other.insert(all.other.end(), d.other.begin(), d.other.end());
    all.new_wins += d.new_wins;
    all.new_losses += d.new_losses;
    all.prior_wins += d.prior_wins;
    all.prior_losses += d.prior_losses;
  }
  if (out.size() > 1) out.push_back(row_of(kAllDomains, all));
  return out;
}

std::vector<PairedRow> report_comparisons(const std::vector<ResultRow>& rows) {
  std::vector<std::string> methods;
  for (const auto& r : rows)
    if (std::find(methods.begin(), methods.end(), r.method) == methods.end()) methods.push_back(r.method);
  auto has = [&](const std::string& m) { return std::find(methods.begin(), methods.end(), m) != methods.end(); };
  std::vector<PairedRow> out;
  for (const char* reference : {"dcpt", "sonar"}) {
    if (!has(reference)) continue;
    for (const auto& m : methods) {
      if (m == kStartMethodName || m == "dcpt" || m == reference) continue;
      const auto rows_m = compare_paired(rows, m, reference);
      out.insert(out.end(), rows_m.begin(), rows_m.end());
    }
  }
  return out;
}

namespace {

json stat_json(const Stat& s) {
  auto n = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  return {{"mean", n(s.mean)}, {"std", n(s.std)}, {"n", s.n}};
}

std::string pm(const Stat& s, int digits = 4) {
  if (s.n == 0 || !std::isfinite(s.mean)) return "-";
  char b[64];
  if (std::isfinite(s.std))
    std::snprintf(b, sizeof b, "%.*f ± %.*f", digits, s.mean, digits, s.std);
  else
    std::snprintf(b, sizeof b, "%.*f", digits, s.mean);
  return b;
}

std::string pm_percent(const Stat& s) {
  Stat p = s;
  p.mean *= 100;
  p.std *= 100;
  const std::string v = pm(p, 1);
  return v == "-" ? v : v + " %";
}

}  // namespace

json results_json(const std::vector<ResultRow>& rows, const std::vector<SummaryRow>& summary,
                  const std::vector<PairedRow>& paired) {
  auto n = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  json j;
  j["rows"] = json::array();
  for (const auto& r : rows)
    j["rows"].push_back({{"domain", r.domain}, {"method", r.method}, {"seed", r.seed}, {"task", r.task},
                         {"role", r.role}, {"test_clips", r.test_clips}, {"accuracy", n(r.accuracy)},
                         {"macro_f1", n(r.macro_f1)}, {"mAP", n(r.mAP)}, {"score", n(r.score)}});
  j["summary"] = json::array();
  for (const auto& s : summary)
    j["summary"].push_back({{"domain", s.domain}, {"method", s.method}, {"seeds", s.seeds},
                            {"new_macro_f1", stat_json(s.new_f1)}, {"new_accuracy", stat_json(s.new_acc)},
                            {"new_gain", stat_json(s.new_gain)}, {"prior_score", stat_json(s.prior)},
                            {"forgetting", stat_json(s.forgetting)},
                            {"relative_forgetting", stat_json(s.relative_forgetting)},
                            {"general_drop", stat_json(s.general_drop)}});
  j["paired"] = json::array();
  for (const auto& p : paired)
    j["paired"].push_back({{"domain", p.domain}, {"method", p.method}, {"reference", p.reference},
                           {"pairs", p.pairs}, {"new_diff", stat_json(p.new_f1)}, {"prior_diff", stat_json(p.prior)},
                           {"other_diff", stat_json(p.other)}, {"new_wins", p.new_wins},
                           {"new_losses", p.new_losses}, {"new_sign_p", n(p.new_p)},
                           {"prior_wins", p.prior_wins}, {"prior_losses", p.prior_losses},
                           {"prior_sign_p", n(p.prior_p)}});
  return j;
}

std::string results_markdown(const std::vector<SummaryRow>& summary, const std::string& title,
                             const std::vector<PairedRow>& paired) {
  std::ostringstream o;
  o << "# " << title << "\n\n"
    << "Mean ± sample standard deviation over seeds. New domain: linear-probe macro-F1 and accuracy on its test "
       "split; gain = score - the start model's score. Prior: the prior pool's probe score (mAP when multi-label); "
       "forgetting = start score - score (positive = forgotten), relative = forgetting / start score. General "
       "drop: the mean forgetting over the other domains' tasks.\n";
  std::string domain;
  for (const auto& s : summary) {
    if (s.domain != domain) {
      domain = s.domain;
      o << "\n## New domain: " << domain << "\n\n"
        << "| method | seeds | new F1 | new acc | F1 gain | prior score | forgetting | relative | general drop |\n"
        << "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    }
    o << "| " << s.method << " | " << s.seeds << " | " << pm(s.new_f1) << " | " << pm(s.new_acc) << " | "
      << pm(s.new_gain) << " | " << pm(s.prior) << " | " << pm(s.forgetting) << " | "
      << pm_percent(s.relative_forgetting) << " | " << pm(s.general_drop) << " |\n";
  }
  if (paired.empty()) return o.str();
  o << "\n## Paired by domain and seed\n\n"
    << "Each method's score minus the reference method's on the same domain and seed (same start model, same "
       "probe seed): positive = the method scored higher. Wins: the pairs where it scored higher (ties count as "
       "neither); p: two-sided exact sign test of wins against losses. Other tasks: the mean difference over "
       "the other domains' tasks. \"" << kAllDomains << "\" pools the pairs of every domain.\n\n"
    << "| method | against | new domain | pairs | new F1 diff | wins | p | prior diff | wins | p | other tasks diff |\n"
    << "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  auto wins = [](int64_t w, int64_t l, const Stat& s) {
    return s.n == 0 ? std::string("-") : std::to_string(w) + " of " + std::to_string(s.n) +
                                             (w + l < s.n ? " (" + std::to_string(s.n - w - l) + " tied)" : "");
  };
  auto pval = [](double p) {
    if (!std::isfinite(p)) return std::string("-");
    char b[32];
    std::snprintf(b, sizeof b, "%.3g", p);
    return std::string(b);
  };
  for (const auto& p : paired)
    o << "| " << p.method << " | " << p.reference << " | " << p.domain << " | " << p.pairs << " | " << pm(p.new_f1)
      << " | " << wins(p.new_wins, p.new_losses, p.new_f1) << " | " << pval(p.new_p) << " | " << pm(p.prior)
      << " | " << wins(p.prior_wins, p.prior_losses, p.prior) << " | " << pval(p.prior_p) << " | " << pm(p.other)
      << " |\n";
  return o.str();
}

// ---- training curves ----

MetricsLog read_metrics(const std::string& path) {
  std::ifstream in(path);
  SONAR_CHECK(in.good(), "cannot read ", path);
  MetricsLog log;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    nlohmann::ordered_json j;  // keeps the order the trainer logged the keys in
    try {
      j = nlohmann::ordered_json::parse(line);
    } catch (const json::exception& e) {
      SONAR_FAIL(path, " line ", n, ": not a JSON object: ", e.what());
    }
    SONAR_CHECK(j.is_object() && j.contains("step") && j["step"].is_number(), path, " line ", n,
                ": expected an object with a numeric 'step'");
    const double step = j["step"].get<double>();
    for (const auto& [k, v] : j.items()) {
      if (k == "step" || !v.is_number()) continue;
      if (!log.values.count(k)) log.keys.push_back(k);
      log.steps[k].push_back(step);
      log.values[k].push_back(v.get<double>());
    }
  }
  return log;
}

MetricsLog mean_metrics(const std::vector<MetricsLog>& logs) {
  MetricsLog out;
  if (logs.empty()) return out;
  out.keys = logs[0].keys;
  for (const auto& k : out.keys) {
    // Average step by step over the logs that have the key at that step.
    std::map<double, std::pair<double, int>> acc;
    for (const auto& l : logs) {
      const auto it = l.values.find(k);
      if (it == l.values.end()) continue;
      for (size_t i = 0; i < it->second.size(); ++i) {
        auto& a = acc[l.steps.at(k)[i]];
        a.first += it->second[i];
        a.second += 1;
      }
    }
    for (const auto& [step, a] : acc) {
      out.steps[k].push_back(step);
      out.values[k].push_back(a.first / a.second);
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::vector<std::string>>> curve_panels(const std::vector<std::string>& keys) {
  auto has = [](const std::string& k, const char* s) { return k.find(s) != std::string::npos; };
  std::vector<std::pair<std::string, std::vector<std::string>>> panels = {
      {"loss terms", {}}, {"accuracy", {}}, {"codebook", {}}, {"replay", {}}, {"learning rate", {}},
      {"gradient norm", {}}};
  for (const auto& k : keys) {
    if (k == "clips_per_second" || k == "elapsed_seconds" || k == "steps_averaged") continue;
    if (k == "lr") panels[4].second.push_back(k);
    else if (k == "grad_norm") panels[5].second.push_back(k);
    else if (has(k, "codebook") || has(k, "code") || has(k, "perplexity") || has(k, "dead") || has(k, "reinit") ||
             has(k, "added") || has(k, "novel"))
      panels[2].second.push_back(k);
    else if (has(k, "replay")) panels[3].second.push_back(k);
    else if (has(k, "acc")) panels[1].second.push_back(k);
    else panels[0].second.push_back(k);  // loss, mlp_loss, distill terms and anything else
  }
  std::vector<std::pair<std::string, std::vector<std::string>>> out;
  for (auto& p : panels)
    if (!p.second.empty()) out.push_back(std::move(p));
  return out;
}

std::string run_curves_svg(const MetricsLog& log, const std::string& title) {
  std::vector<std::string> groups;
  for (const auto& [name, keys] : curve_panels(log.keys)) {
    plot::LineChart c;
    c.title = name;
    c.x_label = "step";
    for (const auto& k : keys) c.series.push_back({k, log.steps.at(k), log.values.at(k), {}, {}});
    groups.push_back(plot::line_chart_group(c));
  }
  SONAR_CHECK(!groups.empty(), title, ": no metrics to plot");
  return plot::svg_document(groups, 2, title);
}

std::string compare_curves_svg(const std::vector<std::pair<std::string, MetricsLog>>& logs, const std::string& title) {
  std::vector<std::string> keys;
  for (const auto& [name, l] : logs)
    for (const auto& k : l.keys)
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  std::vector<std::string> groups;
  for (const auto& [panel, pkeys] : curve_panels(keys))
    for (const auto& k : pkeys) {
      plot::LineChart c;
      c.title = k;
      c.x_label = "step";
      for (size_t r = 0; r < logs.size(); ++r)
        if (logs[r].second.values.count(k))
          c.series.push_back({logs[r].first, logs[r].second.steps.at(k), logs[r].second.values.at(k), {}, {},
                              plot::series_colour(r)});  // a run keeps its colour in every panel
      groups.push_back(plot::line_chart_group(c));
    }
  SONAR_CHECK(!groups.empty(), title, ": no metrics to plot");
  return plot::svg_document(groups, 3, title);
}

std::vector<std::string> write_results(const std::vector<ResultRow>& rows, const std::string& out_dir,
                                       const std::string& title) {
  const auto summary = summarise(rows);
  const auto paired = report_comparisons(rows);
  const fs::path out(out_dir);
  fs::create_directories(out / "figures");
  std::vector<std::string> files;
  auto put = [&](const fs::path& p, const std::string& text) {
    write_file_atomic(p.string(), text);
    files.push_back(p.string());
  };
  put(out / "results.csv", results_csv(rows));
  put(out / "results.json", results_json(rows, summary, paired).dump(2) + "\n");
  put(out / "results.md", results_markdown(summary, title, paired));

  std::vector<std::string> domains, methods;
  for (const auto& s : summary) {
    if (std::find(domains.begin(), domains.end(), s.domain) == domains.end()) domains.push_back(s.domain);
    if (std::find(methods.begin(), methods.end(), s.method) == methods.end()) methods.push_back(s.method);
  }
  auto find = [&](const std::string& d, const std::string& m) -> const SummaryRow* {
    for (const auto& s : summary)
      if (s.domain == d && s.method == m) return &s;
    return nullptr;
  };
  plot::BarChart f1, prior, general;
  f1.title = "new-domain macro-F1";
  f1.y_label = "macro-F1 (test)";
  prior.title = "prior pool score (start - this = forgetting)";
  prior.y_label = "score (test)";
  general.title = "general drop (other domains' tasks)";
  general.y_label = "start score - score";
  f1.categories = prior.categories = general.categories = domains;
  plot::ScatterChart sc, sg;
  sc.title = "adaptation vs forgetting (prior task)";
  sc.x_label = "forgetting (start - after, prior score)";
  sc.y_label = "new-domain F1 gain";
  sg.title = "adaptation vs general drop";
  sg.x_label = "mean drop over the other domains' tasks";
  sg.y_label = "new-domain F1 gain";
  for (size_t mi = 0; mi < methods.size(); ++mi) {
    const std::string& m = methods[mi];
    const std::string colour = plot::series_colour(mi);  // a method keeps its colour in every panel
    plot::Series a{m, {}, {}, {}, {}, colour}, b{m, {}, {}, {}, {}, colour}, g{m, {}, {}, {}, {}, colour};
    plot::Series pa{m, {}, {}, {}, {}, colour}, pg{m, {}, {}, {}, {}, colour};
    for (const auto& d : domains) {
      const SummaryRow* s = find(d, m);
      a.y.push_back(s ? s->new_f1.mean : kNaN);
      a.y_err.push_back(s ? s->new_f1.std : kNaN);
      b.y.push_back(s ? s->prior.mean : kNaN);
      b.y_err.push_back(s ? s->prior.std : kNaN);
      g.y.push_back(s ? s->general_drop.mean : kNaN);
      g.y_err.push_back(s ? s->general_drop.std : kNaN);
      if (s && m != kStartMethodName) {
        pa.x.push_back(s->forgetting.mean);
        pa.x_err.push_back(s->forgetting.std);
        pa.y.push_back(s->new_gain.mean);
        pa.y_err.push_back(s->new_gain.std);
        pa.labels.push_back(d);
        pg.x.push_back(s->general_drop.mean);
        pg.x_err.push_back(s->general_drop.std);
        pg.y.push_back(s->new_gain.mean);
        pg.y_err.push_back(s->new_gain.std);
        pg.labels.push_back(d);
      }
    }
    f1.series.push_back(a);
    prior.series.push_back(b);
    general.series.push_back(g);
    if (m != kStartMethodName) {
      sc.series.push_back(pa);
      sg.series.push_back(pg);
    }
  }
  put(out / "figures" / "bars.svg", plot::svg_document({plot::bar_chart_group(f1), plot::bar_chart_group(prior),
                                                        plot::bar_chart_group(general)}, 3, title));
  put(out / "figures" / "scatter.svg",
      plot::svg_document({plot::scatter_chart_group(sc), plot::scatter_chart_group(sg)}, 2, title));
  return files;
}

// ---- the runner ----

namespace {

// A grid run is finished once it has both the record of its settings (written before it trains) and its model
// (written after its last step).
bool run_finished(const GridCell& c) {
  return fs::exists(fs::path(c.dir) / kModelFile) && fs::exists(fs::path(c.dir) / kGridRunFile);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// A content fingerprint of a file (size and FNV-1a 64 of the bytes), so a probe is redone when its model or
// manifest changed.
std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SONAR_CHECK(in.good(), "cannot read ", path);
  uint64_t h = 0xCBF29CE484222325ull, size = 0;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    for (std::streamsize i = 0; i < n; ++i) {
      h ^= static_cast<unsigned char>(buf[i]);
      h *= 0x100000001B3ull;
    }
    size += static_cast<uint64_t>(n);
  }
  char b[48];
  std::snprintf(b, sizeof b, "%llu-%016llx", static_cast<unsigned long long>(size), static_cast<unsigned long long>(h));
  return b;
}

json cell_spec(const ExperimentPlan& plan, const GridCell& c, const PlanMethod& m, const PlanDomain& d) {
  json f = json::object();
  for (const auto& [k, v] : cell_flags(plan, m)) f[k] = v;
  return {{"domain", d.name},       {"data", d.data},           {"splits", d.splits},
          {"method", m.name},       {"flags", f},               {"seed", c.seed},
          {"init", plan.start_model}, {"tokenizer", plan.start_tokenizer},
          {"steps", plan.train.steps}, {"batch", plan.train.batch}, {"warmup", plan.train.warmup},
          {"crop_seconds", plan.train.crop_seconds}, {"lr", plan.train.lr}, {"final_lr", plan.train.final_lr},
          {"max_clip_seconds", plan.train.max_clip_seconds}};
}

std::string first_difference(const json& a, const json& b) {
  for (const auto& [k, v] : b.items())
    if (!a.contains(k) || a[k] != v) return k + ": " + (a.contains(k) ? a[k].dump() : "absent") + " there, " + v.dump() + " now";
  for (const auto& [k, v] : a.items())
    if (!b.contains(k)) return k + ": " + v.dump() + " there, absent now";
  return "";
}

// A cell's short name, as its lines, probe cache folder and results name it: domain/method/seedS.
std::string cell_name(const GridCell& c) { return c.domain + "/" + c.method + "/seed" + std::to_string(c.seed); }

// "run i of N: domain / method / seed S", the head of a cell's progress lines.
std::string run_head(const std::vector<GridCell>& cells, size_t i) {
  const GridCell& c = cells[i];
  return "run " + std::to_string(i + 1) + " of " + std::to_string(cells.size()) + ": " + c.domain + " / " + c.method +
         " / seed " + std::to_string(c.seed);
}

// Runs task(i) for i in [0, n) on `jobs` threads (inline when jobs is 1), each thread with `threads_each`
// OpenMP threads. `halt` is the stop flag the tasks watch: it follows `outer` (Ctrl-C) through a watcher, and is
// raised when a task throws, so the others stop at their next step with a checkpoint; the first error is then
// rethrown. Tasks are taken in order, so runs start in the grid's order.
void run_parallel(size_t n, int jobs, int threads_each, const std::atomic<bool>* outer, std::atomic<bool>& halt,
                  const std::function<void(size_t)>& task) {
  if (jobs <= 1 || n <= 1) {
    for (size_t i = 0; i < n; ++i) {
      if (outer && outer->load()) halt = true;
      if (halt.load()) return;
      task(i);
    }
    return;
  }
  std::atomic<size_t> next{0};
  std::atomic<bool> done{false};
  std::mutex error_mu;
  std::exception_ptr error;
  std::thread watcher([&] {
    while (!done.load()) {
      if (outer && outer->load()) halt = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < jobs; ++w)
    workers.emplace_back([&] {
      omp_set_num_threads(threads_each);  // a new thread starts from OpenMP's default, not the caller's setting
      for (size_t i; !halt.load() && (i = next++) < n;) {
        try {
          task(i);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mu);
          if (!error) error = std::current_exception();
          halt = true;
        }
      }
    });
  for (auto& t : workers) t.join();
  done = true;
  watcher.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

ExperimentReport run_experiment(const ExperimentPlan& plan, const ExperimentOptions& o) {
  auto log = o.log ? o.log : [](const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
  SONAR_CHECK(!o.out_dir.empty(), "experiment: no output folder");
  const auto t0 = std::chrono::steady_clock::now();
  ExperimentReport rep;
  const fs::path out(o.out_dir);
  const auto cells = grid_cells(plan, o.out_dir);
  rep.cells = static_cast<int64_t>(cells.size());

  // Refuse a folder holding another plan's cells before anything is written: every existing cell must match.
  std::map<std::string, const PlanMethod*> method_of;
  for (const auto& m : plan.methods) method_of[m.name] = &m;
  std::map<std::string, const PlanDomain*> domain_of;
  for (const auto& d : plan.domains) domain_of[d.name] = &d;
  for (const auto& c : cells) {
    const fs::path spec_path = fs::path(c.dir) / kGridRunFile;
    if (!fs::exists(spec_path)) continue;
    json old;
    try {
      old = json::parse(read_file(spec_path.string()));
    } catch (const json::exception&) {
      SONAR_FAIL(spec_path.string(), ": unreadable; delete the run folder ", c.dir, " to redo it");
    }
    const std::string diff = first_difference(old, cell_spec(plan, c, *method_of[c.method], *domain_of[c.domain]));
    SONAR_CHECK(diff.empty(), c.dir, " was made with other settings (", diff, "); use another --out, or delete that "
                "run folder to redo it");
  }
  if (o.finished_only)
    SONAR_CHECK(std::any_of(cells.begin(), cells.end(), run_finished),
                "no run of the grid in ", o.out_dir,
                " is finished yet, so there is nothing to report; run without --finished-only to train");
  fs::create_directories(out);
  write_file_atomic((out / "plan.json").string(), plan.to_json().dump(2) + "\n");

  // ---- training ----
  // Concurrent runs (o.jobs) share the plan's threads; one job keeps the plan's setting as it is.
  const int total_threads = plan.train.threads > 0 ? plan.train.threads : omp_get_max_threads();
  const int jobs = std::max(1, o.jobs);
  const int threads_each = std::max(1, total_threads / jobs);
  std::atomic<bool> halt{o.stop && o.stop->load()};
  std::mutex mu;  // guards the log and the counters below
  auto say = [&](const std::string& s) {
    std::lock_guard<std::mutex> lock(mu);
    log(s);
  };
  int64_t trained_steps = 0, steps_left = 0;
  double run_seconds = 0.0;  // summed over the runs finished in this session (concurrent ones overlap)
  std::vector<size_t> pending;
  std::vector<bool> reported(cells.size(), true);  // in the results (finished_only: finished before this call)
  for (size_t i = 0; i < cells.size(); ++i) {
    const GridCell& c = cells[i];
    if (run_finished(c)) {
      ++rep.reused;
      log(run_head(cells, i) + ": finished earlier, reused");
    } else if (o.finished_only) {
      reported[i] = false;
      ++rep.left_out;
      log(run_head(cells, i) + ": not finished, left out of the results");
    } else {
      pending.push_back(i);
      steps_left += plan.train.steps;
    }
  }
  const int train_jobs = static_cast<int>(std::min<size_t>(static_cast<size_t>(jobs), pending.size()));
  if (train_jobs > 1)
    log("training " + std::to_string(pending.size()) + " runs, " + std::to_string(train_jobs) + " at a time with " +
        format_threads(threads_each) + " each");
  run_parallel(pending.size(), train_jobs, threads_each, o.stop, halt, [&](size_t k) {
    const size_t i = pending[k];
    const GridCell& c = cells[i];
    const PlanMethod& m = *method_of[c.method];
    const PlanDomain& d = *domain_of[c.domain];
    const fs::path dir(c.dir);
    const std::string head = run_head(cells, i);
    {
      std::lock_guard<std::mutex> lock(mu);
      // A run's seconds per step, times the steps not yet done, shared by the concurrent runs.
      const std::string left =
          trained_steps > 0 ? format_duration(run_seconds / static_cast<double>(trained_steps) *
                                              static_cast<double>(steps_left) / static_cast<double>(train_jobs))
                            : std::string("?");
      log(head + " (" + std::to_string(plan.train.steps) + " steps; time left for training about " + left + ")");
    }
    PretrainOptions po;
    po.data = d.data;
    po.splits = d.splits;
    po.out_dir = c.dir;
    po.init = plan.start_model;
    po.tokenizer = plan.start_tokenizer;
    po.crop_seconds = plan.train.crop_seconds;
    po.max_clip_seconds = std::max(plan.train.max_clip_seconds, plan.train.crop_seconds);
    po.batch_size = plan.train.batch;
    po.steps = plan.train.steps;
    po.adamw.lr = static_cast<float>(plan.train.lr);
    po.warmup_steps = plan.train.warmup;
    po.final_lr = plan.train.final_lr;
    po.seed = c.seed;
    po.log_every = plan.train.log_every;
    po.save_every = plan.train.save_every;
    po.num_threads = train_jobs > 1 ? threads_each : plan.train.threads;
    po.loader_workers = plan.train.workers;
    po.cache_dir = (out / "cache").string();
    po.stop = train_jobs > 1 ? &halt : o.stop;
    // Concurrent runs' lines interleave: each names its run.
    const std::string prefix = train_jobs > 1 ? "  [" + cell_name(c) + "] " : "  ";
    po.log = [&say, prefix](const std::string& s) { say(prefix + s); };
    const SonarOptions so = sonar_options_from_flags(cell_flags(plan, m));
    fs::create_directories(dir);
    write_file_atomic((dir / kGridRunFile).string(), cell_spec(plan, c, m, d).dump(2) + "\n");
    const auto t_run = std::chrono::steady_clock::now();
    const PretrainResult r = pretrain(po, make_extensions(so, c.seed));
    std::lock_guard<std::mutex> lock(mu);
    run_seconds += seconds_since(t_run);
    trained_steps += r.steps_done - r.start_step;
    steps_left -= plan.train.steps;
    ++rep.trained;
    if (!r.finished) {  // stopped by Ctrl-C or by another run's failure: no new run starts
      halt = true;
      log("stopped in " + head + "; run the same command again to resume");
    }
  });
  if (halt.load()) {
    rep.stopped = true;
    rep.seconds = seconds_since(t0);
    return rep;
  }

  // ---- probes ----
  std::vector<std::pair<std::string, std::string>> tasks;  // name, manifest
  for (const auto& d : plan.domains) tasks.emplace_back(d.name, d.task);
  if (!plan.prior_task.empty()) tasks.emplace_back("prior", plan.prior_task);
  for (const auto& [k, v] : plan.extra_tasks) tasks.emplace_back(k, v);
  std::map<std::string, std::string> fingerprints;
  auto fingerprint = [&](const std::string& path) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = fingerprints.find(path);
      if (it != fingerprints.end()) return it->second;
    }
    const std::string f = file_fingerprint(path);
    std::lock_guard<std::mutex> lock(mu);
    return fingerprints.emplace(path, f).first->second;
  };
  // Every probe the results need, in table order; run (or found in the cache) below, `jobs` at a time.
  struct ProbeJob {
    std::string model_name, model, task, manifest;
    uint64_t seed = 0;
    json report;
  };
  std::vector<ProbeJob> probe_jobs;
  std::map<std::tuple<std::string, std::string, uint64_t>, size_t> probe_index;  // (model name, task, seed)
  auto want_probe = [&](const std::string& model_name, const std::string& model, uint64_t seed) {
    for (const auto& [task, manifest] : tasks)
      if (probe_index.emplace(std::make_tuple(model_name, task, seed), probe_jobs.size()).second)
        probe_jobs.push_back({model_name, model, task, manifest, seed, json()});
  };
  // The start model is probed at every seed some reported run has (all of them, unless finished_only).
  auto seed_reported = [&](uint64_t s) {
    for (size_t i = 0; i < cells.size(); ++i)
      if (reported[i] && cells[i].seed == s) return true;
    return false;
  };
  for (uint64_t s : plan.seeds)
    if (seed_reported(s)) want_probe(kStartMethodName, plan.start_model, s);
  for (size_t i = 0; i < cells.size(); ++i)
    if (reported[i]) want_probe(cell_name(cells[i]), (fs::path(cells[i].dir) / kModelFile).string(), cells[i].seed);
  const int64_t total_probes = static_cast<int64_t>(probe_jobs.size());
  int64_t probes_done = 0, probes_run = 0;
  const auto t_probes = std::chrono::steady_clock::now();
  auto probe = [&](ProbeJob& job) {
    const fs::path cache = out / "probes" / job.model_name / (job.task + "-seed" + std::to_string(job.seed) + ".json");
    json key = {{"model", fingerprint(job.model)},
                {"manifest", job.manifest},
                {"manifest_fingerprint", fingerprint(job.manifest)},
                {"seed", job.seed},
                {"epochs", plan.probe.epochs},
                {"patience", plan.probe.patience},
                {"layer", plan.probe.layer},
                {"max_seconds", plan.probe.max_seconds}};
    if (plan.probe.group_folds > 0) key["group_folds"] = plan.probe.group_folds;  // earlier caches stay valid
    if (fs::exists(cache)) {
      try {
        json c = json::parse(read_file(cache.string()));
        if (c.contains("key") && c["key"] == key) {
          job.report = c["report"];
          std::lock_guard<std::mutex> lock(mu);
          ++rep.probes_reused;
          ++probes_done;
          return;
        }
      } catch (const json::exception&) {
        // an unreadable cache entry is recomputed
      }
    }
    ProbeOptions po;
    po.checkpoint = job.model;
    po.data = job.manifest;
    po.features.layer = plan.probe.layer;
    po.features.max_seconds = plan.probe.max_seconds;
    po.features.batch_size = plan.probe.batch;
    po.features.workers = plan.train.workers;
    po.classifier.epochs = plan.probe.epochs;
    po.classifier.patience = plan.probe.patience;
    po.classifier.seed = job.seed;
    po.group_folds = plan.probe.group_folds;
    po.log = [](const std::string&) {};
    const ProbeReport pr = run_probe(po);
    job.report = pr.to_json();
    fs::create_directories(cache.parent_path());
    write_file_atomic(cache.string(), json({{"key", key}, {"report", job.report}}).dump(2) + "\n");
    std::lock_guard<std::mutex> lock(mu);
    ++probes_run;
    ++probes_done;
    ++rep.probes;
    // Time left from the wall time of the probes run so far (concurrent probes overlap).
    const double left = seconds_since(t_probes) / static_cast<double>(probes_run) *
                        static_cast<double>(total_probes - probes_done);
    char line[256];
    std::snprintf(line, sizeof line, "probe %lld of %lld: %s on %s (seed %llu): %s %.4f; time left about %s",
                  static_cast<long long>(probes_done), static_cast<long long>(total_probes), job.model_name.c_str(),
                  job.task.c_str(), static_cast<unsigned long long>(job.seed), pr.multi_label ? "mAP" : "macro-F1",
                  pr.multi_label ? pr.test.mAP : pr.test.macro_f1, format_duration(left).c_str());
    log(line);
  };
  const int probe_jobs_at_once = static_cast<int>(std::min<size_t>(static_cast<size_t>(jobs), probe_jobs.size()));
  run_parallel(probe_jobs.size(), probe_jobs_at_once, threads_each, o.stop, halt,
               [&](size_t i) { probe(probe_jobs[i]); });
  if (halt.load()) {
    log("stopped during the probes; run the same command again to resume (finished probes are kept)");
    rep.stopped = true;
    rep.seconds = seconds_since(t0);
    return rep;
  }
  auto report_of = [&](const std::string& model_name, const std::string& task, uint64_t seed) -> const json& {
    return probe_jobs[probe_index.at(std::make_tuple(model_name, task, seed))].report;
  };
  auto row_of = [](const std::string& domain, const std::string& method, uint64_t seed, const std::string& task,
                   const std::string& role, const json& r) {
    auto num = [&](const char* k) { return r.contains(k) && r[k].is_number() ? r[k].get<double>() : kNaN; };
    ResultRow row;
    row.domain = domain;
    row.method = method;
    row.seed = seed;
    row.task = task;
    row.role = role;
    row.test_clips = r.value("test_clips", int64_t{0});
    row.accuracy = num("test_accuracy");
    row.macro_f1 = num("test_macro_f1");
    row.mAP = num("test_mAP");
    row.score = r.value("task", std::string()) == "multi-label" ? row.mAP : row.macro_f1;
    return row;
  };
  auto role_of = [](const std::string& domain, const std::string& task) {
    return task == domain ? "new" : task == "prior" ? "prior" : "other";
  };

  std::vector<ResultRow> rows;
  for (const auto& d : plan.domains)
    for (uint64_t s : plan.seeds) {
      std::vector<size_t> here;  // the reported runs of this domain and seed
      for (size_t i = 0; i < cells.size(); ++i)
        if (reported[i] && cells[i].domain == d.name && cells[i].seed == s) here.push_back(i);
      if (here.empty()) continue;
      for (const auto& [task, manifest] : tasks)
        rows.push_back(row_of(d.name, kStartMethodName, s, task, role_of(d.name, task),
                              report_of(kStartMethodName, task, s)));
      for (size_t i : here)
        for (const auto& [task, manifest] : tasks)
          rows.push_back(row_of(d.name, cells[i].method, s, task, role_of(d.name, task),
                                report_of(cell_name(cells[i]), task, s)));
    }

  // ---- results and figures ----
  const int64_t n_reported = static_cast<int64_t>(cells.size()) - rep.left_out;
  const std::string title = rep.left_out == 0 ? plan.name
                                              : plan.name + " (partial: " + std::to_string(n_reported) + " of " +
                                                    std::to_string(cells.size()) + " runs finished)";
  rep.outputs = write_results(rows, o.out_dir, title);
  for (const auto& d : plan.domains) {
    std::vector<std::pair<std::string, MetricsLog>> logs;
    for (const auto& m : plan.methods) {
      std::vector<MetricsLog> per_seed;
      for (size_t i = 0; i < cells.size(); ++i) {
        const GridCell& c = cells[i];
        if (reported[i] && c.domain == d.name && c.method == m.name && fs::exists(fs::path(c.dir) / kMetricsFile))
          per_seed.push_back(read_metrics((fs::path(c.dir) / kMetricsFile).string()));
      }
      if (!per_seed.empty()) logs.emplace_back(m.name, mean_metrics(per_seed));
    }
    if (logs.empty()) continue;
    const fs::path f = out / "figures" / ("curves-" + d.name + ".svg");
    write_file_atomic(f.string(), compare_curves_svg(logs, plan.name + ": training on " + d.name +
                                                               " (mean over seeds)"));
    rep.outputs.push_back(f.string());
  }
  rep.seconds = seconds_since(t0);
  return rep;
}

}  // namespace sonar::method
