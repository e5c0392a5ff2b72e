// SONAR's options from flags (sonar/method.h: the flag names, --help, sonar_options_from_flags, the named
// variants of experiment grids) and the validation of each part's options (validate() of sonar/replay.h,
// sonar/distill.h, sonar/codebook.h). Light on purpose: plain parsing and range checks, no model, data or
// training code, so that checking an experiment plan (sonar/experiment_plan.cpp) and its fuzz target need
// none of it. Not the parts themselves, nor make_extensions (sonar/method.cpp).
#include "sonar/method.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "tensor/error.h"

namespace sonar::method {

namespace {

// The whole value must be the number: a value with a NUL inside (possible from a JSON plan) is not cut short.
double parse_number(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  SONAR_CHECK(!v.empty() && end == v.c_str() + v.size() && std::isfinite(d), "--", flag, " takes a number, got '",
              v, "'");
  return d;
}

// As parse_number; a value beyond 64 bits is refused, not clamped.
int64_t parse_integer(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  SONAR_CHECK(!v.empty() && end == v.c_str() + v.size() && errno != ERANGE, "--", flag,
              " takes a whole number (64-bit), got '", v, "'");
  return static_cast<int64_t>(x);
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, ','))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string one_of(const std::string& flag, const std::string& v, const std::vector<std::string>& allowed) {
  std::string list;
  for (const auto& a : allowed) {
    if (a == v) return v;
    list += (list.empty() ? "" : ", ") + a;
  }
  SONAR_FAIL("--", flag, " must be one of ", list, "; got '", v, "'");
}

}  // namespace

// ---- each part's options ----

void validate(const ReplayOptions& o) {
  SONAR_CHECK(o.mode == "stratified" || o.mode == "uniform" || o.mode == "none",
              "--replay must be stratified, uniform or none, got '", o.mode, "'");
  SONAR_CHECK(std::isfinite(o.ratio) && o.ratio >= 0 && o.ratio <= 1, "--replay-ratio must be in [0, 1], got ",
              o.ratio);
  SONAR_CHECK(std::isfinite(o.floor) && o.floor >= 0 && o.floor <= 1, "--replay-floor must be in [0, 1], got ",
              o.floor);
  SONAR_CHECK(std::isfinite(o.temperature) && o.temperature > 0, "--replay-temperature must be positive, got ",
              o.temperature);
  SONAR_CHECK(o.layer >= 0, "--replay-layer must be a block number >= 1 (or 0 for the last), got ", o.layer);
  SONAR_CHECK(o.segment_steps >= 1, "replay: segment_steps must be >= 1, got ", o.segment_steps);
  SONAR_CHECK(o.max_new_clips >= 0, "the number of new-domain clips embedded must be >= 0 (0 = all), got ",
              o.max_new_clips);
  if (o.strata != "labels" && o.strata != "auto") {
    char* end = nullptr;
    const long long k = std::strtoll(o.strata.c_str(), &end, 10);
    SONAR_CHECK(!o.strata.empty() && end && *end == '\0' && k >= 1,
                "--strata must be labels, auto or a number of clusters >= 1, got '", o.strata, "'");
  }
}

void validate(const SelfDistillOptions& o) {
  SONAR_CHECK(std::isfinite(o.model_weight) && o.model_weight >= 0, "--distill-model must be >= 0, got ",
              o.model_weight);
  SONAR_CHECK(std::isfinite(o.tokenizer_weight) && o.tokenizer_weight >= 0, "--distill-tokenizer must be >= 0, got ",
              o.tokenizer_weight);
  SONAR_CHECK(o.loss == "cosine" || o.loss == "mse", "--distill-loss must be cosine or mse, got '", o.loss, "'");
  for (int64_t l : o.layers) SONAR_CHECK(l >= 1, "--distill-layers are 1-based block numbers, got ", l);
}

void validate(const CodebookOptions& o) {
  SONAR_CHECK(o.mode == "online" || o.mode == "frozen", "--codebook must be online or frozen, got '", o.mode, "'");
  SONAR_CHECK(std::isfinite(o.decay) && o.decay > 0.0f && o.decay < 1.0f, "--codebook-decay must be in (0, 1), got ",
              o.decay);
  SONAR_CHECK(std::isfinite(o.dead_usage) && o.dead_usage >= 0.0 && o.dead_usage < 1.0,
              "--dead-usage must be in [0, 1), got ", o.dead_usage);
  SONAR_CHECK(std::isfinite(o.novelty_cos) && o.novelty_cos >= -1.0 && o.novelty_cos <= 1.0,
              "--novelty-cos must be in [-1, 1], got ", o.novelty_cos);
  SONAR_CHECK(std::isfinite(o.novelty_share) && o.novelty_share >= 0.0 && o.novelty_share <= 1.0,
              "--novelty-share must be in [0, 1], got ", o.novelty_share);
  SONAR_CHECK(o.max_new_per_step >= 0, "--grow-per-step must be >= 0, got ", o.max_new_per_step);
  SONAR_CHECK(o.max_codes >= 0, "--max-codes must be >= 0 (0: 1.5 x the start codebook), got ", o.max_codes);
  SONAR_CHECK(o.warmup_steps >= 0, "--codebook-warmup must be >= 0, got ", o.warmup_steps);
  SONAR_CHECK(o.new_rows == "nearest" || o.new_rows == "fresh", "--new-rows must be nearest or fresh, got '",
              o.new_rows, "'");
}

