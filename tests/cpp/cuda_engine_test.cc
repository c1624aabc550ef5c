// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// CUDA engine tests: compiled everywhere, skipped without a GPU, run by
// bench/gpu_check.sh on the GPU machine. The same streaming checks as the host
// engine, with the slot contents verified on the device by a checksum kernel
// launched on the compute stream right after acquire (so a missing wait shows
// up as a wrong checksum).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/exact_block.h"
#include "core/fp8.h"
#include "core/streaming_runtime.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_copy_engine.h"
#include "cuda/kernels.h"
#include "cuda_test_kernels.h"
#include "cuda_test_util.h"
#include "test_util.h"

namespace pinstream {
namespace {

TEST(CudaEngine, ErrorsNameTheCallAndReason) {
  Status s = PINSTREAM_CUDA_STATUS(cudaErrorInvalidValue);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cudaErrorInvalidValue"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("invalid argument"), std::string::npos) << s.message();
  Status oom = PINSTREAM_CUDA_STATUS(cudaErrorMemoryAllocation);
  EXPECT_EQ(oom.code(), Status::Code::kOutOfMemory);
}

TEST(CudaEngine, HostChecksumIsPositionSensitive) {
  std::vector<uint8_t> a = {1, 2, 3, 4}, b = {2, 1, 3, 4};
  EXPECT_NE(HostChecksum(a.data(), a.size()), HostChecksum(b.data(), b.size()));
}

TEST(CudaEngine, PinnedBufferFallsBackAndSaysHow) {
  REQUIRE_GPU();
  std::unique_ptr<HostBuffer> buf;
  ASSERT_TRUE(PinnedHostBuffer::Make(64 << 20, PinMode::kAuto, &buf).ok());
  EXPECT_TRUE(buf->pinned());
  EXPECT_EQ(buf->how(), "cudaHostRegister");
  ASSERT_TRUE(PinnedHostBuffer::Make(1 << 20, PinMode::kHostAlloc, &buf).ok());
  EXPECT_EQ(buf->how(), "cudaHostAlloc");
  ASSERT_TRUE(PinnedHostBuffer::Make(1 << 20, PinMode::kPageable, &buf).ok());
  EXPECT_FALSE(buf->pinned());
}

// Runs `passes` passes over blocks 0..n-1 of `rt` (n = bytes.size()) on a stream of its
// own, checksumming each acquired block's `bytes[b]` bytes on the device right after the
// acquire (a missing wait shows as a wrong sum). Returns the sums, pass after pass; empty
// after a failure, which is recorded as a test failure.
std::vector<unsigned long long> ChecksumPasses(StreamingRuntime* rt, const std::vector<uint64_t>& bytes, int passes) {
  const int n = static_cast<int>(bytes.size());
  std::vector<unsigned long long> got(static_cast<size_t>(n) * passes);
  cudaStream_t compute;
  if (cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking) != cudaSuccess) {
    ADD_FAILURE() << "cudaStreamCreateWithFlags failed";
    return {};
  }
  unsigned long long* sums = nullptr;
  std::string failed;
  if (cudaMalloc(reinterpret_cast<void**>(&sums), sizeof(got[0]) * got.size()) != cudaSuccess) failed = "cudaMalloc";
  for (int p = 0; p < passes && failed.empty(); ++p) {
    if (!rt->BeginPass(compute).ok()) failed = "begin pass " + std::to_string(p);
    for (int b = 0; b < n && failed.empty(); ++b) {
      DeviceLocation loc;
      Status s = rt->Acquire(b, compute, &loc);
      if (s.ok()) s = LaunchChecksum(loc.ptr, bytes[b], sums + p * n + b, compute);
      if (s.ok()) s = rt->Release(b, compute);
      if (!s.ok()) failed = "pass " + std::to_string(p) + " block " + std::to_string(b) + ": " + s.ToString();
    }
    if (failed.empty() && !rt->EndPass(compute).ok()) failed = "end pass " + std::to_string(p);
  }
  if (failed.empty() && cudaStreamSynchronize(compute) != cudaSuccess) failed = "cudaStreamSynchronize";
  if (failed.empty() &&
      cudaMemcpy(got.data(), sums, got.size() * sizeof(got[0]), cudaMemcpyDeviceToHost) != cudaSuccess) {
    failed = "cudaMemcpy";
  }
  cudaFree(sums);
  cudaStreamDestroy(compute);
  if (!failed.empty()) {
    ADD_FAILURE() << failed;
    return {};
  }
  return got;
}

TEST(CudaEngine, StreamsBlocksAndEveryAcquireSeesItsBytes) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(777);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 6; ++trial) {
    std::unique_ptr<CudaCopyEngine> engine;
    CudaEngineOptions opt;
    ASSERT_TRUE(CudaCopyEngine::Create(opt, &engine).ok());
    CudaDeviceAllocator alloc(0);
    StreamingRuntime rt(engine.get(), &alloc);
    const int n = 4 + static_cast<int>(rng() % 12);
    std::vector<std::unique_ptr<HostBuffer>> host;
    std::vector<unsigned long long> want;
    for (int i = 0; i < n; ++i) {
      const uint64_t bytes = (1 << 20) + rng() % (8 << 20);
      std::unique_ptr<HostBuffer> b;
      ASSERT_TRUE(engine->AllocateHostBuffer(bytes, /*pin=*/true, &b).ok());
      std::mt19937_64 fill(seed + i);
      auto* p = static_cast<uint8_t*>(b->data());
      for (uint64_t k = 0; k < bytes; ++k) p[k] = static_cast<uint8_t>(fill());
      want.push_back(HostChecksum(p, bytes));
      int id;
      ASSERT_TRUE(rt.RegisterBlock(p, bytes, true, &id).ok());
      host.push_back(std::move(b));
    }
    const int prefetch = static_cast<int>(rng() % 4);
    ASSERT_TRUE(rt.Plan(trial % 2 ? PlanPolicy::kStreamAll : PlanPolicy::kBudget,
                        trial % 2 ? PlanRequest::kUnlimited : (24ull << 20) + (prefetch + 1) * (9ull << 20), prefetch)
                    .ok());
    const int passes = 4;
    std::vector<uint64_t> sizes;
    for (int b = 0; b < n; ++b) sizes.push_back(rt.block_bytes(b));
    const std::vector<unsigned long long> got = ChecksumPasses(&rt, sizes, passes);
    ASSERT_EQ(got.size(), static_cast<size_t>(n * passes));
    for (int p = 0; p < passes; ++p) {
      for (int b = 0; b < n; ++b) {
        ASSERT_EQ(got[p * n + b], want[b]) << "seed " << seed << " trial " << trial << " pass " << p << " block " << b;
      }
    }
    Stats st = rt.GetStats(true);
    EXPECT_GT(st.upload_ms, 0.0);
    ASSERT_TRUE(rt.Close().ok());
  }
}

