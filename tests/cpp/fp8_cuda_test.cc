// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The fp8 dequantization kernel against the CPU reference, bit for bit:
// random codes (NaN and inf codes included), per-row / scalar / no scales,
// e4m3 and e5m2, fp32 / fp16 / bf16 outputs, shapes with odd column counts,
// one row, and a large block; aligned (vector) and unaligned (scalar) paths.
// Compiled everywhere, skipped without a GPU. Also prints the kernel's
// throughput (not asserted).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/fp8.h"
#include "cuda/cuda_check.h"
#include "cuda/cuda_resources.h"
#include "cuda/fp8_dequant.h"
#include "cuda_test_util.h"
#include "test_util.h"

namespace pinstream {
namespace {

// Device memory for one test, freed by the allocator's destructor.
class DeviceArena {
 public:
  DeviceArena() : alloc_(0) {}
  // `bytes` of device memory (256-byte aligned by cudaMalloc), or null.
  void* Get(uint64_t bytes) {
    int64_t id;
    void* p = nullptr;
    Status s = alloc_.Allocate(bytes, &id, &p);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return s.ok() ? p : nullptr;
  }

 private:
  CudaDeviceAllocator alloc_;
};

const char* LayoutName(ScaleLayout l) {
  return l == ScaleLayout::kPerRow ? "per-row" : l == ScaleLayout::kScalar ? "scalar" : "none";
}

// Runs one case on both paths and compares the output bytes. `q_offset` and
// `out_offset` (bytes) move the device pointers off 16-byte alignment.
void CheckCase(Fp8Format format, ScaleLayout layout, FloatDtype dtype, int64_t rows, int64_t cols, uint64_t seed,
               int q_offset, int out_offset) {
  SCOPED_TRACE(std::string(Fp8FormatName(format)) + " " + LayoutName(layout) + " -> " + DtypeName(dtype) + " [" +
               std::to_string(rows) + ", " + std::to_string(cols) + "] q+" + std::to_string(q_offset) + " out+" +
               std::to_string(out_offset) + " seed " + std::to_string(seed));
  const int64_t n = rows * cols;
  const int esize = DtypeSize(dtype);
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> q(n);
  for (auto& c : q) c = static_cast<uint8_t>(rng());
  std::vector<float> scales(rows > 0 ? rows : 1);
  std::uniform_real_distribution<float> e(-12.0f, 12.0f);
  for (auto& s : scales) s = std::exp2(e(rng));
  // Edge scales: subnormal products, overflowing products, NaN, zero, negative.
  // Rows 1..6 get them (when there are that many), and every third case
  // puts one into row 0, the scale of the scalar layout.
  const float edge[] = {1e-38f, 3e36f, std::nanf(""), 0.0f, -0.75f, 1.0f};
  const size_t num_edge = sizeof(edge) / sizeof(edge[0]);
  for (size_t k = 0; k < num_edge && k + 1 < scales.size(); ++k) scales[k + 1] = edge[k];
  if (seed % 3 == 0) scales[0] = edge[(seed / 3) % num_edge];

  Fp8DequantParams host;
  host.q = q.data();
  host.format = format;
  host.scales = scales.data();
  host.scale_layout = layout;
  host.rows = rows;
  host.cols = cols;
  host.out_dtype = dtype;
  std::vector<uint8_t> want(n * esize + 16);
  host.out = want.data() + (16 - reinterpret_cast<uintptr_t>(want.data()) % 16) % 16;
  ASSERT_TRUE(DequantizeFp8(host).ok());

  DeviceArena arena;
  auto* dq = static_cast<uint8_t*>(arena.Get(n + 32));
  auto* dscales = static_cast<float*>(arena.Get(scales.size() * 4));
  auto* dout = static_cast<uint8_t*>(arena.Get(n * esize + 64));
  ASSERT_TRUE(dq && dscales && dout);
  ASSERT_EQ(cudaMemcpy(dq + q_offset, q.data(), n, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dscales, scales.data(), scales.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(dout, 0xA5, n * esize + 64), cudaSuccess);
  // cudaMemset and the pageable cudaMemcpy run on the legacy default stream,
  // which a cudaStreamNonBlocking stream does not wait for: without this the
  // kernel can run before the fill and have its output overwritten.
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  CudaStream stream;
  ASSERT_TRUE(CudaStream::Create(0, &stream).ok());
  Fp8DequantParams dev = host;
  dev.q = dq + q_offset;
  dev.scales = dscales;
  dev.out = dout + out_offset;
  Status s = LaunchDequantizeFp8(dev, stream.get());
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(cudaStreamSynchronize(stream.get()), cudaSuccess);
  std::vector<uint8_t> got(n * esize + 64);
  ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size(), cudaMemcpyDeviceToHost), cudaSuccess);

