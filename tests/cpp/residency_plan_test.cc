// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/residency_plan.h"

#include <gtest/gtest.h>

#include <random>

#include "test_util.h"

namespace pinstream {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

PlanRequest Uniform(int n, uint64_t size, uint64_t budget, int prefetch,
                    PlanPolicy policy = PlanPolicy::kBudget) {
  PlanRequest r;
  r.policy = policy;
  r.block_bytes.assign(n, size);
  r.budget_bytes = budget;
  r.prefetch = prefetch;
  r.alignment = 1;
  return r;
}

TEST(ResidencyPlan, EverythingFitsMeansAllResidentAndNoSlots) {
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(Uniform(10, 100, 1000, 2), &p).ok());
  EXPECT_EQ(p.num_resident(), 10);
  EXPECT_EQ(p.slot_count(), 0);
  EXPECT_EQ(p.device_bytes(), 1000u);
}

TEST(ResidencyPlan, ExactSlotArithmetic) {
  // 10 blocks of 100, fixed 50, prefetch 2 -> ring 3 x 100 = 300.
  PlanRequest r = Uniform(10, 100, 50 + 300 + 400, 2);
  r.fixed_bytes = 50;
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.slot_count(), 3);
  EXPECT_EQ(p.slot_bytes(), 100u);
  EXPECT_EQ(p.num_resident(), 4);  // 400 left for resident blocks
  EXPECT_EQ(p.device_bytes(), 750u);
  EXPECT_EQ(p.resident_block_bytes() + p.streamed_block_bytes(), 1000u);
}

TEST(ResidencyPlan, MinimumBudgetErrorNamesMinimumAndReason) {
  PlanRequest r = Uniform(8, 1400 * kMiB, 3000 * kMiB, 2, PlanPolicy::kStreamAll);
  r.alignment = 512;
  ResidencyPlan p;
  Status s = ResidencyPlan::Make(r, &p);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("below the minimum 4.10 GiB"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("prefetch 2"), std::string::npos);
  EXPECT_NE(s.message().find("largest block 1.37 GiB"), std::string::npos) << s.message();
  EXPECT_EQ(ResidencyPlan::MinimumBudget(r), 3 * 1400 * kMiB);
}

TEST(ResidencyPlan, BudgetAtMinimumStreamsEverything) {
  PlanRequest r = Uniform(6, 100, 200, 1);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_resident(), 0);
  EXPECT_EQ(p.slot_count(), 2);
  EXPECT_EQ(p.device_bytes(), 200u);
}

TEST(ResidencyPlan, LargeBlockResidentWhenThatLowersTheMinimum) {
  // One huge block: keeping it resident lets the ring use small slots.
  PlanRequest r;
  r.block_bytes = {1000, 10, 10, 10, 10};
  r.prefetch = 1;
  r.alignment = 1;
  EXPECT_EQ(ResidencyPlan::MinimumBudget(r), 1000u + 2 * 10);
  r.budget_bytes = 1020;
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_TRUE(p.resident(0));
  EXPECT_EQ(p.slot_bytes(), 10u);
  EXPECT_LE(p.device_bytes(), 1020u);
}

TEST(ResidencyPlan, ResidentBlocksAreSpreadEvenly) {
  // 12 equal blocks, room for 3 resident: they should be far apart.
  PlanRequest r = Uniform(12, 10, 2 * 10 + 3 * 10, 1);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  ASSERT_EQ(p.num_resident(), 3);
  std::vector<int> res;
  for (int i = 0; i < 12; ++i) if (p.resident(i)) res.push_back(i);
  EXPECT_EQ(res, (std::vector<int>{2, 6, 10}));
}

TEST(ResidencyPlan, StreamAllKeepsNoBlockResident) {
  PlanRequest r = Uniform(5, 10, PlanRequest::kUnlimited, 3, PlanPolicy::kStreamAll);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_resident(), 0);
  EXPECT_EQ(p.slot_count(), 4);
}

TEST(ResidencyPlan, SlotsNeverExceedStreamedBlocks) {
  PlanRequest r = Uniform(2, 10, PlanRequest::kUnlimited, 5, PlanPolicy::kStreamAll);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.slot_count(), 2);
}

TEST(ResidencyPlan, AllResidentPolicy) {
  PlanRequest r = Uniform(4, 10, PlanRequest::kUnlimited, 1, PlanPolicy::kAllResident);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_resident(), 4);
  r.budget_bytes = 39;
  EXPECT_FALSE(ResidencyPlan::Make(r, &p).ok());
}

