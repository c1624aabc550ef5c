// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/pack_layout.h"

#include <gtest/gtest.h>

namespace pinstream {
namespace {

TEST(PackLayout, TensorsStartAlignedAndTheBlockIsWholeGranules) {
  BlockLayout l = LayoutBlock({10, 100, 64, 1});
  ASSERT_EQ(l.offsets.size(), 4u);
  EXPECT_EQ(l.offsets[0], 0u);
  EXPECT_EQ(l.offsets[1], 64u);   // 10 rounded up to the tensor alignment
  EXPECT_EQ(l.offsets[2], 192u);  // 64 + 100 = 164 -> 192
  EXPECT_EQ(l.offsets[3], 256u);
  EXPECT_EQ(l.bytes, kBlockAlignment);  // 257 bytes -> one granule
  for (uint64_t o : l.offsets) EXPECT_EQ(o % kTensorAlignment, 0u);
}

TEST(PackLayout, EmptyBlocksStillTakeOneGranule) {
  EXPECT_EQ(LayoutBlock({}).bytes, kBlockAlignment);
  EXPECT_EQ(LayoutBlock({0, 0}).bytes, kBlockAlignment);
}

TEST(PackLayout, CutsAreTheTensorStartsStrictlyInside) {
  BlockLayout l = LayoutBlock({600, 0, 600, 10});
  // offsets 0, 640, 640, 1280: the empty tensor shares its start with the next
  EXPECT_EQ(l.Cuts(), (std::vector<uint64_t>{640, 1280}));
  EXPECT_TRUE(LayoutBlock({5000}).Cuts().empty());
}

TEST(PackLayout, ChunksHoldConsecutiveBlocksUpToTheChunkSize) {
  std::vector<ChunkGroup> g = GroupIntoChunks({100, 100, 100, 500, 50, 50}, 300);
  ASSERT_EQ(g.size(), 3u);
  EXPECT_EQ(g[0].first_block, 0u);
  EXPECT_EQ(g[0].end_block, 3u);
  EXPECT_EQ(g[0].bytes, 300u);
  // a block larger than the chunk size gets a chunk of its own
  EXPECT_EQ(g[1].first_block, 3u);
  EXPECT_EQ(g[1].end_block, 4u);
  EXPECT_EQ(g[1].bytes, 500u);
  EXPECT_EQ(g[2].bytes, 100u);
  EXPECT_TRUE(GroupIntoChunks({}, 300).empty());
}

TEST(PackLayout, UseFollowsThePlan) {
  EXPECT_EQ(UseOfBlock(/*streamable=*/false, false, false), LinkUse::kOnce);
  EXPECT_EQ(UseOfBlock(true, /*resident=*/true, false), LinkUse::kOnce);
  EXPECT_EQ(UseOfBlock(true, false, false), LinkUse::kEveryPass);
  EXPECT_EQ(UseOfBlock(true, false, /*split=*/true), LinkUse::kEveryPass);
}

TEST(PackLayout, PinsWhatCrossesTheLinkMostOftenFirst) {
  std::vector<PinCandidate> c = {{100, LinkUse::kOnce},
                                 {100, LinkUse::kEveryPass},
                                 {100, LinkUse::kEveryPass},
                                 {100, LinkUse::kNever},
                                 {50, LinkUse::kOnce}};
  EXPECT_EQ(ChoosePinned(c, 250), (std::vector<bool>{false, true, true, false, true}));
  // no cap: all but what never crosses the link
  EXPECT_EQ(ChoosePinned(c, -1), (std::vector<bool>{true, true, true, false, true}));
  EXPECT_EQ(ChoosePinned(c, 0), (std::vector<bool>{false, false, false, false, false}));
  // in order within a use, each that still fits
  std::vector<PinCandidate> same = {{60, LinkUse::kOnce}, {60, LinkUse::kOnce}, {30, LinkUse::kOnce}};
  EXPECT_EQ(ChoosePinned(same, 100), (std::vector<bool>{true, false, true}));
}

}  // namespace
}  // namespace pinstream
