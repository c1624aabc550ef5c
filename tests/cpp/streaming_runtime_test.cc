// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/streaming_runtime.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <thread>

#include "core/exact_block.h"
#include "core/fp8.h"
#include "host/host_copy_engine.h"
#include "test_util.h"

namespace pinstream {
namespace {

using testing_util::FakeModel;
using testing_util::RegisterAll;
using testing_util::RunPass;

std::vector<int> Range(int n) {
  std::vector<int> v;
  for (int i = 0; i < n; ++i) v.push_back(i);
  return v;
}

TEST(StreamingRuntime, SequentialStreamsEveryBlockWithPrefetchHits) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(8, 4096), 1);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 2).ok());
  EXPECT_EQ(rt.plan().slot_count(), 3);
  for (int pass = 0; pass < 3; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(8)), "");
  Stats s = rt.GetStats(true);
  EXPECT_EQ(s.acquires, 24u);
  // Only the very first block of the first pass is a demand miss: registration
  // order is the initial guess, and prefetch wraps into the next pass.
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.hits, 23u);
  // 24 uploads for 24 acquires, plus the 2 prefetched for the next pass.
  EXPECT_EQ(s.uploads, 26u);
  EXPECT_EQ(s.bytes_uploaded, 26u * 4096);
  EXPECT_EQ(arena.peak_bytes(), 3u * 4096);
}

TEST(StreamingRuntime, BudgetKeepsResidentBlocksUploadedOnce) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(10, 1024), 2);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kBudget, 2 * 1024 + 4 * 1024, 1).ok());
  ASSERT_EQ(rt.plan().num_resident(), 4);
  for (int pass = 0; pass < 4; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(10)), "");
  Stats s = rt.GetStats(true);
  // Residents once, 6 streamed per pass, 1 prefetched for the next pass.
  EXPECT_EQ(s.uploads, 4u + 4u * 6u + 1u);
  EXPECT_LE(arena.peak_bytes(), 6u * 1024);
}

TEST(StreamingRuntime, SplitBlocksKeepTheirHeadAndStreamTheRest) {
  // 10 blocks of 4096 bytes that may be cut every 512 bytes; a budget that
  // whole blocks would use for 2 resident blocks and a ring of 2 x 4096.
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(10, 4096), 7);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(rt.SetCuts(i, {512, 1024, 1536, 2048, 2560, 3072, 3584}).ok());
  }
  const uint64_t budget = 4 * 4096;
  ASSERT_TRUE(rt.Plan(PlanPolicy::kBudget, budget, 1).ok());
  const ResidencyPlan& plan = rt.plan();
  ASSERT_GT(plan.num_split(), 0) << plan.Describe();
  // more than the 2 whole blocks stays resident, within the budget
  EXPECT_GT(plan.resident_block_bytes(), 2u * 4096) << plan.Describe();
  EXPECT_LE(plan.device_bytes(), budget);
  uint64_t rests = 0, heads = 0;
  for (int i = 0; i < 10; ++i) {
    if (rt.split(i)) {
      EXPECT_FALSE(rt.resident(i));
      EXPECT_EQ(rt.split_bytes(i) % 512, 0u);
      rests += 4096 - rt.split_bytes(i);
      heads += rt.split_bytes(i);
    } else if (!rt.resident(i)) {
      rests += 4096;
    } else {
      heads += 4096;
    }
  }
  for (int pass = 0; pass < 4; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(10)), "");
  Stats s = rt.GetStats(true);
  // every acquire saw the block's exact bytes (RunPass); the heads went over
  // once, then each pass moves the rests only (plus one prefetched block)
  EXPECT_GE(s.bytes_uploaded, heads + 4 * rests);
  EXPECT_LE(s.bytes_uploaded, heads + 5 * rests);
  EXPECT_LE(arena.peak_bytes(), budget);
  // an unload and a reload (plan kept) give the same bytes again
  ASSERT_TRUE(rt.Unload().ok());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
  ASSERT_EQ(RunPass(&rt, m, Range(10)), "");
  // splits are for budgets: streaming everything ignores the cuts
  ASSERT_TRUE(rt.Unload().ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  EXPECT_EQ(rt.plan().num_split(), 0);
  for (int i = 0; i < 10; ++i) EXPECT_FALSE(rt.split(i));
  ASSERT_EQ(RunPass(&rt, m, Range(10)), "");
}

TEST(StreamingRuntime, BadCutsAreRejected) {
  FakeModel m = FakeModel::Make({4096}, 1);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  EXPECT_FALSE(rt.SetCuts(0, {0}).ok());
  EXPECT_FALSE(rt.SetCuts(0, {1024, 512}).ok());
  EXPECT_FALSE(rt.SetCuts(0, {4096}).ok());
  EXPECT_FALSE(rt.SetCuts(1, {512}).ok());
  ASSERT_TRUE(rt.SetCuts(0, {512}).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kBudget, 8192, 1).ok());
  EXPECT_EQ(rt.SetCuts(0, {1024}).code(), Status::Code::kFailedPrecondition);
}

