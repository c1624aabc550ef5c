// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// StreamingRuntime: the scheduler at the heart of PinStream. It owns no
// memory of its own: blocks live in host memory given at registration, device
// memory comes from a DeviceAllocator, copies go through a CopyEngine.
//
// Life of a runtime:
//   RegisterBlock (each unit of weights; non-streamable units always resident;
//                 its host bytes may be attached later, once the plan has said
//                 how they should be held: layout -> plan -> pack)
//   Plan (policy, budget, prefetch)       -> ResidencyPlan
//   AttachHost (for units registered without their bytes)
//   Load (allocate, upload resident units; done lazily by the first Acquire)
//   per forward pass:
//     BeginPass  (the compute queue of this pass waits for the resident uploads)
//     Acquire(b) / Release(b) around each block's compute
//     EndPass    (also releases blocks left acquired by an exception)
//   Unload (device memory freed; the host copies are the truth again)
//   Close
//
// The disk tier: a unit may live in a file instead of host memory
// (SetDiskSource). Its bytes are read by a DiskReader into a ring of pinned
// host buffers, `read_ahead` blocks beyond the uploads' look-ahead in the same
// learned order, and uploaded from there; a buffer is refilled once the copy
// queue has finished the upload that read it. A resident unit on disk is read
// once at Load and needs no host copy at all. The host waits only for a read
// the compute needs now (a read miss), never for one ahead of it.
//
// Acquire(b) never makes the host wait on a CUDA engine: the compute queue
// waits on b's upload event, then uploads of the next `prefetch` streamed
// blocks of the learned order are queued, each into a slot whose last user
// has released it (the copy queue waits on that release event).
//
// Not thread-safe: one compute thread drives a runtime (the bindings hold a
// mutex).
#ifndef PINSTREAM_CORE_STREAMING_RUNTIME_H_
#define PINSTREAM_CORE_STREAMING_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "core/copy_engine.h"
#include "core/disk_reader.h"
#include "core/residency_plan.h"
#include "core/schedule_learner.h"
#include "core/slot_ring.h"
#include "core/stats.h"
#include "core/status.h"

namespace pinstream {

// Where a block's bytes are on the device: an allocation and an address.
// A split block (see ResidencyPlan) is in two places: its first `head_bytes`
// at `head_ptr` (resident), the rest from `ptr` on (a streaming slot), so
// byte o of the block is at head_ptr + o when o < head_bytes, else at
// ptr + (o - head_bytes). head_bytes is 0 for every other block.
struct DeviceLocation {
  int64_t allocation = -1;
  void* ptr = nullptr;
  int64_t head_allocation = -1;
  void* head_ptr = nullptr;
  uint64_t head_bytes = 0;
};

// A piece of a disk-tier block's transfer bytes: `bytes` at `file_offset` of
// DiskReader file `file` are its bytes from `block_offset` on.
struct DiskExtent {
  int file = -1;
  uint64_t file_offset = 0;
  uint64_t bytes = 0;
  uint64_t block_offset = 0;
};

// Host bytes of the read ring for disk units of at most `largest_block` bytes:
// prefetch + read_ahead buffers when one of them streams (else one), each whole
// pages (O_DIRECT reads straight into it).
uint64_t ReadRingBytes(uint64_t largest_block, bool streams, int prefetch, int read_ahead);

class StreamingRuntime {
 public:
  // `engine` and `allocator` must outlive the runtime.
  StreamingRuntime(CopyEngine* engine, DeviceAllocator* allocator);
  ~StreamingRuntime();
  StreamingRuntime(const StreamingRuntime&) = delete;
  StreamingRuntime& operator=(const StreamingRuntime&) = delete;

