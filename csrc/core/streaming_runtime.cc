// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/streaming_runtime.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>

namespace pinstream {
namespace {
// One granule for everything the runtime places on the device: the plan's sizes,
// a split block's resident head and a transform's staging offset.
constexpr uint64_t kAlignment = PlanRequest::kDefaultAlignment;
// The staging bytes one job of a transform reads: its region of the transfer
// form, when that is one contiguous region (0 when not: fp8 codes and scales).
uint64_t PieceBytes(const TransformJob& job) {
  switch (job.kind) {
    case TransformJob::Kind::kCopy:
      return job.bytes;
    case TransformJob::Kind::kDecodeExact:
      return job.exact.bytes;
    default:
      return 0;
  }
}

// What loading a unit resident needs of the staging buffer: its largest job's
// region when every job reads one (it is then staged job by job), else all of it.
uint64_t LoadStagingNeed(const BlockTransform& t, uint64_t bytes) {
  uint64_t most = 0;
  for (const TransformJob& job : t.jobs) {
    const uint64_t piece = PieceBytes(job);
    if (piece == 0 && job.kind == TransformJob::Kind::kDequantize) return bytes;
    most = std::max(most, piece);
  }
  return most;
}
}  // namespace

namespace {
constexpr uint64_t kReadBufferAlignment = 4096;
uint64_t ReadBufferBytes(uint64_t largest_block) {
  return (largest_block + kReadBufferAlignment - 1) / kReadBufferAlignment * kReadBufferAlignment;
}
int ReadBuffers(bool streams, int prefetch, int read_ahead) { return streams ? prefetch + read_ahead : 1; }
}  // namespace

uint64_t ReadRingBytes(uint64_t largest_block, bool streams, int prefetch, int read_ahead) {
  return largest_block == 0
             ? 0
             : ReadBufferBytes(largest_block) * static_cast<uint64_t>(ReadBuffers(streams, prefetch, read_ahead));
}

StreamingRuntime::StreamingRuntime(CopyEngine* engine, DeviceAllocator* allocator)
    : engine_(engine), allocator_(allocator) {}

StreamingRuntime::~StreamingRuntime() { Close(); }

Status StreamingRuntime::RegisterBlock(const void* host, uint64_t bytes, bool streamable, int* id) {
  if (closed_) return Status::Closed("runtime is closed; create a new one");
  if (loaded_ || planned_) {
    return Status::FailedPrecondition("blocks must be registered before plan(); this runtime is already planned");
  }
  Block b;
  b.host = host;
  b.bytes = bytes;
  b.device_bytes = bytes;
  b.streamable = streamable;
  blocks_.push_back(b);
  *id = static_cast<int>(blocks_.size()) - 1;
  return Status::Ok();
}

Status StreamingRuntime::AttachHost(int block, const void* host) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "attach_host"));
  PINSTREAM_RETURN_IF_ERROR(Quiesce("attach_host"));
  const bool was_on_disk = !blocks_[block].disk.empty();
  ForgetArrival(&blocks_[block]);
  blocks_[block].host = host;
  blocks_[block].disk.clear();
  if (!loaded_ || !was_on_disk) return Status::Ok();
  ForgetRead(block);
  return AllocateReadRing();  // sized for the units still on disk (none: freed)
}

Status StreamingRuntime::Quiesce(const char* what) {
  if (closed_) return Status::Closed("runtime is closed");
  if (!loaded_) return Status::Ok();
  if (outstanding() > 0 || learner_.in_pass()) {
    return Status::FailedPrecondition(std::string(what) + " during a pass; end the pass first");
  }
  return engine_->Synchronize();  // no upload still reads a unit's old bytes
}

Status StreamingRuntime::UseDiskReader(DiskReader* reader, int read_ahead, bool pin_ring) {
  if (closed_) return Status::Closed("runtime is closed");
  if (read_ahead < 1) {
    return Status::InvalidArgument("read_ahead " + std::to_string(read_ahead) + " must be at least 1");
  }
  PINSTREAM_RETURN_IF_ERROR(Quiesce("use_disk_reader"));
  FreeReadRing();  // read through the reader it had
  reader_ = reader;
  read_ahead_ = read_ahead;
  pin_ring_ = pin_ring;
  reader_base_ = reader_ ? reader_->totals() : DiskReader::Totals();
  return loaded_ ? AllocateReadRing() : Status::Ok();
}

Status StreamingRuntime::SetDiskSource(int block, std::vector<DiskExtent> extents) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "set_disk_source"));
  if (reader_ == nullptr) return Status::FailedPrecondition("set_disk_source before use_disk_reader");
  PINSTREAM_RETURN_IF_ERROR(Quiesce("set_disk_source"));
  Block& b = blocks_[block];
  std::sort(extents.begin(), extents.end(),
            [](const DiskExtent& x, const DiskExtent& y) { return x.block_offset < y.block_offset; });
  uint64_t at = 0;
  for (const DiskExtent& e : extents) {
    if (e.block_offset < at || e.block_offset + e.bytes > b.bytes) {
      return Status::InvalidArgument("set_disk_source: block " + std::to_string(block) +
                                     "'s extents overlap or pass its " + std::to_string(b.bytes) + " bytes");
    }
    at = e.block_offset + e.bytes;
  }
  ForgetRead(block);  // read from where it was before
  ForgetArrival(&b);
  b.disk = std::move(extents);
  if (b.disk.empty()) b.disk.push_back(DiskExtent{-1, 0, 0, 0});  // a unit with no bytes: nothing to read
  return loaded_ ? AllocateReadRing() : Status::Ok();             // a ring for it (or a larger one)
}

