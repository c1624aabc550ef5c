// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// HostCopyEngine: a CopyEngine whose "device" is a separate host arena and
// whose copy queue is a worker thread. Events are real cross-thread
// completions, so the core's scheduling code runs exactly as it does on a GPU:
// an acquire that did not wait for its upload reads stale or poisoned bytes,
// and a slot overwritten before its release corrupts a block that is running.
//
// Two kinds of compute queue:
//   * nullptr: the calling thread. ComputeWaitFor blocks it until the event
//     completes (that wait is the "stall"); RecordComputeEvent completes at
//     once (all compute before it has run). What the Python engine uses.
//   * a deferred queue (CreateComputeQueue): a worker thread of its own, like
//     a CUDA stream. ComputeWaitFor and RecordComputeEvent only queue a wait or
//     a record; EnqueueCompute queues work (a test's "kernel" that reads a
//     slot). A compute event then completes later, on the worker, when the
//     work before it has run, so the rule "a slot is overwritten only after
//     the compute that reads it is done" is exercised for real: without the
//     copy queue's wait on the release event, a later upload overwrites a slot
//     that queued compute has not read yet.
//
// Options emulate a PCIe link (bandwidth, latency) and inject faults for
// tests: random per-copy delays (seeded), poisoning the destination while a
// copy is in flight, failing or slowing chosen copies.
#ifndef PINSTREAM_HOST_HOST_COPY_ENGINE_H_
#define PINSTREAM_HOST_HOST_COPY_ENGINE_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/copy_engine.h"
#include "core/page_mapping.h"

namespace pinstream {

struct HostEngineOptions {
  double bandwidth_bytes_per_s = 0;  // 0: memcpy speed
  double latency_us = 0;             // fixed cost per copy
  int max_random_delay_us = 0;       // uniform extra delay per copy
  uint64_t seed = 0;
  bool poison = false;  // fill the destination with 0xA5 while in flight
};

class HostComputeQueue;

class HostCopyEngine final : public CopyEngine {
 public:
  explicit HostCopyEngine(HostEngineOptions options = HostEngineOptions());
  ~HostCopyEngine() override;  // drains the queue and joins the worker
  HostCopyEngine(const HostCopyEngine&) = delete;
  HostCopyEngine& operator=(const HostCopyEngine&) = delete;

  std::string name() const override { return "host"; }
  Status CreateEvent(EventId* id) override;
  Status AllocateHostBuffer(uint64_t bytes, bool pin, std::unique_ptr<HostBuffer>* out) override;
  Status Synchronize() override;
  Status EnqueueCopy(void* device_dst, const void* host_src, uint64_t bytes, int tag) override;
  Status RecordCopyEvent(EventId event) override;
  Status ComputeWaitFor(EventId event, void* compute_queue) override;
  Status RecordComputeEvent(EventId event, void* compute_queue) override;
  Status CopyWaitFor(EventId event) override;
  Status CopyEventDone(EventId event, bool wait, bool* done) override;
  // The calling thread's compute only (a deferred queue's is not timed).
  Status MarkCompute(void* compute_queue, bool begin, int tag) override;
  Status EnqueueTransform(const BlockTransform* transform, const void* staging, void* out) override;
  void CollectTimings(EngineTimings* out, bool wait) override;

  // Fault injection (tests): the next `count` copies fail / take `us` longer;
  // the next `count` host buffer allocations fail with kOutOfMemory.
  void FailNextCopies(int count);
  void DelayNextCopies(int count, int us);
  void FailNextHostAllocations(int count);
  uint64_t copies_done() const;

  // A deferred compute queue (see above), owned by the engine; pass it as the
  // `compute_queue` argument. Each piece of queued work first sleeps a random
  // 0..max_delay_us (seeded), so compute lags behind the host thread.
  void* CreateComputeQueue(int max_delay_us = 0, uint64_t seed = 0);
  // Queues `work` on a deferred queue, after everything queued there before.
  Status EnqueueCompute(void* compute_queue, std::function<void()> work);
  // Host waits until a deferred queue has run everything queued on it.
  Status SynchronizeCompute(void* compute_queue);