// ---- flags ----

const std::vector<std::string>& sonar_flag_names() {
  static const std::vector<std::string> names = {
      "method",        "prior",          "prior-splits",   "replay",           "strata",
      "replay-ratio",  "replay-floor",   "replay-temperature", "replay-layer", "embed-cache",
      "replay-new-clips", "replay-center",
      "distill-model", "distill-layers", "distill-loss",   "distill-tokenizer", "codebook",
      "codebook-decay", "dead-usage",    "novelty-cos",    "novelty-share",    "grow-per-step",
      "max-codes",     "codebook-warmup", "new-rows"};
  return names;
}

std::string sonar_flags_help() {
  const ReplayOptions r;
  const SelfDistillOptions d;
  const CodebookOptions c;
  std::ostringstream h;
  h << "SONAR (--method sonar turns on all three parts; each flag below changes one, see docs/sonar.md):\n"
       "  --method M             dcpt (default: plain continual pre-training) or sonar\n"
       "Task-relevant stratified replay of prior data:\n"
       "  --prior SRC            the prior pool (stands for the original pre-training data): manifest, folder or list\n"
       "  --prior-splits A,B     use only these splits of the prior pool\n"
       "  --replay MODE          stratified (default), uniform (prior clips at random) or none\n"
       "  --strata S             labels (the pool's labels), K (k-means clusters of the start model's embeddings)\n"
       "                         or auto (labels when at least 90% of the pool's clips have one, else 8 clusters;\n"
       "                         default)\n"
       "  --replay-ratio R       replayed clips per step = round(R x --batch), R in [0, 1] (default " << r.ratio << ")\n"
       "  --replay-floor F       share of a stratum = (1-F) x relevance + F / strata (default " << r.floor << ")\n"
       "  --replay-temperature T softmax temperature of a stratum's relevance (default " << r.temperature << ")\n"
       "  --replay-layer L       encoder block embedded for strata and relevance, 1-based (default: the last)\n"
       "  --embed-cache DIR      cache of clip embeddings (default: RUN_DIR/embeddings); give one to share it\n"
       "                         between runs (a fresh run killed while embedding keeps nothing without it)\n"
       "  --replay-new-clips N   new-domain clips embedded for the relevance, a seeded sample (default "
    << r.max_new_clips << "; 0: all)\n"
       "  --replay-center on|off centre embeddings on the prior pool's mean before cosines (default on)\n"
       "Dual-source self-distillation:\n"
       "  --distill-model W      weight of the pull to the frozen start model's features (default " << d.model_weight
    << "; 0: off)\n"
       "  --distill-layers L,..  blocks distilled, 1-based (default: the last)\n"
       "  --distill-loss F       cosine (default) or mse (on standardised features)\n"
       "  --distill-tokenizer W  weight of the auxiliary head predicting the frozen start tokenizer's labels\n"
       "                         (default " << d.tokenizer_weight << "; 0: off)\n"
       "Online clustered codebook (needs a trained tokenizer, --tokenizer):\n"
       "  --codebook MODE        online (default: EMA codes, dead-code re-initialisation, growth) or frozen\n"
       "  --codebook-decay D     EMA decay of codes and usage (default " << c.decay << ")\n"
       "  --dead-usage U         a code is dead below U / K of the usage (default " << c.dead_usage << ")\n"
       "  --novelty-cos C        a feature is novel below cosine C to every code (default " << c.novelty_cos << ")\n"
       "  --novelty-share S      grow when more than S of a batch's features are novel (default " << c.novelty_share
    << ")\n"
       "  --grow-per-step N      codes added at most per step (default " << c.max_new_per_step << ")\n"
       "  --max-codes K          codebook size cap (default: 1.5 x the start size)\n"
       "  --codebook-warmup N    no re-initialisation or growth in the first N steps (default " << c.warmup_steps
    << ")\n"
       "  --new-rows R           predictor rows of new codes: nearest (copy the old code's row, default) or fresh\n";
  return h.str();
}

