// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "host/host_copy_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/streaming_runtime.h"
#include "deferred_compute_util.h"
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
  // A slot still read by queued compute: the copy that refills it is queued
  // behind CopyWaitFor(release), and the release is recorded on the compute
  // queue after that compute. The compute sees the old bytes to the end.
  HostCopyEngine engine;
  void* compute = engine.CreateComputeQueue();
  EventId rel;
  ASSERT_TRUE(engine.CreateEvent(&rel).ok());
  std::vector<uint8_t> src(4096, 1), slot(4096, 0);
  std::atomic<bool> saw_old{false};
  ASSERT_TRUE(engine
                  .EnqueueCompute(compute,
                                  [&] {
                                    std::this_thread::sleep_for(std::chrono::milliseconds(30));
                                    saw_old = slot == std::vector<uint8_t>(4096, 0);
                                  })
                  .ok());
  ASSERT_TRUE(engine.RecordComputeEvent(rel, compute).ok());
  ASSERT_TRUE(engine.CopyWaitFor(rel).ok());
  ASSERT_TRUE(engine.EnqueueCopy(slot.data(), src.data(), src.size(), 0).ok());
  ASSERT_TRUE(engine.Synchronize().ok());
  ASSERT_TRUE(engine.SynchronizeCompute(compute).ok());
  EXPECT_TRUE(saw_old) << "the copy overwrote the slot while its compute ran";
  EXPECT_EQ(slot, src);
}

TEST(HostCopyEngine, DeferredComputeWaitsOnTheQueueNotOnTheHost) {
  HostEngineOptions opt;
  opt.latency_us = 30000;  // the upload takes 30 ms
  HostCopyEngine engine(opt);
  void* compute = engine.CreateComputeQueue();
  std::vector<uint8_t> src(4096, 5), dst(4096, 0);
  EventId up, done;
  ASSERT_TRUE(engine.CreateEvent(&up).ok());
  ASSERT_TRUE(engine.CreateEvent(&done).ok());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(engine.EnqueueCopy(dst.data(), src.data(), src.size(), 0).ok());
  ASSERT_TRUE(engine.RecordCopyEvent(up).ok());
  ASSERT_TRUE(engine.ComputeWaitFor(up, compute).ok());
  std::atomic<bool> saw{false};
  ASSERT_TRUE(engine.EnqueueCompute(compute, [&] { saw = dst == src; }).ok());
  ASSERT_TRUE(engine.RecordComputeEvent(done, compute).ok());
  const double queued_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(queued_ms, 20.0) << "queuing a compute wait must not block the host";
  ASSERT_TRUE(engine.ComputeWaitFor(done, nullptr).ok());  // the host waits for the queue's record
  EXPECT_TRUE(saw);
  EXPECT_TRUE(engine.EnqueueCompute(nullptr, [] {}).code() == Status::Code::kInvalidArgument);
}

TEST(HostCopyEngine, EmulatedBandwidthIsHonoured) {
  HostEngineOptions opt;
  opt.bandwidth_bytes_per_s = 100.0 * 1024 * 1024;  // 100 MiB/s
  HostCopyEngine engine(opt);
  std::vector<uint8_t> src(2 << 20, 3), dst(2 << 20);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(engine.EnqueueCopy(dst.data(), src.data(), src.size(), 0).ok());
  ASSERT_TRUE(engine.Synchronize().ok());
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
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
      ASSERT_EQ(
          RunPass(&rt, m, order, [&](int) { std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200)); }), "")
          << "seed " << seed << " trial " << trial;
    }
  }
}

// Deferred compute on a two-slot ring: each block's compute holds its slot for
// a while after the host thread has moved on; prefetched uploads must wait for
// the release recorded behind it.
TEST(HostCopyEngine, DeferredComputeNeverSeesItsSlotRefilled) {
  const uint64_t seed = testing_util::TestSeed(2024);
  std::mt19937_64 rng(seed);
  FakeModel m = FakeModel::Make(std::vector<uint64_t>(9, 5000), rng());
  HostEngineOptions opt;
  opt.poison = true;
  opt.max_random_delay_us = 50;
  opt.seed = rng();
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  ASSERT_TRUE(RegisterAll(&rt, m).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  void* compute = engine.CreateComputeQueue(100, rng());
  testing_util::DeferredErrors errors;
  for (int pass = 0; pass < 4; ++pass) {
    ASSERT_EQ(testing_util::QueueDeferredPass(&rt, &engine, compute, m, {0, 1, 2, 3, 4, 5, 6, 7, 8}, &errors,
                                              [&](int) { return 200; }),
              "");
  }
  ASSERT_TRUE(engine.SynchronizeCompute(compute).ok());
  EXPECT_EQ(errors.first(), "") << "seed " << seed;
  ASSERT_TRUE(rt.Close().ok());
}

// Resident weights loaded for one compute queue and read by a pass on another:
// BeginPass makes that queue wait for the resident uploads as well.
TEST(HostCopyEngine, APassOnAnotherQueueWaitsForTheResidentUploads) {
  FakeModel m = FakeModel::Make({6000, 3000}, 77);
  HostEngineOptions opt;
  opt.poison = true;
  HostCopyEngine engine(opt);
  HostArena arena;
  StreamingRuntime rt(&engine, &arena);
  int id;
  ASSERT_TRUE(rt.RegisterBlock(m.host[0].data(), m.host[0].size(), /*streamable=*/false, &id).ok());
  ASSERT_TRUE(rt.RegisterBlock(m.host[1].data(), m.host[1].size(), true, &id).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  void* load_queue = engine.CreateComputeQueue();
  void* pass_queue = engine.CreateComputeQueue();
  engine.DelayNextCopies(1, 40000);  // the resident upload lands 40 ms later
  ASSERT_TRUE(rt.Load(load_queue).ok());
  ASSERT_TRUE(rt.BeginPass(pass_queue).ok());
  const DeviceLocation loc = rt.resident_location(0);
  std::atomic<bool> ok{false};
  ASSERT_TRUE(engine.EnqueueCompute(pass_queue, [&] { ok = testing_util::SameBytes(loc, m.host[0]); }).ok());
  ASSERT_TRUE(rt.EndPass(pass_queue).ok());
  ASSERT_TRUE(engine.SynchronizeCompute(pass_queue).ok());
  EXPECT_TRUE(ok) << "the pass read the resident block before its upload landed";
  ASSERT_TRUE(engine.SynchronizeCompute(load_queue).ok());
  ASSERT_TRUE(rt.Close().ok());
}

}  // namespace
}  // namespace pinstream