TEST(StreamingRuntime, FixedUnitsAlwaysResident) {
  FakeModel m = FakeModel::Make({512, 1024, 1024, 1024}, 3);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  int id;
  ASSERT_TRUE(rt.RegisterBlock(m.host[0].data(), 512, false, &id).ok());
  for (int i = 1; i < 4; ++i) ASSERT_TRUE(rt.RegisterBlock(m.host[i].data(), 1024, true, &id).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 0).ok());
  EXPECT_TRUE(rt.resident(0));
  EXPECT_FALSE(rt.resident(1));
  EXPECT_EQ(rt.plan().slot_count(), 1);
  ASSERT_EQ(RunPass(&rt, m, {0, 1, 0, 2, 3}), "");
  ASSERT_EQ(RunPass(&rt, m, {0, 1, 0, 2, 3}), "");
}

TEST(StreamingRuntime, BlockRunningTwiceAndSkippedBlocks) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(6, 2048), 4);
  HostEngineOptions opt;
  opt.max_random_delay_us = 200;
  opt.poison = true;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, m, {0, 1, 2, 1, 3, 4, 5}), "");
  ASSERT_EQ(RunPass(&rt, m, {0, 1, 2, 1, 3, 4, 5}), "");
  ASSERT_EQ(RunPass(&rt, m, {0, 2, 1, 3, 5}), "");  // skip 4, reorder
  ASSERT_EQ(RunPass(&rt, m, {5, 4, 3, 2, 1, 0}), "");
  ASSERT_EQ(RunPass(&rt, m, {5, 4, 3, 2, 1, 0}), "");
  Stats s = rt.GetStats(true);
  EXPECT_GE(s.relearns, 1u);
}

TEST(StreamingRuntime, EndPassReleasesBlocksLeftByAnException) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(4, 256), 5);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_TRUE(rt.BeginPass().ok());
  DeviceLocation loc;
  ASSERT_TRUE(rt.Acquire(0, nullptr, &loc).ok());
  ASSERT_TRUE(rt.Acquire(1, nullptr, &loc).ok());  // "exception": never released
  EXPECT_EQ(rt.outstanding(), 2);
  EXPECT_FALSE(rt.Unload().ok());
  ASSERT_TRUE(rt.EndPass(nullptr).ok());
  EXPECT_EQ(rt.outstanding(), 0);
  ASSERT_EQ(RunPass(&rt, m, Range(4)), "");
}

TEST(StreamingRuntime, TooManyConcurrentAcquiresIsAClearError) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(4, 256), 6);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 0).ok());
  DeviceLocation loc;
  ASSERT_TRUE(rt.Acquire(0, nullptr, &loc).ok());
  Status s = rt.Acquire(1, nullptr, &loc);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(s.message().find("released"), std::string::npos);
}

TEST(StreamingRuntime, ReleaseWithoutAcquireAndBadIds) {
  FakeModel m = FakeModel::Make({256}, 7);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  EXPECT_EQ(rt.Release(0, nullptr).code(), Status::Code::kFailedPrecondition);
  DeviceLocation loc;
  EXPECT_EQ(rt.Acquire(5, nullptr, &loc).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(rt.Acquire(-1, nullptr, &loc).code(), Status::Code::kInvalidArgument);
}

TEST(StreamingRuntime, DeviceOomLeavesNothingLoaded) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(4, 1024), 8);
  HostCopyEngine engine;
  HostArena arena(3000);
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kAllResident, PlanRequest::kUnlimited, 1).ok());
  Status s = rt.Load();
  EXPECT_EQ(s.code(), Status::Code::kOutOfMemory);
  EXPECT_NE(s.message().find("nothing stays loaded"), std::string::npos) << s.message();
  EXPECT_FALSE(rt.loaded());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
  // A smaller plan then works.
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, m, Range(4)), "");
}

TEST(StreamingRuntime, FailedUploadIsReportedAndRecovered) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(5, 512), 9);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, m, Range(5)), "");
  engine.FailNextCopies(1);
  std::string err = RunPass(&rt, m, Range(5));
  EXPECT_NE(err.find("failed"), std::string::npos) << err;
  ASSERT_TRUE(rt.EndPass(nullptr).ok());
  std::vector<int> evicted;
  rt.TakeEvicted(&evicted);
  EXPECT_FALSE(evicted.empty());
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(5)), "");
  EXPECT_GE(rt.GetStats(true).upload_failures, 1u);
}

TEST(StreamingRuntime, UnloadFreesDeviceAndReloadWorks) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(3, 4096), 10);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kAllResident, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, m, Range(3)), "");
  EXPECT_EQ(arena.allocated_bytes(), 3u * 4096);
  ASSERT_TRUE(rt.Unload().ok());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
  ASSERT_EQ(RunPass(&rt, m, Range(3)), "");
  ASSERT_TRUE(rt.Close().ok());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
  DeviceLocation loc;
  EXPECT_EQ(rt.Acquire(0, nullptr, &loc).code(), Status::Code::kClosed);
}