// The disk tier on the device: half the blocks live in a file only and stream
// through the pinned read ring; every acquire still sees its block's bytes, and
// compute spans are timed (the adaptive look-ahead's measure).
TEST(CudaEngine, DiskBlocksStreamThroughTheReadRing) {
  REQUIRE_GPU();
  std::unique_ptr<CudaCopyEngine> engine;
  ASSERT_TRUE(CudaCopyEngine::Create(CudaEngineOptions(), &engine).ok());
  CudaDeviceAllocator alloc(0);
  StreamingRuntime rt(engine.get(), &alloc);
  const int n = 10;
  testing_util::FakeModel m = testing_util::FakeModel::Make(std::vector<uint64_t>(n, 3 << 20), 31);
  testing_util::DiskFile file;
  std::vector<int> index(n, -1);
  for (int i = 1; i < n; i += 2) index[i] = file.Add(m.host[i], 2, 1000);
  ASSERT_TRUE(file.Write());
  DiskReader reader;
  int fid = -1;
  ASSERT_TRUE(reader.Open(file.path(), &fid).ok());
  ASSERT_TRUE(rt.UseDiskReader(&reader, 2).ok());
  std::vector<std::unique_ptr<HostBuffer>> host;
  std::vector<unsigned long long> want;
  for (int i = 0; i < n; ++i) {
    want.push_back(HostChecksum(m.host[i].data(), m.host[i].size()));
    const void* src = nullptr;
    if (index[i] < 0) {
      std::unique_ptr<HostBuffer> b;
      ASSERT_TRUE(engine->AllocateHostBuffer(m.host[i].size(), /*pin=*/true, &b).ok());
      std::memcpy(b->data(), m.host[i].data(), m.host[i].size());
      src = b->data();
      host.push_back(std::move(b));
    }
    int id;
    ASSERT_TRUE(rt.RegisterBlock(src, m.host[i].size(), true, &id).ok());
    if (index[i] >= 0) ASSERT_TRUE(rt.SetDiskSource(id, file.Extents(index[i], fid)).ok());
  }
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 2).ok());
  std::vector<uint64_t> sizes(n, 3 << 20);
  const std::vector<unsigned long long> got = ChecksumPasses(&rt, sizes, 3);
  ASSERT_EQ(got.size(), static_cast<size_t>(3 * n));
  for (int p = 0; p < 3; ++p) {
    for (int b = 0; b < n; ++b) ASSERT_EQ(got[p * n + b], want[b]) << "pass " << p << " block " << b;
  }
  Stats st = rt.GetStats(true);
  EXPECT_GE(st.disk_reads, 5u);
  EXPECT_GT(st.compute_spans, 0u);
  ASSERT_TRUE(rt.Close().ok());
}

