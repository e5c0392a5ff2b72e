// Patch masking for BEATs pre-training (see nn/beats/pretrain_mask.h): index bookkeeping only.
#include "nn/beats/pretrain_mask.h"

#include <algorithm>
#include <cmath>

#include "tensor/creation.h"

namespace sonar::beats {

PatchMasking make_patch_masking(int64_t B, int64_t P, const Tensor& patch_padding, const MaskingOptions& opts,
                                Generator& gen) {
  SONAR_CHECK(B > 0 && P > 0, "make_patch_masking: batch ", B, " and patches ", P, " must be positive");
  SONAR_CHECK(opts.mask_ratio >= 0.0 && opts.mask_ratio < 1.0, "make_patch_masking: mask_ratio ", opts.mask_ratio,
              " outside [0, 1)");
  SONAR_CHECK(opts.min_visible >= 0, "make_patch_masking: min_visible ", opts.min_visible, " is negative");
  PatchMasking m;
  m.batch = B;
  m.patches = P;
  m.padding = zeros({B, P}, DType::Bool);
  if (patch_padding.defined()) {
    SONAR_CHECK(patch_padding.shape() == (Shape{B, P}), "make_patch_masking: padding mask must be ",
                shape_str({B, P}), ", got ", shape_str(patch_padding.shape()));
    m.padding.copy_(patch_padding.to(DType::Bool));
  }
  const uint8_t* pad = m.padding.bytes();

  std::vector<std::vector<int64_t>> visible(B);
  m.masked = zeros({B, P}, DType::Bool);
  uint8_t* masked = m.masked.bytes();
  std::vector<int64_t> real;
  real.reserve(P);
  for (int64_t b = 0; b < B; ++b) {
    real.clear();
    for (int64_t p = 0; p < P; ++p)
      if (!pad[b * P + p]) real.push_back(p);
    const int64_t n = static_cast<int64_t>(real.size());
    int64_t keep = static_cast<int64_t>(std::llround(static_cast<double>(n) * (1.0 - opts.mask_ratio)));
    keep = std::clamp<int64_t>(std::max(keep, std::min(opts.min_visible, n)), 0, n);
    // Partial Fisher-Yates: the first `keep` entries become a uniformly random subset.
    for (int64_t i = 0; i < keep; ++i) std::swap(real[i], real[gen.next_int(i, n)]);
    std::vector<int64_t> vis(real.begin(), real.begin() + keep);
    std::sort(vis.begin(), vis.end());
    for (int64_t i = keep; i < n; ++i) masked[b * P + real[i]] = 1;
    m.num_visible.push_back(keep);
    m.num_masked.push_back(n - keep);
    m.any_padding = m.any_padding || n < P;
    visible[b] = std::move(vis);
  }

  const int64_t V = std::max<int64_t>(1, *std::max_element(m.num_visible.begin(), m.num_visible.end()));
  m.visible = V;
  m.visible_index = zeros({B, V}, DType::Int64);
  m.visible_padding = zeros({B, V}, DType::Bool);
  m.visible_flat = zeros({B * V}, DType::Int64);
  int64_t* vi = m.visible_index.data<int64_t>();
  int64_t* vf = m.visible_flat.data<int64_t>();
  uint8_t* vp = m.visible_padding.bytes();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < V; ++j) {
      const bool real_slot = j < static_cast<int64_t>(visible[b].size());
      vi[b * V + j] = real_slot ? visible[b][j] : 0;
      vp[b * V + j] = real_slot ? 0 : 1;
      vf[b * V + j] = b * P + vi[b * V + j];
    }

  std::vector<int64_t> flat;
  for (int64_t i = 0; i < B * P; ++i)
    if (masked[i]) flat.push_back(i);
  m.masked_flat = from_vector(flat, {static_cast<int64_t>(flat.size())});
  return m;
}

PatchMasking select_masking_rows(const PatchMasking& m, const std::vector<int64_t>& rows) {
  SONAR_CHECK(!rows.empty(), "select_masking_rows: no rows");
  const int64_t B = static_cast<int64_t>(rows.size()), P = m.patches;
  for (int64_t r : rows)
    SONAR_CHECK(r >= 0 && r < m.batch, "select_masking_rows: row ", r, " outside a batch of ", m.batch);
  PatchMasking s;
  s.batch = B;
  s.patches = P;
  s.padding = zeros({B, P}, DType::Bool);
  s.masked = zeros({B, P}, DType::Bool);
  const Tensor pad_c = m.padding.contiguous(), masked_c = m.masked.contiguous();
  const Tensor vi_c = m.visible_index.contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = rows[b];
    std::copy(pad_c.bytes() + r * P, pad_c.bytes() + (r + 1) * P, s.padding.bytes() + b * P);
    std::copy(masked_c.bytes() + r * P, masked_c.bytes() + (r + 1) * P, s.masked.bytes() + b * P);
    s.num_visible.push_back(m.num_visible[r]);
    s.num_masked.push_back(m.num_masked[r]);
    s.any_padding = s.any_padding || m.num_visible[r] + m.num_masked[r] < P;
  }
  const int64_t V = std::max<int64_t>(1, *std::max_element(s.num_visible.begin(), s.num_visible.end()));
  s.visible = V;
  s.visible_index = zeros({B, V}, DType::Int64);
  s.visible_padding = zeros({B, V}, DType::Bool);
  s.visible_flat = zeros({B * V}, DType::Int64);
  const int64_t* src = vi_c.data<int64_t>();
  int64_t* vi = s.visible_index.data<int64_t>();
  int64_t* vf = s.visible_flat.data<int64_t>();
  uint8_t* vp = s.visible_padding.bytes();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < V; ++j) {
      const bool real_slot = j < s.num_visible[b];
      vi[b * V + j] = real_slot ? src[rows[b] * m.visible + j] : 0;
      vp[b * V + j] = real_slot ? 0 : 1;
      vf[b * V + j] = b * P + vi[b * V + j];
    }
  std::vector<int64_t> flat;
  const uint8_t* masked = s.masked.bytes();
  for (int64_t i = 0; i < B * P; ++i)
    if (masked[i]) flat.push_back(i);
  s.masked_flat = from_vector(flat, {static_cast<int64_t>(flat.size())});
  return s;
}

}  // namespace sonar::beats