TEST(StreamingRuntime, StatsCountStallAndUploadTimes) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(4, 64 * 1024), 11);
  HostEngineOptions opt;
  opt.bandwidth_bytes_per_s = 64.0 * 1024 * 1024;  // 64 KiB in ~1 ms
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, m, Range(4)), "");
  Stats s = rt.GetStats(true);
  EXPECT_GT(s.stall_ms, 0.5);   // nothing computes, so the queue waits
  EXPECT_GT(s.upload_ms, 3.0);  // >= 4 copies of ~1 ms
  for (int b = 0; b < 4; ++b) EXPECT_GT(s.block_upload_ms[b], 0.5);
}

// Blocks of bf16-like values sent in the exact coded form: each block's
// transfer bytes and the transform that decodes them into its layout.
struct CodedModel {
  FakeModel m;
  std::vector<std::unique_ptr<ExactCode>> codes;
  std::vector<std::vector<uint8_t>> transfer;
  std::vector<std::unique_ptr<BlockTransform>> transforms;

  static CodedModel Make(int n, uint64_t bytes, uint64_t seed) {
    CodedModel c;
    c.m = FakeModel::Make(std::vector<uint64_t>(n, bytes), seed);
    std::mt19937_64 r(seed);
    std::normal_distribution<float> normal(0.f, 0.03f);
    for (int i = 0; i < n; ++i) {
      for (uint64_t k = 0; k < bytes / 2; ++k) {
        const uint16_t v = FloatToBFloat16(normal(r));
        std::memcpy(&c.m.host[i][2 * k], &v, 2);
      }
      c.codes.push_back(std::make_unique<ExactCode>());
      EXPECT_TRUE(AnalyzeExact(c.m.host[i].data(), 2, static_cast<int64_t>(bytes / 2), 1, c.codes.back().get()).ok());
      EXPECT_TRUE(c.codes.back()->pays());
      std::vector<ExactTensor> parts{ExactTensor{0, bytes, c.codes.back().get()}};
      c.transforms.push_back(std::make_unique<BlockTransform>());
      c.transfer.emplace_back(MakeExactTransform(parts, c.transforms.back().get()));
      EXPECT_TRUE(
          EncodeExactTensor(c.m.host[i].data(), parts[0], c.transforms.back()->jobs[0], c.transfer.back().data(), 1)
              .ok());
    }
    return c;
  }
  Status Register(StreamingRuntime* rt) const {
    for (size_t i = 0; i < transfer.size(); ++i) {
      int id = -1;
      PINSTREAM_RETURN_IF_ERROR(rt->RegisterBlock(transfer[i].data(), transfer[i].size(), true, &id));
      PINSTREAM_RETURN_IF_ERROR(rt->SetTransform(id, m.host[i].size(), transforms[i].get()));
    }
    return Status::Ok();
  }
};

TEST(StreamingRuntimeCoded, ResidentCodedBlocksAreDecodedIntoASlotAtEachUseWithoutUploads) {
  const int n = 12;
  const uint64_t bytes = 64 * 1024;
  CodedModel c = CodedModel::Make(n, bytes, 7);
  uint64_t coded = 0, total_coded = 0;
  for (const auto& t : c.transfer) coded = std::max<uint64_t>(coded, t.size()), total_coded += t.size();
  ASSERT_LT(coded, bytes * 3 / 4);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(c.Register(&rt).ok());
  // ring of 2 layouts, the staging buffer, and room for every block coded
  const uint64_t budget = 2 * bytes + (n + 1) * AlignUp(coded, 512);
  ASSERT_TRUE(rt.Plan(PlanPolicy::kBudget, budget, 1).ok());
  ASSERT_EQ(rt.plan().num_coded(), n) << rt.plan().Describe();
  for (int pass = 0; pass < 3; ++pass) ASSERT_EQ(RunPass(&rt, c.m, Range(n)), "") << "pass " << pass;
  Stats s = rt.GetStats(true);
  EXPECT_EQ(s.uploads, static_cast<uint64_t>(n));  // each transfer form once, at load
  EXPECT_EQ(s.bytes_uploaded, total_coded);
  EXPECT_GE(s.coded_refills, 3u * n);  // a decode into a slot per use
  EXPECT_LE(arena.peak_bytes(), rt.plan().device_bytes());
  ASSERT_TRUE(rt.Close().ok());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
}

