// BeatsConfig parsing from an official checkpoint's cfg dict and from/to JSON (see nn/beats/config.h).
#include "nn/beats/config.h"

#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include "tensor/error.h"

namespace sonar::beats {

const char* kind_name(ModelKind k) {
  switch (k) {
    case ModelKind::Pretrained: return "pretrained";
    case ModelKind::Finetuned: return "finetuned";
    case ModelKind::Tokenizer: return "tokenizer";
    case ModelKind::RandomProjectionTokenizer: return "random_projection_tokenizer";
  }
  return "?";
}

ModelKind kind_from_name(const std::string& name) {
  for (ModelKind k : {ModelKind::Pretrained, ModelKind::Finetuned, ModelKind::Tokenizer,
                      ModelKind::RandomProjectionTokenizer})
    if (name == kind_name(k)) return k;
  SONAR_FAIL("unknown model kind '", name,
             "' (expected pretrained, finetuned, tokenizer or random_projection_tokenizer)");
}

namespace {

// One table of fields drives the dict parser, the JSON reader and the JSON writer.
struct Field {
  const char* name;
  enum Type { Int, Bool, Float, String } type;
  std::function<void*(BeatsConfig&)> ptr;
};

const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
#define SONAR_FIELD(name, type) Field{#name, Field::type, [](BeatsConfig& c) -> void* { return &c.name; }}
      SONAR_FIELD(input_patch_size, Int),
      SONAR_FIELD(embed_dim, Int),
      SONAR_FIELD(conv_bias, Bool),
      SONAR_FIELD(encoder_layers, Int),
      SONAR_FIELD(encoder_embed_dim, Int),
      SONAR_FIELD(encoder_ffn_embed_dim, Int),
      SONAR_FIELD(encoder_attention_heads, Int),
      SONAR_FIELD(activation_fn, String),
      SONAR_FIELD(layer_wise_gradient_decay_ratio, Float),
      SONAR_FIELD(layer_norm_first, Bool),
      SONAR_FIELD(deep_norm, Bool),
      SONAR_FIELD(dropout, Float),
      SONAR_FIELD(attention_dropout, Float),
      SONAR_FIELD(activation_dropout, Float),
      SONAR_FIELD(encoder_layerdrop, Float),
      SONAR_FIELD(dropout_input, Float),
      SONAR_FIELD(conv_pos, Int),
      SONAR_FIELD(conv_pos_groups, Int),
      SONAR_FIELD(relative_position_embedding, Bool),
      SONAR_FIELD(num_buckets, Int),
      SONAR_FIELD(max_distance, Int),
      SONAR_FIELD(gru_rel_pos, Bool),
      SONAR_FIELD(finetuned_model, Bool),
      SONAR_FIELD(predictor_dropout, Float),
      SONAR_FIELD(predictor_class, Int),
      SONAR_FIELD(quant_n, Int),
      SONAR_FIELD(quant_dim, Int),
#undef SONAR_FIELD
  };
  return f;
}

const Field* find_field(const std::string& name) {
  for (const auto& f : fields())
    if (name == f.name) return &f;
  return nullptr;
}

const char* type_label(Field::Type t) {
  switch (t) {
    case Field::Int: return "int";
    case Field::Bool: return "bool";
    case Field::Float: return "float";
    case Field::String: return "str";
  }
  return "?";
}

}  // namespace

BeatsConfig BeatsConfig::from_pyvalue(const PyValue& cfg) {
  SONAR_CHECK(cfg.is_dict(), "cfg: expected a dict, got ", cfg.type_name());
  BeatsConfig c;
  for (const auto& item : cfg.items()) {
    SONAR_CHECK(item.key.is_string(), "cfg: expected string keys, got a ", item.key.type_name(), " key");
    const std::string& key = item.key.as_string();
    const PyValue& v = item.value;
    const Field* f = find_field(key);
    if (!f) {
      c.extra[key] = v.repr(120);
      continue;
    }
    void* p = f->ptr(c);
    auto wrong = [&]() {
      SONAR_FAIL("cfg['", key, "']: expected ", type_label(f->type), ", got ", v.type_name(), " ", v.repr(60));
    };
    switch (f->type) {
      case Field::Int:
        if (!v.is_int()) wrong();
        *static_cast<int64_t*>(p) = v.as_int();
        break;
      case Field::Bool:
        if (v.is_bool()) {
          *static_cast<bool*>(p) = v.as_bool();
        } else if (v.is_int() && (v.as_int() == 0 || v.as_int() == 1)) {
          *static_cast<bool*>(p) = v.as_int() == 1;
        } else {
          wrong();
        }
        break;
      case Field::Float:
        if (!v.is_float() && !v.is_int()) wrong();
        *static_cast<double*>(p) = v.as_float();
        break;
      case Field::String:
        if (!v.is_string()) wrong();
        *static_cast<std::string*>(p) = v.as_string();
        break;
    }
  }
  return c;
}

