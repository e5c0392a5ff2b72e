// Reading official .pt and project safetensors BEATs checkpoints, building models from them, and writing
// safetensors checkpoints (see nn/beats/checkpoint.h).
#include "nn/beats/checkpoint.h"

#include <cerrno>
#include <cstring>
#include <fstream>

#include "nn/torch_checkpoint.h"
#include "tensor/io.h"

namespace sonar::beats {

namespace {

// First bytes of a file ("" when it cannot be opened: the caller reports).
std::string file_head(const std::string& path, size_t n) {
  std::ifstream in(path, std::ios::binary);
  SONAR_CHECK(in.good(), "cannot open checkpoint '", path, "': ", std::strerror(errno));
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(in.gcount()));
  return head;
}

bool looks_like_zip(const std::string& head) { return head.size() >= 4 && head.compare(0, 4, "PK\x03\x04") == 0; }

bool looks_like_safetensors(const std::string& head) {
  if (head.size() < 9) return false;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(head[i]);
  return n > 1 && n < (uint64_t{1} << 32) && head[8] == '{';
}

std::map<int64_t, std::string> parse_label_dict(const PyValue& d) {
  SONAR_CHECK(d.is_dict(), "label_dict: expected a dict, got ", d.type_name());
  std::map<int64_t, std::string> labels;
  for (const auto& it : d.items()) {
    if (it.key.is_int() && it.value.is_string()) {
      labels[it.key.as_int()] = it.value.as_string();
    } else if (it.key.is_string() && it.value.is_int()) {  // a label -> index mapping, inverted
      labels[it.value.as_int()] = it.key.as_string();
    } else {
      SONAR_FAIL("label_dict: expected int -> str entries, got ", it.key.type_name(), " -> ", it.value.type_name());
    }
  }
  return labels;
}

bool has_prefix(const std::map<std::string, Tensor>& state, const std::string& prefix) {
  auto it = state.lower_bound(prefix);
  return it != state.end() && it->first.compare(0, prefix.size(), prefix) == 0;
}

CheckpointData read_pytorch(const std::string& path) {
  CheckpointData c;
  c.path = path;
  c.format = FileFormat::PyTorch;
  PyValue root = load_torch_checkpoint(path);
  SONAR_CHECK(root.is_dict(), "not a BEATs checkpoint: the file holds a ", root.type_name(), ", not a dict");
  SONAR_CHECK(root.contains("cfg"), "not a BEATs checkpoint: no 'cfg' entry (keys: ", root.repr(120), ")");
  c.cfg = BeatsConfig::from_pyvalue(root.at("cfg"));
  c.state = state_dict_from(root);
  if (root.contains("label_dict") && !root.at("label_dict").is_none()) c.labels = parse_label_dict(root.at("label_dict"));
  // Kind: a quantizer makes a tokenizer; a predictor (or finetuned_model) a fine-tuned model.
  const PyValue& cfg = root.at("cfg");
  if (has_prefix(c.state, "quantize.") || cfg.contains("quant_n")) {
    c.kind = ModelKind::Tokenizer;
  } else if (c.cfg.finetuned_model || c.state.count("predictor.weight")) {
    c.kind = ModelKind::Finetuned;
    auto it = c.state.find("predictor.weight");
    if (!c.cfg.finetuned_model && it != c.state.end() && it->second.dim() == 2) {
      c.cfg.finetuned_model = true;  // head present without the flag: size it from the weights
      c.cfg.predictor_class = it->second.size(0);
    }
  } else {
    c.kind = ModelKind::Pretrained;
  }
  return c;
}

CheckpointData read_safetensors(const std::string& path) {
  CheckpointData c;
  c.path = path;
  c.format = FileFormat::SafeTensors;
  SafeTensorsFile f = load_safetensors(path);
  c.metadata = f.metadata;
  auto meta = [&](const char* key) -> const std::string& {
    auto it = f.metadata.find(key);
    SONAR_CHECK(it != f.metadata.end(), "not a sonar BEATs checkpoint: safetensors metadata has no '", key, "'");
    return it->second;
  };
  SONAR_CHECK(meta("sonar.format") == kSafetensorsFormat, "unsupported checkpoint format '", meta("sonar.format"),
              "' (this build reads ", kSafetensorsFormat, ")");
  c.kind = kind_from_name(meta("sonar.kind"));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(meta("sonar.config"));
  } catch (const nlohmann::json::exception& e) {
    SONAR_FAIL("metadata 'sonar.config' is not valid JSON: ", e.what());
  }
  c.cfg = BeatsConfig::from_json(j);
  auto lab = f.metadata.find("sonar.labels");
  if (lab != f.metadata.end()) {
    nlohmann::json lj;
    try {
      lj = nlohmann::json::parse(lab->second);
    } catch (const nlohmann::json::exception& e) {
      SONAR_FAIL("metadata 'sonar.labels' is not valid JSON: ", e.what());
    }
    SONAR_CHECK(lj.is_object(), "metadata 'sonar.labels' must be a JSON object");
    for (const auto& [k, v] : lj.items()) {
      SONAR_CHECK(v.is_string(), "metadata 'sonar.labels': label ", k, " is not a string");
      try {
        size_t used = 0;
        const int64_t idx = std::stoll(k, &used);
        SONAR_CHECK(used == k.size(), "");
        c.labels[idx] = v.get<std::string>();
      } catch (...) {
        SONAR_FAIL("metadata 'sonar.labels': key '", k, "' is not a class index");
      }
    }
  }
  const std::string prefix = kTrainingPrefix;
  for (auto& [name, t] : f.tensors) {
    if (name.compare(0, prefix.size(), prefix) == 0) {
      c.training_tensors[name.substr(prefix.size())] = t;
    } else {
      c.state[name] = t;
    }
  }
  return c;
}

