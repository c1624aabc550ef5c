// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda/cuda_copy_engine.h"

#include "cuda/cuda_check.h"
#include "cuda/exact_decode.h"
#include "cuda/fp8_dequant.h"

namespace pinstream {

namespace {
constexpr size_t kMaxPendingTimings = 4096;
constexpr int kTransformTag = -2;  // a timing pair around a block's transforms (-1: a compute wait)
constexpr int kComputeTag = -3;    // a timing pair around a span of compute
}  // namespace

Status CudaCopyEngine::Create(const CudaEngineOptions& options, std::unique_ptr<CudaCopyEngine>* out) {
  std::unique_ptr<CudaCopyEngine> engine(new CudaCopyEngine(options));
  PINSTREAM_RETURN_IF_ERROR(CudaStream::Create(options.device, &engine->stream_));
  *out = std::move(engine);
  return Status::Ok();
}

CudaCopyEngine::~CudaCopyEngine() {
  if (stream_.get() != nullptr) cudaStreamSynchronize(stream_.get());
}

Status CudaCopyEngine::CreateEvent(EventId* id) {
  CudaEvent e;
  PINSTREAM_RETURN_IF_ERROR(CudaEvent::Create(options_.device, /*timing=*/false, &e));
  events_.push_back(std::move(e));
  *id = static_cast<EventId>(events_.size()) - 1;
  return Status::Ok();
}

Status CudaCopyEngine::AllocateHostBuffer(uint64_t bytes, bool pin, std::unique_ptr<HostBuffer>* out) {
  CudaDeviceScope scope(options_.device);
  PINSTREAM_CUDA_RETURN_IF_ERROR(scope.status());
  return PinnedHostBuffer::Make(bytes, pin ? options_.pin_mode : PinMode::kPageable, out);
}

Status CudaCopyEngine::Synchronize() {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_.get()));
  if (decode_errors_.get() != nullptr) {
    int errors = 0;
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMemcpy(&errors, decode_errors_.get(), sizeof(int), cudaMemcpyDeviceToHost));
    if (errors != 0) {
      PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMemset(decode_errors_.get(), 0, sizeof(int)));
      return Status::DeviceError("exact decode: " + std::to_string(errors) +
                                 " chunk(s) of coded weights were corrupt and were not decoded; the host copy is "
                                 "damaged: detach and offload the model again");
    }
  }
  return Status::Ok();
}

Status CudaCopyEngine::TakeTimingPair(int* start, int* end) {
  for (int* slot : {start, end}) {
    if (free_timing_.empty()) {
      CudaEvent e;
      PINSTREAM_RETURN_IF_ERROR(CudaEvent::Create(options_.device, /*timing=*/true, &e));
      timing_events_.push_back(std::move(e));
      free_timing_.push_back(static_cast<int>(timing_events_.size()) - 1);
    }
    *slot = free_timing_.back();
    free_timing_.pop_back();
  }
  return Status::Ok();
}

Status CudaCopyEngine::EnqueueCopy(void* device_dst, const void* host_src, uint64_t bytes, int tag) {
  int start = -1, end = -1;
  const bool timed = options_.timing && pending_.size() < kMaxPendingTimings && TakeTimingPair(&start, &end).ok();
  if (timed) {
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[start].get(), stream_.get()));
  }
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream_.get()));
  if (timed) {
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[end].get(), stream_.get()));
    pending_.push_back(Pending{tag, bytes, start, end});
  }
  return Status::Ok();
}

Status CudaCopyEngine::RecordCopyEvent(EventId event) {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[event].get(), stream_.get()));
  return Status::Ok();
}

Status CudaCopyEngine::ComputeWaitFor(EventId event, void* compute_queue) {
  cudaStream_t q = static_cast<cudaStream_t>(compute_queue);
  int start = -1, end = -1;
  const bool timed = options_.timing && pending_.size() < kMaxPendingTimings && TakeTimingPair(&start, &end).ok();
  if (timed) PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[start].get(), q));
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(q, events_[event].get(), 0));
  if (timed) {
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[end].get(), q));
    pending_.push_back(Pending{-1, 0, start, end});
  }
  return Status::Ok();
}

Status CudaCopyEngine::RecordComputeEvent(EventId event, void* compute_queue) {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[event].get(), static_cast<cudaStream_t>(compute_queue)));
  return Status::Ok();
}

Status CudaCopyEngine::CopyWaitFor(EventId event) {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_.get(), events_[event].get(), 0));
  return Status::Ok();
}

Status CudaCopyEngine::CopyEventDone(EventId event, bool wait, bool* done) {
  if (wait) {
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[event].get()));
    *done = true;
    return Status::Ok();
  }
  const cudaError_t e = cudaEventQuery(events_[event].get());
  if (e == cudaErrorNotReady) {
    *done = false;
    return Status::Ok();
  }
  PINSTREAM_CUDA_RETURN_IF_ERROR(e);
  *done = true;
  return Status::Ok();
}

