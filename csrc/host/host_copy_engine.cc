// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "host/host_copy_engine.h"

#include <cstring>

namespace pinstream {

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

// A deferred compute queue: a worker thread running waits, records and work
// in order. It shares the engine's mutex and events.
class HostComputeQueue {
 public:
  enum class Kind { kWait, kRecord, kWork };
  struct Op {
    Kind kind = Kind::kWork;
    EventId event = -1;
    uint64_t generation = 0;
    std::function<void()> work;
  };

  HostComputeQueue(HostCopyEngine* engine, int max_delay_us, uint64_t seed)
      : engine_(engine), max_delay_us_(max_delay_us), rng_(seed) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~HostComputeQueue() {
    if (thread_.joinable()) thread_.join();
  }

  // Called with the engine's mutex held.
  void Push(Op op) {
    queue_.push_back(std::move(op));
    cv_.notify_one();
  }
  bool Idle() const { return queue_.empty() && !running_; }
  void RequestStop() {
    stop_ = true;
    cv_.notify_all();
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(engine_->mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopped, and nothing left
      Op op = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
      switch (op.kind) {
        case Kind::kWait: {
          const auto start = Clock::now();
          engine_->done_cv_.wait(lock, [&] { return engine_->events_[op.event].completed >= op.generation; });
          engine_->stall_ms_ += std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          break;
        }
        case Kind::kRecord: {
          HostCopyEngine::Event& e = engine_->events_[op.event];
          if (e.completed < op.generation) e.completed = op.generation;
          engine_->work_cv_.notify_all();  // the copy worker may wait on it
          break;
        }
        case Kind::kWork: {
          const int delay = max_delay_us_ > 0 ? static_cast<int>(rng_() % (max_delay_us_ + 1)) : 0;
          lock.unlock();
          if (delay > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay));
          op.work();
          lock.lock();
          break;
        }
      }
      running_ = false;
      engine_->done_cv_.notify_all();
    }
  }

  HostCopyEngine* engine_;
  std::deque<Op> queue_;
  std::condition_variable cv_;
  bool running_ = false;
  bool stop_ = false;
  const int max_delay_us_;
  std::mt19937_64 rng_;
  std::thread thread_;
};

HostCopyEngine::HostCopyEngine(HostEngineOptions options) : options_(options), rng_(options.seed) {
  worker_ = std::thread([this] { WorkerLoop(); });
}

HostCopyEngine::~HostCopyEngine() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] {
      if (done_ != enqueued_) return false;
      for (const auto& q : compute_queues_) {
        if (!q->Idle()) return false;
      }
      return true;
    });
    stop_ = true;
    for (auto& q : compute_queues_) q->RequestStop();
  }
  work_cv_.notify_all();
  for (auto& q : compute_queues_) q->Join();
  worker_.join();
}

void* HostCopyEngine::CreateComputeQueue(int max_delay_us, uint64_t seed) {
  auto q = std::make_unique<HostComputeQueue>(this, max_delay_us, seed);
  std::lock_guard<std::mutex> lock(mu_);
  compute_queues_.push_back(std::move(q));
  return compute_queues_.back().get();
}

HostComputeQueue* HostCopyEngine::FindQueue(void* compute_queue) const {
  for (const auto& q : compute_queues_) {
    if (q.get() == compute_queue) return q.get();
  }
  return nullptr;
}

Status HostCopyEngine::EnqueueCompute(void* compute_queue, std::function<void()> work) {
  std::lock_guard<std::mutex> lock(mu_);
  HostComputeQueue* q = FindQueue(compute_queue);
  if (q == nullptr) return Status::InvalidArgument("enqueue_compute: not a deferred compute queue of this engine");
  HostComputeQueue::Op op;
  op.kind = HostComputeQueue::Kind::kWork;
  op.work = std::move(work);
  q->Push(std::move(op));
  return Status::Ok();
}

Status HostCopyEngine::SynchronizeCompute(void* compute_queue) {
  std::unique_lock<std::mutex> lock(mu_);
  HostComputeQueue* q = FindQueue(compute_queue);
  if (q == nullptr) return Status::InvalidArgument("synchronize_compute: not a deferred compute queue of this engine");
  done_cv_.wait(lock, [q] { return q->Idle(); });
  return Status::Ok();
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

Status HostCopyEngine::AllocateHostBuffer(uint64_t bytes, bool pin, std::unique_ptr<HostBuffer>* out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_allocations_ > 0) {
      --fail_allocations_;
      return Status::OutOfMemory("host engine: allocation of " + FormatBytes(bytes) + " failed (injected fault)");
    }
  }
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

Status HostCopyEngine::EnqueueCopy(void* device_dst, const void* host_src, uint64_t bytes, int tag) {
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

Status HostCopyEngine::ComputeWaitFor(EventId event, void* compute_queue) {
  std::unique_lock<std::mutex> lock(mu_);
  PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
  const uint64_t target = events_[event].recorded;
  if (compute_queue != nullptr) {
    HostComputeQueue* q = FindQueue(compute_queue);
    if (q == nullptr) return Status::InvalidArgument("compute_wait_for: unknown compute queue");
    // A failure already known is reported now; one still in flight shows up as
    // the poisoned bytes the compute then reads (a device fault on a GPU).
    if (target != 0 && events_[event].failed == target && events_[event].completed >= target) {
      return Status::DeviceError("host engine: an upload before event " + std::to_string(event) + " failed");
    }
    HostComputeQueue::Op op;
    op.kind = HostComputeQueue::Kind::kWait;
    op.event = event;
    op.generation = target;
    q->Push(std::move(op));
    return Status::Ok();
  }
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
    return Status::DeviceError("host engine: an upload before event " + std::to_string(event) + " failed");
  }
  return Status::Ok();
}