// Exact coded blocks under budgets that hold some as stored, some resident coded
// (decoded device to device into a slot at each use) and stream the rest through
// the shared staging buffer: every acquire must see the block's plain bytes.
TEST(CudaEngine, CodedBlocksResidentCodedStoredAndStreamedSeeTheirBytes) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(4711);
  std::mt19937_64 rng(seed);
  std::unique_ptr<CudaCopyEngine> engine;
  ASSERT_TRUE(CudaCopyEngine::Create(CudaEngineOptions(), &engine).ok());
  const int n = 10;
  const uint64_t plain = 4ull << 20;
  std::vector<std::vector<uint8_t>> values(n, std::vector<uint8_t>(plain));
  std::vector<std::unique_ptr<ExactCode>> codes;
  std::vector<std::unique_ptr<BlockTransform>> transforms;
  std::vector<std::unique_ptr<HostBuffer>> host;
  std::vector<unsigned long long> want;
  std::normal_distribution<float> normal(0.f, 0.02f);
  for (int i = 0; i < n; ++i) {
    for (uint64_t k = 0; k < plain / 2; ++k) {
      const uint16_t v = FloatToBFloat16(normal(rng));
      std::memcpy(&values[i][2 * k], &v, 2);
    }
    want.push_back(HostChecksum(values[i].data(), plain));
    codes.push_back(std::make_unique<ExactCode>());
    ASSERT_TRUE(AnalyzeExact(values[i].data(), 2, static_cast<int64_t>(plain / 2), 4, codes.back().get()).ok());
    std::vector<ExactTensor> parts{ExactTensor{0, plain, codes.back().get()}};
    transforms.push_back(std::make_unique<BlockTransform>());
    const uint64_t bytes = MakeExactTransform(parts, transforms.back().get());
    std::unique_ptr<HostBuffer> b;
    ASSERT_TRUE(engine->AllocateHostBuffer(bytes, /*pin=*/true, &b).ok());
    ASSERT_TRUE(
        EncodeExactTensor(values[i].data(), parts[0], transforms.back()->jobs[0], static_cast<uint8_t*>(b->data()), 4)
            .ok());
    host.push_back(std::move(b));
  }
  const uint64_t coded = host[0]->size();
  for (uint64_t budget : {3 * plain + 2 * coded + 4 * coded, 3 * plain + 2 * coded + 10 * coded,
                          3 * plain + 2 * coded + 10 * coded + 3 * plain}) {
    CudaDeviceAllocator alloc(0);
    StreamingRuntime rt(engine.get(), &alloc);
    for (int i = 0; i < n; ++i) {
      int id;
      ASSERT_TRUE(rt.RegisterBlock(host[i]->data(), host[i]->size(), true, &id).ok());
      ASSERT_TRUE(rt.SetTransform(id, plain, transforms[i].get()).ok());
    }
    ASSERT_TRUE(rt.Plan(PlanPolicy::kBudget, budget, 2).ok());
    EXPECT_GT(rt.plan().num_coded(), 0) << rt.plan().Describe();
    const int passes = 3;
    const std::vector<unsigned long long> got = ChecksumPasses(&rt, std::vector<uint64_t>(n, plain), passes);
    ASSERT_EQ(got.size(), static_cast<size_t>(n * passes));
    for (int p = 0; p < passes; ++p) {
      for (int b = 0; b < n; ++b) {
        ASSERT_EQ(got[p * n + b], want[b])
            << "seed " << seed << " " << rt.plan().Describe() << " pass " << p << " block " << b;
      }
    }
    Stats st = rt.GetStats(true);
    EXPECT_GT(st.coded_refills, 0u);
    EXPECT_LE(alloc.peak_bytes(), rt.plan().device_bytes());
    ASSERT_TRUE(rt.Close().ok());
  }
}

