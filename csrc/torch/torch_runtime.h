// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// TorchRuntime: the core's StreamingRuntime on torch tensors, and the only
// place that knows both. It owns the copy engine (CUDA or host), the device
// allocator (torch's, so memory accounting sees the slots), the host chunks the
// weights are packed into, and the weights' re-pointing:
//
//   RegisterBlocks   layout -> plan -> pack: each unit's tensors are laid out
//                    (csrc/core/pack_layout.h), the plan is made once from that
//                    layout, the host chunks are pinned in the order the plan
//                    uploads them (within the pinning cap), then each block's
//                    tensors are copied into their chunk and re-pointed there
//                    (the original storage is released: one host copy).
//                    All or nothing: a failure puts every weight back in
//                    ordinary memory of its own and leaves no block registered,
//                    so a retry on the same runtime works.
//   Acquire/Release  around a block's compute (forward hooks); Touch for a
//                    Sequential block whose children run one by one.
//   EndPass          between passes every block that is not wholly resident
//                    (and every fp8 block) shows its host copy.
//
// Thread safety and lock order: every public method takes the runtime's mutex
// for its whole duration, and is called without the Python GIL (the binding
// releases it first), so the two locks are never taken in the other order.
// The progress callback of RegisterBlocks runs without the mutex. Every CUDA
// entry point makes the runtime's device current for its duration and puts the
// caller's back.
#ifndef PINSTREAM_TORCH_TORCH_RUNTIME_H_
#define PINSTREAM_TORCH_TORCH_RUNTIME_H_

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/copy_engine.h"
#include "core/disk_reader.h"
#include "core/exact_cache.h"
#include "core/spill_file.h"
#include "core/streaming_runtime.h"
#include "host/host_copy_engine.h"
#include "torch/block_tensors.h"
#include "torch/torch_device_allocator.h"

