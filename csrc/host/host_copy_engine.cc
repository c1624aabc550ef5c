// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "host/host_copy_engine.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

namespace pinstream {

namespace {
using Clock = std::chrono::steady_clock;
constexpr size_t kPage = 4096;
}  // namespace

HostCopyEngine::HostCopyEngine(HostEngineOptions options)
    : options_(options), rng_(options.seed) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

HostCopyEngine::~HostCopyEngine() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return done_ == enqueued_; });
    stop_ = true;
  }
  work_cv_.notify_all();
  worker_.join();
}

Status HostCopyEngine::CreateEvent(EventId* id) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(Event());
  *id = static_cast<EventId>(events_.size()) - 1;
  return Status::Ok();
}

Status HostCopyEngine::CheckEvent(EventId event) const {
  if (event < 0 || event >= static_cast<EventId>(events_.size())) {
    return Status::InvalidArgument("unknown event id " + std::to_string(event));
  }
  return Status::Ok();
}

Status HostCopyEngine::AllocateHostBuffer(uint64_t bytes, bool pin,
                                          std::unique_ptr<HostBuffer>* out) {
  return AlignedHostBuffer::Make(bytes, pin, out);
}

void HostCopyEngine::Push(const Op& op) {
  queue_.push_back(op);
  ++enqueued_;
  if (worker_idle_) {
    worker_idle_ = false;
    work_cv_.notify_one();
  }
}

Status HostCopyEngine::Synchronize() {
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [this] { return done_ == enqueued_; });
  return Status::Ok();
}

Status HostCopyEngine::EnqueueCopy(void* device_dst, const void* host_src,
                                   uint64_t bytes, int tag) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Op op{OpKind::kCopy};
    op.dst = device_dst;
    op.src = host_src;
    op.bytes = bytes;
    op.tag = tag;
    Push(op);
  }
  return Status::Ok();
}

Status HostCopyEngine::RecordCopyEvent(EventId event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
    Op op{OpKind::kRecord};
    op.event = event;
    op.generation = ++events_[event].recorded;
    Push(op);
  }
  return Status::Ok();
}

Status HostCopyEngine::ComputeWaitFor(EventId event, void* /*compute_queue*/) {
  std::unique_lock<std::mutex> lock(mu_);
  PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
  const uint64_t target = events_[event].recorded;
  if (events_[event].completed < target) {
    const auto start = Clock::now();
    // Yield briefly before sleeping: an upload that is about to finish costs
    // a context switch less (the worker usually needs only a few microseconds).
    for (int spin = 0; spin < 64 && events_[event].completed < target; ++spin) {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    }
    done_cv_.wait(lock, [&] { return events_[event].completed >= target; });
    stall_ms_ += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  }
  if (target != 0 && events_[event].failed == target) {
    return Status::DeviceError("host engine: an upload before event " +
                               std::to_string(event) + " failed");
  }
  return Status::Ok();
}

Status HostCopyEngine::RecordComputeEvent(EventId event, void* /*compute_queue*/) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
    Event& e = events_[event];
    e.completed = ++e.recorded;  // the host thread's compute is already done
  }
  // The worker may be blocked in a kWait on this event.
  work_cv_.notify_one();
  return Status::Ok();
}

Status HostCopyEngine::CopyWaitFor(EventId event) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
    Op op{OpKind::kWait};
    op.event = event;
    op.generation = events_[event].recorded;
    Push(op);
  }
  return Status::Ok();
}

Status HostCopyEngine::EnqueueTransform(const BlockTransform* transform,
                                        const void* staging, void* out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    Op op{OpKind::kTransform};
    op.src = staging;
    op.dst = out;
    op.transform = transform;
    Push(op);
  }
  return Status::Ok();
}

void HostCopyEngine::RunTransform(const Op& op, std::unique_lock<std::mutex>* lock) {
  lock->unlock();
  // The CPU reference of the CUDA kernels: same inputs, same bytes out.
  const auto* staging = static_cast<const uint8_t*>(op.src);
  auto* out = static_cast<uint8_t*>(op.dst);
  Status failed;
  for (const TransformJob& job : op.transform->jobs) {
    if (job.kind == TransformJob::Kind::kCopy) {
      if (job.bytes > 0) std::memcpy(out + job.dst_offset, staging + job.src_offset, job.bytes);
      continue;
    }
    Status s = DequantizeFp8(DequantParamsFor(job, staging, out));
    if (!s.ok() && failed.ok()) failed = s;
  }
  lock->lock();
  if (!failed.ok()) pending_failure_ = true;
}

void HostCopyEngine::CollectTimings(EngineTimings* out, bool wait) {
  if (wait) Synchronize();
  std::lock_guard<std::mutex> lock(mu_);
  out->copies.insert(out->copies.end(), timings_.begin(), timings_.end());
  timings_.clear();
  out->stall_ms += stall_ms_;
  stall_ms_ = 0;
}

void HostCopyEngine::FailNextCopies(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = count;
}

