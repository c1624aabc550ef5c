// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/page_mapping.h"

#include <gtest/gtest.h>

#include <cstring>
#include <utility>

namespace pinstream {
namespace {

TEST(PageMapping, WholePagesZeroFilledAndWritable) {
  PageMapping m;
  ASSERT_TRUE(PageMapping::Map(5000, &m).ok());
  EXPECT_EQ(m.size(), 5000u);
  EXPECT_EQ(m.mapped(), 8192u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.data()) % PageMapping::kPageBytes, 0u);
  auto* p = static_cast<uint8_t*>(m.data());
  for (uint64_t i = 0; i < m.mapped(); ++i) ASSERT_EQ(p[i], 0);
  std::memset(p, 7, m.mapped());
  EXPECT_EQ(PageMapping::RoundToPages(0), PageMapping::kPageBytes);
  ASSERT_TRUE(PageMapping::Map(0, &m).ok());  // replaces (and unmaps) the first
  EXPECT_EQ(m.mapped(), PageMapping::kPageBytes);
}

TEST(PageMapping, MovesOwnershipAndReleases) {
  PageMapping a;
  ASSERT_TRUE(PageMapping::Map(100, &a).ok());
  void* p = a.data();
  PageMapping b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.data(), p);
  PageMapping c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  const uint64_t mapped = c.mapped();
  void* owned = c.Release();
  EXPECT_EQ(c.data(), nullptr);
  static_cast<uint8_t*>(owned)[0] = 1;
  PageMapping::Unmap(owned, mapped);
}

TEST(PageMapping, ImpossibleSizesFailWithOutOfMemory) {
  PageMapping m;
  Status s = PageMapping::Map(~0ULL >> 2, &m);
  EXPECT_EQ(s.code(), Status::Code::kOutOfMemory) << s.ToString();
  EXPECT_EQ(m.data(), nullptr);
}

}  // namespace
}  // namespace pinstream
