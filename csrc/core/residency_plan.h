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
  // Wholly resident.
  bool resident(int block) const { return resident_[block] != 0; }
  // Split: the first resident_prefix(block) bytes stay resident, the rest
  // streams through the ring (0 for a block that is resident or streamed whole).
  bool split(int block) const { return prefix_[block] != 0; }
  uint64_t resident_prefix(int block) const { return prefix_[block]; }
  int num_resident() const;
  int num_split() const;
  // Blocks that go through the ring, split ones included.
  int num_streamed() const { return num_blocks() - num_resident(); }
  int slot_count() const { return slot_count_; }
  uint64_t slot_bytes() const { return slot_bytes_; }
  uint64_t fixed_bytes() const { return fixed_bytes_; }
  // Resident bytes of the blocks (whole ones and split prefixes), and the
  // bytes that stream each pass (whole streamed blocks and split rests).
  uint64_t resident_block_bytes() const { return resident_block_bytes_; }
  uint64_t streamed_block_bytes() const { return streamed_block_bytes_; }
  // fixed + resident blocks + slots: what the plan holds on the device.
  uint64_t device_bytes() const { return fixed_bytes_ + resident_block_bytes_ + slot_bytes_ * slot_count_; }
  int prefetch() const { return prefetch_; }
  PlanPolicy policy() const { return policy_; }
  // One line, e.g. "budget: 12 of 40 blocks resident (8.40 GiB), ...".
  std::string Describe() const;

 private:
  std::vector<uint8_t> resident_;
  std::vector<uint64_t> prefix_;  // resident prefix of a split block, else 0
  int slot_count_ = 0;
  uint64_t slot_bytes_ = 0;
  uint64_t fixed_bytes_ = 0;
  uint64_t resident_block_bytes_ = 0;
  uint64_t streamed_block_bytes_ = 0;
  int prefetch_ = 0;
  PlanPolicy policy_ = PlanPolicy::kBudget;
};

uint64_t AlignUp(uint64_t value, uint64_t alignment);

// Ok when `cuts` ascend strictly inside (0, bytes), else kInvalidArgument
// naming `what` (e.g. "block 3").
Status CheckCuts(const std::vector<uint64_t>& cuts, uint64_t bytes, const std::string& what);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_RESIDENCY_PLAN_H_