Status StreamingRuntime::DropBlocksFrom(int first) {
  if (closed_) return Status::Closed("runtime is closed");
  if (loaded_) return Status::FailedPrecondition("drop_blocks while loaded; unload() first");
  if (first < 0 || first > num_blocks()) {
    return Status::InvalidArgument("drop_blocks: first block " + std::to_string(first) + " out of range [0, " +
                                   std::to_string(num_blocks()) + "]");
  }
  if (first == num_blocks()) return Status::Ok();
  blocks_.resize(static_cast<size_t>(first));
  planned_ = false;
  plan_ = ResidencyPlan();
  streamed_.clear();
  return Status::Ok();
}

Status StreamingRuntime::SetCuts(int block, std::vector<uint64_t> cuts) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "set_cuts"));
  if (planned_) return Status::FailedPrecondition("set_cuts after plan()");
  PINSTREAM_RETURN_IF_ERROR(CheckCuts(cuts, blocks_[block].bytes, "set_cuts: block " + std::to_string(block)));
  blocks_[block].cuts = std::move(cuts);
  return Status::Ok();
}

Status StreamingRuntime::SetTransform(int block, uint64_t device_bytes, const BlockTransform* transform) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "set_transform"));
  if (planned_) return Status::FailedPrecondition("set_transform after plan()");
  blocks_[block].device_bytes = device_bytes;
  blocks_[block].transform = transform;
  return Status::Ok();
}

Status StreamingRuntime::ReplaceTransfer(int block, const void* host, uint64_t bytes, const BlockTransform* transform) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "replace_transfer"));
  if (loaded_) return Status::FailedPrecondition("replace_transfer while loaded; unload() first");
  Block& b = blocks_[block];
  if (b.transform == nullptr)
    return Status::InvalidArgument("replace_transfer: block " + std::to_string(block) + " is sent as stored");
  b.host = host;
  b.bytes = bytes;
  b.transform = transform;
  if (!planned_) return Status::Ok();
  planned_ = false;
  return MakePlan(last_policy_, last_budget_, last_prefetch_);
}

uint64_t StreamingRuntime::Footprint(const Block& b) const { return b.transform ? b.device_bytes : b.bytes; }

Status StreamingRuntime::EnqueueUpload(const Block& b, int id, void* dst, const uint8_t* src) {
  if (b.coded) return engine_->EnqueueTransform(b.transform, b.coded_loc.ptr, dst);
  if (b.split) return engine_->EnqueueCopy(dst, src + b.prefix, b.bytes - b.prefix, id);
  if (b.transform == nullptr) {
    return b.bytes > 0 ? engine_->EnqueueCopy(dst, src, b.bytes, id) : Status::Ok();
  }
  // one staging buffer serves every transformed upload: the copy queue runs
  // each upload and its transform before the next upload overwrites it
  if (b.bytes > 0) PINSTREAM_RETURN_IF_ERROR(engine_->EnqueueCopy(staging_.ptr, src, b.bytes, id));
  return engine_->EnqueueTransform(b.transform, staging_.ptr, dst);
}

void StreamingRuntime::SetRates(double link_bytes_per_second, double transform_bytes_per_second) {
  link_rate_ = link_bytes_per_second > 0 ? link_bytes_per_second : PlanRequest::kNominalLinkBytesPerSecond;
  transform_rate_ =
      transform_bytes_per_second > 0 ? transform_bytes_per_second : PlanRequest::kNominalTransformBytesPerSecond;
}

Status StreamingRuntime::CheckBlock(int block, const char* what) const {
  if (closed_) return Status::Closed("runtime is closed");
  if (block < 0 || block >= num_blocks()) {
    return Status::InvalidArgument(std::string(what) + ": block id " + std::to_string(block) + " out of range [0, " +
                                   std::to_string(num_blocks()) + ")");
  }
  return Status::Ok();
}

Status StreamingRuntime::Plan(PlanPolicy policy, uint64_t budget_bytes, int prefetch) {
  PINSTREAM_RETURN_IF_ERROR(MakePlan(policy, budget_bytes, prefetch));
  prefetch_cap_ = prefetch;
  return Status::Ok();
}

void StreamingRuntime::SetAdaptivePrefetch(bool on) { adaptive_ = on; }

int StreamingRuntime::SuggestedPrefetch() const {
  // per block: compute, upload of a streamed block, read of a streamed disk unit
  if (stats_.compute_spans < 4 || stats_.timed_upload_bytes == 0 || stats_.upload_ms <= 0) return 0;
  uint64_t streamed_bytes = 0, streamed = 0, on_disk = 0;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (!streamed_[i] || blocks_[i].coded) continue;
    streamed_bytes += blocks_[i].bytes - blocks_[i].prefix;
    streamed += 1;
    on_disk += blocks_[i].disk.empty() ? 0 : 1;
  }
  if (streamed == 0) return 0;
  const double compute = stats_.compute_ms / static_cast<double>(stats_.compute_spans);
  const double upload = stats_.upload_ms * (static_cast<double>(streamed_bytes) / static_cast<double>(streamed)) /
                        static_cast<double>(stats_.timed_upload_bytes);
  const double read = stats_.disk_reads > 0 ? stats_.disk_busy_ms / static_cast<double>(stats_.disk_reads) : 0.0;
  // a disk unit is read, then uploaded: the share of units on disk adds its read
  const double fetch = upload + read * static_cast<double>(on_disk) / static_cast<double>(streamed);
  const double ahead = compute > 0 ? std::ceil(fetch / compute) : static_cast<double>(prefetch_cap_);
  return static_cast<int>(std::clamp(ahead, 1.0, static_cast<double>(std::max(prefetch_cap_, 1))));
}

