// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/pack_layout.h"

#include <algorithm>

namespace pinstream {

std::vector<uint64_t> BlockLayout::Cuts() const {
  std::vector<uint64_t> cuts;
  for (uint64_t o : offsets) {
    if (o > 0 && o < bytes && (cuts.empty() || o > cuts.back())) cuts.push_back(o);
  }
  return cuts;
}

BlockLayout LayoutBlock(const std::vector<uint64_t>& tensor_bytes) {
  BlockLayout layout;
  uint64_t off = 0;
  layout.offsets.reserve(tensor_bytes.size());
  for (uint64_t n : tensor_bytes) {
    off = AlignUp(off, kTensorAlignment);
    layout.offsets.push_back(off);
    off += n;
  }
  layout.bytes = AlignUp(std::max<uint64_t>(off, 1), kBlockAlignment);
  return layout;
}

std::vector<ChunkGroup> GroupIntoChunks(const std::vector<uint64_t>& block_bytes, uint64_t chunk_bytes) {
  std::vector<ChunkGroup> groups;
  for (size_t b = 0; b < block_bytes.size();) {
    ChunkGroup g;
    g.first_block = b;
    size_t e = b;
    while (e < block_bytes.size() && (e == b || g.bytes + block_bytes[e] <= chunk_bytes)) {
      g.bytes += block_bytes[e];
      ++e;
    }
    g.end_block = e;
    groups.push_back(g);
    b = e;
  }
  return groups;
}

LinkUse UseOfBlock(bool streamable, bool resident, bool split) {
  if (!streamable) return LinkUse::kOnce;
  return resident && !split ? LinkUse::kOnce : LinkUse::kEveryPass;
}

std::vector<bool> ChoosePinned(const std::vector<PinCandidate>& candidates, int64_t pin_budget) {
  std::vector<bool> pin(candidates.size(), false);
  std::vector<size_t> order(candidates.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return candidates[a].use < candidates[b].use; });
  for (size_t i : order) {
    const PinCandidate& c = candidates[i];
    if (c.use == LinkUse::kNever) continue;
    if (pin_budget < 0) {
      pin[i] = true;
    } else if (c.bytes <= static_cast<uint64_t>(pin_budget)) {
      pin[i] = true;
      pin_budget -= static_cast<int64_t>(c.bytes);
    }
  }
  return pin;
}

}  // namespace pinstream