TEST(StreamingRuntimeCoded, ResidentAsStoredHoldsTheLayoutOnlyAndStreamedOnesShareTheStaging) {
  const int n = 6;
  const uint64_t bytes = 32 * 1024;
  CodedModel c = CodedModel::Make(n, bytes, 9);
  HostCopyEngine engine;
  HostArena arena;
  {
    StreamingRuntime rt(&engine, &arena);
    ASSERT_TRUE(c.Register(&rt).ok());
    ASSERT_TRUE(rt.Plan(PlanPolicy::kAllResident, PlanRequest::kUnlimited, 1).ok());
    ASSERT_EQ(RunPass(&rt, c.m, Range(n)), "");
    // every layout and one staging buffer: not a staging area per block
    EXPECT_LE(arena.peak_bytes(), n * bytes + AlignUp(c.transfer[0].size(), 512));
    EXPECT_EQ(arena.peak_bytes(), rt.plan().device_bytes());
  }
  arena.ResetPeak();
  {
    StreamingRuntime rt(&engine, &arena);
    ASSERT_TRUE(c.Register(&rt).ok());
    ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 2).ok());
    for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, c.m, Range(n)), "");
    EXPECT_EQ(arena.peak_bytes(), 3 * bytes + AlignUp(c.transfer[0].size(), 512));
  }
  EXPECT_EQ(arena.allocated_bytes(), 0u);
}

TEST(StreamingRuntimeCoded, ANonBlockUnitLargerThanTheStagingBufferLoadsTensorByTensor) {
  // 6 coded blocks of 16 KiB and a non-block unit of four coded 16 KiB tensors:
  // the staging buffer holds one block's coded bytes, and the non-block unit loads
  // through it one tensor at a time.
  const uint64_t bytes = 16 * 1024;
  CodedModel c = CodedModel::Make(6, bytes, 11);
  CodedModel parts = CodedModel::Make(4, bytes, 12);  // the non-block unit's tensors
  std::vector<uint8_t> fixed_plain;
  std::vector<ExactTensor> tensors;
  for (int k = 0; k < 4; ++k) {
    tensors.push_back(ExactTensor{k * bytes, bytes, parts.codes[k].get()});
    fixed_plain.insert(fixed_plain.end(), parts.m.host[k].begin(), parts.m.host[k].end());
  }
  BlockTransform fixed_transform;
  std::vector<uint8_t> fixed_transfer(MakeExactTransform(tensors, &fixed_transform));
  for (int k = 0; k < 4; ++k) {
    ASSERT_TRUE(
        EncodeExactTensor(fixed_plain.data() + k * bytes, tensors[k], fixed_transform.jobs[k], fixed_transfer.data(), 1)
            .ok());
  }
  c.m.host.push_back(fixed_plain);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(c.Register(&rt).ok());
  int fixed = -1;
  ASSERT_TRUE(rt.RegisterBlock(fixed_transfer.data(), fixed_transfer.size(), false, &fixed).ok());
  ASSERT_TRUE(rt.SetTransform(fixed, fixed_plain.size(), &fixed_transform).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  uint64_t largest_block = 0;
  for (const auto& t : c.transfer) largest_block = std::max<uint64_t>(largest_block, t.size());
  EXPECT_EQ(rt.plan().staging_bytes(), AlignUp(largest_block, 512));
  EXPECT_GT(fixed_transfer.size(), rt.plan().staging_bytes());
  std::vector<int> order{fixed};
  for (int i = 0; i < 6; ++i) order.push_back(i);
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, c.m, order), "") << "pass " << pass;
  EXPECT_EQ(arena.peak_bytes(), rt.plan().device_bytes());
  ASSERT_TRUE(rt.Close().ok());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
}

// The disk tier: blocks 1, 3, 5, ... (every `every`-th from `every` - 1: all of them
// with 1) live in a file only (no host bytes).
struct DiskModel {
  FakeModel m;
  testing_util::DiskFile file;
  DiskReader reader;
  int file_id = -1;
  int every = 2;
  explicit DiskModel(int n, uint64_t size, const DiskReader::Options& o = DiskReader::Options(), int every_nth = 2)
      : m(FakeModel::Make(std::vector<uint64_t>(static_cast<size_t>(n), size), 77)), reader(o), every(every_nth) {
    for (int i = every - 1; i < n; i += every) file.Add(m.host[static_cast<size_t>(i)], 2, 100);
  }
  Status Register(StreamingRuntime* rt, int read_ahead) {
    if (!file.Write()) return Status::InvalidArgument("cannot write " + file.path());
    PINSTREAM_RETURN_IF_ERROR(reader.Open(file.path(), &file_id));
    PINSTREAM_RETURN_IF_ERROR(rt->UseDiskReader(&reader, read_ahead));
    for (size_t i = 0; i < m.host.size(); ++i) {
      int id = -1;
      const bool disk = static_cast<int>(i) % every == every - 1;
      PINSTREAM_RETURN_IF_ERROR(rt->RegisterBlock(disk ? nullptr : m.host[i].data(), m.host[i].size(), true, &id));
      if (disk) PINSTREAM_RETURN_IF_ERROR(rt->SetDiskSource(id, file.Extents(static_cast<int>(i) / every, file_id)));
    }
    return Status::Ok();
  }
};