namespace pinstream {

struct RuntimeOptions {
  std::string device = "cpu";
  std::string engine = "auto";  // auto | cuda | host
  int prefetch = 1;
  int64_t budget_bytes = -1;
  // host engine: emulated link and faults
  double link_gbps = 0;
  double latency_us = 0;
  int random_delay_us = 0;
  uint64_t seed = 0;
  bool poison = false;
  int64_t device_capacity_bytes = 0;  // 0: no cap of our own
  std::string pin_mode = "auto";      // auto | register | hostalloc | pageable
  int64_t chunk_bytes = 256LL << 20;
  bool timing = true;
  int64_t pin_cap_bytes = -1;  // most host bytes this runtime pins; -1: no cap
  std::string cache_dir;       // coded tensors cached here (empty: no cache)
  // The disk tier: most bytes of weights this runtime holds in host RAM (-1:
  // no limit); units beyond it live in a spill file in `spill_dir`, read
  // `read_ahead` blocks beyond the uploads' look-ahead by `disk_threads` I/O
  // threads, with O_DIRECT where the file system allows it (`disk_direct`).
  int64_t host_budget_bytes = -1;
  std::string spill_dir;
  int read_ahead = 2;
  int disk_threads = 4;
  bool disk_direct = true;
  std::string disk_why;        // why reads are buffered when disk_direct is false
  bool disk_io_uring = false;  // O_DIRECT files read through io_uring where it works (calibrate.disk_reads)
  // the look-ahead follows the measured fetch and compute times, at most the
  // prefetch given (see StreamingRuntime::SetAdaptivePrefetch)
  bool adaptive_prefetch = false;
};

struct RegisterRequest {
  std::vector<std::vector<at::Tensor>> blocks;
  std::vector<bool> streamable;  // empty: every block streamable
  std::vector<bool> fp8;         // empty: none sent as fp8
  // empty: none coded. Coded blocks are held in the exact coded form only
  // (csrc/core/exact_block.h): their weights point at a placeholder between uses.
  std::vector<bool> exact;
  std::vector<std::vector<std::string>> names;  // empty, or per block per tensor
  // The model's own files (safetensors) and, per block per tensor, where its
  // bytes are in one of them as stored (file index, offset), file -1 for none;
  // empty: no sources. A unit that lives on disk reads from there when every
  // tensor's bytes there equal the weight's (checked once), else from a spill file.
  std::vector<std::string> source_files;
  std::vector<std::vector<std::pair<int, int64_t>>> sources;
  // Plan at registration (layout -> plan -> pack); otherwise plan() comes later
  // and the chunks are pinned in registration order.
  bool plan = false;
  std::string policy = "budget";
  int64_t budget_bytes = -1;
  int prefetch = 1;
  // Called after each block is packed (done, total), without the mutex. An
  // exception it throws aborts the registration (all or nothing).
  std::function<void(size_t, size_t)> progress;
};

struct PlanInfo {
  std::string policy;
  int prefetch = 0;
  int num_blocks = 0;
  int resident_blocks = 0;
  int streamed_blocks = 0;
  int split_blocks = 0;
  int coded_blocks = 0;               // resident coded: transfer form on the device, decoded into a slot per use
  std::vector<uint64_t> split_bytes;  // per unit: the resident head of a split block, else 0
  int slot_count = 0;
  uint64_t slot_bytes = 0;
  uint64_t fixed_bytes = 0;
  uint64_t resident_block_bytes = 0;
  uint64_t streamed_block_bytes = 0;
  uint64_t coded_block_bytes = 0;
  uint64_t staging_bytes = 0;
  uint64_t device_bytes = 0;
  double copy_ms_per_pass = 0;  // predicted, for plans with transformed blocks
  double link_gbps = 0;         // the rates the plan weighed residencies with
  double transform_gbps = 0;
  bool rates_measured = false;  // measured by this runtime, else nominal
  std::string describe;
};

struct RuntimeStats {
  std::string engine;
  std::string device;
  Stats core;
  uint64_t writebacks = 0;
  std::vector<bool> block_pinned;
  int64_t fp8_blocks = 0;
  // coded blocks: tensors coded and sent as stored (and why), stored and coded bytes
  int64_t exact_blocks = 0;
  int64_t exact_coded_tensors = 0;
  int64_t exact_stored_tensors = 0;
  uint64_t exact_plain_bytes = 0;
  uint64_t exact_transfer_bytes = 0;
  std::vector<std::pair<std::string, int64_t>> exact_skips;
  std::string cache_dir;
  uint64_t cache_hits = 0, cache_misses = 0, cache_stored = 0, cache_rebuilt = 0;
  std::string cache_error;
  // the disk tier
  int64_t host_budget_bytes = -1;
  int64_t disk_blocks = 0;
  uint64_t disk_block_bytes = 0;  // bytes of the units that live on disk
  uint64_t disk_over_bytes = 0;   // host bytes above the budget no unit could move to disk
  std::string spill_path;
  uint64_t source_block_bytes = 0;  // of the units on disk: bytes read from the model's own files
  std::string source_note;
  uint64_t spill_bytes = 0;
  std::string spill_error;  // why units meant for disk stayed in RAM
  std::string disk_how;     // how the spill file is read (O_DIRECT, or buffered and why)
  uint64_t read_ring_bytes = 0;
  std::vector<bool> block_on_disk;
  std::vector<bool> block_arriving;      // on disk, read into host memory by the next pass
  std::string arrival_error;             // why the last units read through stayed on disk
  std::vector<double> block_compute_ms;  // each block's compute per use as timed (-1: not yet)
  std::vector<QuantError> fp8_block_error;
  QuantError fp8_error;
  uint64_t device_bytes = 0;
  uint64_t peak_device_bytes = 0;
  int64_t host_bytes = 0;
  int64_t pinned_bytes = 0;
  int64_t pageable_bytes = 0;
  int64_t live_host_bytes = 0;
  std::vector<std::string> pin_how;
  bool loaded = false;
  bool closed = false;
  bool planned = false;
  PlanInfo plan;
};

// The plan policy named `name` (all_resident, stream_all, budget); throws
// std::invalid_argument naming the allowed ones.
PlanPolicy ParsePolicy(const std::string& name);

class TorchRuntime {
 public:
  // Throws std::invalid_argument for a bad option, std::runtime_error when the
  // engine cannot be made (no CUDA build, no GPU).
  explicit TorchRuntime(const RuntimeOptions& options);
  ~TorchRuntime();
  TorchRuntime(const TorchRuntime&) = delete;
  TorchRuntime& operator=(const TorchRuntime&) = delete;