  const auto* w = static_cast<const uint8_t*>(host.out);
  const uint8_t* g = got.data() + out_offset;
  if (std::memcmp(g, w, n * esize) != 0) {
    for (int64_t i = 0; i < n; ++i) {
      if (std::memcmp(g + i * esize, w + i * esize, esize) != 0) {
        uint32_t gb = 0, wb = 0;
        std::memcpy(&gb, g + i * esize, esize);
        std::memcpy(&wb, w + i * esize, esize);
        const float scale = layout == ScaleLayout::kPerRow   ? scales[i / cols]
                            : layout == ScaleLayout::kScalar ? scales[0]
                                                             : 1.0f;
        FAIL() << "first mismatch at element " << i << " (row " << i / cols << ", col " << i % cols << "): code 0x"
               << std::hex << int{q[i]} << " scale " << scale << ": gpu 0x" << gb << ", cpu 0x" << wb;
      }
    }
  }
  // Nothing written outside [out, out + n).
  for (int b = 0; b < out_offset; ++b) ASSERT_EQ(got[b], 0xA5) << "byte before the output";
  for (int64_t b = out_offset + n * esize; b < static_cast<int64_t>(got.size()); ++b) {
    ASSERT_EQ(got[b], 0xA5) << "byte after the output at " << b;
  }
}

TEST(Fp8Cuda, EveryCodeDecodesExactly) {
  REQUIRE_GPU();
  for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (FloatDtype dtype : {FloatDtype::kFloat32, FloatDtype::kFloat16, FloatDtype::kBFloat16}) {
      // Random codes (every code is likely present), scale 1 (kNone).
      CheckCase(format, ScaleLayout::kNone, dtype, 1, 4096, 1, 0, 0);
    }
  }
  // And directly against the decode tables.
  DeviceArena arena;
  auto* dq = static_cast<uint8_t*>(arena.Get(256));
  auto* dout = static_cast<float*>(arena.Get(256 * 4));
  ASSERT_TRUE(dq && dout);
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[c] = static_cast<uint8_t>(c);
  ASSERT_EQ(cudaMemcpy(dq, codes.data(), 256, cudaMemcpyHostToDevice), cudaSuccess);
  for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    Fp8DequantParams p;
    p.q = dq;
    p.format = format;
    p.scale_layout = ScaleLayout::kNone;
    p.rows = 16;
    p.cols = 16;
    p.out_dtype = FloatDtype::kFloat32;
    p.out = dout;
    ASSERT_TRUE(LaunchDequantizeFp8(p, nullptr).ok());
    std::vector<float> got(256);
    ASSERT_EQ(cudaMemcpy(got.data(), dout, 256 * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int c = 0; c < 256; ++c) {
      const float want =
          format == Fp8Format::kE4M3 ? DecodeE4M3(static_cast<uint8_t>(c)) : DecodeE5M2(static_cast<uint8_t>(c));
      uint32_t gb, wb;
      std::memcpy(&gb, &got[c], 4);
      std::memcpy(&wb, &want, 4);
      if (std::isnan(want)) {
        EXPECT_EQ(gb, kCanonicalNanFloat32) << Fp8FormatName(format) << " code " << c;
      } else {
        EXPECT_EQ(gb, wb) << Fp8FormatName(format) << " code " << c;
      }
    }
  }
}