Status StreamingRuntime::MakePlan(PlanPolicy policy, uint64_t budget_bytes, int prefetch) {
  if (closed_) return Status::Closed("runtime is closed");
  if (loaded_) {
    return Status::FailedPrecondition("plan() while loaded; unload() first");
  }
  PlanRequest req;
  req.policy = policy;
  req.budget_bytes = budget_bytes;
  req.prefetch = prefetch;
  req.alignment = kAlignment;
  uint64_t fixed = 0;
  bool any_cuts = false, any_transform = false;
  for (const Block& b : blocks_) any_transform |= b.transform != nullptr;
  for (Block& b : blocks_) {
    b.plan_index = -1;
    if (b.streamable) {
      b.plan_index = static_cast<int>(req.block_bytes.size());
      req.block_bytes.push_back(Footprint(b));
      any_cuts |= b.transform == nullptr && !b.cuts.empty();
      if (any_transform) {
        req.block_layout_bytes.push_back(b.transform ? b.device_bytes : 0);
        req.block_transfer_bytes.push_back(b.transform ? b.bytes : 0);
      }
    } else {
      fixed += AlignUp(Footprint(b), req.alignment);
    }
    // a block may stream (its transfer form at once); a non-block unit loads job by job
    if (b.transform) {
      const uint64_t need = b.streamable ? b.bytes : LoadStagingNeed(*b.transform, b.bytes);
      req.staging_bytes = std::max(req.staging_bytes, AlignUp(need, req.alignment));
    }
  }
  req.link_bytes_per_second = link_rate_;
  req.transform_bytes_per_second = transform_rate_;
  if (any_cuts && !any_transform) {
    for (const Block& b : blocks_) {
      if (b.streamable) {
        req.block_cuts.push_back(b.transform == nullptr ? b.cuts : std::vector<uint64_t>());
      }
    }
  }
  req.fixed_bytes = fixed;
  ResidencyPlan plan;
  PINSTREAM_RETURN_IF_ERROR(ResidencyPlan::Make(req, &plan));
  plan_ = std::move(plan);
  last_policy_ = policy;
  last_budget_ = budget_bytes;
  last_prefetch_ = prefetch;
  streamed_.assign(blocks_.size(), 0);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = blocks_[i];
    b.resident = !b.streamable || plan_.resident(b.plan_index);
    b.coded = b.streamable && plan_.coded(b.plan_index);
    b.split = b.streamable && plan_.split(b.plan_index);
    b.prefix = b.split ? plan_.resident_prefix(b.plan_index) : 0;
    streamed_[i] = b.resident ? 0 : 1;
  }
  ring_ = SlotRing(plan_.slot_count(), num_blocks());
  if (stats_.block_upload_ms.size() != blocks_.size()) {
    stats_.block_upload_ms.assign(blocks_.size(), -1.0);
    stats_.block_uploads.assign(blocks_.size(), 0);
  }
  planned_ = true;
  return Status::Ok();
}

Status StreamingRuntime::TakeEvent(EventId* e) {
  if (!spare_events_.empty()) {
    *e = spare_events_.back();
    spare_events_.pop_back();
    return Status::Ok();
  }
  return engine_->CreateEvent(e);
}

Status StreamingRuntime::WaitForResidents(void* compute_queue) {
  if (residents_event_ < 0 || (residents_waited_ && residents_waited_by_ == compute_queue)) {
    return Status::Ok();
  }
  PINSTREAM_RETURN_IF_ERROR(engine_->ComputeWaitFor(residents_event_, compute_queue));
  residents_waited_ = true;
  residents_waited_by_ = compute_queue;
  return Status::Ok();
}

Status StreamingRuntime::Load(void* compute_queue) {
  if (closed_) return Status::Closed("runtime is closed");
  if (!planned_) return Status::FailedPrecondition("load() before plan()");
  if (loaded_) return Status::Ok();
  if (adaptive_ && last_policy_ != PlanPolicy::kAllResident) {
    // the look-ahead the measured times ask for, within the cap; a plan that does
    // not fit the budget with it keeps the one there is
    const int want = SuggestedPrefetch();
    if (want > 0 && want != plan_.prefetch()) {
      const ResidencyPlan kept = plan_;
      if (!MakePlan(last_policy_, last_budget_, want).ok()) {
        plan_ = kept;
        Status again = MakePlan(last_policy_, last_budget_, kept.prefetch());
        if (!again.ok()) return again;
      }
    }
  }
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (blocks_[i].host == nullptr && blocks_[i].bytes > 0 && blocks_[i].disk.empty()) {
      return Status::FailedPrecondition("load(): block " + std::to_string(i) + " has no host bytes attached");
    }
  }
  uint64_t done = 0;
  auto fail = [&](const Status& s, uint64_t want, const std::string& what) {
    engine_->Synchronize();  // uploads already queued must land before freeing
    Drain(false);
    FreeDevice();
    return Status(s.code() == Status::Code::kOutOfMemory
                      ? Status::OutOfMemory("could not allocate " + FormatBytes(want) + " for " + what + " after " +
                                            FormatBytes(done) + " of the plan's " + FormatBytes(plan_.device_bytes()) +
                                            " (" + s.message() +
                                            "); nothing stays loaded. Lower the budget or use sequential mode")
                      : s);
  };
  loaded_ = true;  // FreeDevice() below undoes partial work
  if (residents_event_ < 0) {
    Status s = TakeEvent(&residents_event_);
    if (!s.ok()) return fail(s, 0, "an event");
  }
  {
    Status s = AllocateReadRing();
    if (!s.ok()) return fail(s, 0, "the read ring");
  }
  {
    std::string what;
    uint64_t want = 0;
    Status s = LoadResidents(&done, &what, &want);
    if (!s.ok()) return fail(s, want, what);
  }
  residents_waited_ = false;
  Status s;
  slots_.resize(plan_.slot_count());
  for (SlotMem& slot : slots_) {
    s = allocator_->Allocate(std::max<uint64_t>(plan_.slot_bytes(), 1), &slot.loc.allocation, &slot.loc.ptr);
    if (!s.ok()) return fail(s, plan_.slot_bytes(), "a streaming slot");
    done += plan_.slot_bytes();
    if (slot.upload_event < 0) {
      s = TakeEvent(&slot.upload_event);
      if (s.ok()) s = TakeEvent(&slot.release_event);
      if (!s.ok()) return fail(s, 0, "slot events");
    }
  }
  ring_ = SlotRing(plan_.slot_count(), num_blocks());
  s = WaitForResidents(compute_queue);
  if (!s.ok()) return fail(s, 0, "resident upload");
  return Status::Ok();
}

