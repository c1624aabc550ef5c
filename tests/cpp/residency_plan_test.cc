// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/residency_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "test_util.h"

namespace pinstream {
namespace {

constexpr uint64_t kMiB = 1024 * 1024;

PlanRequest Uniform(int n, uint64_t size, uint64_t budget, int prefetch, PlanPolicy policy = PlanPolicy::kBudget) {
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
  for (int i = 0; i < 12; ++i)
    if (p.resident(i)) res.push_back(i);
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

// A Wan 2.1 14B-shaped block (bf16): its tensors' sizes in module order, and
// the offsets where it may be cut (64-byte aligned tensor starts).
std::vector<uint64_t> WanBlockTensors() {
  const uint64_t d = 5120, f = 13824, b = 2;
  std::vector<uint64_t> t;
  for (int attn = 0; attn < 2; ++attn) {
    for (int lin = 0; lin < 4; ++lin) {
      t.push_back(d * d * b);
      t.push_back(d * b);
    }
    t.push_back(d * b);  // norm_q
    t.push_back(d * b);  // norm_k
  }
  t.push_back(d * b);  // norm3
  t.push_back(d * b);
  t.push_back(f * d * b);  // ffn
  t.push_back(f * b);
  t.push_back(d * f * b);
  t.push_back(d * b);
  t.push_back(6 * d * b);  // modulation
  return t;
}

void PackBlock(const std::vector<uint64_t>& tensors, uint64_t* bytes, std::vector<uint64_t>* cuts) {
  uint64_t off = 0;
  cuts->clear();
  for (uint64_t t : tensors) {
    off = AlignUp(off, 64);
    if (off > 0) cuts->push_back(off);
    off += t;
  }
  *bytes = AlignUp(off, 512);
}

PlanRequest WanRequest(uint64_t budget, int prefetch, bool with_cuts) {
  uint64_t bytes = 0;
  std::vector<uint64_t> cuts;
  PackBlock(WanBlockTensors(), &bytes, &cuts);
  PlanRequest r;
  r.policy = PlanPolicy::kBudget;
  r.block_bytes.assign(40, bytes);
  if (with_cuts) r.block_cuts.assign(40, cuts);
  r.fixed_bytes = 444 * kMiB;
  r.budget_bytes = budget;
  r.prefetch = prefetch;
  r.alignment = 512;
  return r;
}

TEST(ResidencyPlan, SplitBlocksStreamLessOfAWanModelThanWholeBlocks) {
  constexpr uint64_t kGiB = 1024 * kMiB;
  for (uint64_t budget_gib : {6, 10, 20}) {
    for (int prefetch : {1, 2}) {
      SCOPED_TRACE("budget " + std::to_string(budget_gib) + " GiB, prefetch " + std::to_string(prefetch));
      ResidencyPlan whole, split;
      ASSERT_TRUE(ResidencyPlan::Make(WanRequest(budget_gib * kGiB, prefetch, false), &whole).ok());
      ASSERT_TRUE(ResidencyPlan::Make(WanRequest(budget_gib * kGiB, prefetch, true), &split).ok());
      EXPECT_LE(split.device_bytes(), budget_gib * kGiB);
      EXPECT_EQ(whole.num_split(), 0);
      EXPECT_GT(split.num_split(), 0);
      EXPECT_GT(split.resident_block_bytes(), whole.resident_block_bytes());
      EXPECT_LT(split.streamed_block_bytes(), whole.streamed_block_bytes());
      // the ring holds only the streamed rests: smaller slots
      EXPECT_LT(split.slot_bytes(), whole.slot_bytes());
      // near the bound for equal blocks: (T - B + F) * N / (N - slots), within a tensor
      const double t = 40.0 * static_cast<double>(WanRequest(0, 1, false).block_bytes[0]);
      const double need = t + 444.0 * kMiB - static_cast<double>(budget_gib * kGiB);
      const double bound = need * 40.0 / (40.0 - (prefetch + 1));
      // (each rest is a run of whole tensors, the largest 135 MiB: the ring and the
      // last rest may each overshoot the ideal by up to one)
      EXPECT_LT(static_cast<double>(split.streamed_block_bytes()), bound + (prefetch + 2) * 135.0 * kMiB)
          << split.Describe() << " | whole: " << whole.Describe();
      std::printf("budget %2d GiB prefetch %d: streamed per pass %.2f GiB split vs %.2f GiB whole (ideal %.2f)\n",
                  static_cast<int>(budget_gib), prefetch, split.streamed_block_bytes() / 1073741824.0,
                  whole.streamed_block_bytes() / 1073741824.0, bound / 1073741824.0);
      EXPECT_GE(static_cast<double>(split.streamed_block_bytes()), need);
      // every split head is one of the cuts
      std::vector<uint64_t> cuts;
      uint64_t bytes = 0;
      PackBlock(WanBlockTensors(), &bytes, &cuts);
      for (int i = 0; i < 40; ++i) {
        if (!split.split(i)) continue;
        EXPECT_NE(std::find(cuts.begin(), cuts.end(), split.resident_prefix(i)), cuts.end());
        EXPECT_FALSE(split.resident(i));
      }
      EXPECT_NE(split.Describe().find("split (head resident, rest streamed)"), std::string::npos) << split.Describe();
    }
  }
}

TEST(ResidencyPlan, CutsAreOnlyUsedByTheBudgetPolicy) {
  for (PlanPolicy policy : {PlanPolicy::kStreamAll, PlanPolicy::kAllResident}) {
    PlanRequest with = WanRequest(100ULL * 1024 * kMiB, 1, true);
    with.policy = policy;
    PlanRequest without = with;
    without.block_cuts.clear();
    ResidencyPlan a, b;
    ASSERT_TRUE(ResidencyPlan::Make(with, &a).ok());
    ASSERT_TRUE(ResidencyPlan::Make(without, &b).ok());
    EXPECT_EQ(a.num_split(), 0);
    EXPECT_EQ(a.device_bytes(), b.device_bytes());
    EXPECT_EQ(a.num_resident(), b.num_resident());
  }
}

TEST(ResidencyPlan, BadCutsAreRejected) {
  PlanRequest r = Uniform(3, 1000, 2000, 1);
  r.block_cuts = {{100, 50}, {}, {}};
  ResidencyPlan p;
  Status s = ResidencyPlan::Make(r, &p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cuts must ascend strictly inside (0, 1000)"), std::string::npos) << s.message();
  r.block_cuts = {{1000}, {}, {}};
  EXPECT_FALSE(ResidencyPlan::Make(r, &p).ok());
  r.block_cuts = {{}, {}};
  s = ResidencyPlan::Make(r, &p);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("block_cuts has 2 entries for 3 blocks"), std::string::npos) << s.message();
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
    const bool with_cuts = rng() % 2 == 0;
    if (with_cuts) {
      for (int i = 0; i < n; ++i) {
        std::vector<uint64_t> cuts;
        for (uint64_t c = 1 + rng() % 700; c < r.block_bytes[i]; c += 1 + rng() % 900) cuts.push_back(c);
        r.block_cuts.push_back(cuts);
      }
    }
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
    ASSERT_EQ(s.ok(), r.budget_bytes >= minimum) << "seed " << seed << " iter " << iter << ": " << s.ToString();
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
        ASSERT_FALSE(p.split(i));
        res_bytes += sz;
      } else if (p.split(i)) {
        ASSERT_EQ(r.policy, PlanPolicy::kBudget);
        const auto& cuts = r.block_cuts[i];
        ASSERT_NE(std::find(cuts.begin(), cuts.end(), p.resident_prefix(i)), cuts.end());
        ++streamed;
        res_bytes += AlignUp(p.resident_prefix(i), r.alignment);
        largest_streamed = std::max(largest_streamed, AlignUp(r.block_bytes[i] - p.resident_prefix(i), r.alignment));
      } else {
        ++streamed;
        largest_streamed = std::max(largest_streamed, sz);
      }
    }
    ASSERT_EQ(res_bytes, p.resident_block_bytes());
    if (with_cuts && r.policy == PlanPolicy::kBudget) {
      // cuts never make a plan keep fewer bytes resident
      PlanRequest whole = r;
      whole.block_cuts.clear();
      ResidencyPlan w;
      ASSERT_TRUE(ResidencyPlan::Make(whole, &w).ok());
      ASSERT_GE(p.resident_block_bytes(), w.resident_block_bytes());
    }
    ASSERT_EQ(p.slot_bytes(), largest_streamed);
    ASSERT_EQ(p.slot_count(), streamed == 0 ? 0 : std::min(streamed, r.prefetch + 1));
    if (r.policy == PlanPolicy::kStreamAll) ASSERT_EQ(p.num_resident(), 0);
    if (r.policy == PlanPolicy::kAllResident) ASSERT_EQ(streamed, 0);
    if (r.policy == PlanPolicy::kBudget && r.budget_bytes >= total) ASSERT_EQ(streamed, 0);
    // Determinism.
    ResidencyPlan q;
    ASSERT_TRUE(ResidencyPlan::Make(r, &q).ok());
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(p.resident(i), q.resident(i));
      ASSERT_EQ(p.resident_prefix(i), q.resident_prefix(i));
    }
  }
  EXPECT_GT(planned, 1000);
  EXPECT_GT(refused, 100);
  RecordProperty("seed", std::to_string(seed));
}