  std::vector<int> RegisterBlocks(const RegisterRequest& request);
  PlanInfo Plan(const std::string& policy, int64_t budget_bytes, int prefetch);
  // The values of tensor `index` of `block` on the host: its host view (an
  // alias), or for a coded block a new tensor decoded from the coded form.
  at::Tensor HostValue(int block, int index);
  // New values for tensors of `block` (index, values of the same shape and
  // dtype), written into its host copy; a coded block is coded again and the
  // plan made again for its new size. Unloads first: the next load uploads them.
  void WriteHostValues(int block, const std::vector<std::pair<int, at::Tensor>>& values);
  PlanInfo CurrentPlan();
  void Load();
  void Unload();
  // Warm standby between passes (see StreamingRuntime::Warm); no-op in a pass.
  void Warm();
  // A new host budget (-1: none), between passes, loaded or not: units beyond it
  // move to disk (a unit whose bytes are not on disk yet is checked against the
  // model's own file, else written to the spill file, once), units on disk come
  // back to host memory while it allows (read from disk). `pin_cap_bytes`, when
  // given, is this runtime's new pinning cap (-1: none). Which units go to disk
  // follows their compute (csrc/core/disk_plan.h): in proportion to their bytes,
  // or with `by_timing` as timed (kept for the later moves) where it is spread
  // unlike the bytes. With `read_through`, units coming back are read through
  // the next pass (StreamingRuntime::ReadInto): into their own buffers, from
  // which that pass uploads them, in place of a read now; the pass ends with them
  // in host memory (one whose read failed stays on disk, and the stats say why).
  // Returns the host bytes of weights held after (those arriving included).
  int64_t SetHostBudget(int64_t budget_bytes, std::optional<int64_t> pin_cap_bytes = std::nullopt,
                        bool by_timing = false, bool read_through = false);
  void BeginPass();
  // Fails (std::runtime_error naming the weight) when a weight was converted, replaced or
  // moved by code PinStream does not manage. BeginPass checks it too.
  void CheckPlacement();
  void Acquire(int block);
  // missing_ok: a forward hook's release after its acquire raised (the
  // post-hook runs anyway) is not a second error.
  void Release(int block, bool missing_ok);
  // Acquires `block`, releasing the block touched before it: for hooks on the
  // children of a block that is iterated rather than called.
  void Touch(int block);
  void ReleaseTouched(int block);
  void EndPass();
  void Synchronize();
  RuntimeStats GetStats();
  // What deciding a move between RAM and disk needs, with the timings already
  // complete (no host wait, unlike GetStats): between passes.
  struct Pace {
    uint64_t disk_bytes = 0;
    double compute_ms = 0;
    double disk_wait_ms = 0;
    double disk_gbps = 0;
    uint64_t disk_block_bytes = 0;
    uint64_t passes = 0;
    int64_t host_budget_bytes = -1;
  };
  Pace GetPace();
  void ResetStats();
  void Close(bool restore_pageable);

  // Fault injection (host engine only).
  void FailNextCopies(int count);
  void DelayNextCopies(int count, int us);
  void FailNextHostAllocations(int count);
  // The next `count` spill-file writes fail as on a full disk; the next
  // `count` disk reads fail with an I/O error.
  void FailNextSpillWrites(int count);
  void FailNextDiskReads(int count);
  void SetDeviceCapacity(int64_t bytes);

  std::string engine_name() const;
  std::string device_name() const { return device_.str(); }
  int num_blocks();
  int64_t device_bytes();
  int64_t host_bytes();
  int64_t ram_bytes();     // host_bytes and the read ring's
  int64_t pinned_bytes();  // weights' pinned host bytes and the read ring's (while loaded)
  bool closed();
  bool loaded();
  std::vector<int64_t> block_bytes();
  std::vector<bool> resident_blocks();

 private:
  struct Chunk {
    at::Tensor bytes;  // uint8 over the host buffer; the weights' host views alias it
    bool pinned = false;
  };
  class AccountedBuffer;  // a host buffer counted in the live bytes while it lives