Status StreamingRuntime::LoadResidents(uint64_t* done, std::string* what, uint64_t* want) {
  if (plan_.staging_bytes() > 0) {
    Status s = allocator_->Allocate(plan_.staging_bytes(), &staging_.allocation, &staging_.ptr);
    if (!s.ok()) {
      *want = plan_.staging_bytes();
      *what = "the staging buffer of transformed blocks";
      return s;
    }
    *done += plan_.staging_bytes();
  }
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& b = blocks_[i];
    if (!b.resident && !b.split && !b.coded) continue;
    // a split block's resident head: its first `prefix` bytes, as they are;
    // a transformed block: its layout (as stored) or its transfer form (coded)
    const uint64_t footprint = AlignUp(b.split ? b.prefix : b.coded ? b.bytes : Footprint(b), kAlignment);
    DeviceLocation& loc = b.coded ? b.coded_loc : b.resident_loc;
    Status s = allocator_->Allocate(std::max<uint64_t>(footprint, 1), &loc.allocation, &loc.ptr);
    if (!s.ok()) {
      *want = footprint;
      *what = (b.split   ? "the resident head of block "
               : b.coded ? "resident coded block "
                         : "resident block ") +
              std::to_string(i);
      return s;
    }
    *done += footprint;
    const uint64_t head = b.split ? b.prefix : b.bytes;
    if (head == 0) continue;
    const uint8_t* src = nullptr;
    int buf = -1;
    s = SourceNow(static_cast<int>(i), &src, &buf);
    if (!s.ok()) {
      *what = "the read of resident block " + std::to_string(i);
      return s;
    }
    if (b.split || b.coded) {
      s = engine_->EnqueueCopy(loc.ptr, src, head, static_cast<int>(i));
    } else if (b.transform != nullptr && b.bytes > plan_.staging_bytes()) {
      s = LoadInPieces(b, static_cast<int>(i), loc.ptr, src);
    } else {
      s = EnqueueUpload(b, static_cast<int>(i), loc.ptr, src);
    }
    if (s.ok() && buf >= 0) s = engine_->RecordCopyEvent(reads_[buf].upload_event);
    if (!s.ok()) {
      *what = "resident upload";
      return s;
    }
    stats_.bytes_uploaded += head;
    stats_.uploads += 1;
    stats_.block_uploads[i] += 1;
  }
  Status s = engine_->RecordCopyEvent(residents_event_);
  if (!s.ok()) *what = "resident upload event";
  return s;
}

Status StreamingRuntime::LoadInPieces(const Block& b, int id, void* dst, const uint8_t* src) {
  // each job's region through the staging buffer, then that job alone; the copy
  // queue runs them in order, so the next region never overwrites one still read
  for (const TransformJob& job : b.transform->jobs) {
    const uint64_t piece = PieceBytes(job);
    auto one = std::make_unique<BlockTransform>();
    one->jobs.push_back(job);
    one->jobs.back().src_offset = 0;
    if (piece > plan_.staging_bytes()) {
      return Status::FailedPrecondition("a transform job of " + std::to_string(piece) +
                                        " bytes exceeds the staging buffer");
    }
    if (piece > 0) {
      PINSTREAM_RETURN_IF_ERROR(engine_->EnqueueCopy(staging_.ptr, src + job.src_offset, piece, id));
    }
    PINSTREAM_RETURN_IF_ERROR(engine_->EnqueueTransform(one.get(), staging_.ptr, dst));
    load_pieces_.push_back(std::move(one));  // the engine reads it when the job runs
  }
  return Status::Ok();
}

void StreamingRuntime::FreeDevice() {
  // Callers have synchronized the copy queue, or nothing was queued.
  for (Block& b : blocks_) {
    if (b.resident_loc.allocation >= 0) allocator_->Free(b.resident_loc.allocation);
    if (b.coded_loc.allocation >= 0) allocator_->Free(b.coded_loc.allocation);
    b.resident_loc = DeviceLocation();
    b.coded_loc = DeviceLocation();
    b.acquired = 0;
  }
  for (SlotMem& slot : slots_) {
    if (slot.loc.allocation >= 0) allocator_->Free(slot.loc.allocation);
    if (slot.upload_event >= 0) spare_events_.push_back(slot.upload_event);
    if (slot.release_event >= 0) spare_events_.push_back(slot.release_event);
  }
  slots_.clear();
  if (staging_.allocation >= 0) allocator_->Free(staging_.allocation);
  staging_ = DeviceLocation();
  FreeReadRing();
  load_pieces_.clear();
  residents_waited_ = false;
  ring_ = SlotRing(0, num_blocks());
  loaded_ = false;
}

Status StreamingRuntime::Unload() {
  if (!loaded_) return Status::Ok();
  if (outstanding() > 0) {
    return Status::FailedPrecondition("unload() while " + std::to_string(outstanding()) +
                                      " block(s) are acquired; release them or end the pass first");
  }
  Status arrived = learner_.in_pass() ? Status::Ok() : FinishArrivals();  // (mid-pass: read by the next one)
  Status s = engine_->Synchronize();
  if (s.ok()) s = arrived;
  Drain(false);
  FreeDevice();
  return s;
}