// n transformed blocks of `layout` bytes sent as `transfer` bytes (through
// one staging buffer of `transfer` bytes), alignment 1.
PlanRequest Coded(int n, uint64_t layout, uint64_t transfer, uint64_t budget, int prefetch,
                  PlanPolicy policy = PlanPolicy::kBudget) {
  PlanRequest r = Uniform(n, layout, budget, prefetch, policy);
  r.block_layout_bytes.assign(n, layout);
  r.block_transfer_bytes.assign(n, transfer);
  r.staging_bytes = transfer;
  return r;
}

TEST(ResidencyPlanCoded, WithFastDecodeTheBudgetHoldsBlocksCodedFirst) {
  // 20 blocks of 1000 bytes coded to 680; a ring of 2 slots and the staging
  // buffer. 8000 bytes left after them hold 11 coded blocks (7480), or 8
  // stored; the 520 bytes left over then turn one coded block into a stored one.
  const uint64_t ring_and_staging = 2 * 1000 + 680;
  PlanRequest r = Coded(20, 1000, 680, ring_and_staging + 8000, 1);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_coded(), 10) << p.Describe();
  EXPECT_EQ(p.num_resident(), 1) << p.Describe();
  EXPECT_EQ(p.coded_block_bytes(), 10u * 680);
  EXPECT_LE(p.device_bytes(), r.budget_bytes);
  EXPECT_NE(p.Describe().find("10 resident coded"), std::string::npos) << p.Describe();
  // The copy queue's time: 9 uploads + 19 decodes, less than any stored-first plan
  // (8 stored, 12 streamed: 12 uploads + 12 decodes).
  const double up = 680 / r.link_bytes_per_second, dec = 1000 / r.transform_bytes_per_second;
  EXPECT_NEAR(p.copy_seconds_per_pass(), 9 * up + 19 * dec, 1e-15);
  EXPECT_LT(p.copy_seconds_per_pass(), 12 * (up + dec));
  // Resident coded blocks go through the ring of layout-sized slots.
  EXPECT_EQ(p.num_streamed(), 19);
  EXPECT_EQ(p.slot_bytes(), 1000u);
  EXPECT_EQ(p.device_bytes(), r.budget_bytes - 200);
}