  // Registers `bytes` at `host` (kept alive by the caller) as one unit.
  // streamable=false: always resident (the non-block part of a model).
  // host may be null: AttachHost gives the bytes before Load.
  Status RegisterBlock(const void* host, uint64_t bytes, bool streamable, int* id);
  // AttachHost, UseDiskReader and SetDiskSource move a unit's bytes between
  // host memory and disk. While loaded they are allowed between passes only
  // (nothing acquired) and first wait for the copy queue (an upload may still
  // read the old bytes); the read ring follows (allocated, grown, or freed
  // when no unit is left on disk). A device copy stays valid: the bytes are
  // the same wherever they are read from.
  //
  // The host bytes of a unit registered without them (or moved since; a unit
  // on disk comes back to host memory).
  Status AttachHost(int block, const void* host);
  // Reads of disk-tier units go through `reader` (kept alive by the caller),
  // `read_ahead` (>= 1) blocks beyond the uploads' look-ahead, into a ring of
  // pinned buffers (`pin_ring` false: ordinary memory, for a pinning cap too
  // small for it).
  Status UseDiskReader(DiskReader* reader, int read_ahead, bool pin_ring = true);
  // The unit's transfer bytes live on disk: `extents` place its bytes, none
  // twice (gaps between them are padding no tensor reads). Its host pointer is
  // no longer used (AttachHost brings it back to host memory).
  Status SetDiskSource(int block, std::vector<DiskExtent> extents);
  // Brings a unit on disk back to host memory through its next read: its bytes
  // are read into `dst` (the caller's, at least its bytes, alive until the unit
  // arrived or Close) in place of a read ring buffer, in the learned order with
  // the reads ahead, uploaded from there, and from then on `dst` is its host
  // copy (on_disk() false). Where a ring buffer holds its bytes already they are
  // copied at once. Between passes. FinishArrivals() reads those no pass reached.
  // A pass whose read into `dst` fails reads the unit again through the ring; it
  // stays on disk.
  Status ReadInto(int block, void* dst);
  // Waits for every read into a ReadInto buffer, first submitting those not
  // begun. A unit whose read failed stays on disk (its buffer unused; a pass
  // that needed it read it again through the ring); the first failure since the
  // last call is returned. With no unit left on disk the read ring goes. Between
  // passes; Unload does it too, Close waits for the reads in flight only.
  Status FinishArrivals();
  bool arriving(int block) const { return blocks_[block].arrive != nullptr; }
  // The first arrival a pass could not read into its buffer since the last call (and
  // FinishArrivals, which returns it too).
  Status TakeArrivalError() {
    Status s = arrival_error_;
    arrival_error_ = Status::Ok();
    return s;
  }
  // Forgets the units [first, num_blocks()) (a registration that failed half
  // way); the plan, if any, is dropped with them. Allowed while nothing is loaded.
  Status DropBlocksFrom(int first);
  // Offsets strictly inside `block`, ascending (its tensor boundaries), where
  // a budget plan may cut it into a resident head and a streamed rest. Not
  // for transformed blocks (they stream whole).
  Status SetCuts(int block, std::vector<uint64_t> cuts);
  // Marks `block` as sent in a transfer format: its `bytes` at `host` are the
  // transfer bytes, copied into the runtime's staging buffer, from which
  // `transform` (kept alive by the caller) writes `device_bytes` of device layout.
  Status SetTransform(int block, uint64_t device_bytes, const BlockTransform* transform);

  // Decides residency. Allowed only while nothing is loaded.
  Status Plan(PlanPolicy policy, uint64_t budget_bytes, int prefetch);
  // Adaptive look-ahead: at each Load a streaming plan is made again with the
  // look-ahead the measured times ask for (SuggestedPrefetch), at most the
  // prefetch the last Plan() was given, which stays the cap.
  void SetAdaptivePrefetch(bool on);
  // Blocks in flight that cover one block's fetch (its upload, and for the
  // share of units on disk their read before it) with the compute of the blocks
  // before it: ceil(fetch / compute) per block, in [1, cap]; 0 until a few
  // blocks' compute and some uploads were timed.
  int SuggestedPrefetch() const;
  int prefetch_cap() const { return prefetch_cap_; }
  // The link and transform rates (bytes/s) the next plans weigh residencies
  // with (see ResidencyPlan); <= 0 keeps the nominal rate.
  void SetRates(double link_bytes_per_second, double transform_bytes_per_second);
  // New transfer bytes for a transformed block (its values were re-encoded):
  // `host` holds `bytes` of them, `transform` writes the same device layout.
  // Allowed while nothing is loaded; the plan is made again with the last
  // Plan()'s policy, budget and prefetch (the block's footprint changed).
  Status ReplaceTransfer(int block, const void* host, uint64_t bytes, const BlockTransform* transform);

  // Allocates device memory for the plan and queues the resident uploads;
  // the compute queue then waits for them (no host wait on a CUDA engine).
  // On failure everything allocated is freed again (no half-loaded state).
  Status Load(void* compute_queue = nullptr);
  // Frees all device memory (and the read ring). Fails while a block is acquired.
  Status Unload();
  // Warm standby of a runtime that waits for its turn (another model runs now,
  // e.g. the other expert of Wan 2.2): its read ring is filled with the disk
  // units that come first in its next pass, so its first blocks need no read
  // when it runs. Not loaded: no device memory is taken (the next Load keeps
  // the ring). Loaded and between passes: those blocks are uploaded into its
  // slots ahead too.
  Status Warm();

  // Starts a pass whose compute runs on `compute_queue`: the queue waits (on
  // the device, no host wait) for the resident uploads, so a pass on another
  // queue than the one Load() ran on never reads weights still in flight.
  Status BeginPass(void* compute_queue = nullptr);
  Status Acquire(int block, void* compute_queue, DeviceLocation* where);
  Status Release(int block, void* compute_queue);
  // Releases every block still acquired and closes the pass.
  Status EndPass(void* compute_queue);

