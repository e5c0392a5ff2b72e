// `sonar convert IN OUT.safetensors`: any BEATs checkpoint (official .pt or sonar safetensors) to this
// project's safetensors format. Thin: nn/beats/checkpoint does the work.
#include <cstdio>
#include <string>

#include "apps/command.h"
#include "nn/beats/checkpoint.h"

namespace {

const char* kUsage = R"(usage: sonar convert IN OUT.safetensors

Reads a BEATs checkpoint (official pretrained, fine-tuned or Tokenizer .pt, or a sonar safetensors file),
builds the model from its configuration and loads it strictly, then writes a safetensors file: the state dict
under the PyTorch names plus metadata sonar.format, sonar.kind, sonar.config (JSON) and sonar.labels.
PyTorch users read it with safetensors.torch.load_file and load_state_dict. Written atomically.
)";

int run_convert(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv, {}, {});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().size() == 2, "expected IN and OUT.safetensors (see --help)");
  const std::string in = args.positional()[0], out = args.positional()[1];
  const std::string ext = ".safetensors";
  SONAR_CHECK(out.size() > ext.size() && out.compare(out.size() - ext.size(), ext.size(), ext) == 0,
              "OUT must name a .safetensors file, got '", out, "'");
  beats::convert_checkpoint(in, out);
  beats::CheckpointData c = beats::read_checkpoint(out);
  std::printf("%s -> %s: %s, %zu tensors%s\n", in.c_str(), out.c_str(), beats::kind_name(c.kind), c.state.size(),
              c.labels.empty() ? "" : (", " + std::to_string(c.labels.size()) + " labels").c_str());
  return 0;
}

}  // namespace

SONAR_COMMAND("convert", "convert a BEATs checkpoint (.pt) to sonar safetensors", kUsage, run_convert);
