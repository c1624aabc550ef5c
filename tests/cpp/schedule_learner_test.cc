// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/schedule_learner.h"

#include <gtest/gtest.h>

namespace pinstream {
namespace {

void RunPass(ScheduleLearner* l, const std::vector<int>& order) {
  l->BeginPass();
  for (int b : order) l->Observe(b);
  l->EndPass();
}

std::vector<int> Predict(const ScheduleLearner& l, int k, const std::vector<uint8_t>& eligible = {}) {
  std::vector<int> out;
  l.Predict(k, eligible, &out);
  return out;
}

TEST(ScheduleLearner, LearnsFirstPassAndPredictsAhead) {
  ScheduleLearner l;
  EXPECT_TRUE(Predict(l, 2).empty());
  RunPass(&l, {0, 1, 2, 3});
  ASSERT_TRUE(l.learned());
  l.BeginPass();
  EXPECT_EQ(Predict(l, 2), (std::vector<int>{0, 1}));
  EXPECT_TRUE(l.Observe(0));
  EXPECT_EQ(Predict(l, 2), (std::vector<int>{1, 2}));
}

TEST(ScheduleLearner, WrapsIntoTheNextPass) {
  ScheduleLearner l;
  RunPass(&l, {0, 1, 2, 3});
  l.BeginPass();
  for (int b : {0, 1, 2}) l.Observe(b);
  EXPECT_EQ(Predict(l, 3), (std::vector<int>{3, 0, 1}));
  l.Observe(3);
  EXPECT_EQ(Predict(l, 2), (std::vector<int>{0, 1}));
}

TEST(ScheduleLearner, BlockRunningTwicePerPass) {
  ScheduleLearner l;
  RunPass(&l, {0, 1, 0, 2});
  EXPECT_EQ(l.order(), (std::vector<int>{0, 1, 0, 2}));
  l.BeginPass();
  EXPECT_TRUE(l.Observe(0));
  EXPECT_TRUE(l.Observe(1));
  EXPECT_EQ(Predict(l, 2), (std::vector<int>{0, 2}));
  EXPECT_TRUE(l.Observe(0));
  EXPECT_TRUE(l.Observe(2));
  l.EndPass();
  EXPECT_EQ(l.relearns(), 0u);
}

TEST(ScheduleLearner, SkippedBlockKeepsTheOrder) {
  ScheduleLearner l;
  RunPass(&l, {0, 1, 2, 3});
  l.BeginPass();
  EXPECT_TRUE(l.Observe(0));
  EXPECT_FALSE(l.Observe(2));  // 1 skipped
  EXPECT_TRUE(l.Observe(3));
  l.EndPass();
  EXPECT_EQ(l.order(), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(l.relearns(), 0u);
  EXPECT_EQ(l.skips(), 1u);
}

TEST(ScheduleLearner, ChangedOrderIsRelearned) {
  ScheduleLearner l;
  RunPass(&l, {0, 1, 2, 3});
  RunPass(&l, {3, 2, 1, 0});
  EXPECT_EQ(l.relearns(), 1u);
  EXPECT_EQ(l.order(), (std::vector<int>{3, 2, 1, 0}));
  l.BeginPass();
  EXPECT_TRUE(l.Observe(3));
  EXPECT_EQ(Predict(l, 1), (std::vector<int>{2}));
}

TEST(ScheduleLearner, NewBlockIsRelearned) {
  ScheduleLearner l;
  RunPass(&l, {0, 1});
  RunPass(&l, {0, 5, 1});
  EXPECT_EQ(l.order(), (std::vector<int>{0, 5, 1}));
}

TEST(ScheduleLearner, PredictSkipsIneligibleAndDuplicates) {
  ScheduleLearner l;
  RunPass(&l, {0, 1, 2, 1, 3});
  l.BeginPass();
  l.Observe(0);
  std::vector<uint8_t> eligible = {1, 1, 0, 1};
  EXPECT_EQ(Predict(l, 3, eligible), (std::vector<int>{1, 3, 0}));
}

TEST(ScheduleLearner, PredictNeverLoopsForever) {
  ScheduleLearner l;
  RunPass(&l, {0, 0, 0});
  l.BeginPass();
  EXPECT_EQ(Predict(l, 5), (std::vector<int>{0}));
}

}  // namespace
}  // namespace pinstream