TEST(ResidencyPlan, RejectsNegativePrefetch) {
  PlanRequest r = Uniform(4, 10, 100, -1);
  ResidencyPlan p;
  Status s = ResidencyPlan::Make(r, &p);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
}

TEST(ResidencyPlan, AlignmentRoundsEveryBlock) {
  PlanRequest r = Uniform(3, 100, PlanRequest::kUnlimited, 1, PlanPolicy::kStreamAll);
  r.alignment = 256;
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.slot_bytes(), 256u);
}

TEST(ResidencyPlan, Deterministic) {
  std::mt19937_64 rng(7);
  PlanRequest r;
  for (int i = 0; i < 40; ++i) r.block_bytes.push_back(1 + rng() % 1000);
  r.budget_bytes = 9000;
  r.prefetch = 2;
  ResidencyPlan a, b;
  ASSERT_TRUE(ResidencyPlan::Make(r, &a).ok());
  ASSERT_TRUE(ResidencyPlan::Make(r, &b).ok());
  for (int i = 0; i < 40; ++i) EXPECT_EQ(a.resident(i), b.resident(i));
  EXPECT_EQ(a.slot_bytes(), b.slot_bytes());
}

// Property test over thousands of random requests.
TEST(ResidencyPlanProperty, InvariantsHoldForRandomRequests) {
  const uint64_t seed = testing_util::TestSeed(20261127);
  std::mt19937_64 rng(seed);
  int planned = 0, refused = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    PlanRequest r;
    const int n = 1 + static_cast<int>(rng() % 60);
    const bool uniform = rng() % 3 == 0;
    const uint64_t base = 1 + rng() % 5000;
    for (int i = 0; i < n; ++i) r.block_bytes.push_back(uniform ? base : 1 + rng() % 5000);
    r.fixed_bytes = rng() % 3000;
    r.prefetch = static_cast<int>(rng() % 5);
    r.alignment = (rng() % 2) ? 1 : 256;
    const int pol = static_cast<int>(rng() % 3);
    r.policy = pol == 0 ? PlanPolicy::kBudget : pol == 1 ? PlanPolicy::kStreamAll : PlanPolicy::kAllResident;
    uint64_t total = AlignUp(r.fixed_bytes, r.alignment);
    uint64_t largest = 0;
    for (uint64_t b : r.block_bytes) {
      total += AlignUp(b, r.alignment);
      largest = std::max(largest, AlignUp(b, r.alignment));
    }
    r.budget_bytes = (rng() % 10 == 0) ? PlanRequest::kUnlimited : rng() % (total + total / 2 + 1);
    const uint64_t minimum = ResidencyPlan::MinimumBudget(r);
    ResidencyPlan p;
    Status s = ResidencyPlan::Make(r, &p);
    ASSERT_EQ(s.ok(), r.budget_bytes >= minimum)
        << "seed " << seed << " iter " << iter << ": " << s.ToString();
    if (!s.ok()) {
      ++refused;
      ASSERT_NE(s.message().find("minimum"), std::string::npos);
      continue;
    }
    ++planned;
    ASSERT_LE(p.device_bytes(), r.budget_bytes) << "seed " << seed << " iter " << iter;
    uint64_t largest_streamed = 0, res_bytes = 0;
    int streamed = 0;
    for (int i = 0; i < n; ++i) {
      const uint64_t sz = AlignUp(r.block_bytes[i], r.alignment);
      if (p.resident(i)) {
        res_bytes += sz;
      } else {
        ++streamed;
        largest_streamed = std::max(largest_streamed, sz);
      }
    }
    ASSERT_EQ(res_bytes, p.resident_block_bytes());
    ASSERT_EQ(p.slot_bytes(), largest_streamed);
    ASSERT_EQ(p.slot_count(), streamed == 0 ? 0 : std::min(streamed, r.prefetch + 1));
    if (r.policy == PlanPolicy::kStreamAll) ASSERT_EQ(p.num_resident(), 0);
    if (r.policy == PlanPolicy::kAllResident) ASSERT_EQ(streamed, 0);
    if (r.policy == PlanPolicy::kBudget && r.budget_bytes >= total) ASSERT_EQ(streamed, 0);
    // Determinism.
    ResidencyPlan q;
    ASSERT_TRUE(ResidencyPlan::Make(r, &q).ok());
    for (int i = 0; i < n; ++i) ASSERT_EQ(p.resident(i), q.resident(i));
  }
  EXPECT_GT(planned, 1000);
  EXPECT_GT(refused, 100);
  RecordProperty("seed", std::to_string(seed));
}

}  // namespace
}  // namespace pinstream
