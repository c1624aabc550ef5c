// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// CudaCopyEngine: uploads on one dedicated non-blocking stream with
// cudaMemcpyAsync; the compute stream waits with cudaStreamWaitEvent, the copy
// stream waits on release events the same way. The host never waits on the
// hot path. Optional timing events measure each copy and the compute stream's
// waits (stall); they are read back lazily with cudaEventQuery.
#ifndef PINSTREAM_CUDA_CUDA_COPY_ENGINE_H_
#define PINSTREAM_CUDA_CUDA_COPY_ENGINE_H_

#include <cuda_runtime_api.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "core/copy_engine.h"
#include "cuda/cuda_resources.h"

namespace pinstream {

struct CudaEngineOptions {
  int device = 0;
  bool timing = true;  // per-copy and stall timing events
  PinMode pin_mode = PinMode::kAuto;
};

class CudaCopyEngine final : public CopyEngine {
 public:
  static Status Create(const CudaEngineOptions& options, std::unique_ptr<CudaCopyEngine>* out);
  ~CudaCopyEngine() override;

  std::string name() const override { return "cuda"; }
  Status CreateEvent(EventId* id) override;
  Status AllocateHostBuffer(uint64_t bytes, bool pin, std::unique_ptr<HostBuffer>* out) override;
  Status Synchronize() override;
  Status EnqueueCopy(void* device_dst, const void* host_src, uint64_t bytes, int tag) override;
  Status RecordCopyEvent(EventId event) override;
  Status ComputeWaitFor(EventId event, void* compute_queue) override;
  Status RecordComputeEvent(EventId event, void* compute_queue) override;
  Status CopyWaitFor(EventId event) override;
  Status CopyEventDone(EventId event, bool wait, bool* done) override;
  Status MarkCompute(void* compute_queue, bool begin, int tag) override;
  Status EnqueueTransform(const BlockTransform* transform, const void* staging, void* out) override;
  void CollectTimings(EngineTimings* out, bool wait) override;

  cudaStream_t copy_stream() const { return stream_.get(); }
  int device() const { return options_.device; }

 private:
  explicit CudaCopyEngine(const CudaEngineOptions& options) : options_(options) {}
  struct Pending {
    int tag;  // block id, or -1 for a stall measurement
    uint64_t bytes;
    int start;  // indices into timing_events_
    int end;
  };
  Status TakeTimingPair(int* start, int* end);
  int compute_start_ = -1, compute_end_ = -1;  // the timing pair of the span of compute open now
  int compute_tag_ = -1;                       // and the tag its begin was given

  CudaEngineOptions options_;
  CudaStream stream_;
  std::vector<CudaEvent> events_;
  std::vector<CudaEvent> timing_events_;
  std::vector<int> free_timing_;
  std::deque<Pending> pending_;
  CudaDeviceBuffer decode_errors_;  // corrupt chunks the exact decoder found (one int)
};

}  // namespace pinstream

#endif  // PINSTREAM_CUDA_CUDA_COPY_ENGINE_H_