TEST(StreamingRuntimeDisk, DiskBlocksStreamThroughThePinnedReadRing) {
  DiskModel d(8, 4096);
  HostEngineOptions opt;
  opt.poison = true;
  opt.max_random_delay_us = 30;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  for (int pass = 0; pass < 4; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "") << "pass " << pass;
  EXPECT_EQ(rt.read_ring_bytes(), 3u * 4096);  // prefetch 1 + read-ahead 2 buffers
  Stats s = rt.GetStats(true);
  // the ring is smaller than a pass's four disk blocks: most uses read again,
  // some find their block still in a buffer from the pass before
  EXPECT_GE(s.disk_reads, 8u);
  EXPECT_LE(s.disk_reads, 16u);
  EXPECT_EQ(s.disk_bytes, s.disk_reads * 4096);
  EXPECT_GE(s.disk_bytes_total, s.disk_bytes);
  EXPECT_GT(s.disk_busy_ms, 0.0);
  ASSERT_TRUE(rt.Unload().ok());
  EXPECT_EQ(rt.read_ring_bytes(), 0u);  // the ring goes with the device memory
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, DiskBlocksThroughIoUringWhereItWorks) {
  DiskReader::Options o;
  o.io_uring = true;
  DiskModel d(9, 20000, o);  // blocks of a size that is no multiple of a page: bounced reads too
  HostEngineOptions opt;
  opt.poison = true;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  std::printf("disk blocks read by: %s\n", d.reader.how(d.file_id).c_str());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 2).ok());
  for (int pass = 0; pass < 3; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(9)), "") << "pass " << pass;
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, AReadBufferIsRefilledOnlyAfterItsUploadLanded) {
  // Slow uploads and one buffer beyond the upload window: a read into a buffer
  // whose upload is still queued would change the bytes that upload sends.
  DiskModel d(12, 8192);
  HostEngineOptions opt;
  opt.poison = true;
  opt.latency_us = 300;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 1).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 3).ok());
  for (int pass = 0; pass < 5; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(12)), "") << "pass " << pass;
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, WhenTheHostWaitsForAReadTheWholeRingIsBeingRead) {
  // Every block on a slow disk (each read takes 3 ms more), instant compute: the
  // host waits for every block. Before it waits, the buffers freed since the last
  // acquire are refilled, so prefetch 1 + read-ahead 2 = 3 reads are in flight at
  // each wait, not the 2 the last acquire left queued.
  const int n = 10;
  DiskModel d(n, 8192, DiskReader::Options(), /*every_nth=*/1);
  d.reader.DelayReads(3000);
  HostEngineOptions opt;
  opt.poison = true;
  opt.latency_us = 200;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  const FakeModel& m = d.m;
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, m, Range(n)), "");  // learns the order
  rt.ResetStats();
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(n)), "") << "pass " << pass;
  Stats s = rt.GetStats(true);
  ASSERT_GE(s.disk_read_misses, 4u);  // reads read together finish together: not every block waits
  const double depth = static_cast<double>(s.disk_miss_reads_in_flight) / static_cast<double>(s.disk_read_misses);
  std::printf("reads in flight when the host waited: %.2f (ring of 3)\n", depth);
  EXPECT_GE(depth, 2.7);
  EXPECT_LE(depth, 3.0);
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, ResidentDiskBlocksAreReadOnceAtLoad) {
  DiskModel d(6, 2048);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kAllResident, PlanRequest::kUnlimited, 1).ok());
  for (int pass = 0; pass < 3; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(6)), "");
  EXPECT_EQ(rt.GetStats(true).disk_reads, 3u);
  EXPECT_EQ(rt.read_ring_bytes(), 4096u);  // one buffer (of whole pages): nothing on disk streams
  ASSERT_TRUE(rt.Unload().ok());
  ASSERT_EQ(RunPass(&rt, d.m, Range(6)), "");
  EXPECT_EQ(rt.GetStats(true).disk_reads, 6u);
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, AReadErrorFailsThatAcquireAndTheNextPassIsCorrect) {
  DiskModel d(8, 4096);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  d.reader.FailNextReads(1000);
  const std::string err = RunPass(&rt, d.m, Range(8));
  EXPECT_NE(err.find("Input/output error"), std::string::npos) << err;
  ASSERT_TRUE(rt.EndPass(nullptr).ok());
  d.reader.FailNextReads(0);
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, AFileThatShrankOrChangedIsAClearError) {
  DiskModel d(6, 4096);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 1).ok());
  ASSERT_TRUE(d.reader.Check(d.file_id).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(truncate(d.file.path().c_str(), 5000), 0);
  const Status changed = d.reader.Check(d.file_id);
  EXPECT_NE(changed.message().find("changed since PinStream opened it (size"), std::string::npos) << changed.ToString();
  const std::string err = RunPass(&rt, d.m, Range(6));
  EXPECT_NE(err.find("shrank or changed"), std::string::npos) << err;
  ASSERT_TRUE(rt.EndPass(nullptr).ok());
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, UnitsMoveBetweenHostAndDiskBetweenPassesWhileLoaded) {
  // Every block is in the file too. Between passes of a loaded runtime, half
  // of them go to disk, their host bytes are scribbled over (an upload still
  // reading them would send wrong bytes), then they come back from fresh host
  // copies. A move during a pass is refused.
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(8, 4096), 91);
  testing_util::DiskFile file;
  for (const auto& h : m.host) file.Add(h, 2, 100);
  ASSERT_TRUE(file.Write());
  for (PlanPolicy policy : {PlanPolicy::kStreamAll, PlanPolicy::kBudget}) {
    SCOPED_TRACE(PlanPolicyName(policy));
    DiskReader reader;
    int fid = -1;
    ASSERT_TRUE(reader.Open(file.path(), &fid).ok());
    FakeModel live = m;  // the host copies the runtime reads
    HostEngineOptions opt;
    opt.poison = true;
    opt.max_random_delay_us = 30;
    HostCopyEngine engine(opt);
    HostArena arena;
    StreamingRuntime rt(&engine, &arena);
    ASSERT_TRUE(RegisterAll(&rt, live).ok());
    ASSERT_TRUE(rt.UseDiskReader(&reader, 2).ok());
    ASSERT_TRUE(rt.Plan(policy, 5 * 4096, 1).ok());
    for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(8)), "");
    EXPECT_EQ(rt.read_ring_bytes(), 0u);
    ASSERT_TRUE(rt.loaded());
    for (int b = 0; b < 8; b += 2) {
      ASSERT_TRUE(rt.SetDiskSource(b, file.Extents(b, fid)).ok());
      std::fill(live.host[static_cast<size_t>(b)].begin(), live.host[static_cast<size_t>(b)].end(), 0xAB);
    }
    EXPECT_GT(rt.read_ring_bytes(), 0u);
    for (int pass = 0; pass < 3; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(8)), "") << "pass " << pass;
    if (policy == PlanPolicy::kStreamAll) EXPECT_GT(rt.GetStats(true).disk_reads, 0u);
    // during a pass: refused, nothing changes
    ASSERT_TRUE(rt.BeginPass().ok());
    DeviceLocation loc;
    ASSERT_TRUE(rt.Acquire(1, nullptr, &loc).ok());
    const Status busy = rt.AttachHost(0, m.host[0].data());
    EXPECT_NE(busy.message().find("during a pass"), std::string::npos) << busy.ToString();
    EXPECT_TRUE(rt.on_disk(0));
    ASSERT_TRUE(rt.EndPass(nullptr).ok());
    FakeModel back = m;  // fresh host copies
    for (int b = 0; b < 8; b += 2) ASSERT_TRUE(rt.AttachHost(b, back.host[static_cast<size_t>(b)].data()).ok());
    EXPECT_EQ(rt.read_ring_bytes(), 0u);  // nothing left on disk: the ring went
    const uint64_t reads = rt.GetStats(true).disk_reads;
    for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, m, Range(8)), "") << "pass " << pass;
    EXPECT_EQ(rt.GetStats(true).disk_reads, reads);
    ASSERT_TRUE(rt.Close().ok());
    EXPECT_EQ(arena.allocated_bytes(), 0u);
  }
}

