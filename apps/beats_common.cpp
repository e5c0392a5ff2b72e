// Input reading and chunking for the BEATs commands (see apps/beats_common.h).
#include "apps/beats_common.h"

#include <cmath>

#include "audio/decode.h"
#include "tensor/io.h"

namespace sonar::app {

namespace {
// A float .npy whose samples reach beyond this is integer PCM or another scale, not [-1, 1] audio.
constexpr float kMaxPlausibleSample = 2.0f;
// The shortest clip BEATs can embed: one 16-frame patch of 25 ms frames every 10 ms.
constexpr int64_t kMinSamples = 400 + 15 * 160;
}  // namespace

WaveInput read_wave_input(const std::string& input, const std::string& mask_path) {
  WaveInput in;
  if (audio::has_npy_extension(input)) {
    Tensor w = audio::load_wave_npy(input);
    in.wave = w.dim() == 1 ? w.unsqueeze(0).contiguous() : w.contiguous();
    const float* p = in.wave.data<float>();
    float peak = 0.0f;
    for (int64_t i = 0; i < in.wave.numel(); ++i) peak = std::max(peak, std::fabs(p[i]));
    SONAR_CHECK(peak <= kMaxPlausibleSample, input, ": samples reach ", peak,
                "; expected 16 kHz float32 samples in [-1, 1] (integer PCM must be divided by 32768)");
  } else {
    in.wave = audio::load_audio(input).unsqueeze(0).contiguous();
  }
  SONAR_CHECK(in.wave.size(0) > 0, input, ": no clips");
  SONAR_CHECK(in.wave.size(1) >= kMinSamples, input, ": clips of ", in.wave.size(1), " samples are shorter than one ",
              "BEATs patch (", kMinSamples, " samples = 16 frames at 16 kHz)");
  if (!mask_path.empty()) {
    Tensor m;
    try {
      m = load_npy(mask_path);
    } catch (const Error& e) {
      const std::string msg = e.what();
      if (msg.find(mask_path) != std::string::npos) throw;
      SONAR_FAIL(mask_path, ": ", msg);
    }
    SONAR_CHECK(m.dtype() == DType::UInt8 || m.dtype() == DType::Bool, mask_path,
                ": padding mask must be uint8 (1 = padding), got ", dtype_name(m.dtype()));
    if (m.dim() == 1) m = m.unsqueeze(0);
    SONAR_CHECK(m.shape() == in.wave.shape(), mask_path, ": padding mask ", shape_str(m.shape()),
                " does not match the input ", shape_str(in.wave.shape()));
    in.padding_mask = m.to(DType::UInt8).contiguous();
  }
  return in;
}

std::string mask_path_for(const std::string& output) {
  const std::string ext = ".npy";
  if (output.size() > ext.size() && output.compare(output.size() - ext.size(), ext.size(), ext) == 0)
    return output.substr(0, output.size() - ext.size()) + ".mask.npy";
  return output + ".mask.npy";
}

void require_npy_name(const std::string& path, const char* flag) {
  SONAR_CHECK(path.size() > 4 && path.compare(path.size() - 4, 4, ".npy") == 0, "--", flag,
              " must name a .npy file, got '", path, "'");
}

void for_each_chunk(int64_t clips, int64_t chunk, const std::function<void(int64_t, int64_t)>& f) {
  for (int64_t first = 0; first < clips; first += chunk) f(first, std::min(chunk, clips - first));
}

}  // namespace sonar::app