// Budget plans with cuts: split blocks keep a resident head (uploaded once) and
// stream their rest; every acquire must see both parts, the head at head_ptr and
// the rest at the slot, after the waits on the compute stream.
TEST(CudaEngine, SplitBlocksSeeTheirHeadAndTheirRest) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(4242);
  std::unique_ptr<CudaCopyEngine> engine;
  CudaEngineOptions opt;
  ASSERT_TRUE(CudaCopyEngine::Create(opt, &engine).ok());
  CudaDeviceAllocator alloc(0);
  StreamingRuntime rt(engine.get(), &alloc);
  const int n = 12;
  const uint64_t bytes = 8ull << 20;
  std::vector<std::unique_ptr<HostBuffer>> host;
  std::vector<const uint8_t*> data;
  for (int i = 0; i < n; ++i) {
    std::unique_ptr<HostBuffer> b;
    ASSERT_TRUE(engine->AllocateHostBuffer(bytes, /*pin=*/true, &b).ok());
    std::mt19937_64 fill(seed + i);
    auto* p = static_cast<uint8_t*>(b->data());
    for (uint64_t k = 0; k < bytes; ++k) p[k] = static_cast<uint8_t>(fill());
    int id;
    ASSERT_TRUE(rt.RegisterBlock(p, bytes, true, &id).ok());
    std::vector<uint64_t> cuts;
    for (uint64_t c = 1ull << 20; c < bytes; c += 1ull << 20) cuts.push_back(c);
    ASSERT_TRUE(rt.SetCuts(id, cuts).ok());
    data.push_back(p);
    host.push_back(std::move(b));
  }
  // half the model: whole blocks would keep 4 resident next to a 2-slot ring
  ASSERT_TRUE(rt.Plan(PlanPolicy::kBudget, n * bytes / 2, 1).ok());
  ASSERT_GT(rt.plan().num_split(), 0) << rt.plan().Describe();
  cudaStream_t compute;
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  const int passes = 3;
  unsigned long long* sums;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&sums), sizeof(unsigned long long) * 2 * n * passes), cudaSuccess);
  ASSERT_EQ(cudaMemset(sums, 0, sizeof(unsigned long long) * 2 * n * passes), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the memset ran on the legacy stream
  for (int p = 0; p < passes; ++p) {
    ASSERT_TRUE(rt.BeginPass(compute).ok());
    for (int b = 0; b < n; ++b) {
      DeviceLocation loc;
      ASSERT_TRUE(rt.Acquire(b, compute, &loc).ok());
      unsigned long long* out = sums + 2 * (p * n + b);
      ASSERT_EQ(loc.head_bytes, rt.split_bytes(b));
      if (loc.head_bytes > 0) {
        ASSERT_TRUE(LaunchChecksum(loc.head_ptr, loc.head_bytes, out, compute).ok());
      }
      ASSERT_TRUE(LaunchChecksum(loc.ptr, bytes - loc.head_bytes, out + 1, compute).ok());
      ASSERT_TRUE(rt.Release(b, compute).ok());
    }
    ASSERT_TRUE(rt.EndPass(compute).ok());
  }
  std::vector<unsigned long long> got(2 * n * passes);
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got.data(), sums, got.size() * sizeof(got[0]), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int p = 0; p < passes; ++p) {
    for (int b = 0; b < n; ++b) {
      const uint64_t head = rt.split_bytes(b);
      if (head > 0) {
        ASSERT_EQ(got[2 * (p * n + b)], HostChecksum(data[b], head)) << "pass " << p << " block " << b;
      }
      ASSERT_EQ(got[2 * (p * n + b) + 1], HostChecksum(data[b] + head, bytes - head)) << "pass " << p << " block " << b;
    }
  }
  ASSERT_TRUE(rt.Close().ok());
  cudaFree(sums);
  cudaStreamDestroy(compute);
}

