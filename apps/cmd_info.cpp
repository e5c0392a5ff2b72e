// `sonar info CHECKPOINT`: what a BEATs checkpoint (official .pt or project safetensors) holds: kind, format,
// configuration, parameter count and, when present, labels, codebook state and training state.
// Thin: reading and describing is nn/beats/checkpoint.
#include <cstdio>
#include <string>

#include "apps/command.h"
#include "nn/beats/checkpoint.h"
#include "tensor/elementwise.h"
#include "tensor/reduce.h"

namespace {

const char* kUsage = R"(usage: sonar info CHECKPOINT

Prints what a BEATs checkpoint holds: the file format (PyTorch .pt or sonar safetensors), the kind of model
(pretrained, finetuned, tokenizer, random_projection_tokenizer), every configuration field, the number of
parameters and buffers, and for fine-tuned models the labels, for tokenizers the codebook (codes x dims,
initialised or not, codes in use), for training checkpoints the stored training state. The model is built and
loaded strictly, so a checkpoint that `info` accepts is one the other commands accept.
)";

int run_info(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv, {}, {});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().size() == 1, "expected one CHECKPOINT argument (see --help)");
  const std::string path = args.positional()[0];
  beats::CheckpointData c = beats::read_checkpoint(path);
  std::shared_ptr<nn::Module> m = beats::build_module(c);

  std::printf("file: %s\n", path.c_str());
  std::printf("format: %s\n", c.format == beats::FileFormat::PyTorch ? "pytorch (.pt)" : "safetensors (sonar)");
  if (c.kind == beats::ModelKind::RandomProjectionTokenizer) {
    std::printf("kind: %s\nconfiguration:\n  input_patch_size: %lld\n  quant_n: %lld\n  quant_dim: %lld\n",
                beats::kind_name(c.kind), static_cast<long long>(c.cfg.input_patch_size),
                static_cast<long long>(c.cfg.quant_n), static_cast<long long>(c.cfg.quant_dim));
  } else {
    std::fputs(beats::describe(c.cfg, c.kind).c_str(), stdout);
  }
  int64_t buffer_elems = 0;
  auto buffers = m->named_buffers();
  for (auto& [name, b] : buffers) buffer_elems += b.numel();
  const int64_t params = m->num_parameters();
  std::printf("parameters: %lld (%.2f MB as float32)\n", static_cast<long long>(params), params * 4.0 / 1e6);
  std::printf("buffers: %zu (%lld values)\n", buffers.size(), static_cast<long long>(buffer_elems));
  std::printf("state dict entries: %zu\n", c.state.size());
  if (auto model = std::dynamic_pointer_cast<beats::BeatsModel>(m); model && model->has_predictor()) {
    std::printf("classes: %lld\n", static_cast<long long>(model->cfg.predictor_class));
    std::string shown;
    int n = 0;
    for (auto& [i, name] : model->labels) {
      if (n++ == 5) {
        shown += ", ...";
        break;
      }
      shown += (n == 1 ? "" : ", ") + std::to_string(i) + ": " + name;
    }
    std::printf("labels: %zu%s%s%s\n", model->labels.size(), shown.empty() ? "" : " (", shown.c_str(),
                shown.empty() ? "" : ")");
  }
  if (auto tok = std::dynamic_pointer_cast<beats::BeatsTokenizer>(m)) {
    const auto& q = *tok->quantize;
    const int64_t used = sum(gt(q.usage(), 0.0f).to(DType::Int64)).item<int64_t>();
    std::printf("codebook: %lld codes x %lld dims, %s, %lld codes with usage > 0\n",
                static_cast<long long>(q.num_codes()), static_cast<long long>(q.dim),
                q.initialised() ? "initialised" : "not initialised (k-means on the first training batch)",
                static_cast<long long>(used));
  }
  if (!c.training_tensors.empty()) std::printf("training tensors: %zu\n", c.training_tensors.size());
  for (const auto& [k, v] : c.metadata)
    if (k.rfind("sonar.", 0) != 0) std::printf("metadata %s: %s\n", k.c_str(), v.substr(0, 120).c_str());
  return 0;
}

}  // namespace

SONAR_COMMAND("info", "describe a BEATs checkpoint (.pt or safetensors)", kUsage, run_info);