TEST(Fp8Cuda, MatchesCpuReferenceBitForBit) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(4242);
  struct Shape {
    int64_t rows, cols;
  };
  // Odd column counts put row ends inside 16-code chunks; 1 column makes
  // every code its own row; the tail of n % 16 codes takes the scalar loop.
  const Shape shapes[] = {{1, 1},  {1, 15},   {1, 17},   {3, 5},      {7, 16},    {5, 33},
                          {64, 1}, {13, 100}, {31, 257}, {1, 100003}, {96, 4095}, {2, 16 * 1000 + 9}};
  int k = 0;
  for (const Shape& sh : shapes) {
    for (Fp8Format format : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (ScaleLayout layout : {ScaleLayout::kPerRow, ScaleLayout::kScalar, ScaleLayout::kNone}) {
        for (FloatDtype dtype : {FloatDtype::kFloat32, FloatDtype::kFloat16, FloatDtype::kBFloat16}) {
          CheckCase(format, layout, dtype, sh.rows, sh.cols, seed + k++, 0, 0);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(Fp8Cuda, UnalignedPointersTakeTheScalarPathAndStillMatch) {
  REQUIRE_GPU();
  const uint64_t seed = testing_util::TestSeed(77);
  int k = 0;
  for (int q_offset : {0, 1, 3}) {
    for (int out_offset : {0, 4, 2}) {
      for (FloatDtype dtype : {FloatDtype::kFloat32, FloatDtype::kFloat16, FloatDtype::kBFloat16}) {
        if (out_offset % DtypeSize(dtype) != 0) continue;
        CheckCase(Fp8Format::kE4M3, ScaleLayout::kPerRow, dtype, 19, 37, seed + k++, q_offset, out_offset);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(Fp8Cuda, LargeBlockAndThroughput) {
  REQUIRE_GPU();
  // A 5120 x 13824 Linear weight (Wan 14B FFN size): 70.8 M codes.
  const int64_t rows = 5120, cols = 13824;
  CheckCase(Fp8Format::kE4M3, ScaleLayout::kPerRow, FloatDtype::kBFloat16, rows, cols, testing_util::TestSeed(11), 0,
            0);
  if (HasFatalFailure()) return;

  DeviceArena arena;
  const int64_t n = rows * cols;
  auto* dq = static_cast<uint8_t*>(arena.Get(n));
  auto* dscales = static_cast<float*>(arena.Get(rows * 4));
  void* dout = arena.Get(n * 4);
  ASSERT_TRUE(dq && dscales && dout);
  ASSERT_EQ(cudaMemset(dq, 0x3A, n), cudaSuccess);
  ASSERT_EQ(cudaMemset(dscales, 0, rows * 4), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the fills run on the legacy stream
  CudaStream stream;
  ASSERT_TRUE(CudaStream::Create(0, &stream).ok());
  CudaEvent start, stop;
  ASSERT_TRUE(CudaEvent::Create(0, true, &start).ok());
  ASSERT_TRUE(CudaEvent::Create(0, true, &stop).ok());
  for (FloatDtype dtype : {FloatDtype::kBFloat16, FloatDtype::kFloat16, FloatDtype::kFloat32}) {
    const int iters = 20;
    ASSERT_TRUE(LaunchDequantizeE4M3(dq, dscales, rows, cols, dtype, dout, stream.get()).ok());
    ASSERT_EQ(cudaEventRecord(start.get(), stream.get()), cudaSuccess);
    for (int i = 0; i < iters; ++i) {
      ASSERT_TRUE(LaunchDequantizeE4M3(dq, dscales, rows, cols, dtype, dout, stream.get()).ok());
    }
    ASSERT_EQ(cudaEventRecord(stop.get(), stream.get()), cudaSuccess);
    ASSERT_EQ(cudaEventSynchronize(stop.get()), cudaSuccess);
    float ms = 0;
    ASSERT_EQ(cudaEventElapsedTime(&ms, start.get(), stop.get()), cudaSuccess);
    const double bytes = static_cast<double>(n) * (1 + DtypeSize(dtype)) + rows * 4.0;
    const double per_ms = ms / iters;
    std::printf("[fp8 dequant] e4m3 [%lld, %lld] -> %s: %.3f ms, %.1f GB/s (read + written)\n",
                static_cast<long long>(rows), static_cast<long long>(cols), DtypeName(dtype), per_ms,
                bytes / (per_ms * 1e6));
  }
}

}  // namespace
}  // namespace pinstream