// The rule the GPU depends on: a slot is overwritten only after the compute
// stream is done with it. Each block's compute spins for ~1 ms before it
// checksums its slot, with a ring of two slots (prefetch 1): the copy stream
// runs far ahead and would refill the slot under the running block if it did
// not wait on the block's release event.
TEST(CudaEngine, SlowComputeWithTwoSlotsNeverSeesItsSlotRefilled) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(99);
  std::unique_ptr<CudaCopyEngine> engine;
  CudaEngineOptions opt;
  ASSERT_TRUE(CudaCopyEngine::Create(opt, &engine).ok());
  CudaDeviceAllocator alloc(0);
  StreamingRuntime rt(engine.get(), &alloc);
  const int n = 8;
  const uint64_t bytes = 4ull << 20;
  std::vector<std::unique_ptr<HostBuffer>> host;
  std::vector<unsigned long long> want;
  for (int i = 0; i < n; ++i) {
    std::unique_ptr<HostBuffer> b;
    ASSERT_TRUE(engine->AllocateHostBuffer(bytes, /*pin=*/true, &b).ok());
    std::mt19937_64 fill(seed + i);
    auto* p = static_cast<uint8_t*>(b->data());
    for (uint64_t k = 0; k < bytes; ++k) p[k] = static_cast<uint8_t>(fill());
    want.push_back(HostChecksum(p, bytes));
    int id;
    ASSERT_TRUE(rt.RegisterBlock(p, bytes, true, &id).ok());
    host.push_back(std::move(b));
  }
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_EQ(rt.plan().slot_count(), 2);
  int clock_khz = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0), cudaSuccess);
  const long long spin = static_cast<long long>(clock_khz);  // about 1 ms
  cudaStream_t compute;
  ASSERT_EQ(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), cudaSuccess);
  const int passes = 3;
  unsigned long long* sums;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&sums), sizeof(unsigned long long) * n * passes), cudaSuccess);
  for (int p = 0; p < passes; ++p) {
    ASSERT_TRUE(rt.BeginPass(compute).ok());
    for (int b = 0; b < n; ++b) {
      DeviceLocation loc;
      ASSERT_TRUE(rt.Acquire(b, compute, &loc).ok());
      ASSERT_TRUE(LaunchSpin(spin, compute).ok());
      ASSERT_TRUE(LaunchChecksum(loc.ptr, bytes, sums + p * n + b, compute).ok());
      ASSERT_TRUE(rt.Release(b, compute).ok());
    }
    ASSERT_TRUE(rt.EndPass(compute).ok());
  }
  std::vector<unsigned long long> got(n * passes);
  ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got.data(), sums, got.size() * sizeof(got[0]), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int p = 0; p < passes; ++p) {
    for (int b = 0; b < n; ++b) ASSERT_EQ(got[p * n + b], want[b]) << "pass " << p << " block " << b;
  }
  ASSERT_TRUE(rt.Close().ok());
  cudaFree(sums);
  cudaStreamDestroy(compute);
}

