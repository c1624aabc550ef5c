// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Randomized schedule tester: random models, orders (repeats, skips,
// reorders), budgets, prefetch depths and copy delays, all from one seed
// (PINSTREAM_SEED reproduces a run; PINSTREAM_CASES sets the case count).
// Every acquire must see exactly its block's bytes. Half the cases run their
// compute deferred on a queue of its own (a worker thread, like a CUDA
// stream) that lags behind the host thread, so each slot is still being read
// when the next uploads are queued: a refill that did not wait for the
// block's release shows up as wrong bytes in the lagging compute.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/exact_block.h"
#include "core/fp8.h"
#include "core/streaming_runtime.h"
#include "deferred_compute_util.h"
#include "host/host_copy_engine.h"
#include "test_util.h"

namespace pinstream {
namespace {

using testing_util::FakeModel;
using testing_util::RunPass;

int CaseCount() {
  const char* env = std::getenv("PINSTREAM_CASES");
  return env != nullptr ? std::atoi(env) : 2000;
}

TEST(RandomizedSchedule, EveryAcquireSeesItsBlock) {
  const uint64_t seed = testing_util::TestSeed(4242);
  const int cases = CaseCount();
  std::mt19937_64 rng(seed);
  int refused = 0;
  int split_cases = 0;
  int deferred_cases = 0;
  int coded_cases = 0;
  int resident_coded_cases = 0;  // a plan kept some coded blocks on the device in their coded form
  int disk_cases = 0;            // some blocks read from a file (the disk tier)
  int arrivals = 0;              // blocks brought back to host memory through a pass's read
  uint64_t acquires = 0;
  for (int c = 0; c < cases; ++c) {
    const uint64_t case_seed = rng();
    std::mt19937_64 r(case_seed);
    HostEngineOptions opt;
    opt.seed = r();
    opt.poison = true;
    opt.max_random_delay_us = (r() % 4 == 0) ? static_cast<int>(r() % 50) : 0;
    const int n = 1 + static_cast<int>(r() % 16);
    std::vector<uint64_t> sizes;
    for (int i = 0; i < n; ++i) sizes.push_back(1 + r() % 3000);
    // Host buffers are declared before the engine: they outlive its copies.
    FakeModel m = FakeModel::Make(sizes, r());
    const int fixed = static_cast<int>(r() % 3);
    std::vector<uint8_t> fixed_bytes(fixed * 100 + 1, 0x5A);
    m.host.reserve(n + 1);
    // A third of the cases send some blocks in the exact coded form (bf16-like
    // values, decoded by the engine after the upload), from a generator of their own.
    std::mt19937_64 rx(case_seed ^ 0x5851F42D4C957F2DULL);
    const bool some_coded = rx() % 3 == 0;
    std::vector<std::unique_ptr<ExactCode>> codes;
    std::vector<std::vector<uint8_t>> transfer(n);
    std::vector<std::unique_ptr<BlockTransform>> transforms(n);
    for (int i = 0; i < n && some_coded; ++i) {
      if (rx() % 2 != 0) continue;
      std::normal_distribution<float> normal(0.f, 0.03f);
      const uint64_t pairs = sizes[i] / 2;
      for (uint64_t k = 0; k < pairs; ++k) {
        const uint16_t v = FloatToBFloat16(normal(rx));
        std::memcpy(&m.host[i][2 * k], &v, 2);
      }
      std::vector<ExactTensor> parts;
      codes.push_back(std::make_unique<ExactCode>());
      ASSERT_TRUE(AnalyzeExact(m.host[i].data(), 2, static_cast<int64_t>(pairs), 1, codes.back().get()).ok());
      parts.push_back(ExactTensor{0, 2 * pairs, codes.back()->pays() ? codes.back().get() : nullptr});
      if (sizes[i] % 2 != 0) parts.push_back(ExactTensor{2 * pairs, 1, nullptr});  // an odd last byte, as stored
      transforms[i] = std::make_unique<BlockTransform>();
      transfer[i].resize(std::max<uint64_t>(MakeExactTransform(parts, transforms[i].get()), 1));
      for (size_t k = 0; k < parts.size(); ++k) {
        ASSERT_TRUE(EncodeExactTensor(m.host[i].data() + parts[k].offset, parts[k], transforms[i]->jobs[k],
                                      transfer[i].data(), 1)
                        .ok());
      }
    }
    // A third of the cases keep some blocks on disk (the disk tier): their bytes
    // (a coded block's transfer bytes) in a file, in one to three extents with
    // filler between them, read through a reader of two threads and small chunks
    // (or io_uring), with O_DIRECT or buffered.
    std::mt19937_64 rd(case_seed ^ 0xD1B54A32D192ED03ULL);
    const bool some_disk = rd() % 3 == 0;
    std::vector<int> disk_index(n, -1);
    testing_util::DiskFile disk_file;
    DiskReader::Options ro;
    ro.threads = 2;
    ro.chunk_bytes = 4096;
    ro.direct = rd() % 2 == 0;
    ro.io_uring = rd() % 2 == 0;  // where it works here (else the thread pool)
    DiskReader reader(ro);
    int disk_file_id = -1;
    for (int i = 0; i < n && some_disk; ++i) {
      if (rd() % 2 != 0) continue;
      const std::vector<uint8_t>& bytes = transforms[i] ? transfer[i] : m.host[i];
      disk_index[i] = disk_file.Add(bytes, 1 + static_cast<int>(rd() % 3), rd() % 700);
    }
    if (some_disk) {
      ASSERT_TRUE(disk_file.Write());
      ASSERT_TRUE(reader.Open(disk_file.path(), &disk_file_id).ok());
    }
    HostCopyEngine engine(opt);
    HostArena arena;
    StreamingRuntime rt(&engine, &arena);
    if (some_disk) ASSERT_TRUE(rt.UseDiskReader(&reader, 1 + static_cast<int>(rd() % 3)).ok());
    int id;
    // half the cases may split blocks (budget plans): random cuts, from their own
    // generator so that the other draws of a case stay as they were
    std::mt19937_64 rc(case_seed ^ 0x9E3779B97F4A7C15ULL);
    const bool cut = rc() % 2 == 0;
    const bool deferred = rc() % 2 == 0;
    const int compute_delay_us = static_cast<int>(rc() % 80);
    const uint64_t compute_seed = rc();
    int coded_blocks = 0;
    for (int i = 0; i < n; ++i) {
      if (transforms[i]) {  // coded: the transfer bytes cross, the transform writes the block
        ASSERT_TRUE(
            rt.RegisterBlock(disk_index[i] >= 0 ? nullptr : transfer[i].data(), transfer[i].size(), true, &id).ok());
        ASSERT_TRUE(rt.SetTransform(id, sizes[i], transforms[i].get()).ok());
        ++coded_blocks;
        continue;
      }
      ASSERT_TRUE(rt.RegisterBlock(disk_index[i] >= 0 ? nullptr : m.host[i].data(), sizes[i], true, &id).ok());
      if (!cut) continue;
      std::vector<uint64_t> cuts;
      for (uint64_t at = 1 + rc() % 600; at < sizes[i]; at += 1 + rc() % 800) cuts.push_back(at);
      ASSERT_TRUE(rt.SetCuts(id, cuts).ok());
    }
    int disk_blocks = 0;
    for (int i = 0; i < n; ++i) {
      if (disk_index[i] < 0) continue;
      ASSERT_TRUE(rt.SetDiskSource(i, disk_file.Extents(disk_index[i], disk_file_id)).ok());
      ++disk_blocks;
    }
    if (fixed > 0) {
      ASSERT_TRUE(rt.RegisterBlock(fixed_bytes.data(), fixed_bytes.size(), false, &id).ok());
      m.host.push_back(fixed_bytes);
    }
    const int prefetch = static_cast<int>(r() % 4);
    const int pol = static_cast<int>(r() % 3);
    const PlanPolicy policy = pol == 0   ? PlanPolicy::kBudget
                              : pol == 1 ? PlanPolicy::kStreamAll
                                         : PlanPolicy::kAllResident;
    uint64_t total = fixed_bytes.size();
    for (uint64_t s : sizes) total += s;
    const uint64_t budget = (r() % 5 == 0) ? PlanRequest::kUnlimited : r() % (2 * total + 1);
    Status s = rt.Plan(policy, budget, prefetch);
    if (!s.ok()) {
      ASSERT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
      ++refused;
      continue;
    }
    ASSERT_LE(rt.plan().device_bytes(), budget == PlanRequest::kUnlimited ? ~0ULL : budget);
    split_cases += rt.plan().num_split() > 0 ? 1 : 0;
    coded_cases += coded_blocks > 0 ? 1 : 0;
    resident_coded_cases += rt.plan().num_coded() > 0 ? 1 : 0;
    disk_cases += disk_blocks > 0 ? 1 : 0;
    // A base order with repeats, then per-pass skips and occasional reorders.
    std::vector<int> base;
    for (int i = 0; i < n; ++i) {
      base.push_back(i);
      if (r() % 6 == 0) base.push_back(static_cast<int>(r() % n));
    }
    if (fixed > 0) base.insert(base.begin(), n);  // the non-block part runs first
    const int passes = 1 + static_cast<int>(r() % 5);
    // Between passes, blocks on disk may come back to host memory through the next
    // pass's read (ReadInto), from its own generator (the other draws stay as they were).
    std::mt19937_64 ra(case_seed ^ 0xA0761D6478BD642FULL);
    std::vector<std::vector<uint8_t>> homes(static_cast<size_t>(n));
    auto expected = [&](int i) -> const std::vector<uint8_t>& { return transforms[i] ? transfer[i] : m.host[i]; };
    void* queue = deferred ? engine.CreateComputeQueue(compute_delay_us, compute_seed) : nullptr;
    testing_util::DeferredErrors errors;
    deferred_cases += deferred ? 1 : 0;
    for (int p = 0; p < passes; ++p) {
      std::vector<int> order;
      for (int b : base) {
        if (r() % 8 != 0) order.push_back(b);
      }
      if (r() % 5 == 0) std::shuffle(order.begin(), order.end(), r);
      acquires += order.size();
      if (deferred) {
        ASSERT_EQ(testing_util::QueueDeferredPass(&rt, &engine, queue, m, order, &errors,
                                                  [&](int) { return static_cast<int>(rc() % 40); }),
                  "")
            << "seed " << seed << " case " << c << " (case seed " << case_seed << ")";
      } else {
        ASSERT_EQ(RunPass(&rt, m, order), "") << "seed " << seed << " case " << c << " (case seed " << case_seed << ")";
      }
      for (int i = 0; i < n && disk_blocks > 0; ++i) {
        if (!rt.on_disk(i) || rt.arriving(i) || ra() % 3 != 0) continue;
        homes[static_cast<size_t>(i)].assign(expected(i).size(), 0xEE);
        ASSERT_TRUE(rt.ReadInto(i, homes[static_cast<size_t>(i)].data()).ok());
        ++arrivals;
      }
    }
    if (disk_blocks > 0) {
      ASSERT_TRUE(rt.FinishArrivals().ok());
      for (int i = 0; i < n; ++i) {
        if (homes[static_cast<size_t>(i)].empty()) continue;
        ASSERT_FALSE(rt.on_disk(i)) << "case seed " << case_seed;
        ASSERT_EQ(homes[static_cast<size_t>(i)], expected(i)) << "case seed " << case_seed << " block " << i;
      }
    }
    if (deferred) {
      ASSERT_TRUE(engine.SynchronizeCompute(queue).ok());
      ASSERT_EQ(errors.first(), "") << "seed " << seed << " case " << c << " (case seed " << case_seed
                                    << ", deferred compute)";
    }
    ASSERT_LE(arena.peak_bytes(), rt.plan().device_bytes() + 4096ULL * 64);
    ASSERT_TRUE(rt.Close().ok());
    ASSERT_EQ(arena.allocated_bytes(), 0u);
  }
  RecordProperty("seed", std::to_string(seed));
  RecordProperty("cases", std::to_string(cases));
  std::printf(
      "randomized schedule: seed %llu, %d cases (%d with split blocks, %d with deferred compute, %d with coded "
      "blocks, %d of them resident coded, %d with blocks on disk; %d blocks came back through a pass's read), %d "
      "budgets refused, %llu acquires checked\n",
      static_cast<unsigned long long>(seed), cases, split_cases, deferred_cases, coded_cases, resident_coded_cases,
      disk_cases, arrivals, refused, static_cast<unsigned long long>(acquires));
  EXPECT_LT(refused, cases);
  if (cases >= 200) {
    EXPECT_GT(split_cases, 0);
    EXPECT_GT(deferred_cases, 0);
    EXPECT_GT(coded_cases, 0);
    EXPECT_GT(resident_coded_cases, 0);
    EXPECT_GT(disk_cases, 0);
    EXPECT_GT(arrivals, 0);
  }
}

}  // namespace
}  // namespace pinstream