TEST(StreamingRuntimeDisk, UnitsOnDiskArriveInHostMemoryThroughTheirNextRead) {
  // Blocks 1, 3, 5, 7 live on disk. Between passes three of them are given host
  // buffers to arrive in: the next pass reads them there (a block still in a ring
  // buffer is copied from it), uploads from there, and from then on they are host
  // blocks. Each is read at most once; when the last one has arrived, the ring
  // goes as that pass ends.
  DiskModel d(8, 4096);
  HostEngineOptions opt;
  opt.poison = true;
  opt.max_random_delay_us = 30;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  std::vector<std::vector<uint8_t>> home(8, std::vector<uint8_t>(4096, 0xCD));
  const uint64_t before = rt.GetStats(true).disk_reads;
  for (int b : {1, 3, 5}) ASSERT_TRUE(rt.ReadInto(b, home[b].data()).ok()) << b;
  EXPECT_FALSE(rt.ReadInto(3, home[3].data()).ok() && rt.arriving(3));  // once
  const Status host = rt.ReadInto(2, home[2].data());
  EXPECT_NE(host.message().find("is not on disk"), std::string::npos) << host.ToString();
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  ASSERT_TRUE(rt.FinishArrivals().ok());
  for (int b : {1, 3, 5}) {
    EXPECT_FALSE(rt.on_disk(b)) << b;
    EXPECT_FALSE(rt.arriving(b)) << b;
    EXPECT_EQ(rt.host(b), home[b].data()) << b;
    EXPECT_EQ(home[b], d.m.host[b]) << b;
  }
  EXPECT_TRUE(rt.on_disk(7));
  // this pass read blocks 1, 3, 5 (into their homes or ring buffers before) and 7
  EXPECT_LE(rt.GetStats(true).disk_reads - before, 4u);
  // during a pass: refused
  ASSERT_TRUE(rt.BeginPass().ok());
  DeviceLocation loc;
  ASSERT_TRUE(rt.Acquire(0, nullptr, &loc).ok());
  const Status busy = rt.ReadInto(7, home[7].data());
  EXPECT_NE(busy.message().find("during a pass"), std::string::npos) << busy.ToString();
  ASSERT_TRUE(rt.EndPass(nullptr).ok());
  ASSERT_TRUE(rt.ReadInto(7, home[7].data()).ok());
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  EXPECT_FALSE(rt.on_disk(7));
  EXPECT_EQ(home[7], d.m.host[7]);
  EXPECT_EQ(rt.read_ring_bytes(), 0u);  // the last unit on disk arrived: the ring went with the pass
  ASSERT_TRUE(rt.FinishArrivals().ok());
  const uint64_t reads = rt.GetStats(true).disk_reads;
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "") << "pass " << pass;
  EXPECT_EQ(rt.GetStats(true).disk_reads, reads);
  ASSERT_TRUE(rt.Close().ok());
  EXPECT_EQ(arena.allocated_bytes(), 0u);
}