BeatsConfig BeatsConfig::from_json(const nlohmann::json& j) {
  SONAR_CHECK(j.is_object(), "config JSON: expected an object, got ", j.type_name());
  BeatsConfig c;
  for (const auto& [key, v] : j.items()) {
    if (key == "extra") {
      SONAR_CHECK(v.is_object(), "config JSON: 'extra' must be an object");
      for (const auto& [ek, ev] : v.items()) c.extra[ek] = ev.is_string() ? ev.get<std::string>() : ev.dump();
      continue;
    }
    const Field* f = find_field(key);
    if (!f) {
      c.extra[key] = v.dump();
      continue;
    }
    void* p = f->ptr(c);
    auto wrong = [&]() { SONAR_FAIL("config JSON '", key, "': expected ", type_label(f->type), ", got ", v.dump()); };
    switch (f->type) {
      case Field::Int:
        if (!v.is_number_integer()) wrong();
        *static_cast<int64_t*>(p) = v.get<int64_t>();
        break;
      case Field::Bool:
        if (!v.is_boolean()) wrong();
        *static_cast<bool*>(p) = v.get<bool>();
        break;
      case Field::Float:
        if (!v.is_number()) wrong();
        *static_cast<double*>(p) = v.get<double>();
        break;
      case Field::String:
        if (!v.is_string()) wrong();
        *static_cast<std::string*>(p) = v.get<std::string>();
        break;
    }
  }
  return c;
}

nlohmann::json BeatsConfig::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  BeatsConfig& self = const_cast<BeatsConfig&>(*this);  // the field table hands out mutable pointers
  for (const auto& f : fields()) {
    void* p = f.ptr(self);
    switch (f.type) {
      case Field::Int: j[f.name] = *static_cast<int64_t*>(p); break;
      case Field::Bool: j[f.name] = *static_cast<bool*>(p); break;
      case Field::Float: j[f.name] = *static_cast<double*>(p); break;
      case Field::String: j[f.name] = *static_cast<std::string*>(p); break;
    }
  }
  if (!extra.empty()) j["extra"] = extra;
  return j;
}

void BeatsConfig::validate() const {
  SONAR_CHECK(input_patch_size > 0, "config: input_patch_size must be positive, got ", input_patch_size);
  SONAR_CHECK(embed_dim > 0, "config: embed_dim must be positive, got ", embed_dim);
  SONAR_CHECK(encoder_layers > 0, "config: encoder_layers must be positive, got ", encoder_layers);
  SONAR_CHECK(encoder_embed_dim > 0 && encoder_ffn_embed_dim > 0, "config: encoder widths must be positive");
  SONAR_CHECK(encoder_attention_heads > 0 && encoder_embed_dim % encoder_attention_heads == 0,
              "config: encoder_embed_dim ", encoder_embed_dim, " is not divisible by encoder_attention_heads ",
              encoder_attention_heads);
  SONAR_CHECK(conv_pos > 0 && conv_pos_groups > 0 && encoder_embed_dim % conv_pos_groups == 0,
              "config: encoder_embed_dim ", encoder_embed_dim, " is not divisible by conv_pos_groups ",
              conv_pos_groups);
  SONAR_CHECK(!(deep_norm && layer_norm_first), "config: deep_norm and layer_norm_first cannot both be set");
  static const char* acts[] = {"gelu", "gelu_accurate", "gelu_fast", "relu", "tanh", "linear", "glu"};
  bool known = false;
  for (const char* a : acts) known = known || activation_fn == a;
  SONAR_CHECK(known, "config: activation_fn '", activation_fn, "' is not supported");
  for (auto [name, p] : {std::pair<const char*, double>{"dropout", dropout}, {"attention_dropout", attention_dropout},
                         {"activation_dropout", activation_dropout}, {"encoder_layerdrop", encoder_layerdrop},
                         {"dropout_input", dropout_input}, {"predictor_dropout", predictor_dropout}})
    SONAR_CHECK(p >= 0.0 && p < 1.0, "config: ", name, " must be in [0, 1), got ", p);
  if (relative_position_embedding) {
    SONAR_CHECK(num_buckets >= 4 && max_distance > num_buckets / 4, "config: relative position buckets need ",
                "num_buckets >= 4 and max_distance > num_buckets / 4 (got ", num_buckets, ", ", max_distance, ")");
  }
  SONAR_CHECK(predictor_class > 0, "config: predictor_class must be positive, got ", predictor_class);
  SONAR_CHECK(quant_n > 0 && quant_dim > 0, "config: quant_n and quant_dim must be positive");
}

double BeatsConfig::deep_norm_alpha() const {
  return deep_norm ? std::pow(2.0 * static_cast<double>(encoder_layers), 0.25) : 1.0;
}

std::string describe(const BeatsConfig& c, ModelKind kind) {
  std::ostringstream os;
  os << "kind: " << kind_name(kind) << "\n";
  os << "configuration:\n";
  nlohmann::json j = c.to_json();
  for (const auto& f : fields()) {
    const std::string name = f.name;
    const bool tokenizer_field = name == "quant_n" || name == "quant_dim";
    const bool head_field = name == "finetuned_model" || name == "predictor_dropout" || name == "predictor_class";
    if (tokenizer_field && kind != ModelKind::Tokenizer && kind != ModelKind::RandomProjectionTokenizer) continue;
    if (head_field && kind != ModelKind::Finetuned) continue;
    os << "  " << name << ": " << j[name].dump() << "\n";
  }
  for (const auto& [k, v] : c.extra) os << "  " << k << ": " << v << " (not used)\n";
  return os.str();
}

}  // namespace sonar::beats