  void CheckOpen() const;
  void CheckId(int block) const;
  HostCopyEngine* HostOnly(const char* what) const;
  void* ComputeQueue() const;
  void SyncCompute() const;
  PlanInfo PlanInfoLocked() const;
  void AcquireLocked(int block);
  void ReleaseLocked(int block, bool missing_ok);
  Status EndPassLocked();
  void CheckPlacementLocked() const;
  void UnloadLocked();
  void CloseLocked(bool restore_pageable);
  void ApplyEvictions();
  void PointResidentBlocks();
  // Gives the core the link and transform rates measured so far (nominal until
  // enough bytes were timed) for the next plan.
  void UseMeasuredRates();
  void WriteBack(BlockTensors* info);
  // A disk unit's bytes [lo, hi) read from its file, in a buffer of the unit's
  // size (the rest left unwritten and uncommitted).
  at::Tensor ReadDiskLocked(const BlockTensors& info, uint64_t lo, uint64_t hi);
  // Reads bytes [lo, hi) of a unit on disk into `to` (its byte lo at to + lo).
  void ReadExtentsLocked(const BlockTensors& info, uint64_t lo, uint64_t hi, uint8_t* to);
  // Every file the disk tier reads is still the one it opened (before a load).
  void CheckDiskFilesLocked();
  // The disk-tier reader, made on first use.
  DiskReader* Reader();
  // The spill file, made on first use in spill_dir_.
  Status MakeSpill();
  // After writes to the spill file: flushed, and the reader reads it as it is now
  // (opened on first use).
  Status SpillWritten();
  // `size` bytes at `bytes` appended to the spill file: the extents of a unit
  // (file -1 until the commit names the spill file).
  Status SpillBytes(const uint8_t* bytes, uint64_t size, std::vector<DiskExtent>* extents);
  // The extents of `info`'s bytes in the model's own files when every tensor's
  // bytes there equal `value(k)` (its bytes in memory order); false with `*why`
  // when they do not, or are not known.
  bool SourceExtents(const BlockTensors& info, const std::function<at::Tensor(size_t)>& value,
                     std::vector<DiskExtent>* extents, std::string* why);
  // The disk tier's reader in the core, with a ring pinned when the pinning cap
  // has room for `ring` bytes beside the weights (once).
  void UseReaderLocked(int64_t pinned_now, int64_t ring);
  // Moves of one unit between host memory and disk (see SetHostBudget).
  void ToDiskLocked(int block);
  // A host buffer of its own for a unit (pinned where the pinning cap has room).
  struct OwnBuffer {
    std::shared_ptr<AccountedBuffer> owner;
    uint8_t* data = nullptr;
    uint64_t size = 0;
    bool pinned = false;
  };
  OwnBuffer NewOwnBufferLocked(int block);
  // The unit's host copy is `buf` from now on (the core has it already; its bytes
  // are counted by the caller).
  void AdoptOwnBufferLocked(int block, const OwnBuffer& buf);
  // `bytes` (negative: freed) more of weights' host memory, pinned or pageable.
  void CountHostLocked(int64_t bytes, bool pinned);
  // Into a host buffer of its own: `fill` writes its bytes there.
  void ToOwnBufferLocked(int block, const std::function<void(uint8_t*)>& fill);
  // Units read through a pass (SetHostBudget's read_through): those that arrived
  // adopt their buffers, those whose read failed stay on disk (arrival_error_ says
  // why); with `finish`, the reads not done are done first (between passes).
  void SettleArrivalsLocked(bool finish);
  // Drops the chunk `c` once no unit uses it any more.
  void ReleaseChunkLocked(int c);
  // Bytes of `info` in host memory when it is held there (its transfer form for
  // a coded unit, the exact copy and the transfer form of an fp8 unit).
  static uint64_t HeldBytes(const BlockTensors& info);

  std::mutex mu_;
  at::Device device_{at::kCPU};
  at::Device alloc_device_{at::kCPU};
  int64_t chunk_bytes_;
  int64_t pin_cap_bytes_;
  std::unique_ptr<CopyEngine> engine_;
  HostCopyEngine* host_engine_ = nullptr;
  std::unique_ptr<TorchDeviceAllocator> allocator_;
  std::unique_ptr<StreamingRuntime> core_;
  std::unique_ptr<ExactCache> cache_;
  int64_t host_budget_bytes_;
  std::string spill_dir_;
  int read_ahead_;
  DiskReader::Options disk_options_;
  std::unique_ptr<DiskReader> reader_;  // outlives core_ (reset first by the destructor)
  std::unique_ptr<SpillFile> spill_;
  int spill_file_id_ = -1;
  std::map<std::string, int> source_ids_;  // the model's own files opened by the reader
  std::vector<std::string> source_paths_;  // by the runtime index BlockTensors::source uses
  std::vector<double> placement_compute_;  // the blocks' timed compute disk placement follows (empty: bytes)
  std::vector<int> disk_files_;            // every file the disk tier reads (checked before a load)
  std::string source_note_;                // why a unit meant for disk could not read from them
  std::string spill_error_;
  std::map<int, OwnBuffer> arrivals_;  // units read into these by the next pass
  std::string arrival_error_;
  uint64_t disk_over_bytes_ = 0;
  int fail_spill_writes_ = 0;
  bool disk_reader_used_ = false;
  std::vector<BlockTensors> blocks_;
  std::vector<Chunk> chunks_;
  std::vector<std::shared_ptr<AccountedBuffer>> transfer_buffers_;  // fp8 codes + scales
  std::vector<std::unique_ptr<BlockTransform>> transforms_;
  // all host bytes of this runtime still alive (the chunks outlive it while a
  // weight still points at them after close(restore_pageable=false))
  std::shared_ptr<std::atomic<int64_t>> live_host_bytes_ = std::make_shared<std::atomic<int64_t>>(0);
  std::unordered_set<const c10::TensorImpl*> seen_;
  std::unordered_set<std::string> pin_how_;
  std::vector<int> evicted_;
  int64_t host_bytes_ = 0;
  int64_t pinned_bytes_ = 0;
  int64_t pageable_bytes_ = 0;
  uint64_t writebacks_ = 0;
  std::map<std::string, int64_t> exact_skips_;  // why tensors of coded blocks are sent as stored
  int64_t exact_coded_tensors_ = 0;
  int64_t exact_stored_tensors_ = 0;
  int touched_ = -1;
  bool registering_ = false;
  bool closed_ = false;
  bool rates_measured_ = false;
};

}  // namespace pinstream

#endif  // PINSTREAM_TORCH_TORCH_RUNTIME_H_