int StreamingRuntime::outstanding() const {
  int n = 0;
  for (const Block& b : blocks_) n += b.acquired;
  return n;
}

Status StreamingRuntime::BeginPass(void* compute_queue) {
  if (closed_) return Status::Closed("runtime is closed");
  learner_.BeginPass();
  return loaded_ ? WaitForResidents(compute_queue) : Status::Ok();
}

Status StreamingRuntime::Upload(int slot, int block) {
  Block& b = blocks_[block];
  const uint8_t* src = nullptr;
  int buf = -1;
  if (!b.coded) PINSTREAM_RETURN_IF_ERROR(SourceNow(block, &src, &buf));  // before the slot changes hands
  const int evicted = ring_.Assign(slot, block);
  if (evicted >= 0) evicted_.push_back(evicted);
  SlotMem& mem = slots_[slot];
  // The copy queue must not overwrite the slot before its last user is done.
  Status s = engine_->CopyWaitFor(mem.release_event);
  if (s.ok()) s = EnqueueUpload(b, block, mem.loc.ptr, src);
  if (s.ok()) s = engine_->RecordCopyEvent(mem.upload_event);
  if (s.ok() && buf >= 0) s = engine_->RecordCopyEvent(reads_[buf].upload_event);
  if (!s.ok()) {
    ring_.Invalidate(slot);
    evicted_.push_back(block);
    stats_.upload_failures += 1;
    return s;
  }
  ring_.MarkValid(slot);
  if (b.coded) {
    stats_.coded_refills += 1;
    return Status::Ok();
  }
  stats_.uploads += 1;
  stats_.bytes_uploaded += b.bytes - b.prefix;
  stats_.block_uploads[block] += 1;
  return Status::Ok();
}

void StreamingRuntime::Window(int current, int depth, std::vector<int>* out) {
  if (learner_.learned()) {
    learner_.Predict(depth, streamed_, out);
    return;
  }
  // Before the first pass is learned, guess registration order.
  out->clear();
  const int n = num_blocks();
  for (int step = 1; step <= n && static_cast<int>(out->size()) < depth; ++step) {
    const int b = (current + step) % n;
    if (streamed_[b] && b != current) out->push_back(b);
  }
}

void StreamingRuntime::Prefetch(int current) {
  const int depth = plan_.prefetch();
  if (slots_.empty()) return;
  ReadAhead(current);
  if (depth <= 0) return;
  Window(current, depth, &window_);
  for (int w : window_) {
    if (ring_.SlotOf(w) >= 0) continue;
    if (!blocks_[w].disk.empty() && !blocks_[w].coded) {
      // a disk unit is uploaded ahead only once its read is done: the host
      // never waits here for a read the compute does not need yet
      const int buf = ReadBufferOf(w);
      bool done = false;
      if (buf < 0 || !FinishRead(buf, /*wait=*/false, &done).ok() || !done) break;
    }
    const int victim = ring_.ChooseVictim(window_, /*allow_keep=*/false);
    if (victim < 0) break;
    if (!Upload(victim, w).ok()) break;  // the block will be a miss later
    stats_.prefetches += 1;
  }
  ReadAhead(current);  // buffers whose uploads were just queued may be refilled soon
}

uint64_t StreamingRuntime::read_ring_bytes(bool pinned_only) const {
  uint64_t n = 0;
  for (const ReadBuffer& r : reads_) n += r.mem && (!pinned_only || r.mem->pinned()) ? r.mem->size() : 0;
  return n;
}

int StreamingRuntime::PassStart() const { return num_blocks() - 1; }

Status StreamingRuntime::Warm() {
  if (closed_) return Status::Closed("runtime is closed");
  if (!planned_ || reader_ == nullptr) return Status::Ok();
  if (loaded_) {
    // loaded and idle: its first blocks are read, and uploaded into its slots, ahead
    if (outstanding() == 0 && !learner_.in_pass()) Prefetch(PassStart());
    return Status::Ok();
  }
  PINSTREAM_RETURN_IF_ERROR(AllocateReadRing());
  ReadAhead(PassStart());
  return Status::Ok();
}

Status StreamingRuntime::AllocateReadRing() {
  uint64_t most = 0;
  bool streamed_disk = false;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const Block& b = blocks_[i];
    if (b.disk.empty()) continue;
    most = std::max(most, b.bytes);
    streamed_disk = streamed_disk || streamed_[i] != 0;
  }
  if (most == 0) {
    FreeReadRing();
    return Status::Ok();
  }
  const uint64_t size = ReadBufferBytes(most);
  const int count = ReadBuffers(streamed_disk, plan_.prefetch(), read_ahead_);
  if (static_cast<int>(reads_.size()) == count && reads_[0].mem && reads_[0].mem->size() == size) {
    return Status::Ok();  // warm: kept, with what it read
  }
  FreeReadRing();
  reads_.resize(static_cast<size_t>(count));
  for (ReadBuffer& r : reads_) {
    PINSTREAM_RETURN_IF_ERROR(engine_->AllocateHostBuffer(size, pin_ring_, &r.mem));
    PINSTREAM_RETURN_IF_ERROR(TakeEvent(&r.upload_event));
  }
  return Status::Ok();
}

void StreamingRuntime::FreeReadRing() {
  // a read still in flight writes into its buffer: it must end before the buffer goes
  for (ReadBuffer& r : reads_) {
    if (r.ticket != 0) reader_->Wait(r.ticket);
    if (r.upload_event >= 0) spare_events_.push_back(r.upload_event);
  }
  reads_.clear();
}

void StreamingRuntime::ForgetRead(int block) {
  const int buf = ReadBufferOf(block);
  if (buf < 0) return;
  bool done = false;
  (void)FinishRead(buf, /*wait=*/true, &done);  // its bytes are not wanted from there any more
  reads_[buf].block = -1;
}