TEST(StreamingRuntimeDisk, AnArrivalWhoseReadFailsStaysOnDisk) {
  DiskModel d(6, 4096);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, d.m, Range(6)), "");
  ASSERT_TRUE(rt.Unload().ok());  // the ring goes: the arrival is read from the file
  std::vector<uint8_t> home(4096, 0xCD);
  ASSERT_TRUE(rt.ReadInto(3, home.data()).ok());
  EXPECT_TRUE(rt.arriving(3));
  d.reader.FailNextReads(1000);
  const Status failed = rt.FinishArrivals();
  EXPECT_NE(failed.message().find("Input/output error"), std::string::npos) << failed.ToString();
  EXPECT_TRUE(rt.on_disk(3));
  EXPECT_FALSE(rt.arriving(3));
  d.reader.FailNextReads(0);
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(6)), "") << "pass " << pass;
  // arriving in a pass whose read of it fails: that acquire fails, the unit stays on disk
  ASSERT_TRUE(rt.Unload().ok());
  ASSERT_TRUE(rt.ReadInto(3, home.data()).ok());
  d.reader.FailNextReads(1000);
  const std::string err = RunPass(&rt, d.m, Range(6));
  EXPECT_NE(err.find("Input/output error"), std::string::npos) << err;
  ASSERT_TRUE(rt.EndPass(nullptr).ok());
  d.reader.FailNextReads(0);
  // its read was read ahead and failed (it stays on disk, and says so), or had not begun (read now)
  const Status after = rt.FinishArrivals();
  EXPECT_EQ(rt.on_disk(3), !after.ok()) << after.ToString();
  if (after.ok()) EXPECT_EQ(home, d.m.host[3]);
  EXPECT_FALSE(rt.arriving(3));
  EXPECT_TRUE(rt.FinishArrivals().ok());
  for (int pass = 0; pass < 2; ++pass) ASSERT_EQ(RunPass(&rt, d.m, Range(6)), "") << "pass " << pass;
  // an arrival left at Close: its read in flight ends before Close returns, so the
  // caller may free its buffer then (a slow read, the buffer freed at once: ASan sees
  // a write into freed memory where Close does not wait)
  ASSERT_TRUE(rt.Unload().ok());
  auto late = std::make_unique<std::vector<uint8_t>>(4096, 0xCD);
  ASSERT_TRUE(rt.ReadInto(1, late->data()).ok());
  d.reader.DelayReads(20000);
  ASSERT_TRUE(rt.Warm().ok());  // the reads ahead of the next pass begin: block 1's among them
  ASSERT_TRUE(rt.Close().ok());
  late.reset();
  EXPECT_EQ(arena.allocated_bytes(), 0u);
}

