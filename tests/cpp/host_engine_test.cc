// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "host/host_copy_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/streaming_runtime.h"
#include "test_util.h"

namespace pinstream {
namespace {

using testing_util::FakeModel;
using testing_util::RegisterAll;
using testing_util::RunPass;

TEST(HostCopyEngine, EventOrdersCopyBeforeComputeWait) {
  HostEngineOptions opt;
  opt.latency_us = 2000;
  HostCopyEngine engine(opt);
  std::vector<uint8_t> src(1 << 16, 7), dst(1 << 16, 0);
  EventId e;
  ASSERT_TRUE(engine.CreateEvent(&e).ok());
  ASSERT_TRUE(engine.EnqueueCopy(dst.data(), src.data(), src.size(), 0).ok());
  ASSERT_TRUE(engine.RecordCopyEvent(e).ok());
  ASSERT_TRUE(engine.ComputeWaitFor(e, nullptr).ok());
  EXPECT_EQ(dst, src);
  EngineTimings t;
  engine.CollectTimings(&t, true);
  ASSERT_EQ(t.copies.size(), 1u);
  EXPECT_GE(t.copies[0].ms, 1.5);
  EXPECT_GT(t.stall_ms, 1.0);
}

TEST(HostCopyEngine, WaitOnNeverRecordedEventReturnsAtOnce) {
  HostCopyEngine engine;
  EventId e;
  ASSERT_TRUE(engine.CreateEvent(&e).ok());
  ASSERT_TRUE(engine.ComputeWaitFor(e, nullptr).ok());
  ASSERT_TRUE(engine.CopyWaitFor(e).ok());
  ASSERT_TRUE(engine.Synchronize().ok());
}

TEST(HostCopyEngine, UnknownEventIsAnError) {
  HostCopyEngine engine;
  EXPECT_EQ(engine.RecordCopyEvent(42).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(engine.ComputeWaitFor(-1, nullptr).code(), Status::Code::kInvalidArgument);
}

TEST(HostCopyEngine, CopyQueueWaitsForComputeRelease) {
  // A copy queued after CopyWaitFor(release) must not start before the
  // compute side records the release.
  HostCopyEngine engine;
  EventId rel;
  ASSERT_TRUE(engine.CreateEvent(&rel).ok());
  ASSERT_TRUE(engine.RecordComputeEvent(rel, nullptr).ok());
  std::vector<uint8_t> src(4096, 1), dst(4096, 0);
  ASSERT_TRUE(engine.CopyWaitFor(rel).ok());
  ASSERT_TRUE(engine.EnqueueCopy(dst.data(), src.data(), src.size(), 0).ok());
  ASSERT_TRUE(engine.Synchronize().ok());
  EXPECT_EQ(dst, src);
}

TEST(HostCopyEngine, EmulatedBandwidthIsHonoured) {
  HostEngineOptions opt;
  opt.bandwidth_bytes_per_s = 100.0 * 1024 * 1024;  // 100 MiB/s
  HostCopyEngine engine(opt);
  std::vector<uint8_t> src(2 << 20, 3), dst(2 << 20);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(engine.EnqueueCopy(dst.data(), src.data(), src.size(), 0).ok());
  ASSERT_TRUE(engine.Synchronize().ok());
  const double ms = std::chrono::duration<double, std::milli>(
                        std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(ms, 19.0);  // 2 MiB at 100 MiB/s = 20 ms
}

TEST(HostCopyEngine, DestructorJoinsWithCopiesInFlight) {
  std::vector<uint8_t> src(1 << 20, 9), dst(1 << 20, 0);
  {
    HostEngineOptions opt;
    opt.latency_us = 3000;
    HostCopyEngine engine(opt);
    for (int i = 0; i < 4; ++i) {
      ASSERT_TRUE(engine.EnqueueCopy(dst.data(), src.data(), src.size(), i).ok());
    }
  }  // must drain and join, not crash or hang
  EXPECT_EQ(dst, src);
}

TEST(HostCopyEngine, TwoRuntimesStreamingAlternately) {
  FakeModel ma = FakeModel::Make(std::vector<uint64_t>(5, 3000), 21);
  FakeModel mb = FakeModel::Make(std::vector<uint64_t>(7, 2000), 22);
  HostEngineOptions opt;
  opt.max_random_delay_us = 100;
  opt.poison = true;
  HostCopyEngine engine_a(opt), engine_b(opt);
  HostArena arena_a, arena_b;
  StreamingRuntime a(&engine_a, &arena_a), b(&engine_b, &arena_b);
  ASSERT_TRUE(RegisterAll(&a, ma).ok());
  ASSERT_TRUE(RegisterAll(&b, mb).ok());
  ASSERT_TRUE(a.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 2).ok());
  ASSERT_TRUE(b.Plan(PlanPolicy::kBudget, 5 * 2000, 1).ok());
  for (int pass = 0; pass < 6; ++pass) {
    ASSERT_EQ(RunPass(&a, ma, {0, 1, 2, 3, 4}), "");
    ASSERT_EQ(RunPass(&b, mb, {0, 1, 2, 3, 4, 5, 6}), "");
  }
}

TEST(HostCopyEngine, CloseWhileUploadsAreInFlight) {
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(6, 8192), 23);
  HostEngineOptions opt;
  opt.latency_us = 2000;
  HostCopyEngine engine(opt);
  HostArena arena;
  {
    StreamingRuntime rt(&engine, &arena);
    ASSERT_TRUE(RegisterAll(&rt, m).ok());
    ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 3).ok());
    ASSERT_TRUE(rt.BeginPass().ok());
    DeviceLocation loc;
    ASSERT_TRUE(rt.Acquire(0, nullptr, &loc).ok());  // prefetches 1..3 in flight
    ASSERT_TRUE(rt.Close().ok());
    EXPECT_EQ(arena.allocated_bytes(), 0u);
  }
  EXPECT_EQ(engine.copies_done(), 4u);
}

// The core check: with random injected copy delays and poisoned
// in-flight destinations, every acquire sees exactly its block's bytes, every
// time, and no slot is overwritten while its block runs.
TEST(HostCopyEngine, RandomDelaysNeverExposeWrongBytes) {
  const uint64_t seed = testing_util::TestSeed(31337);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 12; ++trial) {
    HostEngineOptions opt;
    opt.max_random_delay_us = 300;
    opt.poison = true;
    opt.seed = rng();
    std::vector<uint64_t> sizes;
    const int n = 3 + static_cast<int>(rng() % 10);
    for (int i = 0; i < n; ++i) sizes.push_back(256 + rng() % 20000);
    FakeModel m = FakeModel::Make(sizes, rng());  // outlives the engine's copies
    HostCopyEngine engine(opt);
    HostArena arena;
    StreamingRuntime rt(&engine, &arena);
    ASSERT_TRUE(RegisterAll(&rt, m).ok());
    const int prefetch = static_cast<int>(rng() % 4);
    ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, prefetch).ok());
    std::vector<int> order;
    for (int i = 0; i < n; ++i) order.push_back(i);
    for (int pass = 0; pass < 5; ++pass) {
      ASSERT_EQ(RunPass(&rt, m, order, [&](int) {
                  std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
                }),
                "")
          << "seed " << seed << " trial " << trial;
    }
  }
}

}  // namespace
}  // namespace pinstream