int StreamingRuntime::ReadBufferOf(int block) const {
  for (size_t i = 0; i < reads_.size(); ++i) {
    if (reads_[i].block == block) return static_cast<int>(i);
  }
  return -1;
}

Status StreamingRuntime::FinishRead(int buf, bool wait, bool* done) {
  ReadBuffer& r = reads_[buf];
  *done = true;
  if (r.ticket == 0) return Status::Ok();
  const bool waits = !reader_->Done(r.ticket);  // the host waits for the read (counted)
  if (waits && !wait) {
    *done = false;
    return Status::Ok();
  }
  Status s = WaitForRead(r.ticket, waits, blocks_[r.block].bytes);
  r.ticket = 0;
  if (!s.ok()) r.block = -1;
  return s;
}

Status StreamingRuntime::WaitForRead(uint64_t ticket, bool waits, uint64_t bytes) {
  const auto start = std::chrono::steady_clock::now();
  Status s = reader_->Wait(ticket);
  if (waits) {
    stats_.disk_wait_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  }
  if (s.ok()) {
    stats_.disk_reads += 1;
    stats_.disk_bytes += bytes;
  }
  return s;
}

Status StreamingRuntime::FreeReadBuffer(const std::vector<int>& keep, bool wait, int* buf) {
  *buf = -1;
  auto rank = [&](const ReadBuffer& r) {  // higher: better to refill
    if (r.block < 0) return static_cast<int>(keep.size()) + 1;
    auto it = std::find(keep.begin(), keep.end(), r.block);
    return it == keep.end() ? static_cast<int>(keep.size()) : static_cast<int>(it - keep.begin());
  };
  for (;;) {
    int best = -1;
    for (size_t i = 0; i < reads_.size(); ++i) {
      const ReadBuffer& r = reads_[i];
      if (r.ticket != 0) continue;
      if (!wait && r.block >= 0 && std::find(keep.begin(), keep.end(), r.block) != keep.end()) continue;
      bool done = false;
      PINSTREAM_RETURN_IF_ERROR(engine_->CopyEventDone(r.upload_event, /*wait=*/false, &done));
      if (!done && !wait) continue;
      if (best < 0 || rank(r) > rank(reads_[best])) best = static_cast<int>(i);
    }
    if (best >= 0) {
      bool done = false;
      PINSTREAM_RETURN_IF_ERROR(engine_->CopyEventDone(reads_[best].upload_event, wait, &done));
      if (done) *buf = best;
      return Status::Ok();
    }
    if (!wait || reads_.empty()) return Status::Ok();
    // every buffer is being read into: the first one to finish is taken
    bool done = false;
    Status s = FinishRead(0, /*wait=*/true, &done);
    (void)s;  // its block is read again when needed, and then reports the error
  }
}

namespace {
// A unit's extents as reads into `base` (its bytes from offset 0 on).
std::vector<DiskReader::Range> RangesInto(const std::vector<DiskExtent>& extents, void* base) {
  std::vector<DiskReader::Range> ranges;
  for (const DiskExtent& e : extents) {
    if (e.bytes > 0) {
      ranges.push_back(DiskReader::Range{e.file, e.file_offset, e.bytes, static_cast<uint8_t*>(base) + e.block_offset});
    }
  }
  return ranges;
}
}  // namespace

Status StreamingRuntime::SubmitRead(int buf, int block) {
  ReadBuffer& r = reads_[buf];
  r.block = -1;
  r.ticket = 0;
  uint64_t ticket = 0;
  PINSTREAM_RETURN_IF_ERROR(reader_->SubmitMany(RangesInto(blocks_[block].disk, r.mem->data()), &ticket));
  r.block = block;
  r.ticket = ticket;
  return Status::Ok();
}

Status StreamingRuntime::ReadInto(int block, void* dst) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "read_into"));
  if (in_pass()) return Status::FailedPrecondition("read_into during a pass; end the pass first");
  Block& b = blocks_[block];
  if (b.disk.empty()) return Status::InvalidArgument("read_into: block " + std::to_string(block) + " is not on disk");
  if (dst == nullptr) return Status::InvalidArgument("read_into a null buffer");
  if (b.arrive != nullptr) {
    return Status::FailedPrecondition("read_into: block " + std::to_string(block) + " is arriving already");
  }
  const int at = ReadBufferOf(block);
  if (at >= 0) {
    // read ahead into the ring already: its bytes are copied from there
    bool done = false;
    if (FinishRead(at, /*wait=*/true, &done).ok() && reads_[at].block == block) {
      std::memcpy(dst, reads_[at].mem->data(), b.bytes);
      reads_[at].block = -1;  // refilled once its last upload landed
      b.host = dst;
      b.disk.clear();
      return Status::Ok();
    }
  }
  b.arrive = dst;
  return Status::Ok();
}

Status StreamingRuntime::SubmitArrival(int block) {
  Block& b = blocks_[block];
  uint64_t ticket = 0;
  PINSTREAM_RETURN_IF_ERROR(reader_->SubmitMany(RangesInto(b.disk, b.arrive), &ticket));
  b.arrive_ticket = ticket;
  return Status::Ok();
}

Status StreamingRuntime::FinishArrival(int block) {
  Block& b = blocks_[block];
  if (b.arrive_ticket == 0) PINSTREAM_RETURN_IF_ERROR(SubmitArrival(block));
  Status s = WaitForRead(b.arrive_ticket, !reader_->Done(b.arrive_ticket), b.bytes);
  b.arrive_ticket = 0;
  if (!s.ok()) {
    b.arrive = nullptr;  // it stays on disk
    return s;
  }
  b.host = b.arrive;
  b.arrive = nullptr;
  b.disk.clear();
  return Status::Ok();
}