  // Blocks that lost their device copy since the last call (evicted from a
  // slot, or their upload failed): their tensors must point at the host again.
  void TakeEvicted(std::vector<int>* out);

  Status Synchronize();
  // Stats with the timings gathered so far; wait=true waits for pending ones.
  Stats GetStats(bool wait);
  void ResetStats();
  Status Close();

  bool planned() const { return planned_; }
  bool loaded() const { return loaded_; }
  bool closed() const { return closed_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  uint64_t block_bytes(int block) const { return blocks_[block].bytes; }
  bool streamable(int block) const { return blocks_[block].streamable; }
  bool resident(int block) const { return blocks_[block].resident; }
  // Held on the device in its transfer form, transformed into a slot at each use.
  bool coded(int block) const { return blocks_[block].coded; }
  // Goes through the ring each pass (a split block's rest included).
  bool streamed(int block) const { return streamed_[block] != 0; }
  // Split by the plan: a resident head of split_bytes(block), the rest streamed.
  bool split(int block) const { return blocks_[block].split; }
  uint64_t split_bytes(int block) const { return blocks_[block].prefix; }
  const ResidencyPlan& plan() const { return plan_; }
  const ScheduleLearner& learner() const { return learner_; }
  int outstanding() const;
  // Its compute time per use as timed so far (a running mean; -1 when never timed):
  // a use that starts a span of compute (the blocks acquired inside it count in it).
  double compute_ms(int block) const {
    return static_cast<size_t>(block) < compute_ms_.size() ? compute_ms_[static_cast<size_t>(block)] : -1.0;
  }
  bool acquired(int block) const { return blocks_[block].acquired > 0; }
  bool on_disk(int block) const { return !blocks_[block].disk.empty(); }
  // Its host bytes (null while it lives on disk).
  const void* host(int block) const { return on_disk(block) ? nullptr : blocks_[block].host; }
  bool in_pass() const { return outstanding() > 0 || learner_.in_pass(); }
  // Host bytes of the read ring (while loaded with disk-tier units); its pinned ones.
  uint64_t read_ring_bytes(bool pinned_only = false) const;
  int read_ahead() const { return read_ahead_; }
  // Location of a resident block once loaded.
  DeviceLocation resident_location(int block) const { return blocks_[block].resident_loc; }

 private:
  struct Block {
    const void* host = nullptr;
    uint64_t bytes = 0;         // bytes crossing the link
    uint64_t device_bytes = 0;  // device layout (== bytes without a transform)
    const BlockTransform* transform = nullptr;
    bool streamable = true;
    bool resident = false;
    bool coded = false;  // resident in its transfer form at coded_loc
    bool split = false;  // resident head of `prefix` bytes, the rest streamed
    uint64_t prefix = 0;
    std::vector<uint64_t> cuts;    // where a plan may split it
    int plan_index = -1;           // index in the plan's block list
    DeviceLocation resident_loc;   // when resident and loaded
    DeviceLocation coded_loc;      // when resident coded and loaded
    int acquired = 0;              // acquisitions not yet released
    std::vector<DiskExtent> disk;  // where its bytes are when it lives on disk
    void* arrive = nullptr;        // ReadInto: its next read goes here, its host copy after
    uint64_t arrive_ticket = 0;    // that read while in flight
  };
  // A pinned host buffer of the read ring.
  struct ReadBuffer {
    std::unique_ptr<HostBuffer> mem;
    int block = -1;             // whose bytes it holds, or is reading
    uint64_t ticket = 0;        // its read while in flight
    EventId upload_event = -1;  // recorded on the copy queue after each upload from it
  };
  struct SlotMem {
    DeviceLocation loc;
    EventId upload_event = -1;
    EventId release_event = -1;
  };

  Status CheckBlock(int block, const char* what) const;
  // Between passes (see AttachHost): waits for the copy queue while loaded.
  Status Quiesce(const char* what);
  Status MakePlan(PlanPolicy policy, uint64_t budget_bytes, int prefetch);
  Status TakeEvent(EventId* e);
  // Makes `compute_queue` wait for the resident uploads once per recording.
  Status WaitForResidents(void* compute_queue);
  // Device bytes as stored: the layout (of a transformed block too).
  uint64_t Footprint(const Block& b) const;
  // Queues the upload of `b` to `dst` (and its transform), without events;
  // of a split block, the streamed rest only; of a resident coded block, its
  // transform from the coded copy on the device (no upload).
  // `src`: the block's transfer bytes in host memory (its host copy, or the
  // read buffer holding them).
  Status EnqueueUpload(const Block& b, int id, void* dst, const uint8_t* src);
  // Allocates the staging buffer (with transformed units) and the resident
  // units, and queues their uploads (a split block's head, resident coded
  // blocks' transfer forms; transformed ones as stored through the staging buffer).
  Status LoadResidents(uint64_t* done, std::string* what, uint64_t* want);
  // Loads a transformed unit larger than the staging buffer job by job.
  Status LoadInPieces(const Block& b, int id, void* dst, const uint8_t* src);
  Status Upload(int slot, int block);
  void Prefetch(int current);
  // The next `depth` streamed blocks after `current` in the learned order
  // (registration order before a pass is learned).
  void Window(int current, int depth, std::vector<int>* out);
  // The read ring: allocated at Load when a unit lives on disk.
  Status AllocateReadRing();
  // Where a pass that starts now begins: the block its windows are counted from.
  int PassStart() const;
  void FreeReadRing();
  int ReadBufferOf(int block) const;
  // The read buffer holding (or reading) `block`, if any, holds nothing after
  // its read ends: the unit's bytes moved.
  void ForgetRead(int block);
  // A read buffer that may be refilled (no read in flight, its last upload
  // done, preferably holding none of `keep`); wait=true waits for one, else -1
  // when none is free now.
  Status FreeReadBuffer(const std::vector<int>& keep, bool wait, int* buf);
  Status SubmitRead(int buf, int block);
  // The read of an arriving unit (ReadInto) into its own buffer; FinishArrival
  // waits for it and makes that buffer its host copy (on failure it stays on disk).
  Status SubmitArrival(int block);
  Status FinishArrival(int block);
  // The unit's arrival (ReadInto) is dropped, its read in flight waited for: it stays on disk.
  void ForgetArrival(Block* b);
  // The host is about to wait for `block`'s read: the reads ahead are queued first,
  // and the miss counted with the reads in flight.
  void BeforeReadMiss(int block);
  // Frees the read ring when no unit is left on disk (between passes: it waits for
  // the copy queue first).
  Status FreeRingWithNoDisk();
  // Finishes the read of buffer `buf` (waiting when `wait`); false while it is
  // still in flight. A failed read empties the buffer and is returned.
  Status FinishRead(int buf, bool wait, bool* done);
  // Waits for read `ticket` of `bytes` (the host's wait counted when `waits`: it was
  // not done) and counts it when it succeeded.
  Status WaitForRead(uint64_t ticket, bool waits, uint64_t bytes);
  // Where the host bytes of `block` are for an upload now: its host copy, or
  // for a disk unit its read buffer (*buf), read first (the host waits) when
  // no buffer holds them yet.
  Status SourceNow(int block, const uint8_t** src, int* buf);
  // Queues reads of the disk units among the next prefetch + read_ahead blocks.
  void ReadAhead(int current);
  void FreeDevice();
  void Drain(bool wait);

  CopyEngine* engine_;
  DeviceAllocator* allocator_;
  std::vector<Block> blocks_;
  std::vector<SlotMem> slots_;
  DeviceLocation staging_;  // where transformed units' transfer bytes land before their transform
  std::vector<std::unique_ptr<BlockTransform>> load_pieces_;  // one job each, read by the engine at load
  std::vector<EventId> spare_events_;
  // Recorded on the copy queue after the resident uploads of a Load; the last
  // compute queue that waited on this recording (waiting again is a no-op).
  EventId residents_event_ = -1;
  void* residents_waited_by_ = nullptr;
  bool residents_waited_ = false;
  std::vector<uint8_t> streamed_;  // per block: 1 when it goes through the ring
  ResidencyPlan plan_;
  PlanPolicy last_policy_ = PlanPolicy::kBudget;
  uint64_t last_budget_ = PlanRequest::kUnlimited;
  int last_prefetch_ = 1;
  double link_rate_ = PlanRequest::kNominalLinkBytesPerSecond;
  double transform_rate_ = PlanRequest::kNominalTransformBytesPerSecond;
  ScheduleLearner learner_;
  SlotRing ring_;
  Stats stats_;
  EngineTimings timings_;
  std::vector<int> window_;
  std::vector<int> read_window_;
  DiskReader* reader_ = nullptr;
  int read_ahead_ = 2;
  bool pin_ring_ = true;
  bool adaptive_ = false;
  int prefetch_cap_ = 1;
  std::vector<ReadBuffer> reads_;
  Status arrival_error_;            // the first arrival a pass failed to read into its buffer
  DiskReader::Totals reader_base_;  // reader totals at the last ResetStats
  std::vector<double> compute_ms_;  // per block (see compute_ms())
  std::vector<int> evicted_;
  uint64_t tick_ = 0;
  bool planned_ = false;
  bool loaded_ = false;
  bool closed_ = false;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_STREAMING_RUNTIME_H_