Status CudaCopyEngine::MarkCompute(void* compute_queue, bool begin, int tag) {
  cudaStream_t q = static_cast<cudaStream_t>(compute_queue);
  if (begin) {
    if (compute_start_ >= 0 || !options_.timing || pending_.size() >= kMaxPendingTimings) return Status::Ok();
    if (!TakeTimingPair(&compute_start_, &compute_end_).ok()) {
      compute_start_ = compute_end_ = -1;
      return Status::Ok();
    }
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[compute_start_].get(), q));
    compute_tag_ = tag;
    return Status::Ok();
  }
  if (compute_start_ < 0) return Status::Ok();
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[compute_end_].get(), q));
  // the span's tag rides in `bytes` (a compute span moves none)
  pending_.push_back(
      Pending{kComputeTag, static_cast<uint64_t>(static_cast<int64_t>(compute_tag_)), compute_start_, compute_end_});
  compute_start_ = compute_end_ = -1;
  return Status::Ok();
}

Status CudaCopyEngine::EnqueueTransform(const BlockTransform* transform, const void* staging, void* out) {
  // On the copy stream, right behind the upload: the compute stream's wait on
  // the block's event (recorded after this) covers the finished dequantization.
  // Kernels launch on the current device: make it the stream's.
  CudaDeviceScope scope(options_.device);
  PINSTREAM_CUDA_RETURN_IF_ERROR(scope.status());
  const auto* src = static_cast<const uint8_t*>(staging);
  auto* dst = static_cast<uint8_t*>(out);
  int start = -1, end = -1;
  const bool timed = options_.timing && pending_.size() < kMaxPendingTimings && TakeTimingPair(&start, &end).ok();
  if (timed) PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[start].get(), stream_.get()));
  uint64_t written = 0;
  for (const TransformJob& job : transform->jobs) {
    switch (job.kind) {
      case TransformJob::Kind::kCopy:
        if (job.bytes > 0) {
          PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst + job.dst_offset, src + job.src_offset, job.bytes,
                                                         cudaMemcpyDeviceToDevice, stream_.get()));
        }
        written += job.bytes;
        break;
      case TransformJob::Kind::kDequantize:
        PINSTREAM_RETURN_IF_ERROR(LaunchDequantizeFp8(DequantParamsFor(job, src, dst), stream_.get()));
        written += static_cast<uint64_t>(job.rows * job.cols) * DtypeSize(job.out_dtype);
        break;
      case TransformJob::Kind::kDecodeExact:
        if (decode_errors_.get() == nullptr) {
          PINSTREAM_RETURN_IF_ERROR(CudaDeviceBuffer::Create(options_.device, sizeof(int), &decode_errors_));
          PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(decode_errors_.get(), 0, sizeof(int), stream_.get()));
        }
        PINSTREAM_RETURN_IF_ERROR(LaunchExactDecode(src + job.src_offset, job.exact, dst + job.dst_offset,
                                                    static_cast<int*>(decode_errors_.get()), stream_.get()));
        written += job.exact.plain_bytes();
        break;
    }
  }
  if (timed) {
    PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventRecord(timing_events_[end].get(), stream_.get()));
    pending_.push_back(Pending{kTransformTag, written, start, end});
  }
  return Status::Ok();
}

void CudaCopyEngine::CollectTimings(EngineTimings* out, bool wait) {
  // Copy and stall timings complete out of order across the two streams, so
  // look at every pending pair rather than stopping at the first unfinished.
  for (auto it = pending_.begin(); it != pending_.end();) {
    cudaEvent_t end = timing_events_[it->end].get();
    if (wait) {
      cudaEventSynchronize(end);
    } else if (cudaEventQuery(end) != cudaSuccess) {
      cudaGetLastError();  // cudaErrorNotReady is not an error to keep
      ++it;
      continue;
    }
    float ms = 0;
    if (cudaEventElapsedTime(&ms, timing_events_[it->start].get(), end) != cudaSuccess) {
      cudaGetLastError();
      ms = 0;
    }
    if (it->tag >= 0) {
      out->copies.push_back(EngineTimings::Copy{it->tag, it->bytes, ms});
    } else if (it->tag == kTransformTag) {
      out->transform_ms += ms;
      out->transform_bytes += it->bytes;
    } else if (it->tag == kComputeTag) {
      out->computes.push_back(EngineTimings::Compute{static_cast<int>(static_cast<int64_t>(it->bytes)), ms});
    } else {
      out->stall_ms += ms;
    }
    free_timing_.push_back(it->start);
    free_timing_.push_back(it->end);
    it = pending_.erase(it);
  }
}

}  // namespace pinstream