TEST(ResidencyPlanCoded, WithSlowDecodeTheBudgetHoldsBlocksAsStored) {
  // Decode no faster than the link: holding a block coded saves less per byte
  // than holding it as stored (which also saves its decode).
  PlanRequest r = Coded(20, 1000, 680, 2 * 1000 + 680 + 8000, 1);
  r.transform_bytes_per_second = r.link_bytes_per_second;
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_coded(), 0) << p.Describe();
  EXPECT_EQ(p.num_resident(), 8) << p.Describe();
  EXPECT_LE(p.device_bytes(), r.budget_bytes);
}

TEST(ResidencyPlanCoded, OnceEveryBlockFitsCodedTheRestTurnsCodedIntoStored) {
  // All 20 coded (13600) plus a ring of 2 x 1000 and the staging buffer, plus
  // room for 5 blocks to become stored (5 x 320).
  PlanRequest r = Coded(20, 1000, 680, 20 * 680 + 2 * 1000 + 680 + 5 * 320, 1);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_coded(), 15) << p.Describe();
  EXPECT_EQ(p.num_resident(), 5) << p.Describe();
  EXPECT_EQ(p.streamed_block_bytes(), 0u);
  EXPECT_EQ(p.slot_bytes(), 1000u);
  EXPECT_EQ(p.device_bytes(), r.budget_bytes);
  // the stored ones are spread through the pass, not bunched at its start
  int first_stored = -1, last_stored = -1;
  for (int i = 0; i < 20; ++i) {
    if (p.resident(i)) last_stored = i, first_stored = first_stored < 0 ? i : first_stored;
  }
  EXPECT_GE(last_stored - first_stored, 10);
}