void HostCopyEngine::DelayNextCopies(int count, int us) {
  std::lock_guard<std::mutex> lock(mu_);
  delay_next_ = count;
  delay_us_ = us;
}

uint64_t HostCopyEngine::copies_done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return copies_done_;
}

void HostCopyEngine::RunCopy(const Op& op, std::unique_lock<std::mutex>* lock) {
  // Decide this copy's fate under the lock, then run it unlocked.
  bool fail = false;
  double extra_us = options_.latency_us;
  if (fail_next_ > 0) {
    --fail_next_;
    fail = true;
  }
  if (delay_next_ > 0) {
    --delay_next_;
    extra_us += delay_us_;
  }
  if (options_.max_random_delay_us > 0) {
    extra_us += static_cast<double>(rng_() % (options_.max_random_delay_us + 1));
  }
  lock->unlock();
  const auto start = Clock::now();
  double total_us = extra_us;
  if (options_.bandwidth_bytes_per_s > 0) {
    total_us += static_cast<double>(op.bytes) * 1e6 / options_.bandwidth_bytes_per_s;
  }
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double, std::micro>(total_us));
  if (options_.poison && op.bytes > 0) std::memset(op.dst, 0xA5, op.bytes);
  if (total_us > 0) std::this_thread::sleep_until(deadline);
  if (!fail && op.bytes > 0) std::memcpy(op.dst, op.src, op.bytes);
  const double ms =
      std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  lock->lock();
  ++copies_done_;
  if (fail) {
    pending_failure_ = true;
  } else {
    timings_.push_back(EngineTimings::Copy{op.tag, op.bytes, ms});
  }
}

void HostCopyEngine::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (queue_.empty() && !stop_) {
      worker_idle_ = true;
      work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      worker_idle_ = false;
    }
    if (queue_.empty()) {
      if (stop_) return;
      continue;
    }
    const Op op = queue_.front();
    queue_.pop_front();
    switch (op.kind) {
      case OpKind::kCopy:
        RunCopy(op, &lock);
        break;
      case OpKind::kRecord: {
        Event& e = events_[op.event];
        if (pending_failure_) {
          e.failed = op.generation;
          pending_failure_ = false;
        }
        if (e.completed < op.generation) e.completed = op.generation;
        break;
      }
      case OpKind::kTransform:
        RunTransform(op, &lock);
        break;
      case OpKind::kWait:
        work_cv_.wait(lock, [&] { return stop_ || events_[op.event].completed >= op.generation; });
        break;
    }
    ++done_;
    done_cv_.notify_all();
  }
}

HostArena::HostArena(uint64_t capacity_bytes) : capacity_(capacity_bytes) {}

HostArena::~HostArena() {
  for (auto& kv : blocks_) std::free(kv.second.first);
}

Status HostArena::Allocate(uint64_t bytes, int64_t* id, void** ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  if (capacity_ != 0 && allocated_ + bytes > capacity_) {
    return Status::OutOfMemory("host arena: " + FormatBytes(bytes) +
                               " requested, " + FormatBytes(capacity_ - allocated_) +
                               " free of " + FormatBytes(capacity_));
  }
  const uint64_t rounded = (bytes + kPage - 1) / kPage * kPage;
  void* p = std::aligned_alloc(kPage, rounded == 0 ? kPage : rounded);
  if (p == nullptr) {
    return Status::OutOfMemory("host arena: allocation of " + FormatBytes(bytes) + " failed");
  }
  *id = next_id_++;
  *ptr = p;
  blocks_[*id] = {p, bytes};
  allocated_ += bytes;
  if (allocated_ > peak_) peak_ = allocated_;
  return Status::Ok();
}

void HostArena::Free(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_.find(id);
  if (it == blocks_.end()) return;
  std::free(it->second.first);
  allocated_ -= it->second.second;
  blocks_.erase(it);
}

uint64_t HostArena::allocated_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_;
}

uint64_t HostArena::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

void HostArena::ResetPeak() {
  std::lock_guard<std::mutex> lock(mu_);
  peak_ = allocated_;
}

void HostArena::set_capacity(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  capacity_ = bytes;
}

Status AlignedHostBuffer::Make(uint64_t bytes, bool pinned,
                               std::unique_ptr<HostBuffer>* out) {
  // Pages of our own (mmap): freed chunks go back to the OS at once instead of
  // fragmenting the malloc heap across load/unload cycles.
  const uint64_t rounded = bytes == 0 ? kPage : (bytes + kPage - 1) / kPage * kPage;
  void* p = mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return Status::OutOfMemory("host buffer of " + FormatBytes(bytes) + " could not be allocated");
  }
  out->reset(new AlignedHostBuffer(p, bytes, pinned));
  return Status::Ok();
}

AlignedHostBuffer::~AlignedHostBuffer() {
  munmap(data_, size_ == 0 ? kPage : (size_ + kPage - 1) / kPage * kPage);
}

}  // namespace pinstream