Status StreamingRuntime::FinishArrivals() {
  if (in_pass()) return Status::FailedPrecondition("finish_arrivals during a pass; end the pass first");
  Status first = TakeArrivalError();        // an arrival a pass could not read into its buffer
  for (int i = 0; i < num_blocks(); ++i) {  // all of them in flight together
    Block& b = blocks_[i];
    if (b.arrive == nullptr || b.arrive_ticket != 0) continue;
    Status s = SubmitArrival(i);
    if (!s.ok() && first.ok()) first = s;
    if (!s.ok()) b.arrive = nullptr;
  }
  for (int i = 0; i < num_blocks(); ++i) {
    if (blocks_[i].arrive == nullptr) continue;
    Status s = FinishArrival(i);
    if (!s.ok() && first.ok()) first = s;
  }
  Status s = FreeRingWithNoDisk();
  return first.ok() ? s : first;
}

Status StreamingRuntime::FreeRingWithNoDisk() {
  if (reads_.empty() || std::any_of(blocks_.begin(), blocks_.end(), [](const Block& b) { return !b.disk.empty(); })) {
    return Status::Ok();
  }
  // nothing left on disk (the last units arrived): the ring goes, once no upload reads it
  Status s = engine_->Synchronize();
  if (s.ok()) FreeReadRing();
  return s;
}

void StreamingRuntime::ForgetArrival(Block* b) {
  if (b->arrive_ticket != 0) (void)reader_->Wait(b->arrive_ticket);  // it writes into the caller's buffer
  b->arrive_ticket = 0;
  b->arrive = nullptr;
}

void StreamingRuntime::BeforeReadMiss(int block) {
  // the buffers free by now are refilled first, so the disk has the whole ring's
  // reads queued, not only those of the last call
  ReadAhead(block);
  stats_.disk_read_misses += 1;
  for (const ReadBuffer& r : reads_) stats_.disk_miss_reads_in_flight += r.ticket != 0 && !reader_->Done(r.ticket);
  for (const Block& a : blocks_) {
    stats_.disk_miss_reads_in_flight += a.arrive_ticket != 0 && !reader_->Done(a.arrive_ticket);
  }
}

Status StreamingRuntime::SourceNow(int block, const uint8_t** src, int* buf) {
  const Block& b = blocks_[block];
  *buf = -1;
  if (b.disk.empty()) {
    *src = static_cast<const uint8_t*>(b.host);
    return Status::Ok();
  }
  if (b.arrive != nullptr) {  // read into its own buffer, which is its host copy from then on
    if (b.arrive_ticket == 0) PINSTREAM_RETURN_IF_ERROR(SubmitArrival(block));
    if (!reader_->Done(b.arrive_ticket)) BeforeReadMiss(block);
    Status arrived = FinishArrival(block);
    if (arrived.ok()) {
      *src = static_cast<const uint8_t*>(b.host);
      return Status::Ok();
    }
    // it stays on disk (FinishArrivals says why), and is read for this use as any unit on disk
    if (arrival_error_.ok()) arrival_error_ = arrived;
  }
  int at = ReadBufferOf(block);
  const bool miss =
      at < 0 || (reads_[static_cast<size_t>(at)].ticket != 0 && !reader_->Done(reads_[static_cast<size_t>(at)].ticket));
  if (at < 0) {
    Window(block, static_cast<int>(reads_.size()), &read_window_);
    PINSTREAM_RETURN_IF_ERROR(FreeReadBuffer(read_window_, /*wait=*/true, &at));
    if (at < 0) return Status::FailedPrecondition("the disk tier has no read buffer");
    PINSTREAM_RETURN_IF_ERROR(SubmitRead(at, block));
  }
  if (miss) BeforeReadMiss(block);
  bool done = false;
  PINSTREAM_RETURN_IF_ERROR(FinishRead(at, /*wait=*/true, &done));
  *src = static_cast<const uint8_t*>(reads_[at].mem->data());
  *buf = at;
  return Status::Ok();
}

void StreamingRuntime::ReadAhead(int current) {
  if (reads_.empty()) return;
  Window(current, static_cast<int>(reads_.size()), &read_window_);
  for (int w : read_window_) {
    const Block& b = blocks_[w];
    if (b.disk.empty() || b.coded) continue;
    if (b.arrive != nullptr) {                           // into its own buffer: no ring buffer needed
      if (b.arrive_ticket == 0) (void)SubmitArrival(w);  // the acquire reads it again and reports why
      continue;
    }
    const int slot = ring_.SlotOf(w);
    if (slot >= 0 && ring_.Valid(slot)) continue;  // already on the device
    if (ReadBufferOf(w) >= 0) continue;
    int buf = -1;
    if (!FreeReadBuffer(read_window_, /*wait=*/false, &buf).ok() || buf < 0) break;
    if (!SubmitRead(buf, w).ok()) break;  // the acquire reads it again and reports why
  }
}