template <class F>
auto with_path(const std::string& path, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.find(path) != std::string::npos) throw;
    throw Error(path + ": " + msg);
  }
}

void check_kind(const CheckpointData& c, std::initializer_list<ModelKind> allowed, const char* wanted) {
  for (ModelKind k : allowed)
    if (c.kind == k) return;
  SONAR_FAIL(c.path, ": this is a ", kind_name(c.kind), " checkpoint, not ", wanted);
}

}  // namespace

CheckpointData read_checkpoint(const std::string& path) {
  return with_path(path, [&]() {
    const std::string head = file_head(path, 16);
    CheckpointData c;
    if (looks_like_zip(head)) {
      c = read_pytorch(path);
    } else if (looks_like_safetensors(head)) {
      c = read_safetensors(path);
    } else {
      SONAR_FAIL("neither a PyTorch .pt (zip) nor a safetensors checkpoint",
                 head.empty() ? " (the file is empty)" : "");
    }
    if (c.kind != ModelKind::RandomProjectionTokenizer) c.cfg.validate();
    return c;
  });
}

std::shared_ptr<BeatsModel> build_beats(const CheckpointData& c) {
  check_kind(c, {ModelKind::Pretrained, ModelKind::Finetuned}, "a BEATs model (pretrained or finetuned)");
  return with_path(c.path, [&]() {
    auto m = std::make_shared<BeatsModel>(c.cfg);
    m->load_state_dict(c.state, true);
    m->labels = c.labels;
    m->eval();
    return m;
  });
}

std::shared_ptr<BeatsTokenizer> build_tokenizer(const CheckpointData& c) {
  check_kind(c, {ModelKind::Tokenizer}, "a BEATs tokenizer");
  return with_path(c.path, [&]() {
    auto t = std::make_shared<BeatsTokenizer>(c.cfg);
    t->load_state_dict(c.state, true);
    t->eval();
    return t;
  });
}

