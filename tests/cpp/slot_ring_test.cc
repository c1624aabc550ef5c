// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/slot_ring.h"

#include <gtest/gtest.h>

#include <random>

#include "test_util.h"

namespace pinstream {
namespace {

TEST(SlotRing, EmptySlotsFirstThenLeastRecentlyUsed) {
  SlotRing r(2, 5);
  EXPECT_EQ(r.ChooseVictim({}, false), 0);
  r.Assign(0, 3);
  r.MarkValid(0);
  r.Acquire(0, 1);
  r.Release(0);
  EXPECT_EQ(r.ChooseVictim({}, false), 1);
  r.Assign(1, 4);
  r.Acquire(1, 2);
  r.Release(1);
  EXPECT_EQ(r.ChooseVictim({}, false), 0);  // slot 0 used at tick 1
}

TEST(SlotRing, NeverChoosesASlotInUse) {
  SlotRing r(2, 4);
  r.Assign(0, 0);
  r.Acquire(0, 1);
  r.Assign(1, 1);
  r.Acquire(1, 2);
  EXPECT_EQ(r.ChooseVictim({}, true), -1);
  r.Release(1);
  EXPECT_EQ(r.ChooseVictim({}, true), 1);
}

TEST(SlotRing, KeptBlocksOnlyAsLastResort) {
  SlotRing r(2, 4);
  r.Assign(0, 0);
  r.Assign(1, 1);
  EXPECT_EQ(r.ChooseVictim({0, 1}, false), -1);
  EXPECT_NE(r.ChooseVictim({0, 1}, true), -1);
  EXPECT_EQ(r.ChooseVictim({0}, false), 1);
}

TEST(SlotRing, BlockIsFoundAndInAtMostOneSlot) {
  SlotRing r(3, 4);
  r.Assign(0, 2);
  EXPECT_EQ(r.SlotOf(2), 0);
  EXPECT_EQ(r.Assign(1, 2), -1);  // moving 2 frees slot 0
  EXPECT_EQ(r.SlotOf(2), 1);
  EXPECT_EQ(r.BlockIn(0), -1);
  EXPECT_EQ(r.Assign(1, 3), 2);  // evicts 2
  EXPECT_EQ(r.SlotOf(2), -1);
}

TEST(SlotRingProperty, RandomOperationsKeepInvariants) {
  const uint64_t seed = testing_util::TestSeed(99);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 200; ++trial) {
    const int slots = 1 + static_cast<int>(rng() % 5);
    const int blocks = 1 + static_cast<int>(rng() % 12);
    SlotRing r(slots, blocks);
    std::vector<int> users(slots, 0);
    for (int op = 0; op < 400; ++op) {
      const int kind = static_cast<int>(rng() % 3);
      if (kind == 0) {
        std::vector<int> keep;
        for (int k = 0; k < 2; ++k) keep.push_back(static_cast<int>(rng() % blocks));
        const int v = r.ChooseVictim(keep, rng() % 2);
        const int b = static_cast<int>(rng() % blocks);
        if (v >= 0 && r.SlotOf(b) < 0) {  // the runtime uploads only absent blocks
          ASSERT_EQ(users[v], 0) << "seed " << seed;
          r.Assign(v, b);
          r.MarkValid(v);
        }
      } else if (kind == 1) {
        const int s = static_cast<int>(rng() % slots);
        if (r.BlockIn(s) >= 0) {
          r.Acquire(s, op);
          ++users[s];
        }
      } else {
        const int s = static_cast<int>(rng() % slots);
        if (users[s] > 0) {
          r.Release(s);
          --users[s];
        }
      }
      // Each block in at most one slot, and the maps agree.
      for (int b = 0; b < blocks; ++b) {
        int count = 0;
        for (int s = 0; s < slots; ++s) count += r.BlockIn(s) == b;
        ASSERT_LE(count, 1);
        if (r.SlotOf(b) >= 0) ASSERT_EQ(r.BlockIn(r.SlotOf(b)), b);
      }
    }
  }
}

}  // namespace
}  // namespace pinstream