SonarOptions sonar_options_from_flags(const std::map<std::string, std::string>& flags) {
  SonarOptions o;
  auto has = [&](const std::string& k) { return flags.count(k) > 0; };
  auto get = [&](const std::string& k) { return flags.at(k); };
  if (has("method")) o.method = one_of("method", get("method"), {"dcpt", "sonar"});
  if (o.method == "dcpt") {
    for (const auto& f : sonar_flag_names())
      SONAR_CHECK(f == "method" || !has(f), "--", f, " is a SONAR option; it needs --method sonar (DCPT has no "
                  "replay, distillation or codebook updates)");
    return o;
  }
  ReplayOptions& r = o.replay;
  if (has("replay")) r.mode = one_of("replay", get("replay"), {"stratified", "uniform", "none"});
  if (has("prior")) r.prior = get("prior");
  if (has("prior-splits")) r.prior_splits = split_commas(get("prior-splits"));
  if (has("strata")) r.strata = get("strata");
  if (has("replay-ratio")) r.ratio = parse_number("replay-ratio", get("replay-ratio"));
  if (has("replay-floor")) r.floor = parse_number("replay-floor", get("replay-floor"));
  if (has("replay-temperature")) r.temperature = parse_number("replay-temperature", get("replay-temperature"));
  if (has("replay-layer")) r.layer = parse_integer("replay-layer", get("replay-layer"));
  if (has("embed-cache")) r.cache_dir = get("embed-cache");
  if (has("replay-new-clips")) r.max_new_clips = parse_integer("replay-new-clips", get("replay-new-clips"));
  if (has("replay-center")) r.center = one_of("replay-center", get("replay-center"), {"on", "off"}) == "on";
  if (r.mode != "none") {
    SONAR_CHECK(!r.prior.empty(), "--replay ", r.mode, " needs the prior pool (--prior MANIFEST|DIR|LIST), or "
                "--replay none");
    validate(r);
  }

  SelfDistillOptions& d = o.distill;
  if (has("distill-model")) d.model_weight = parse_number("distill-model", get("distill-model"));
  if (has("distill-layers")) {
    d.layers.clear();
    for (const auto& l : split_commas(get("distill-layers"))) d.layers.push_back(parse_integer("distill-layers", l));
  }
  if (has("distill-loss")) d.loss = one_of("distill-loss", get("distill-loss"), {"cosine", "mse"});
  if (has("distill-tokenizer")) d.tokenizer_weight = parse_number("distill-tokenizer", get("distill-tokenizer"));
  validate(d);

  CodebookOptions& c = o.codebook;
  if (has("codebook")) c.mode = one_of("codebook", get("codebook"), {"online", "frozen"});
  if (has("codebook-decay")) c.decay = static_cast<float>(parse_number("codebook-decay", get("codebook-decay")));
  if (has("dead-usage")) c.dead_usage = parse_number("dead-usage", get("dead-usage"));
  if (has("novelty-cos")) c.novelty_cos = parse_number("novelty-cos", get("novelty-cos"));
  if (has("novelty-share")) c.novelty_share = parse_number("novelty-share", get("novelty-share"));
  if (has("grow-per-step")) c.max_new_per_step = parse_integer("grow-per-step", get("grow-per-step"));
  if (has("max-codes")) c.max_codes = parse_integer("max-codes", get("max-codes"));
  if (has("codebook-warmup")) c.warmup_steps = parse_integer("codebook-warmup", get("codebook-warmup"));
  if (has("new-rows")) c.new_rows = one_of("new-rows", get("new-rows"), {"nearest", "fresh"});
  if (c.mode == "online") validate(c);
  return o;
}

const std::vector<std::string>& method_names() {
  static const std::vector<std::string> names = {"dcpt",
                                                 "sonar",
                                                 "sonar-no-replay",
                                                 "sonar-uniform-replay",
                                                 "sonar-no-model-distill",
                                                 "sonar-no-tokenizer-distill",
                                                 "sonar-frozen-codebook"};
  return names;
}

std::map<std::string, std::string> method_flags(const std::string& name) {
  if (name == "dcpt") return {{"method", "dcpt"}};
  if (name == "sonar") return {{"method", "sonar"}};
  if (name == "sonar-no-replay") return {{"method", "sonar"}, {"replay", "none"}};
  if (name == "sonar-uniform-replay") return {{"method", "sonar"}, {"replay", "uniform"}};
  if (name == "sonar-no-model-distill") return {{"method", "sonar"}, {"distill-model", "0"}};
  if (name == "sonar-no-tokenizer-distill") return {{"method", "sonar"}, {"distill-tokenizer", "0"}};
  if (name == "sonar-frozen-codebook") return {{"method", "sonar"}, {"codebook", "frozen"}};
  std::string known;
  for (const auto& n : method_names()) known += (known.empty() ? "" : ", ") + n;
  SONAR_FAIL("unknown method '", name, "' (known: ", known, ")");
}

}  // namespace sonar::method