std::shared_ptr<RandomProjectionTokenizer> build_random_projection(const CheckpointData& c) {
  check_kind(c, {ModelKind::RandomProjectionTokenizer}, "a random-projection tokenizer");
  return with_path(c.path, [&]() {
    auto t = std::make_shared<RandomProjectionTokenizer>(c.cfg.input_patch_size, c.cfg.quant_n, c.cfg.quant_dim);
    t->load_state_dict(c.state, true);
    t->eval();
    return t;
  });
}

std::shared_ptr<nn::Module> build_module(const CheckpointData& c) {
  switch (c.kind) {
    case ModelKind::Pretrained:
    case ModelKind::Finetuned: return build_beats(c);
    case ModelKind::Tokenizer: return build_tokenizer(c);
    case ModelKind::RandomProjectionTokenizer: return build_random_projection(c);
  }
  SONAR_FAIL(c.path, ": unknown model kind");
}

std::shared_ptr<BeatsModel> load_beats(const std::string& path) { return build_beats(read_checkpoint(path)); }
std::shared_ptr<BeatsTokenizer> load_tokenizer(const std::string& path) {
  return build_tokenizer(read_checkpoint(path));
}

void save_checkpoint(const std::string& path, const nn::Module& model, ModelKind kind, const BeatsConfig& cfg,
                     const std::map<int64_t, std::string>& labels, const SaveExtras& extras) {
  std::map<std::string, Tensor> tensors;
  for (const auto& [name, t] : model.state_dict()) {
    SONAR_CHECK(name.compare(0, std::strlen(kTrainingPrefix), kTrainingPrefix) != 0, "save_checkpoint: model key '",
                name, "' collides with the training prefix");
    tensors[name] = t.contiguous();
  }
  for (const auto& [name, t] : extras.training_tensors) tensors[std::string(kTrainingPrefix) + name] = t.contiguous();
  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : extras.metadata) {
    SONAR_CHECK(k.compare(0, 6, "sonar.") != 0, "save_checkpoint: metadata key '", k, "' is reserved");
    meta[k] = v;
  }
  meta["sonar.format"] = kSafetensorsFormat;
  meta["sonar.kind"] = kind_name(kind);
  meta["sonar.config"] = cfg.to_json().dump();
  if (!labels.empty()) {
    nlohmann::json lj = nlohmann::json::object();
    for (const auto& [i, name] : labels) lj[std::to_string(i)] = name;
    meta["sonar.labels"] = lj.dump();
  }
  save_safetensors(path, tensors, meta);
}

void save_beats(const std::string& path, const BeatsModel& model, const SaveExtras& extras) {
  save_checkpoint(path, model, model.has_predictor() ? ModelKind::Finetuned : ModelKind::Pretrained, model.cfg,
                  model.labels, extras);
}

void save_tokenizer(const std::string& path, const BeatsTokenizer& tokenizer, const SaveExtras& extras) {
  save_checkpoint(path, tokenizer, ModelKind::Tokenizer, tokenizer.cfg, {}, extras);
}

void save_random_projection(const std::string& path, const RandomProjectionTokenizer& t, const SaveExtras& extras) {
  BeatsConfig cfg;
  cfg.input_patch_size = t.patch_size;
  cfg.quant_n = t.num_codes;
  cfg.quant_dim = t.dim;
  save_checkpoint(path, t, ModelKind::RandomProjectionTokenizer, cfg, {}, extras);
}

void convert_checkpoint(const std::string& in_path, const std::string& out_path) {
  CheckpointData c = read_checkpoint(in_path);
  std::shared_ptr<nn::Module> m = build_module(c);
  SaveExtras extras;
  extras.training_tensors = c.training_tensors;
  for (const auto& [k, v] : c.metadata)
    if (k.compare(0, 6, "sonar.") != 0) extras.metadata[k] = v;
  BeatsConfig cfg = c.cfg;
  save_checkpoint(out_path, *m, c.kind, cfg, c.labels, extras);
}

}  // namespace sonar::beats
