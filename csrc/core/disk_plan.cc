// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/disk_plan.h"

#include <algorithm>

namespace pinstream {

std::vector<bool> ChooseDiskUnits(const std::vector<DiskPlanUnit>& units, uint64_t held, uint64_t budget,
                                  uint64_t* over) {
  std::vector<bool> disk(units.size(), false);
  uint64_t total = held;
  for (const DiskPlanUnit& u : units) total += u.host_bytes;
  uint64_t excess = total > budget ? total - budget : 0;
  for (size_t i = 0; i < units.size() && excess > 0; ++i) {
    if (!units[i].movable || !units[i].resident || units[i].host_bytes == 0) continue;
    disk[i] = true;
    excess -= std::min(excess, units[i].host_bytes);
  }
  std::vector<size_t> streamed;
  for (size_t i = 0; i < units.size(); ++i) {
    if (units[i].movable && !units[i].resident && units[i].host_bytes > 0) streamed.push_back(i);
  }
  const size_t m = streamed.size();
  for (size_t k = 1; k <= m && excess > 0; ++k) {
    // k units at even spacing: the middle of each of k equal stretches
    uint64_t sum = 0;
    for (size_t j = 0; j < k; ++j) sum += units[streamed[(2 * j + 1) * m / (2 * k)]].host_bytes;
    if (sum < excess && k < m) continue;
    for (size_t j = 0; j < k; ++j) disk[streamed[(2 * j + 1) * m / (2 * k)]] = true;
    excess -= std::min(excess, sum);
  }
  *over = excess;
  return disk;
}

}  // namespace pinstream
