// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Passes whose compute runs later, on a deferred compute queue of the host
// engine (a worker thread, like a CUDA stream): acquire and release only queue
// a wait and a record there, and each block's "kernel" checks its bytes when
// the queue reaches it. The host thread races ahead, so a slot refilled
// before its last reader is done shows up as wrong bytes.
#ifndef PINSTREAM_TESTS_CPP_DEFERRED_COMPUTE_UTIL_H_
#define PINSTREAM_TESTS_CPP_DEFERRED_COMPUTE_UTIL_H_

#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/streaming_runtime.h"
#include "host/host_copy_engine.h"
#include "test_util.h"

namespace pinstream {
namespace testing_util {

// The first error any deferred kernel found.
class DeferredErrors {
 public:
  void Add(const std::string& e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (first_.empty()) first_ = e;
  }
  std::string first() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_;
  }

 private:
  std::mutex mu_;
  std::string first_;
};

// Queues `order` as one pass on `queue`; each block's kernel checks its bytes,
// sleeps `hold_us(b)` microseconds (the block's compute) and checks again.
// Returns an error of the host-side calls; the kernels' go to `errors`.
template <typename HoldFn>
std::string QueueDeferredPass(StreamingRuntime* rt, HostCopyEngine* engine, void* queue, const FakeModel& model,
                              const std::vector<int>& order, DeferredErrors* errors, HoldFn hold_us) {
  Status s = rt->BeginPass(queue);
  if (!s.ok()) return s.ToString();
  for (int b : order) {
    DeviceLocation loc;
    s = rt->Acquire(b, queue, &loc);
    if (!s.ok()) return "acquire " + std::to_string(b) + ": " + s.ToString();
    const std::vector<uint8_t>* want = &model.host[b];
    const int us = hold_us(b);
    s = engine->EnqueueCompute(queue, [loc, want, b, us, errors] {
      if (!SameBytes(loc, *want)) errors->Add("block " + std::to_string(b) + " has wrong bytes when its compute runs");
      if (us > 0) std::this_thread::sleep_for(std::chrono::microseconds(us));
      if (!SameBytes(loc, *want)) errors->Add("block " + std::to_string(b) + " was overwritten while its compute ran");
    });
    if (!s.ok()) return s.ToString();
    s = rt->Release(b, queue);
    if (!s.ok()) return "release " + std::to_string(b) + ": " + s.ToString();
  }
  s = rt->EndPass(queue);
  return s.ok() ? "" : s.ToString();
}

}  // namespace testing_util
}  // namespace pinstream

#endif  // PINSTREAM_TESTS_CPP_DEFERRED_COMPUTE_UTIL_H_
