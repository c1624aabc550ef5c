// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/disk_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/spill_file.h"

namespace pinstream {
namespace {

std::vector<DiskPlanUnit> Units(int n, uint64_t bytes) {
  return std::vector<DiskPlanUnit>(static_cast<size_t>(n), DiskPlanUnit{bytes, true, false});
}

std::string Flags(const std::vector<bool>& v) {
  std::string s;
  for (bool b : v) s += b ? 'D' : '.';
  return s;
}

TEST(DiskPlan, NothingGoesToDiskWhenTheBudgetHoldsTheModel) {
  uint64_t over = 1;
  EXPECT_EQ(Flags(ChooseDiskUnits(Units(4, 100), 50, 450, &over)), "....");
  EXPECT_EQ(over, 0u);
}

TEST(DiskPlan, StreamedUnitsGoEvenlySpreadAndAsFewAsCoverTheExcess) {
  uint64_t over = 1;
  // 10 units of 100, budget 700: 3 must go, one in the middle of each third
  EXPECT_EQ(Flags(ChooseDiskUnits(Units(10, 100), 0, 700, &over)), ".D...D..D.");
  EXPECT_EQ(over, 0u);
  // half of them: every other one
  EXPECT_EQ(Flags(ChooseDiskUnits(Units(8, 100), 0, 400, &over)), ".D.D.D.D");
  EXPECT_EQ(Flags(ChooseDiskUnits(Units(8, 100), 0, 401, &over)), ".D.D.D.D");
  EXPECT_EQ(Flags(ChooseDiskUnits(Units(8, 100), 0, 500, &over)), ".D..D.D.");
}

TEST(DiskPlan, TheSpreadFollowsComputeNotCount) {
  // four small units then four large ones (compute in proportion to their bytes):
  // two disk units, each in the middle of one half of the compute
  std::vector<DiskPlanUnit> u = Units(8, 100);
  for (int i = 4; i < 8; ++i) u[static_cast<size_t>(i)].host_bytes = 800;
  uint64_t over = 1;
  EXPECT_EQ(Flags(ChooseDiskUnits(u, 0, 3600 - 1600, &over)), "....D.D.");
  EXPECT_EQ(over, 0u);
  // compute times that say otherwise (the small units compute longest): the largest
  // unit of each stretch, as few as cover the excess
  for (int i = 0; i < 8; ++i) u[static_cast<size_t>(i)].compute = i < 4 ? 10.0 : 1.0;
  EXPECT_EQ(Flags(ChooseDiskUnits(u, 0, 3600 - 800, &over)), "....D...");
  EXPECT_EQ(Flags(ChooseDiskUnits(u, 0, 3600 - 900, &over)), ".D..D...");
  EXPECT_EQ(over, 0u);
}

TEST(DiskPlan, ComputeFarFromEvenStillSendsOnlyWhatTheBudgetAsks) {
  // the first unit computes 100 times longer than each other one: most stretches of
  // compute fall inside it, so the stretches pick too few units; the rest come from the
  // other units until the excess is covered, and the others stay in RAM
  std::vector<DiskPlanUnit> u = Units(16, 100);
  u[0].compute = 1000.0;
  for (size_t i = 1; i < 16; ++i) u[i].compute = 10.0;
  uint64_t over = 1;
  const std::vector<bool> disk = ChooseDiskUnits(u, 0, 1600 - 1150, &over);  // 12 must go
  EXPECT_EQ(std::count(disk.begin(), disk.end(), true), 12) << Flags(disk);
  EXPECT_EQ(over, 0u);
}

TEST(DiskPlan, ResidentUnitsGoFirstAndFixedOnesNever) {
  std::vector<DiskPlanUnit> u = Units(6, 100);
  u[4].resident = true;
  u[5].resident = true;
  u[0].movable = false;  // e.g. an fp8 unit or the non-block part
  uint64_t over = 1;
  EXPECT_EQ(Flags(ChooseDiskUnits(u, 0, 400, &over)), "....DD");
  EXPECT_EQ(Flags(ChooseDiskUnits(u, 0, 300, &over)), "..D.DD");
  // budget below what must stay: everything movable goes, the rest is reported
  EXPECT_EQ(Flags(ChooseDiskUnits(u, 1000, 300, &over)), ".DDDDD");
  EXPECT_EQ(over, 800u);
}

TEST(SpillFile, BlocksLandAlignedAndAFullDiskIsAClearError) {
  SpillFile f;
  ASSERT_TRUE(f.Create("/tmp/pinstream-spill-test").ok());
  std::vector<uint8_t> a(5000, 1), b(3, 2);
  uint64_t at = 1;
  ASSERT_TRUE(f.Append(a.data(), a.size(), &at).ok());
  EXPECT_EQ(at, 0u);
  ASSERT_TRUE(f.Append(b.data(), b.size(), &at).ok());
  EXPECT_EQ(at, 8192u);
  EXPECT_EQ(f.size(), 12288u);
  f.FailNextWrites(1);
  const Status full = f.Append(a.data(), a.size(), &at);
  EXPECT_EQ(full.code(), Status::Code::kOutOfMemory);
  EXPECT_NE(full.message().find("No space left on device"), std::string::npos) << full.ToString();
  ASSERT_TRUE(f.Flush().ok());
  const std::string path = f.path();
  EXPECT_NE(path.find("pinstream-spill-"), std::string::npos);
  EXPECT_EQ(SpillFile().Create("").code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace pinstream
