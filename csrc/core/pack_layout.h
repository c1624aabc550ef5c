// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// How a model's weights are laid out in host memory, and which of that memory
// is pinned. Pure arithmetic: the torch layer packs tensors by these numbers.
//
//   block   the tensors of one unit (a transformer block, or the non-block
//           rest), each at a kTensorAlignment offset, in order; the block's
//           size is a whole number of kBlockAlignment granules (the device
//           allocation granule, so a block's device copy needs no other layout);
//   chunk   one host allocation holding consecutive blocks, up to a chunk size
//           of our own (a block larger than it gets a chunk to itself);
//   pinning under a cap: the host bytes that cross the link most often are
//           pinned first (streamed blocks every pass, then what is uploaded
//           once); bytes that never cross the link are not pinned at all.
#ifndef PINSTREAM_CORE_PACK_LAYOUT_H_
#define PINSTREAM_CORE_PACK_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/residency_plan.h"

namespace pinstream {

constexpr uint64_t kTensorAlignment = 64;
constexpr uint64_t kBlockAlignment = PlanRequest::kDefaultAlignment;

struct BlockLayout {
  std::vector<uint64_t> offsets;  // of each tensor within the block
  uint64_t bytes = 0;             // whole kBlockAlignment granules, at least one
  // Tensor starts strictly inside the block, ascending: where a budget plan may
  // cut it into a resident head and a streamed rest.
  std::vector<uint64_t> Cuts() const;
};

// Packs tensors of `tensor_bytes` bytes, in order.
BlockLayout LayoutBlock(const std::vector<uint64_t>& tensor_bytes);

struct ChunkGroup {
  size_t first_block = 0;  // blocks [first_block, end_block)
  size_t end_block = 0;
  uint64_t bytes = 0;  // the sum of their sizes
};

// Consecutive blocks per chunk while their sum stays within `chunk_bytes`.
std::vector<ChunkGroup> GroupIntoChunks(const std::vector<uint64_t>& block_bytes, uint64_t chunk_bytes);

// How often a piece of host memory crosses the link under a plan.
enum class LinkUse : uint8_t {
  kEveryPass = 0,  // a streamed block (or a split block's streamed rest)
  kOnce = 1,       // uploaded at load: resident blocks, the non-block rest
  kNever = 2,      // never uploaded (the exact host copy of an fp8-sent block)
};

// The use of a unit: non-streamable units and resident blocks are uploaded
// once, everything that goes through the ring every pass.
LinkUse UseOfBlock(bool streamable, bool resident, bool split);

// One host allocation to be made.
struct PinCandidate {
  uint64_t bytes = 0;
  LinkUse use = LinkUse::kOnce;
};

// Which candidates to pin: by use (every pass first), then in order, each
// pinned when it still fits in `pin_budget` bytes (< 0: no cap); candidates
// that never cross the link are never pinned.
std::vector<bool> ChoosePinned(const std::vector<PinCandidate>& candidates, int64_t pin_budget);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_PACK_LAYOUT_H_
