// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The interfaces the core schedules against. A CopyEngine is a link between
// host memory and a device: one copy queue (a CUDA stream, or a worker thread
// in the host engine) and the compute queue of the caller. Events order the two
// queues without the host waiting:
//
//   upload:   copy queue   EnqueueCopy ... RecordCopyEvent(up)
//   acquire:  compute queue ComputeWaitFor(up)         (GPU-side wait)
//   release:  compute queue RecordComputeEvent(rel)
//   reuse:    copy queue   CopyWaitFor(rel) before overwriting the slot
//
// Events are re-recordable, with CUDA semantics: a wait applies to the most
// recent record made before the wait was issued; waiting on an event never
// recorded returns at once.
#ifndef PINSTREAM_CORE_COPY_ENGINE_H_
#define PINSTREAM_CORE_COPY_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/exact_codec.h"
#include "core/fp8.h"
#include "core/status.h"

namespace pinstream {

using EventId = int;

// What to do with a block's bytes after they reach the device, when they were
// sent in a transfer format (fp8, exact coding): each job writes one tensor of
// the block's device layout from the staging area the upload filled.
struct TransformJob {
  enum class Kind { kDequantize, kCopy, kDecodeExact };
  Kind kind = Kind::kCopy;
  uint64_t src_offset = 0;     // in staging: codes (dequantize), the coded tensor (decode) or raw bytes (copy)
  uint64_t scales_offset = 0;  // in staging: fp32 scales, one per row
  uint64_t dst_offset = 0;     // in the block's device layout
  uint64_t bytes = 0;          // copy only
  int64_t rows = 0;
  int64_t cols = 0;
  FloatDtype out_dtype = FloatDtype::kBFloat16;
  Fp8Format format = Fp8Format::kE4M3;
  ExactLayout exact;  // decode: the coded tensor's layout (exact.bytes of it at src_offset)
};

struct BlockTransform {
  std::vector<TransformJob> jobs;
};

// The dequantization a kDequantize job asks for, on `staging` -> `out`.
inline Fp8DequantParams DequantParamsFor(const TransformJob& job, const uint8_t* staging, uint8_t* out) {
  Fp8DequantParams p;
  p.q = staging + job.src_offset;
  p.format = job.format;
  p.scales = reinterpret_cast<const float*>(staging + job.scales_offset);
  p.scale_layout = ScaleLayout::kPerRow;
  p.rows = job.rows;
  p.cols = job.cols;
  p.out_dtype = job.out_dtype;
  p.out = out + job.dst_offset;
  return p;
}

// Host memory owned by an engine: pinned (page-locked, registered with the
// device) where possible. Freed (and unpinned) by its destructor.
class HostBuffer {
 public:
  virtual ~HostBuffer() = default;
  virtual void* data() const = 0;
  virtual uint64_t size() const = 0;
  // True when the device can DMA from it (copies are asynchronous).
  virtual bool pinned() const = 0;
  // How the memory was obtained, e.g. "cudaHostRegister", "cudaHostAlloc",
  // "pageable (cudaHostRegister failed: ...)".
  virtual std::string how() const = 0;
};

// Device memory for slots and resident blocks.
class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // Allocates `bytes`; returns an allocation id (>= 0) and its address.
  virtual Status Allocate(uint64_t bytes, int64_t* id, void** ptr) = 0;
  virtual void Free(int64_t id) = 0;
  virtual uint64_t allocated_bytes() const = 0;
  virtual uint64_t peak_bytes() const = 0;
  virtual void ResetPeak() = 0;
};

// Timing gathered by an engine since the last collection.
struct EngineTimings {
  struct Copy {
    int tag;  // the block id given to EnqueueCopy
    uint64_t bytes;
    double ms;  // time the copy took on the copy queue
  };
  std::vector<Copy> copies;
  double stall_ms = 0;  // time the compute queue waited in ComputeWaitFor
  // transforms (fp8 dequantize, exact decode): time on the copy queue, and the
  // bytes of device layout they wrote
  double transform_ms = 0;
  uint64_t transform_bytes = 0;
  // compute: each span the compute queue spent between MarkCompute(begin) and
  // MarkCompute(end) that finished, with the tag its begin was given
  struct Compute {
    int tag;
    double ms;
  };
  std::vector<Compute> computes;
};

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual std::string name() const = 0;

  // Not on the hot path.
  virtual Status CreateEvent(EventId* id) = 0;
  // pin=false asks for ordinary pageable memory (over the pinning cap).
  virtual Status AllocateHostBuffer(uint64_t bytes, bool pin, std::unique_ptr<HostBuffer>* out) = 0;
  // Host waits until every queued copy has finished.
  virtual Status Synchronize() = 0;

  // Hot path: none of these makes the host wait, except ComputeWaitFor on an
  // engine whose compute queue is the host thread itself (the host engine).
  virtual Status EnqueueCopy(void* device_dst, const void* host_src, uint64_t bytes, int tag) = 0;
  virtual Status RecordCopyEvent(EventId event) = 0;
  virtual Status ComputeWaitFor(EventId event, void* compute_queue) = 0;
  virtual Status RecordComputeEvent(EventId event, void* compute_queue) = 0;
  virtual Status CopyWaitFor(EventId event) = 0;
  // Whether the latest record of copy event `event` has completed on the copy
  // queue (an event never recorded is complete); wait=true makes the host wait
  // for it. Not on the compute path: the disk tier uses it to know when a
  // pinned read buffer may be refilled.
  virtual Status CopyEventDone(EventId event, bool wait, bool* done) = 0;
  // Marks the start (begin=true) or end of a span of compute on
  // `compute_queue` (the runtime marks each block's use), timed like the
  // copies; what the look-ahead is measured against. An engine that cannot
  // time a queue ignores it. `tag`: the block whose use a span begins with.
  virtual Status MarkCompute(void* compute_queue, bool begin, int tag) = 0;
  // On the copy queue, after the copy into `staging`: runs `transform`, writing
  // the block's device layout at `out` (fp8 dequantization, raw copies).
  virtual Status EnqueueTransform(const BlockTransform* transform, const void* staging, void* out) = 0;

  // Moves finished timings into `out` (appending). With wait=false only the
  // timings already complete are taken (no host wait).
  virtual void CollectTimings(EngineTimings* out, bool wait) = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_COPY_ENGINE_H_
