// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// SlotRing maps streamed blocks to device slots. It is pure bookkeeping: the
// runtime asks it where a block is, which slot to (re)fill, and tells it when
// a block is acquired (pinned) and released.
//
// Invariants (checked by the property tests):
//  * a slot whose block is acquired and not yet released is never chosen for
//    a new upload;
//  * a block already in a slot is found there and not uploaded again;
//  * a block is in at most one slot.
// GPU-side ordering (the copy queue waiting for the last release event of a
// slot before overwriting it) is the runtime's job; the ring only says which
// slot.
#ifndef PINSTREAM_CORE_SLOT_RING_H_
#define PINSTREAM_CORE_SLOT_RING_H_

#include <cstdint>
#include <vector>

namespace pinstream {

class SlotRing {
 public:
  SlotRing() = default;
  // `num_blocks` bounds block ids; `num_slots` may be 0 (nothing streamed).
  SlotRing(int num_slots, int num_blocks);

  int num_slots() const { return static_cast<int>(slots_.size()); }
  // Slot holding `block`, or -1.
  int SlotOf(int block) const { return block_slot_[block]; }
  // Block held by `slot`, or -1.
  int BlockIn(int slot) const { return slots_[slot].block; }
  int Users(int slot) const { return slots_[slot].users; }
  bool Valid(int slot) const { return slots_[slot].valid; }

  // Chooses a slot to receive a new block. Never returns a slot with users.
  // Prefers an empty slot, then the least recently used slot whose block is
  // not in `keep` (blocks needed soon). When `allow_keep` is true (a demand
  // miss), a slot holding a kept block may be taken as a last resort.
  // Returns -1 when every slot has users (or, without allow_keep, holds a
  // kept block).
  int ChooseVictim(const std::vector<int>& keep, bool allow_keep) const;

  // Puts `block` into `slot` (the previous block, if any, loses its slot).
  // Returns the evicted block or -1. The slot is not valid until MarkValid.
  int Assign(int slot, int block);
  void MarkValid(int slot) { slots_[slot].valid = true; }
  // Forgets the slot's block (e.g. its upload failed).
  void Invalidate(int slot);

  void Acquire(int slot, uint64_t tick);
  void Release(int slot);

 private:
  struct Slot {
    int block = -1;
    int users = 0;
    bool valid = false;
    uint64_t last_use = 0;
  };
  std::vector<Slot> slots_;
  std::vector<int> block_slot_;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_SLOT_RING_H_
