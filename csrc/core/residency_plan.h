// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// ResidencyPlan decides, for a model split into blocks, which blocks stay
// resident on the device and how large the ring of streaming slots is, within
// a device budget.
//
// Inputs: the byte size of every streamable block (in execution order), the
// bytes that are always resident (the non-block part of the model), the
// prefetch depth and a budget. The ring needs min(prefetch + 1, streamed
// blocks) slots, each as large as the largest streamed block: one slot for the
// block that runs and `prefetch` for the uploads in flight ahead of it.
//
// Among all choices of slot size (each distinct block size), the plan keeps the
// most bytes resident; blocks larger than the slot size are resident by
// necessity, the others are chosen evenly spaced through the order so that the
// streaming demand per unit of compute stays smooth. The result is
// deterministic: the same request always gives the same plan.
//
// Split blocks (budget policy, blocks with cuts): a block may also keep a
// prefix of its bytes resident and stream only the rest, cut at one of the
// offsets the request allows (tensor boundaries). The slots then only need to
// hold the largest streamed part, so less of the budget goes to the ring and
// more of the model stays resident: with N equal blocks of which the budget
// can hold a fraction, whole blocks stream (T - B) + (prefetch + 1) * block
// bytes more than the budget leaves out, split blocks about
// (T - B) * N / (N - prefetch - 1). The budget policy uses splits only when
// they keep strictly more bytes resident than whole blocks.
//
// Transformed blocks (sent in a transfer format: exact coded, fp8): their
// transfer bytes cross the link into one staging buffer (the largest transfer
// form; uploads and transforms run in order on the copy queue, so one is
// enough) and are transformed from there into a slot of the block's device
// layout, or into its resident copy at load. A transformed block may also be
// "resident coded": its transfer form stays on the device and is transformed
// into a slot at each use, device to device, without crossing the link. A
// budget plan with transformed blocks chooses each block's residency (as
// stored, coded, streamed) to minimise the copy queue's time per pass (uploads
// at the link rate, transforms at the transform rate) within the budget,
// greedily by time saved per device byte: with decode 10x faster than the
// link, resident coded saves more per byte than resident as stored (for a
// coded ratio r it does while transform / link > 1 / (1 - r)), so the budget
// first holds blocks coded, then turns coded blocks into stored ones. When
// compute rather than the copy queue sets the step, every such plan runs at
// the same step; the plan still moves the fewest bytes.
#ifndef PINSTREAM_CORE_RESIDENCY_PLAN_H_
#define PINSTREAM_CORE_RESIDENCY_PLAN_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/status.h"

namespace pinstream {

enum class PlanPolicy {
  kAllResident,  // full_load / model_offload: every block resident
  kStreamAll,    // sequential: every streamable block goes through the ring
  kBudget,       // budget: as many resident as fit, the rest streamed
};

const char* PlanPolicyName(PlanPolicy policy);

struct PlanRequest {
  PlanPolicy policy = PlanPolicy::kBudget;
  // Bytes of each streamable block, index = block id, in execution order.
  std::vector<uint64_t> block_bytes;
  // Optional, per block (empty, or one entry per block): offsets strictly
  // inside the block, ascending, where it may be cut into a resident prefix
  // and a streamed rest (budget policy only). Empty for a block: whole only.
  std::vector<std::vector<uint64_t>> block_cuts;
  // Optional, per block (empty, or one entry per block): for a transformed
  // block, the bytes of its device layout (then its block_bytes too: what a
  // slot must hold) and of its transfer form; 0 and 0 for a block sent as
  // stored. Cuts do not apply when these are given.
  std::vector<uint64_t> block_layout_bytes;
  std::vector<uint64_t> block_transfer_bytes;
  // The staging buffer's bytes (the largest transfer form of the transformed
  // units, the non-block ones included); 0 without transformed units.
  uint64_t staging_bytes = 0;
  // What the budget policy weighs residencies with, bytes per second: the
  // link (host to device copies) and transforms (device layout bytes written).
  static constexpr double kNominalLinkBytesPerSecond = 25e9;
  static constexpr double kNominalTransformBytesPerSecond = 250e9;
  double link_bytes_per_second = kNominalLinkBytesPerSecond;
  double transform_bytes_per_second = kNominalTransformBytesPerSecond;
  // Bytes that are always resident (non-block weights), already aligned.
  uint64_t fixed_bytes = 0;
  // Device budget for fixed + resident + slots. kUnlimited = no limit.
  uint64_t budget_bytes = kUnlimited;
  int prefetch = 1;
  // Every size is rounded up to this many bytes (device allocation granule).
  static constexpr uint64_t kDefaultAlignment = 512;
  uint64_t alignment = kDefaultAlignment;

