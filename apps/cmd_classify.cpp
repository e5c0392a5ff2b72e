// `sonar classify`: class probabilities of a fine-tuned BEATs model and the top labels of each clip.
// Thin: input reading in apps/beats_common, the model in nn/beats.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "apps/beats_common.h"
#include "apps/command.h"
#include "nn/beats/checkpoint.h"
#include "tensor/index.h"
#include "tensor/io.h"

namespace {

const char* kUsage = R"(usage: sonar classify --checkpoint CKPT --input IN [--padding-mask M.npy] [--exact-padding]
                      --output OUT.npy [--top K]

Runs a fine-tuned BEATs model (official .pt with label_dict, or sonar safetensors) in eval mode and saves the
sigmoid class probabilities, float32 [clips, classes]: per-patch logits averaged over the clip's unpadded
patches. Prints, for each clip, the K most probable labels by name:
  clip 0: <label> 0.912, <label> 0.433, ...

  --checkpoint CKPT   a fine-tuned model (a pretrained model has no classifier head: error)
  --input IN          an audio file or a float32 .npy of 16 kHz samples, [samples] or [clips, samples]
  --padding-mask M    uint8 .npy [clips, samples], 1 = padding
  --exact-padding     average over each clip's truly unpadded patches (see `sonar features`)
  --output OUT.npy    written atomically
  --top K             labels printed per clip (default 5; 0 prints none)
)";

int run_classify(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv, {"checkpoint", "input", "padding-mask", "output", "top"}, {"exact-padding"});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().front(), "' (see --help)");
  const std::string ckpt = args.require("checkpoint"), input = args.require("input"), out = args.require("output");
  app::require_npy_name(out, "output");
  const long long top = args.get_int("top", 5);
  SONAR_CHECK(top >= 0, "--top must be >= 0, got ", top);
  auto model = beats::load_beats(ckpt);
  SONAR_CHECK(model->has_predictor(), ckpt, ": a pretrained model has no classifier head (need a fine-tuned checkpoint)");
  app::WaveInput in = app::read_wave_input(input, args.get("padding-mask"));

  beats::FeatureOptions opts;
  opts.padding = args.has("exact-padding") ? beats::PaddingMode::Exact : beats::PaddingMode::Official;
  model->eval();
  ag::NoGradGuard no_grad;
  std::vector<Tensor> probs;
  const int64_t clips = in.wave.size(0);
  app::for_each_chunk(clips, app::kClipsPerChunk, [&](int64_t first, int64_t n) {
    Tensor mask = in.mask_rows(first, n);
    probs.push_back(model->classify(in.wave.narrow(0, first, n), mask, opts).probs.value());
  });
  Tensor result = cat(probs, 0).contiguous();
  save_npy(out, result);
  std::printf("%s -> %s: %s float32 probabilities\n", input.c_str(), out.c_str(), shape_str(result.shape()).c_str());
  const int64_t classes = result.size(1);
  const int64_t k = std::min<int64_t>(top, classes);
  const float* p = result.data<float>();
  for (int64_t c = 0; c < clips && k > 0; ++c) {
    std::vector<int64_t> order(classes);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int64_t a, int64_t b) { return p[c * classes + a] > p[c * classes + b]; });
    std::printf("clip %lld:", static_cast<long long>(c));
    for (int64_t i = 0; i < k; ++i) {
      auto it = model->labels.find(order[i]);
      const std::string name = it != model->labels.end() ? it->second : "class " + std::to_string(order[i]);
      std::printf("%s %s %.3f", i ? "," : "", name.c_str(), p[c * classes + order[i]]);
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

SONAR_COMMAND("classify", "class probabilities and top labels from a fine-tuned BEATs model", kUsage, run_classify);
