// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// ParallelFor: runs fn(begin, end) over [0, n) on up to `threads` std::threads
// (the calling thread included), handing items out one at a time from a
// shared counter. Results must not depend on which thread ran an item: callers
// write each item's output to its own place and combine in item order.
#ifndef PINSTREAM_CORE_PARALLEL_H_
#define PINSTREAM_CORE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace pinstream {

template <typename Fn>
void ParallelFor(int64_t n, int threads, const Fn& fn) {
  const int64_t workers = std::min<int64_t>(n, std::max(1, threads));
  if (workers <= 1) {
    if (n > 0) fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t k = next++; k < n; k = next++) fn(k, k + 1);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(workers - 1));
  for (int64_t t = 1; t < workers; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
}

}  // namespace pinstream

#endif  // PINSTREAM_CORE_PARALLEL_H_