TEST(StreamingRuntimeDisk, APassWhoseArrivalReadFailsReadsTheUnitAgainThroughTheRing) {
  // Blocks 3 and 7 on disk; block 3 arrives, and its read into its buffer fails
  // once: the pass reads it again through the ring and is correct, block 3 stays
  // on disk and FinishArrivals says why; the next try brings it back.
  DiskModel d(8, 4096, DiskReader::Options(), /*every_nth=*/4);
  HostEngineOptions opt;
  opt.poison = true;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(d.Register(&rt, 2).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  ASSERT_TRUE(rt.Unload().ok());  // no read ahead in flight: the arrival's is the first read
  std::vector<uint8_t> home(4096, 0xCD);
  ASSERT_TRUE(rt.ReadInto(3, home.data()).ok());
  d.reader.FailNextReads(1);
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  const Status failed = rt.FinishArrivals();
  EXPECT_NE(failed.message().find("Input/output error"), std::string::npos) << failed.ToString();
  EXPECT_TRUE(rt.on_disk(3));
  EXPECT_TRUE(rt.FinishArrivals().ok());  // said once
  ASSERT_TRUE(rt.ReadInto(3, home.data()).ok());
  ASSERT_EQ(RunPass(&rt, d.m, Range(8)), "");
  ASSERT_TRUE(rt.FinishArrivals().ok());
  EXPECT_FALSE(rt.on_disk(3));
  EXPECT_EQ(home, d.m.host[3]);
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeDisk, BadDiskSourcesAreRefused) {
  FakeModel m = FakeModel::Make({4096, 4096}, 3);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  EXPECT_NE(rt.SetDiskSource(0, {DiskExtent{0, 0, 4096, 0}}).message().find("before use_disk_reader"),
            std::string::npos);
  DiskReader reader;
  ASSERT_TRUE(rt.UseDiskReader(&reader, 1).ok());
  EXPECT_NE(rt.SetDiskSource(0, {DiskExtent{0, 0, 4000, 100}}).message().find("pass its 4096 bytes"),
            std::string::npos);
  EXPECT_NE(rt.SetDiskSource(0, {DiskExtent{0, 0, 3000, 0}, DiskExtent{0, 0, 2000, 2096}}).message().find("overlap"),
            std::string::npos);
  EXPECT_EQ(rt.UseDiskReader(&reader, 0).code(), Status::Code::kInvalidArgument);
}

// Adaptive look-ahead: the depth follows the measured fetch and compute times,
// within the prefetch the plan was given (the cap).
int DepthAfterReload(double latency_us, int compute_us) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(8, 4096), 9);
  HostEngineOptions opt;
  opt.latency_us = latency_us;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  EXPECT_TRUE(RegisterAll(&rt, m).ok());
  rt.SetAdaptivePrefetch(true);
  EXPECT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 4).ok());
  for (int pass = 0; pass < 3; ++pass) {
    EXPECT_EQ(
        RunPass(&rt, m, Range(8), [&](int) { std::this_thread::sleep_for(std::chrono::microseconds(compute_us)); }),
        "");
  }
  EXPECT_TRUE(rt.Unload().ok());
  EXPECT_EQ(RunPass(&rt, m, Range(8)), "");  // loads again, with the depth asked for
  EXPECT_EQ(rt.prefetch_cap(), 4);
  EXPECT_EQ(rt.plan().slot_count(), rt.plan().prefetch() + 1);
  return rt.plan().prefetch();
}

TEST(StreamingRuntimeAdaptive, FastUploadsNeedOneBlockAheadSlowOnesMore) {
  EXPECT_EQ(DepthAfterReload(/*latency_us=*/0, /*compute_us=*/3000), 1);
  const int slow = DepthAfterReload(/*latency_us=*/6000, /*compute_us=*/2000);
  EXPECT_GE(slow, 3);
  EXPECT_LE(slow, 4);
}

TEST(StreamingRuntimeAdaptive, EachBlocksComputeIsTimed) {
  // blocks 0-2 compute 6 ms, the others 1 ms: the per-block times say so
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(6, 4096), 5);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  EXPECT_EQ(rt.compute_ms(0), -1.0);
  for (int pass = 0; pass < 3; ++pass) {
    ASSERT_EQ(
        RunPass(&rt, m, Range(6), [](int b) { std::this_thread::sleep_for(std::chrono::milliseconds(b < 3 ? 6 : 1)); }),
        "");
  }
  for (int b = 0; b < 6; ++b) {
    if (b < 3) {
      EXPECT_GE(rt.compute_ms(b), 5.5) << b;
    } else {
      EXPECT_GE(rt.compute_ms(b), 0.9) << b;
      EXPECT_LT(rt.compute_ms(b), rt.compute_ms(0) / 2) << b;
    }
  }
  ASSERT_TRUE(rt.Close().ok());
}

TEST(StreamingRuntimeAdaptive, OffKeepsThePrefetchGiven) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(6, 4096), 9);
  HostCopyEngine engine;
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 3).ok());
  for (int pass = 0; pass < 3; ++pass) {
    ASSERT_EQ(RunPass(&rt, m, Range(6), [](int) { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }), "");
  }
  EXPECT_EQ(rt.GetStats(true).suggested_prefetch, 1);
  ASSERT_TRUE(rt.Unload().ok());
  ASSERT_EQ(RunPass(&rt, m, Range(6)), "");
  EXPECT_EQ(rt.plan().prefetch(), 3);
}

}  // namespace
}  // namespace pinstream