Status HostCopyEngine::RecordComputeEvent(EventId event, void* compute_queue) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
    Event& e = events_[event];
    if (compute_queue != nullptr) {
      HostComputeQueue* q = FindQueue(compute_queue);
      if (q == nullptr) return Status::InvalidArgument("record_compute_event: unknown compute queue");
      HostComputeQueue::Op op;
      op.kind = HostComputeQueue::Kind::kRecord;
      op.event = event;
      op.generation = ++e.recorded;  // completes when the queue reaches it
      q->Push(std::move(op));
      return Status::Ok();
    }
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

Status HostCopyEngine::CopyEventDone(EventId event, bool wait, bool* done) {
  std::unique_lock<std::mutex> lock(mu_);
  PINSTREAM_RETURN_IF_ERROR(CheckEvent(event));
  const uint64_t target = events_[event].recorded;
  if (wait) done_cv_.wait(lock, [&] { return events_[event].completed >= target; });
  *done = events_[event].completed >= target;
  return Status::Ok();
}

Status HostCopyEngine::MarkCompute(void* compute_queue, bool begin, int tag) {
  if (compute_queue != nullptr) return Status::Ok();
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (begin) {
    compute_since_ = now;
    compute_tag_ = tag;
    computing_ = true;
  } else if (computing_) {
    const double ms = std::chrono::duration<double, std::milli>(now - compute_since_).count();
    if (computes_.size() < 4096) computes_.push_back(EngineTimings::Compute{compute_tag_, ms});  // else untimed
    computing_ = false;
  }
  return Status::Ok();
}

Status HostCopyEngine::EnqueueTransform(const BlockTransform* transform, const void* staging, void* out) {
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
  const auto start = Clock::now();
  Status failed;
  uint64_t written = 0;
  for (const TransformJob& job : op.transform->jobs) {
    Status s;
    switch (job.kind) {
      case TransformJob::Kind::kCopy:
        if (job.bytes > 0) std::memcpy(out + job.dst_offset, staging + job.src_offset, job.bytes);
        written += job.bytes;
        break;
      case TransformJob::Kind::kDequantize:
        s = DequantizeFp8(DequantParamsFor(job, staging, out));
        written += static_cast<uint64_t>(job.rows * job.cols) * DtypeSize(job.out_dtype);
        break;
      case TransformJob::Kind::kDecodeExact:
        // the coded tensor is job.exact.bytes long; the decoder checks it stays inside
        s = DecodeExact(staging + job.src_offset, job.exact.bytes, job.exact, out + job.dst_offset);
        written += job.exact.plain_bytes();
        break;
    }
    if (!s.ok() && failed.ok()) failed = s;
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  lock->lock();
  transform_ms_ += ms;
  transform_bytes_ += written;
  if (!failed.ok()) pending_failure_ = true;
}

void HostCopyEngine::CollectTimings(EngineTimings* out, bool wait) {
  if (wait) Synchronize();
  std::lock_guard<std::mutex> lock(mu_);
  out->copies.insert(out->copies.end(), timings_.begin(), timings_.end());
  timings_.clear();
  out->stall_ms += stall_ms_;
  stall_ms_ = 0;
  out->transform_ms += transform_ms_;
  out->transform_bytes += transform_bytes_;
  transform_ms_ = 0;
  transform_bytes_ = 0;
  out->computes.insert(out->computes.end(), computes_.begin(), computes_.end());
  computes_.clear();
}

void HostCopyEngine::FailNextCopies(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = count;
}

void HostCopyEngine::FailNextHostAllocations(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_allocations_ = count;
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
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(total_us));
  if (options_.poison && op.bytes > 0) std::memset(op.dst, 0xA5, op.bytes);
  if (total_us > 0) std::this_thread::sleep_until(deadline);
  if (!fail && op.bytes > 0) std::memcpy(op.dst, op.src, op.bytes);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
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

HostArena::~HostArena() = default;

Status HostArena::Allocate(uint64_t bytes, int64_t* id, void** ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  if (capacity_ != 0 && allocated_ + bytes > capacity_) {
    return Status::OutOfMemory("host arena: " + FormatBytes(bytes) + " requested, " +
                               FormatBytes(capacity_ - allocated_) + " free of " + FormatBytes(capacity_));
  }
  PageMapping pages;
  PINSTREAM_RETURN_IF_ERROR(PageMapping::Map(bytes, &pages));
  *id = next_id_++;
  *ptr = pages.data();
  blocks_.emplace(*id, std::move(pages));
  allocated_ += bytes;
  if (allocated_ > peak_) peak_ = allocated_;
  return Status::Ok();
}

void HostArena::Free(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_.find(id);
  if (it == blocks_.end()) return;
  allocated_ -= it->second.size();
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

Status AlignedHostBuffer::Make(uint64_t bytes, bool pinned, std::unique_ptr<HostBuffer>* out) {
  PageMapping pages;
  PINSTREAM_RETURN_IF_ERROR(PageMapping::Map(bytes, &pages));
  out->reset(new AlignedHostBuffer(std::move(pages), pinned));
  return Status::Ok();
}

}  // namespace pinstream
