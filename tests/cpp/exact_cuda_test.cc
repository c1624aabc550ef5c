// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The exact decode kernel against the CPU reference, bit for bit: random bf16,
// fp16 and fp8 tensors (sizes around chunk and block boundaries, skewed and
// uniform symbols, odd device addresses); corrupted coded bytes decoded on the
// device (run under compute-sanitizer memcheck in the GPU check: no access
// outside the tensor, corrupt chunks counted and not written); and the
// kernel's throughput on a large bf16 tensor (printed, with the ratio to the
// pinned link measured in the same run). Compiled everywhere, skipped without
// a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/exact_codec.h"
#include "core/fp8.h"
#include "cuda/cuda_resources.h"
#include "cuda/exact_decode.h"
#include "cuda_test_util.h"
#include "test_util.h"

namespace pinstream {
namespace {

std::vector<uint8_t> Weights(std::mt19937_64& r, int elem_bytes, int64_t count, int kind) {
  std::vector<uint8_t> out(static_cast<size_t>(count * elem_bytes));
  std::normal_distribution<float> normal(0.f, 0.03f);
  for (int64_t i = 0; i < count; ++i) {
    const float x = normal(r);
    uint32_t bits = kind == 1 ? static_cast<uint32_t>(r()) : kind == 2 ? FloatToHalf(x) : FloatToBFloat16(x);
    if (elem_bytes == 1) bits = EncodeE4M3(x * 100);
    std::memcpy(&out[static_cast<size_t>(i * elem_bytes)], &bits, static_cast<size_t>(elem_bytes));
  }
  return out;
}

struct Device {
  CudaDeviceBuffer buf;
  explicit Device(uint64_t bytes) { EXPECT_TRUE(CudaDeviceBuffer::Create(0, bytes, &buf).ok()); }
  uint8_t* get() const { return static_cast<uint8_t*>(buf.get()); }
};

// Encodes `t`, decodes it on the device at the given address offsets, and
// returns the device output (plain bytes) and the corrupt-chunk count.
int DecodeOnDevice(const std::vector<uint8_t>& coded, const ExactLayout& l, int coded_offset, int out_offset,
                   std::vector<uint8_t>* out) {
  Device dcoded(coded.size() + 64), dout(l.plain_bytes() + 64), derr(sizeof(int));
  EXPECT_EQ(cudaMemcpy(dcoded.get() + coded_offset, coded.data(), coded.size(), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemset(dout.get(), 0xEE, l.plain_bytes() + 64), cudaSuccess);
  EXPECT_EQ(cudaMemset(derr.get(), 0, sizeof(int)), cudaSuccess);
  Status s = LaunchExactDecode(dcoded.get() + coded_offset, l, dout.get() + out_offset,
                               reinterpret_cast<int*>(derr.get()), nullptr);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  out->assign(l.plain_bytes() + 64, 0);
  EXPECT_EQ(cudaMemcpy(out->data(), dout.get(), out->size(), cudaMemcpyDeviceToHost), cudaSuccess);
  int errors = 0;
  EXPECT_EQ(cudaMemcpy(&errors, derr.get(), sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  return errors;
}

TEST(ExactCuda, MatchesCpuReferenceBitForBit) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(606);
  std::mt19937_64 rng(seed);
  const int64_t sizes[] = {1, 511, 512, 513, 64 * 512 - 1, 64 * 512, 64 * 512 + 7, 200000};
  for (int64_t count : sizes) {
    for (int elem_bytes : {1, 2}) {
      for (int kind : {0, 1, 2}) {
        std::vector<uint8_t> t = Weights(rng, elem_bytes, count, kind);
        ExactCode code;
        ASSERT_TRUE(AnalyzeExact(t.data(), elem_bytes, count, 2, &code).ok());
        std::vector<uint8_t> coded(code.layout.bytes);
        ASSERT_TRUE(EncodeExact(t.data(), code, coded.data(), 2).ok());
        const int co = static_cast<int>(rng() % 2) * 3, oo = static_cast<int>(rng() % 2) * 5;
        std::vector<uint8_t> out;
        ASSERT_EQ(DecodeOnDevice(coded, code.layout, co, oo, &out), 0);
        ASSERT_EQ(std::memcmp(out.data() + oo, t.data(), t.size()), 0)
            << "count " << count << " elem " << elem_bytes << " kind " << kind;
        for (int k = 0; k < oo; ++k) ASSERT_EQ(out[k], 0xEE);  // nothing written before it
        ASSERT_EQ(out[oo + t.size()], 0xEE);                   // or after it
      }
    }
  }
}

TEST(ExactCuda, CorruptInputIsCountedAndNeverOverruns) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(707);
  std::mt19937_64 rng(seed);
  int rejected = 0;
  for (int c = 0; c < 200; ++c) {
    const int elem_bytes = c % 3 == 0 ? 1 : 2;
    const int64_t count = 1 + static_cast<int64_t>(rng() % 100000);
    std::vector<uint8_t> t = Weights(rng, elem_bytes, count, 0);
    ExactCode code;
    ASSERT_TRUE(AnalyzeExact(t.data(), elem_bytes, count, 1, &code).ok());
    std::vector<uint8_t> coded(code.layout.bytes);
    ASSERT_TRUE(EncodeExact(t.data(), code, coded.data(), 1).ok());
    const ExactLayout& l = code.layout;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 8); ++k) {
      const uint64_t at = rng() % 3 == 0 ? l.chunks_offset + rng() % (4 * (l.num_chunks + 1)) : rng() % l.bytes;
      coded[at] ^= static_cast<uint8_t>(1 + rng() % 255);
    }
    std::vector<uint8_t> out;
    const int errors = DecodeOnDevice(coded, l, 0, 0, &out);
    ASSERT_EQ(out[l.plain_bytes()], 0xEE) << "case " << c;  // never past the end
    std::vector<uint8_t> cpu(l.plain_bytes());
    const bool cpu_ok = DecodeExact(coded.data(), coded.size(), l, cpu.data()).ok();
    ASSERT_EQ(errors == 0, cpu_ok) << "case " << c << ": the kernel and the reference disagree on corruption";
    rejected += errors > 0 ? 1 : 0;
  }
  EXPECT_GT(rejected, 0);
}

TEST(ExactCuda, Throughput) {
  REQUIRE_GPU();
  std::mt19937_64 rng(1);
  const int64_t count = int64_t{256} << 20;  // 512 MiB of bf16
  std::vector<uint8_t> t = Weights(rng, 2, count, 0);
  ExactCode code;
  ASSERT_TRUE(AnalyzeExact(t.data(), 2, count, 8, &code).ok());
  std::vector<uint8_t> coded(code.layout.bytes);
  ASSERT_TRUE(EncodeExact(t.data(), code, coded.data(), 8).ok());
  Device dcoded(coded.size()), dout(code.layout.plain_bytes()), derr(sizeof(int));
  ASSERT_EQ(cudaMemcpy(dcoded.get(), coded.data(), coded.size(), cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(derr.get(), 0, sizeof(int)), cudaSuccess);
  CudaEvent start, stop;
  ASSERT_TRUE(CudaEvent::Create(0, true, &start).ok());
  ASSERT_TRUE(CudaEvent::Create(0, true, &stop).ok());
  for (int warm = 0; warm < 2; ++warm) {
    ASSERT_TRUE(
        LaunchExactDecode(dcoded.get(), code.layout, dout.get(), reinterpret_cast<int*>(derr.get()), nullptr).ok());
  }
  const int reps = 10;
  cudaEventRecord(start.get(), nullptr);
  for (int r = 0; r < reps; ++r) {
    ASSERT_TRUE(
        LaunchExactDecode(dcoded.get(), code.layout, dout.get(), reinterpret_cast<int*>(derr.get()), nullptr).ok());
  }
  cudaEventRecord(stop.get(), nullptr);
  ASSERT_EQ(cudaEventSynchronize(stop.get()), cudaSuccess);
  float ms = 0;
  cudaEventElapsedTime(&ms, start.get(), stop.get());
  const double decode_gbps = static_cast<double>(code.layout.plain_bytes()) * reps / (ms * 1e6);
  // the pinned link, measured in the same run: the coded bytes uploaded from pinned memory
  std::unique_ptr<HostBuffer> pinned;
  ASSERT_TRUE(PinnedHostBuffer::Make(coded.size(), PinMode::kAuto, &pinned).ok());
  std::memcpy(pinned->data(), coded.data(), coded.size());
  cudaEventRecord(start.get(), nullptr);
  for (int r = 0; r < 3; ++r)
    cudaMemcpyAsync(dcoded.get(), pinned->data(), coded.size(), cudaMemcpyHostToDevice, nullptr);
  cudaEventRecord(stop.get(), nullptr);
  ASSERT_EQ(cudaEventSynchronize(stop.get()), cudaSuccess);
  cudaEventElapsedTime(&ms, start.get(), stop.get());
  const double link_gbps = static_cast<double>(coded.size()) * 3 / (ms * 1e6);
  std::printf("exact decode: %.1f GB/s of bf16 out (ratio %.3f), pinned link %.1f GB/s: %.1fx the link\n", decode_gbps,
              static_cast<double>(code.layout.bytes) / static_cast<double>(code.layout.plain_bytes()), link_gbps,
              decode_gbps / link_gbps);
  RecordProperty("decode_gbps", std::to_string(decode_gbps));
  RecordProperty("link_gbps", std::to_string(link_gbps));
  int errors = 0;
  ASSERT_EQ(cudaMemcpy(&errors, derr.get(), sizeof(int), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(errors, 0);
}

}  // namespace
}  // namespace pinstream
