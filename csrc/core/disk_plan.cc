// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/disk_plan.h"

#include <algorithm>
#include <cmath>

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
  std::vector<double> mid(m);  // compute up to the middle of each streamed unit
  double all = 0;
  for (size_t i = 0; i < m; ++i) {
    const DiskPlanUnit& u = units[streamed[i]];
    const double c = u.compute > 0 ? u.compute : static_cast<double>(u.host_bytes);
    mid[i] = all + c / 2;
    all += c;
  }
  std::vector<size_t> picks;
  bool covered = excess == 0;
  for (size_t k = 1; k <= m && !covered; ++k) {
    // k equal stretches of compute; from each, its largest unit (of those running in
    // it), the one nearest its middle among equals
    picks.clear();
    uint64_t sum = 0;
    size_t i = 0;
    for (size_t j = 0; j < k; ++j) {
      const double lo = all * static_cast<double>(j) / static_cast<double>(k);
      const double hi = all * static_cast<double>(j + 1) / static_cast<double>(k);
      const double centre = (lo + hi) / 2;
      size_t best = m;
      for (; i < m && (mid[i] < hi || j + 1 == k); ++i) {
        if (mid[i] < lo) continue;
        const uint64_t bytes = units[streamed[i]].host_bytes;
        if (best == m || bytes > units[streamed[best]].host_bytes ||
            (bytes == units[streamed[best]].host_bytes && std::abs(mid[i] - centre) <= std::abs(mid[best] - centre))) {
          best = i;
        }
      }
      if (best == m) continue;  // a stretch inside one long unit
      picks.push_back(best);
      sum += units[streamed[best]].host_bytes;
    }
    if (sum < excess) continue;
    for (size_t p : picks) disk[streamed[p]] = true;
    excess = 0;
    covered = true;
  }
  if (!covered) {
    // compute so uneven that stretches fall inside long units and picked too few: those of
    // one stretch a unit, then the others, largest first (in order among equals), until the
    // excess is covered (every streamed unit only where the budget asks for that)
    for (size_t p : picks) {
      disk[streamed[p]] = true;
      excess -= std::min(excess, units[streamed[p]].host_bytes);
    }
    std::vector<size_t> rest;
    for (size_t p = 0; p < m; ++p) {
      if (!disk[streamed[p]]) rest.push_back(p);
    }
    std::stable_sort(rest.begin(), rest.end(),
                     [&](size_t x, size_t y) { return units[streamed[x]].host_bytes > units[streamed[y]].host_bytes; });
    for (size_t i = 0; i < rest.size() && excess > 0; ++i) {
      disk[streamed[rest[i]]] = true;
      excess -= std::min(excess, units[streamed[rest[i]]].host_bytes);
    }
  }
  *over = excess;
  return disk;
}

}  // namespace pinstream
