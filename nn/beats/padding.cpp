// Padding-mask downsampling, official and exact (see nn/beats/padding.h).
#include "nn/beats/padding.h"

namespace sonar::beats {

namespace {
void check_mask(const Tensor& mask, const char* op) {
  SONAR_CHECK(mask.defined() && (mask.dtype() == DType::UInt8 || mask.dtype() == DType::Bool), op,
              ": mask must be uint8 or bool");
  SONAR_CHECK(mask.dim() == 2, op, ": mask must be [B, N], got ", shape_str(mask.shape()));
}
}  // namespace

Tensor official_downsample_mask(const Tensor& mask_in, int64_t target_len) {
  check_mask(mask_in, "official_downsample_mask");
  const int64_t B = mask_in.size(0), N = mask_in.size(1);
  SONAR_CHECK(target_len > 0 && N >= target_len, "official_downsample_mask: cannot reduce a mask of length ", N,
              " to ", target_len);
  const int64_t k = N / target_len;  // entries per output position after dropping N % target_len
  const Tensor mask = mask_in.contiguous();
  const uint8_t* m = mask.bytes();
  Tensor out = Tensor::empty({B, target_len}, DType::Bool);
  uint8_t* o = out.bytes();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < target_len; ++l) {
      bool all = true;
      for (int64_t j = 0; j < k && all; ++j) all = m[b * N + l * k + j] != 0;
      o[b * target_len + l] = all ? 1 : 0;
    }
  return out;
}

std::vector<int64_t> lengths_from_mask(const Tensor& mask_in) {
  check_mask(mask_in, "lengths_from_mask");
  const int64_t B = mask_in.size(0), N = mask_in.size(1);
  const Tensor mask = mask_in.contiguous();
  const uint8_t* m = mask.bytes();
  std::vector<int64_t> lengths(B);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 0;
    while (n < N && m[b * N + n] == 0) ++n;
    for (int64_t i = n; i < N; ++i)
      SONAR_CHECK(m[b * N + i] != 0, "padding mask: clip ", b, " has a real sample at ", i, " after padding at ", n,
                  " (exact padding needs trailing padding)");
    lengths[b] = n;
  }
  return lengths;
}

Tensor exact_patch_mask(const std::vector<int64_t>& real_frames, int64_t time_patches, int64_t freq_patches,
                        int64_t patch_size) {
  SONAR_CHECK(patch_size > 0 && time_patches >= 0 && freq_patches > 0, "exact_patch_mask: invalid sizes");
  const int64_t B = static_cast<int64_t>(real_frames.size()), P = time_patches * freq_patches;
  Tensor out = Tensor::empty({B, P}, DType::Bool);
  uint8_t* o = out.bytes();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t real_time_patches = real_frames[b] / patch_size;
    for (int64_t p = 0; p < P; ++p) o[b * P + p] = (p / freq_patches) >= real_time_patches ? 1 : 0;
  }
  return out;
}

}  // namespace sonar::beats