Status StreamingRuntime::Acquire(int block, void* compute_queue, DeviceLocation* where) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "acquire"));
  if (!loaded_) PINSTREAM_RETURN_IF_ERROR(Load(compute_queue));
  ++tick_;
  stats_.acquires += 1;
  learner_.Observe(block);
  Block& b = blocks_[block];
  if (b.resident || b.split) {
    // its bytes (a split block: its head) came with the resident uploads
    PINSTREAM_RETURN_IF_ERROR(WaitForResidents(compute_queue));
  }
  if (b.resident) {
    stats_.hits += 1;
    b.acquired += 1;
    *where = b.resident_loc;
    Prefetch(block);
    if (outstanding() == 1) engine_->MarkCompute(compute_queue, /*begin=*/true, block);
    return Status::Ok();
  }
  int slot = ring_.SlotOf(block);
  if (slot >= 0 && ring_.Valid(slot)) {
    stats_.hits += 1;
  } else {
    learner_.Predict(plan_.prefetch(), streamed_, &window_);
    slot = ring_.ChooseVictim(window_, /*allow_keep=*/true);
    if (slot < 0) {
      return Status::FailedPrecondition("acquire(" + std::to_string(block) + "): all " +
                                        std::to_string(ring_.num_slots()) +
                                        " streaming slots hold blocks that are acquired and not released; "
                                        "blocks must be released before more than prefetch + 1 are acquired");
    }
    PINSTREAM_RETURN_IF_ERROR(Upload(slot, block));
    stats_.misses += 1;
  }
  ring_.Acquire(slot, tick_);
  b.acquired += 1;
  Prefetch(block);  // queue the next uploads before waiting on this one
  Status s = engine_->ComputeWaitFor(slots_[slot].upload_event, compute_queue);
  if (!s.ok()) {
    ring_.Release(slot);
    b.acquired -= 1;
    ring_.Invalidate(slot);
    evicted_.push_back(block);
    stats_.upload_failures += 1;
    return s;
  }
  if (outstanding() == 1) engine_->MarkCompute(compute_queue, /*begin=*/true, block);
  *where = slots_[slot].loc;
  if (b.split) {
    where->head_allocation = b.resident_loc.allocation;
    where->head_ptr = b.resident_loc.ptr;
    where->head_bytes = b.prefix;
  }
  return Status::Ok();
}

Status StreamingRuntime::Release(int block, void* compute_queue) {
  PINSTREAM_RETURN_IF_ERROR(CheckBlock(block, "release"));
  Block& b = blocks_[block];
  if (b.acquired <= 0) {
    return Status::FailedPrecondition("release(" + std::to_string(block) + ") of a block that is not acquired");
  }
  b.acquired -= 1;
  if (outstanding() == 0) engine_->MarkCompute(compute_queue, /*begin=*/false, -1);
  if (b.resident) return Status::Ok();
  const int slot = ring_.SlotOf(block);
  if (slot < 0) return Status::Ok();  // its upload failed meanwhile
  Status s = engine_->RecordComputeEvent(slots_[slot].release_event, compute_queue);
  ring_.Release(slot);
  return s;
}

Status StreamingRuntime::EndPass(void* compute_queue) {
  Status first;
  for (int i = 0; i < num_blocks(); ++i) {
    while (blocks_[i].acquired > 0) {
      Status s = Release(i, compute_queue);
      if (!s.ok() && first.ok()) first = s;
      if (!s.ok()) break;
    }
  }
  learner_.EndPass();
  Drain(false);
  Status freed = FreeRingWithNoDisk();
  return first.ok() ? freed : first;
}

void StreamingRuntime::TakeEvicted(std::vector<int>* out) {
  out->clear();
  out->swap(evicted_);
}

Status StreamingRuntime::Synchronize() {
  Status s = engine_->Synchronize();
  Drain(false);
  return s;
}

void StreamingRuntime::Drain(bool wait) {
  timings_.copies.clear();  // keeps its capacity: no allocation per pass
  timings_.stall_ms = 0;
  timings_.transform_ms = 0;
  timings_.transform_bytes = 0;
  timings_.computes.clear();
  engine_->CollectTimings(&timings_, wait);
  for (const EngineTimings::Compute& c : timings_.computes) {
    stats_.compute_ms += c.ms;
    stats_.compute_spans += 1;
    if (c.tag < 0 || c.tag >= num_blocks()) continue;
    if (compute_ms_.size() != blocks_.size()) compute_ms_.assign(blocks_.size(), -1.0);
    // a running mean that follows changes (another input size)
    double& m = compute_ms_[static_cast<size_t>(c.tag)];
    m = m < 0 ? c.ms : 0.75 * m + 0.25 * c.ms;
  }
  for (const EngineTimings::Copy& c : timings_.copies) {
    stats_.upload_ms += c.ms;
    stats_.timed_upload_bytes += c.bytes;
    if (c.tag >= 0 && c.tag < static_cast<int>(stats_.block_upload_ms.size())) {
      stats_.block_upload_ms[c.tag] = c.ms;
    }
  }
  stats_.stall_ms += timings_.stall_ms;
  if (reader_ != nullptr) {
    const DiskReader::Totals t = reader_->totals();
    stats_.disk_busy_ms = t.busy_ms - reader_base_.busy_ms;
    stats_.disk_request_ms = t.request_ms - reader_base_.request_ms;
    stats_.disk_bytes_total = t.bytes - reader_base_.bytes;
  }
  stats_.transform_ms += timings_.transform_ms;
  stats_.transform_bytes += timings_.transform_bytes;
}

Stats StreamingRuntime::GetStats(bool wait) {
  Drain(wait);
  Stats s = stats_;
  s.suggested_prefetch = SuggestedPrefetch();
  s.passes = learner_.passes();
  s.relearns = learner_.relearns();
  s.skips = learner_.skips();
  return s;
}

void StreamingRuntime::ResetStats() {
  Drain(false);
  const size_t n = stats_.block_upload_ms.size();
  stats_ = Stats();
  if (reader_ != nullptr) reader_base_ = reader_->totals();
  stats_.block_upload_ms.assign(n, -1.0);
  stats_.block_uploads.assign(n, 0);
}

Status StreamingRuntime::Close() {
  if (closed_) return Status::Ok();
  for (Block& b : blocks_) ForgetArrival(&b);  // a read in flight ends first
  Status s;
  if (loaded_) {
    for (Block& b : blocks_) b.acquired = 0;
    s = engine_->Synchronize();
    Drain(false);
    FreeDevice();
  }
  closed_ = true;
  return s;
}

}  // namespace pinstream