  static constexpr uint64_t kUnlimited = std::numeric_limits<uint64_t>::max();
};

class ResidencyPlan {
 public:
  ResidencyPlan() = default;

  // Builds the plan for `request`. Fails with kInvalidArgument (message names
  // the minimum budget and what it is made of) when the budget is too small,
  // or when the request itself is malformed (prefetch < 0, zero alignment).
  static Status Make(const PlanRequest& request, ResidencyPlan* out);

  // The smallest budget under which `request` can run at all.
  static uint64_t MinimumBudget(const PlanRequest& request);

  int num_blocks() const { return static_cast<int>(resident_.size()); }
  // Wholly resident (as stored, in its device layout).
  bool resident(int block) const { return resident_[block] != 0; }
  // Resident in its transfer form, transformed into a slot at each use.
  bool coded(int block) const { return !coded_.empty() && coded_[block] != 0; }
  int num_coded() const;
  // Split: the first resident_prefix(block) bytes stay resident, the rest
  // streams through the ring (0 for a block that is resident or streamed whole).
  bool split(int block) const { return prefix_[block] != 0; }
  uint64_t resident_prefix(int block) const { return prefix_[block]; }
  int num_resident() const;
  int num_split() const;
  // Blocks that go through the ring, split and resident coded ones included.
  int num_streamed() const { return num_blocks() - num_resident(); }
  int slot_count() const { return slot_count_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  uint64_t fixed_bytes() const { return fixed_bytes_; }
  // Resident bytes of the blocks (whole ones and split prefixes), and the
  // bytes that stream each pass (whole streamed blocks and split rests; of a
  // plan with transformed blocks, the bytes that cross the link).
  uint64_t resident_block_bytes() const { return resident_block_bytes_; }
  uint64_t streamed_block_bytes() const { return streamed_block_bytes_; }
  // Transfer forms held on the device by resident coded blocks.
  uint64_t coded_block_bytes() const { return coded_block_bytes_; }
  uint64_t staging_bytes() const { return staging_bytes_; }
  // fixed + resident blocks + resident coded + slots + the staging buffer:
  // what the plan holds on the device.
  uint64_t device_bytes() const {
    return fixed_bytes_ + resident_block_bytes_ + coded_block_bytes_ + slot_bytes_ * slot_count_ + staging_bytes_;
  }
  // The copy queue's predicted seconds per pass (uploads and transforms at
  // the rates the plan was made with); 0 for plans without transformed blocks.
  double copy_seconds_per_pass() const { return copy_seconds_; }
  double link_rate() const { return link_rate_; }
  double transform_rate() const { return transform_rate_; }
  int prefetch() const { return prefetch_; }
  PlanPolicy policy() const { return policy_; }
  // One line, e.g. "budget: 12 of 40 blocks resident (8.40 GiB), ...".
  std::string Describe() const;

 private:
  std::vector<uint8_t> resident_;
  std::vector<uint64_t> prefix_;  // resident prefix of a split block, else 0
  std::vector<uint8_t> coded_;    // resident coded (empty: none)
  int slot_count_ = 0;
  uint64_t slot_bytes_ = 0;
  uint64_t fixed_bytes_ = 0;
  uint64_t resident_block_bytes_ = 0;
  uint64_t streamed_block_bytes_ = 0;
  uint64_t coded_block_bytes_ = 0;
  uint64_t staging_bytes_ = 0;
  double copy_seconds_ = 0;
  double link_rate_ = 0;  // the rates a plan with transformed blocks was made with
  double transform_rate_ = 0;
  int prefetch_ = 0;
  PlanPolicy policy_ = PlanPolicy::kBudget;
};

uint64_t AlignUp(uint64_t value, uint64_t alignment);

// Ok when `cuts` ascend strictly inside (0, bytes), else kInvalidArgument
// naming `what` (e.g. "block 3").
Status CheckCuts(const std::vector<uint64_t>& cuts, uint64_t bytes, const std::string& what);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_RESIDENCY_PLAN_H_