TEST(ResidencyPlanCoded, ResidentAsStoredCostsTheLayoutPlusOneStagingBuffer) {
  PlanRequest r = Coded(10, 1000, 680, PlanRequest::kUnlimited, 1, PlanPolicy::kAllResident);
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_resident(), 10);
  EXPECT_EQ(p.device_bytes(), 10u * 1000 + 680);  // not 10 x (1000 + 680)
  EXPECT_EQ(ResidencyPlan::MinimumBudget(r), 10u * 1000 + 680);
  // a budget that holds every block as stored keeps them all so
  r = Coded(10, 1000, 680, 10 * 1000 + 680, 1);
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_EQ(p.num_resident(), 10);
  EXPECT_EQ(p.slot_count(), 0);
}

TEST(ResidencyPlanCoded, MinimumBudgetRunsAndAnythingLessIsRefused) {
  for (uint64_t transfer : {300u, 680u, 990u}) {
    PlanRequest r = Coded(12, 1000, transfer, 0, 2);
    const uint64_t minimum = ResidencyPlan::MinimumBudget(r);
    EXPECT_EQ(minimum, 3 * 1000 + transfer) << transfer;  // 3 slots and the staging buffer
    r.budget_bytes = minimum;
    ResidencyPlan p;
    ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok()) << transfer;
    EXPECT_LE(p.device_bytes(), minimum);
    r.budget_bytes = minimum - 1;
    EXPECT_EQ(ResidencyPlan::Make(r, &p).code(), Status::Code::kInvalidArgument);
  }
}

TEST(ResidencyPlanCoded, AWanModelCodedMovesFarLessThanAsStored) {
  // The Wan-14B shape in bf16 coded at 0.677 (bench compress, Wan-like init):
  // at 10 GiB, blocks held coded on the device leave about half the link bytes
  // of the best as-stored plan; at 20 GiB the whole model fits, coded, and
  // nothing crosses the link per pass.
  constexpr uint64_t kGiB = 1024 * kMiB;
  for (uint64_t budget_gib : {10, 20}) {
    SCOPED_TRACE("budget " + std::to_string(budget_gib) + " GiB");
    PlanRequest stored = WanRequest(budget_gib * kGiB, 1, true);
    PlanRequest coded = WanRequest(budget_gib * kGiB, 1, false);
    const uint64_t layout = coded.block_bytes[0];
    const uint64_t transfer = static_cast<uint64_t>(0.677 * static_cast<double>(layout));
    coded.block_layout_bytes.assign(40, layout);
    coded.block_transfer_bytes.assign(40, transfer);
    coded.staging_bytes = transfer;
    ResidencyPlan as_stored, p;
    ASSERT_TRUE(ResidencyPlan::Make(stored, &as_stored).ok());
    ASSERT_TRUE(ResidencyPlan::Make(coded, &p).ok());
    EXPECT_LE(p.device_bytes(), budget_gib * kGiB);
    std::printf(
        "budget %2d GiB: link bytes per pass %.2f GiB coded (%d resident coded, %d stored) vs %.2f GiB as stored\n",
        static_cast<int>(budget_gib), p.streamed_block_bytes() / 1073741824.0, p.num_coded(), p.num_resident(),
        as_stored.streamed_block_bytes() / 1073741824.0);
    if (budget_gib == 10) {
      EXPECT_GT(p.num_coded(), 10) << p.Describe();
      EXPECT_LT(static_cast<double>(p.streamed_block_bytes()),
                0.6 * static_cast<double>(as_stored.streamed_block_bytes()));
    } else {
      EXPECT_EQ(p.streamed_block_bytes(), 0u) << p.Describe();
    }
  }
}

TEST(ResidencyPlanCoded, MixedAndMalformedRequests) {
  // blocks sent as stored (layout and transfer 0) beside coded ones: never coded
  PlanRequest r = Coded(6, 1000, 600, 0, 1);
  r.block_layout_bytes[0] = 0;
  r.block_transfer_bytes[0] = 0;
  r.budget_bytes = 2 * 1000 + 600 + 3000;
  ResidencyPlan p;
  ASSERT_TRUE(ResidencyPlan::Make(r, &p).ok());
  EXPECT_FALSE(p.coded(0));
  EXPECT_LE(p.device_bytes(), r.budget_bytes);
  r.block_bytes[1] = 1600;  // a transformed block's slot is its layout
  EXPECT_EQ(ResidencyPlan::Make(r, &p).code(), Status::Code::kInvalidArgument);
  r.block_bytes[1] = 1000;
  r.block_transfer_bytes.pop_back();
  EXPECT_EQ(ResidencyPlan::Make(r, &p).code(), Status::Code::kInvalidArgument);
  r = Coded(6, 1000, 600, 10000, 1);
  r.transform_bytes_per_second = 0;
  EXPECT_EQ(ResidencyPlan::Make(r, &p).code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace pinstream
