// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/fp8_block.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace pinstream {
namespace {

std::vector<uint16_t> RandomBf16(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.f, 0.05f);
  std::vector<uint16_t> out(n);
  for (auto& v : out) v = FloatToBFloat16(d(rng));
  return out;
}

TEST(Fp8Block, LayoutPutsScalesThenCodesPerMatrixAndRawBytesOtherwise) {
  std::vector<TransferTensor> t(2);
  t[0].offset = 0;
  t[0].bytes = 3 * 5 * 2;
  t[0].quantize = true;
  t[0].rows = 3;
  t[0].cols = 5;
  t[1].offset = 64;
  t[1].bytes = 10;  // a 1-D weight: as stored
  BlockTransform tr;
  const uint64_t bytes = MakeFp8Transform(t, &tr);
  ASSERT_EQ(tr.jobs.size(), 2u);
  EXPECT_EQ(tr.jobs[0].kind, TransformJob::Kind::kDequantize);
  EXPECT_EQ(tr.jobs[0].scales_offset, 0u);
  EXPECT_EQ(tr.jobs[0].src_offset, 16u);  // 3 scales (12 bytes), 16-aligned
  EXPECT_EQ(tr.jobs[1].kind, TransformJob::Kind::kCopy);
  EXPECT_EQ(tr.jobs[1].src_offset, 32u);  // 16 + 15 codes, 16-aligned
  EXPECT_EQ(tr.jobs[1].dst_offset, 64u);
  EXPECT_EQ(bytes, 42u);
}

TEST(Fp8Block, QuantizesLikeQuantizeRowsOnAnyThreadCount) {
  const int64_t rows = 700, cols = 6001;  // several work items of 2^22 codes
  std::vector<uint16_t> w = RandomBf16(rows * cols, 5);
  std::vector<uint8_t> bias(40, 9);
  std::vector<TransferTensor> t(2);
  t[0].bytes = w.size() * 2;
  t[0].quantize = true;
  t[0].rows = rows;
  t[0].cols = cols;
  t[1].offset = t[0].bytes;
  t[1].bytes = bias.size();
  BlockTransform tr;
  const uint64_t bytes = MakeFp8Transform(t, &tr);
  std::vector<uint8_t> one(bytes), four(bytes);
  QuantError e1, e4;
  ASSERT_TRUE(QuantizeFp8Block(t, {w.data(), bias.data()}, tr, one.data(), 1, &e1).ok());
  ASSERT_TRUE(QuantizeFp8Block(t, {w.data(), bias.data()}, tr, four.data(), 4, &e4).ok());
  EXPECT_EQ(one, four);
  EXPECT_EQ(e1.max_abs, e4.max_abs);
  EXPECT_EQ(e1.mean_abs, e4.mean_abs);
  EXPECT_EQ(e1.count, rows * cols);
  // the same codes and scales as one QuantizeRows over the whole matrix
  std::vector<uint8_t> q(rows * cols);
  std::vector<float> scales(rows);
  ASSERT_TRUE(QuantizeRows(w.data(), FloatDtype::kBFloat16, rows, cols, q.data(), scales.data()).ok());
  EXPECT_EQ(std::memcmp(one.data() + tr.jobs[0].src_offset, q.data(), q.size()), 0);
  EXPECT_EQ(std::memcmp(one.data() + tr.jobs[0].scales_offset, scales.data(), rows * 4), 0);
  EXPECT_EQ(std::memcmp(one.data() + tr.jobs[1].src_offset, bias.data(), bias.size()), 0);
}

TEST(Fp8Block, MismatchedInputsAreRefused) {
  std::vector<TransferTensor> t(1);
  t[0].bytes = 4;
  BlockTransform tr;
  std::vector<uint8_t> out(MakeFp8Transform(t, &tr));
  EXPECT_EQ(QuantizeFp8Block(t, {}, tr, out.data(), 1, nullptr).code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace pinstream