// Resident weights loaded while one stream was current are read by a pass on
// another stream: that pass must wait for the resident uploads too.
TEST(CudaEngine, APassOnAnotherStreamWaitsForTheResidentUploads) {
  REQUIRE_GPU();
  std::unique_ptr<CudaCopyEngine> engine;
  CudaEngineOptions opt;
  ASSERT_TRUE(CudaCopyEngine::Create(opt, &engine).ok());
  CudaDeviceAllocator alloc(0);
  StreamingRuntime rt(engine.get(), &alloc);
  const uint64_t bytes = 64ull << 20;  // the upload takes a few ms
  std::unique_ptr<HostBuffer> b;
  ASSERT_TRUE(engine->AllocateHostBuffer(bytes, /*pin=*/true, &b).ok());
  auto* p = static_cast<uint8_t*>(b->data());
  std::mt19937_64 fill(5);
  for (uint64_t k = 0; k < bytes; ++k) p[k] = static_cast<uint8_t>(fill());
  const unsigned long long want = HostChecksum(p, bytes);
  int id;
  ASSERT_TRUE(rt.RegisterBlock(p, bytes, /*streamable=*/false, &id).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kAllResident, PlanRequest::kUnlimited, 1).ok());
  cudaStream_t load_stream, pass_stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&load_stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&pass_stream, cudaStreamNonBlocking), cudaSuccess);
  unsigned long long* sum;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&sum), sizeof(unsigned long long)), cudaSuccess);
  ASSERT_TRUE(rt.Load(load_stream).ok());
  ASSERT_TRUE(rt.BeginPass(pass_stream).ok());
  ASSERT_TRUE(LaunchChecksum(rt.resident_location(id).ptr, bytes, sum, pass_stream).ok());
  ASSERT_TRUE(rt.EndPass(pass_stream).ok());
  unsigned long long got = 0;
  ASSERT_EQ(cudaStreamSynchronize(pass_stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(&got, sum, sizeof(got), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, want);
  ASSERT_TRUE(rt.Close().ok());
  cudaFree(sum);
  cudaStreamDestroy(load_stream);
  cudaStreamDestroy(pass_stream);
}

// Which kernel image this device runs: real code built for its architecture, or
// PTX compiled by the driver at first use (printed for the GPU check's log).
TEST(CudaEngine, KernelImageForThisDevice) {
  REQUIRE_GPU();
  int major = 0, minor = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0), cudaSuccess);
  int binary = 0, ptx = 0;
  ASSERT_TRUE(KernelImage(&binary, &ptx).ok());
  const int device = major * 10 + minor;
  std::printf("kernel image: device sm_%d; binary built for sm_%d, PTX version %d (%s)\n", device, binary, ptx,
              binary == device ? "real code for this architecture" : "JIT-compiled PTX");
  EXPECT_GT(binary, 0);
}

// No engine call leaves another device current than the caller's.
TEST(CudaEngine, CallsLeaveTheCurrentDeviceAsTheyFoundIt) {
  REQUIRE_GPU();
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  const int target = count - 1;  // another device where there are two
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  auto current = [] {
    int d = -1;
    cudaGetDevice(&d);
    return d;
  };
  std::unique_ptr<CudaCopyEngine> engine;
  CudaEngineOptions opt;
  opt.device = target;
  ASSERT_TRUE(CudaCopyEngine::Create(opt, &engine).ok());
  EXPECT_EQ(current(), 0);
  CudaDeviceAllocator alloc(target);
  StreamingRuntime rt(engine.get(), &alloc);
  std::unique_ptr<HostBuffer> b;
  ASSERT_TRUE(engine->AllocateHostBuffer(1 << 20, true, &b).ok());
  EXPECT_EQ(current(), 0);
  std::memset(b->data(), 3, 1 << 20);
  int id;
  ASSERT_TRUE(rt.RegisterBlock(b->data(), 1 << 20, true, &id).ok());
  ASSERT_TRUE(rt.Plan(PlanPolicy::kStreamAll, PlanRequest::kUnlimited, 1).ok());
  ASSERT_TRUE(rt.Load(nullptr).ok());
  EXPECT_EQ(current(), 0);
  ASSERT_TRUE(rt.Close().ok());
  EXPECT_EQ(current(), 0);
}

}  // namespace
}  // namespace pinstream