 private:
  enum class OpKind { kCopy, kRecord, kWait, kTransform };
  struct Op {
    OpKind kind;
    void* dst = nullptr;
    const void* src = nullptr;
    uint64_t bytes = 0;
    int tag = -1;
    EventId event = -1;
    uint64_t generation = 0;
    const BlockTransform* transform = nullptr;
  };
  struct Event {
    uint64_t recorded = 0;   // generation of the latest record
    uint64_t completed = 0;  // highest generation completed
    uint64_t failed = 0;     // generation that completed with a failed copy
  };

  friend class HostComputeQueue;
  void WorkerLoop();
  HostComputeQueue* FindQueue(void* compute_queue) const;
  // Called with mu_ held: queues `op` and wakes the worker only if it sleeps.
  void Push(const Op& op);
  void RunCopy(const Op& op, std::unique_lock<std::mutex>* lock);
  void RunTransform(const Op& op, std::unique_lock<std::mutex>* lock);
  Status CheckEvent(EventId event) const;

  const HostEngineOptions options_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // the worker waits here for ops
  std::condition_variable done_cv_;  // callers and compute queues wait here for completions
  bool worker_idle_ = false;         // worker is blocked on work_cv_
  std::deque<Op> queue_;
  std::vector<Event> events_;
  std::vector<EngineTimings::Copy> timings_;
  double stall_ms_ = 0;
  double transform_ms_ = 0;
  std::chrono::steady_clock::time_point compute_since_;
  bool computing_ = false;
  int compute_tag_ = -1;
  std::vector<EngineTimings::Compute> computes_;
  uint64_t transform_bytes_ = 0;
  uint64_t enqueued_ = 0;
  uint64_t done_ = 0;
  uint64_t copies_done_ = 0;
  bool pending_failure_ = false;
  int fail_next_ = 0;
  int delay_next_ = 0;
  int delay_us_ = 0;
  int fail_allocations_ = 0;
  bool stop_ = false;
  std::mt19937_64 rng_;
  std::vector<std::unique_ptr<HostComputeQueue>> compute_queues_;
  std::thread worker_;  // last: started after every member is ready
};

// "Device" memory of the host engine: page-aligned host allocations with the
// accounting a GPU allocator has. `capacity_bytes` (0 = unlimited) makes
// allocations beyond it fail with kOutOfMemory, to test OOM handling.
class HostArena final : public DeviceAllocator {
 public:
  explicit HostArena(uint64_t capacity_bytes = 0);
  ~HostArena() override;
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  Status Allocate(uint64_t bytes, int64_t* id, void** ptr) override;
  void Free(int64_t id) override;
  uint64_t allocated_bytes() const override;
  uint64_t peak_bytes() const override;
  void ResetPeak() override;
  void set_capacity(uint64_t bytes);

 private:
  mutable std::mutex mu_;
  std::unordered_map<int64_t, PageMapping> blocks_;
  int64_t next_id_ = 0;
  uint64_t capacity_;
  uint64_t allocated_ = 0;
  uint64_t peak_ = 0;
};

// Page-aligned host memory (the host engine needs no pinning).
class AlignedHostBuffer final : public HostBuffer {
 public:
  // pinned=false marks the buffer as pageable (the pinning cap's accounting);
  // the host engine copies from both the same way.
  static Status Make(uint64_t bytes, bool pinned, std::unique_ptr<HostBuffer>* out);
  void* data() const override { return pages_.data(); }
  uint64_t size() const override { return pages_.size(); }
  bool pinned() const override { return pinned_; }
  std::string how() const override {
    return pinned_ ? "host engine (page-aligned)" : "host engine (pageable: over the pinning cap)";
  }

 private:
  AlignedHostBuffer(PageMapping pages, bool pinned) : pages_(std::move(pages)), pinned_(pinned) {}
  PageMapping pages_;
  bool pinned_;
};

}  // namespace pinstream

#endif  // PINSTREAM_HOST_HOST_COPY_ENGINE_H_
