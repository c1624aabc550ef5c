// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/slot_ring.h"

#include <algorithm>

namespace pinstream {

SlotRing::SlotRing(int num_slots, int num_blocks) : slots_(num_slots), block_slot_(num_blocks, -1) {}

int SlotRing::ChooseVictim(const std::vector<int>& keep, bool allow_keep) const {
  int best = -1;
  int best_kept = -1;
  for (int s = 0; s < num_slots(); ++s) {
    const Slot& slot = slots_[s];
    if (slot.users > 0) continue;
    if (slot.block < 0) return s;  // empty: nothing to evict
    const bool kept = std::find(keep.begin(), keep.end(), slot.block) != keep.end();
    if (!kept) {
      if (best < 0 || slot.last_use < slots_[best].last_use) best = s;
    } else if (best_kept < 0 || slot.last_use < slots_[best_kept].last_use) {
      best_kept = s;
    }
  }
  if (best >= 0) return best;
  return allow_keep ? best_kept : -1;
}

int SlotRing::Assign(int slot, int block) {
  Slot& s = slots_[slot];
  const int evicted = s.block;
  if (evicted >= 0) block_slot_[evicted] = -1;
  if (block_slot_[block] >= 0) Invalidate(block_slot_[block]);
  s.block = block;
  s.valid = false;
  block_slot_[block] = slot;
  return evicted;
}

void SlotRing::Invalidate(int slot) {
  Slot& s = slots_[slot];
  if (s.block >= 0) block_slot_[s.block] = -1;
  s.block = -1;
  s.valid = false;
}

void SlotRing::Acquire(int slot, uint64_t tick) {
  slots_[slot].users += 1;
  slots_[slot].last_use = tick;
}

void SlotRing::Release(int slot) {
  if (slots_[slot].users > 0) slots_[slot].users -= 1;
}

}  // namespace pinstream
