// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The exact codec: bit-exact round trips over many random tensors (shapes,
// alignments, dtypes, NaN, Inf, subnormals, -0, constants, single elements,
// tensors where coding does not pay), the same bytes on any thread count, the
// ratio on weights shaped like trained ones, and a decoder that survives any
// corruption of its input (run under ASan in CI).
#include "core/exact_codec.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "core/fp8.h"
#include "test_util.h"

namespace pinstream {
namespace {

int Cases(const char* env, int fallback) {
  const char* v = std::getenv(env);
  return v != nullptr ? std::atoi(v) : fallback;
}

// Elements of a random kind, as raw bytes (elem_bytes each).
std::vector<uint8_t> RandomTensor(std::mt19937_64& r, int elem_bytes, int64_t count) {
  std::vector<uint8_t> out(static_cast<size_t>(count * elem_bytes));
  const int kind = static_cast<int>(r() % 8);
  std::normal_distribution<float> normal(0.f, kind == 1 ? 1e-3f : 0.03f);
  auto put = [&](int64_t i, uint32_t bits) {
    if (elem_bytes == 2) {
      out[2 * i] = bits & 0xFF;
      out[2 * i + 1] = (bits >> 8) & 0xFF;
    } else {
      out[i] = bits & 0xFF;
    }
  };
  const uint16_t constant = static_cast<uint16_t>(r());
  for (int64_t i = 0; i < count; ++i) {
    float x = normal(r);
    uint32_t bits;
    switch (kind) {
      case 2:  // uniform bytes: coding does not pay
        bits = static_cast<uint32_t>(r());
        break;
      case 3:  // constant
        bits = constant;
        break;
      case 4: {  // specials sprinkled into weights
        const int pick = static_cast<int>(r() % 16);
        if (pick == 0) x = std::numeric_limits<float>::quiet_NaN();
        if (pick == 1) x = -std::numeric_limits<float>::infinity();
        if (pick == 2) x = -0.0f;
        if (pick == 3) x = 1e-40f;  // fp32 subnormal: bf16 keeps it
        bits = elem_bytes == 2 ? FloatToBFloat16(x) : EncodeE4M3(x * 30);
        break;
      }
      case 5:  // fp16 weights
        bits = elem_bytes == 2 ? FloatToHalf(x) : EncodeE4M3(x * 100);
        break;
      default:  // bf16 / fp8 weights
        bits = elem_bytes == 2 ? FloatToBFloat16(x) : EncodeE4M3(x * 100);
        break;
    }
    put(i, bits);
  }
  return out;
}

std::string RoundTrip(const std::vector<uint8_t>& t, int elem_bytes, int64_t count, int threads, size_t misalign,
                      std::vector<uint8_t>* coded_out = nullptr) {
  // the input at an arbitrary alignment
  std::vector<uint8_t> shifted(t.size() + 16);
  if (!t.empty()) std::memcpy(shifted.data() + misalign, t.data(), t.size());
  ExactCode code;
  Status s = AnalyzeExact(shifted.data() + misalign, elem_bytes, count, threads, &code);
  if (!s.ok()) return s.ToString();
  std::vector<uint8_t> coded(code.layout.bytes + 3);
  s = EncodeExact(shifted.data() + misalign, code, coded.data() + 3, threads);  // and an odd output address
  if (!s.ok()) return s.ToString();
  std::vector<uint8_t> back(t.size() + 1, 0xEE);
  s = DecodeExact(coded.data() + 3, code.layout.bytes, code.layout, back.data(), threads);
  if (!s.ok()) return s.ToString();
  if (!t.empty() && std::memcmp(back.data(), t.data(), t.size()) != 0) return "decoded bytes differ";
  if (back[t.size()] != 0xEE) return "decoder wrote past the end";
  if (coded_out != nullptr) coded_out->assign(coded.begin() + 3, coded.end());
  return "";
}

TEST(ExactCodec, RoundTripsManyRandomTensorsBitForBit) {
  const uint64_t seed = testing_util::TestSeed(2718);
  const int cases = Cases("PINSTREAM_CODEC_CASES", 10000);
  std::mt19937_64 rng(seed);
  int paid = 0, not_paid = 0;
  for (int c = 0; c < cases; ++c) {
    std::mt19937_64 r(rng());
    const int elem_bytes = r() % 3 == 0 ? 1 : 2;
    int64_t count;
    switch (r() % 6) {
      case 0:
        count = static_cast<int64_t>(r() % 3);
        break;  // 0, 1, 2 elements
      case 1:
        count = kExactChunkSymbols * (1 + r() % 3);
        break;  // whole chunks
      case 2:
        count = kExactChunkSymbols * (1 + r() % 3) + 1;
        break;  // one past
      case 3:
        count = static_cast<int64_t>(r() % 20000);
        break;
      default:
        count = static_cast<int64_t>(r() % 3000);
        break;
    }
    std::vector<uint8_t> t = RandomTensor(r, elem_bytes, count);
    const int threads = 1 + static_cast<int>(r() % 4);
    ASSERT_EQ(RoundTrip(t, elem_bytes, count, threads, r() % 16), "")
        << "seed " << seed << " case " << c << " elem_bytes " << elem_bytes << " count " << count;
    if (count > 4096) {
      ExactCode code;
      ASSERT_TRUE(AnalyzeExact(t.data(), elem_bytes, count, 1, &code).ok());
      (code.pays() ? paid : not_paid) += 1;
    }
  }
  std::printf("exact codec: seed %llu, %d tensors round-tripped (%d large ones paid, %d did not)\n",
              static_cast<unsigned long long>(seed), cases, paid, not_paid);
  if (cases >= 1000) {
    EXPECT_GT(paid, 0);
    EXPECT_GT(not_paid, 0);
  }
}

TEST(ExactCodec, SameBytesOnAnyThreadCount) {
  std::mt19937_64 r(7);
  std::normal_distribution<float> normal(0.f, 0.02f);
  const int64_t count = 3 * 1024 * 1024 + 77;  // several histogram items and encode items
  std::vector<uint8_t> t(count * 2);
  for (int64_t i = 0; i < count; ++i) {
    const uint16_t b = FloatToBFloat16(normal(r));
    std::memcpy(&t[2 * i], &b, 2);
  }
  std::vector<uint8_t> one, four;
  ASSERT_EQ(RoundTrip(t, 2, count, 1, 0, &one), "");
  ASSERT_EQ(RoundTrip(t, 2, count, 4, 0, &four), "");
  EXPECT_EQ(one, four);
}

TEST(ExactCodec, TrainedLikeBf16WeightsCodeToUnderSeventyPercent) {
  std::mt19937_64 r(11);
  for (float std : {0.008f, 0.02f, 0.05f}) {
    std::normal_distribution<float> normal(0.f, std);
    const int64_t count = 1 << 20;
    std::vector<uint16_t> t(count);
    for (auto& v : t) v = FloatToBFloat16(normal(r));
    ExactCode code;
    ASSERT_TRUE(AnalyzeExact(t.data(), 2, count, 2, &code).ok());
    const double ratio = static_cast<double>(code.layout.bytes) / static_cast<double>(code.layout.plain_bytes());
    EXPECT_LT(ratio, 0.70) << "std " << std;
    EXPECT_NEAR(code.top_entropy_bits, 2.6, 0.3) << "std " << std;
  }
}

TEST(ExactCodec, SkewedSymbolsStayWithinTheLengthLimit) {
  // frequencies 2^-1, 2^-2, ...: an unlimited Huffman code would need 30+ bits
  std::vector<uint16_t> t;
  for (int s = 0; s < 40; ++s) {
    const int64_t n = std::max<int64_t>(1, (int64_t{1} << 22) >> s);
    for (int64_t k = 0; k < n; ++k) t.push_back(static_cast<uint16_t>(s << 8 | (k & 0xFF)));
  }
  std::shuffle(t.begin(), t.end(), std::mt19937_64(3));
  ExactCode code;
  ASSERT_TRUE(AnalyzeExact(t.data(), 2, static_cast<int64_t>(t.size()), 2, &code).ok());
  int longest = 0;
  for (uint8_t l : code.lengths) longest = std::max<int>(longest, l);
  EXPECT_EQ(longest, kExactMaxCodeBits);
  std::vector<uint8_t> bytes(t.size() * 2);
  std::memcpy(bytes.data(), t.data(), bytes.size());
  EXPECT_EQ(RoundTrip(bytes, 2, static_cast<int64_t>(t.size()), 3, 5), "");
}

TEST(ExactCodec, BadLayoutsAndArgumentsAreRefused) {
  std::vector<uint16_t> t(5000, 0x3F80);
  ExactCode code;
  ASSERT_TRUE(AnalyzeExact(t.data(), 2, 5000, 1, &code).ok());
  std::vector<uint8_t> coded(code.layout.bytes);
  ASSERT_TRUE(EncodeExact(t.data(), code, coded.data(), 1).ok());
  std::vector<uint16_t> out(5000);
  EXPECT_EQ(DecodeExact(coded.data(), coded.size() - 1, code.layout, out.data()).code(),
            Status::Code::kInvalidArgument);
  ExactLayout l = code.layout;
  l.num_chunks += 1;
  EXPECT_EQ(DecodeExact(coded.data(), coded.size(), l, out.data()).code(), Status::Code::kInvalidArgument);
  l = code.layout;
  l.raw_offset = l.bytes - 10;
  EXPECT_EQ(DecodeExact(coded.data(), coded.size(), l, out.data()).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(AnalyzeExact(t.data(), 4, 10, 1, &code).code(), Status::Code::kInvalidArgument);
}

// Whatever the coded bytes, the decoder stays inside the tensor it was given
// (ASan in CI catches any stray read or write) and either decodes or says the
// input is corrupt.
TEST(ExactCodec, DecoderSurvivesCorruptInput) {
  const uint64_t seed = testing_util::TestSeed(31415);
  const int cases = Cases("PINSTREAM_CODEC_FUZZ_CASES", 20000);
  std::mt19937_64 rng(seed);
  int rejected = 0;
  for (int c = 0; c < cases; ++c) {
    std::mt19937_64 r(rng());
    const int elem_bytes = r() % 3 == 0 ? 1 : 2;
    const int64_t count = 1 + static_cast<int64_t>(r() % 3000);
    std::vector<uint8_t> t = RandomTensor(r, elem_bytes, count);
    ExactCode code;
    ASSERT_TRUE(AnalyzeExact(t.data(), elem_bytes, count, 1, &code).ok());
    // exactly the tensor's bytes, in a buffer of its own: ASan sees any overrun
    std::unique_ptr<uint8_t[]> coded(new uint8_t[code.layout.bytes]);
    ASSERT_TRUE(EncodeExact(t.data(), code, coded.get(), 1).ok());
    const ExactLayout& l = code.layout;
    const int flips = 1 + static_cast<int>(r() % 8);
    for (int k = 0; k < flips; ++k) {
      uint64_t at;
      switch (r() % 4) {
        case 0:
          at = l.lengths_offset + r() % 256;
          break;
        case 1:
          at = l.chunks_offset + r() % (4 * (l.num_chunks + 1));
          break;
        default:
          at = r() % l.bytes;
          break;
      }
      coded[at] ^= static_cast<uint8_t>(1 + r() % 255);
    }
    std::unique_ptr<uint8_t[]> out(new uint8_t[l.plain_bytes()]);
    Status s = DecodeExact(coded.get(), l.bytes, l, out.get(), 1 + static_cast<int>(r() % 3));
    if (!s.ok()) {
      ASSERT_EQ(s.code(), Status::Code::kInvalidArgument) << s.ToString();
      ++rejected;
    }
  }
  std::printf("exact decoder fuzz: seed %llu, %d corrupted tensors, %d rejected as corrupt\n",
              static_cast<unsigned long long>(seed), cases, rejected);
  if (cases >= 100) EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace pinstream
