// Patch masking for BEATs pre-training: which patches of each clip the encoder sees and which ones the label
// predictor must label. Seeded (sonar::Generator), drawn per clip, and aware of padding: a padded patch is
// never visible and never a target. This file only decides indices; it runs no model (nn/beats/pretrain.h
// does) and computes no loss.
//
// Shapes: B clips, P patches per clip (time-major, as nn/beats/beats.h numbers them), V = the largest number
// of visible patches of any clip in the batch, N = the number of masked (target) patches in the whole batch.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sonar::beats {

struct MaskingOptions {
  double mask_ratio = 0.75;  // share of each clip's real patches that are masked
  int64_t min_visible = 1;   // a clip with real patches keeps at least this many visible
};

struct PatchMasking {
  int64_t batch = 0, patches = 0, visible = 0;  // B, P, V
  // int64 [B, V]: the patch index of each visible patch, ascending (original order). Slots past a clip's
  // own visible count are fillers: they repeat index 0 and are flagged in visible_padding.
  Tensor visible_index;
  Tensor visible_padding;  // bool [B, V]: 1 = filler slot (padding for the encoder's attention)
  Tensor masked;           // bool [B, P]: 1 = masked real patch, i.e. a prediction target
  Tensor padding;          // bool [B, P]: 1 = padded patch (copied from the input, zeros when none was given)
  Tensor masked_flat;      // int64 [N]: b * P + p of every masked patch, in row-major order
  Tensor visible_flat;     // int64 [B * V]: b * P + visible_index[b, j] (fillers point at b * P)
  std::vector<int64_t> num_visible, num_masked;  // per clip
  bool any_padding = false;                       // some patch of the batch is padded
  int64_t total_masked() const { return masked_flat.numel(); }
};

// Draws the masking of a batch. patch_padding: bool/uint8 [B, P] (nonzero = padded) or undefined (every
// patch real). For each clip with n real patches, round(n * (1 - mask_ratio)) of them stay visible (at least
// min(min_visible, n)); the visible set is a uniformly random subset chosen by a partial Fisher-Yates shuffle
// driven by `gen` (so the same generator state gives the same masking, whatever the thread count); the other
// real patches are masked. Throws sonar::Error on a mask ratio outside [0, 1), a padding mask of the wrong
// shape, or min_visible < 0.
PatchMasking make_patch_masking(int64_t batch, int64_t patches, const Tensor& patch_padding,
                                const MaskingOptions& opts, Generator& gen);

// The masking of some clips of a batch (rows: indices into the batch, in the order wanted), as if it had been
// drawn for those clips alone with the same visible and masked patches; the visible width is the largest
// visible count among them. Data parallelism draws one masking for the global batch and gives every process
// its clips' rows. Throws on a row outside the batch or an empty selection.
PatchMasking select_masking_rows(const PatchMasking& m, const std::vector<int64_t>& rows);

}  // namespace sonar::beats
