// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// RAII owners of CUDA handles. Each type owns exactly one handle, frees it in
// its destructor, and can be moved but not copied. No raw cudaFree /
// cudaStreamDestroy / cudaEventDestroy / cudaFreeHost / cudaHostUnregister
// happens outside this file's implementation.
#ifndef PINSTREAM_CUDA_CUDA_RESOURCES_H_
#define PINSTREAM_CUDA_CUDA_RESOURCES_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/copy_engine.h"
#include "core/page_mapping.h"
#include "core/status.h"

namespace pinstream {

// Makes `device` current for the scope and puts the caller's device back at
// its end, so no PinStream call changes which device the host application
// (torch, ComfyUI) has current.
class CudaDeviceScope {
 public:
  explicit CudaDeviceScope(int device);
  ~CudaDeviceScope();
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;
  // The cudaSetDevice result (cudaSuccess when the device was made current).
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

// A non-blocking stream (it does not synchronize with the legacy stream).
class CudaStream {
 public:
  CudaStream() = default;
  static Status Create(int device, CudaStream* out);
  ~CudaStream();
  CudaStream(CudaStream&& other) noexcept;
  CudaStream& operator=(CudaStream&& other) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class CudaEvent {
 public:
  CudaEvent() = default;
  // timing=false gives the cheaper cudaEventDisableTiming kind. The event
  // belongs to `device` (it can be recorded only on that device's streams).
  static Status Create(int device, bool timing, CudaEvent* out);
  ~CudaEvent();
  CudaEvent(CudaEvent&& other) noexcept;
  CudaEvent& operator=(CudaEvent&& other) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// How to obtain pinned host memory.
enum class PinMode {
  kAuto,       // register our own page-aligned memory, else cudaHostAlloc, else pageable
  kRegister,   // only cudaHostRegister (in place)
  kHostAlloc,  // only cudaHostAlloc
  kPageable,   // no pinning (copies become synchronous)
};

// Host memory for one chunk of packed weights. Pinned where the system allows;
// `how()` says how it was obtained and, for pageable fallback, why.
class PinnedHostBuffer final : public HostBuffer {
 public:
  static Status Make(uint64_t bytes, PinMode mode, std::unique_ptr<HostBuffer>* out);
  ~PinnedHostBuffer() override;
  void* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  bool pinned() const override { return kind_ != Kind::kPageable; }
  std::string how() const override { return how_; }

 private:
  enum class Kind { kRegistered, kHostAlloc, kPageable };
  PinnedHostBuffer(PageMapping pages, void* data, uint64_t size, Kind kind, std::string how)
      : pages_(std::move(pages)), data_(data), size_(size), kind_(kind), how_(std::move(how)) {}
  PageMapping pages_;  // registered / pageable kinds: our own pages
  void* data_;
  uint64_t size_;
  Kind kind_;
  std::string how_;
};

// One cudaMalloc'ed buffer, freed by its destructor.
class CudaDeviceBuffer {
 public:
  CudaDeviceBuffer() = default;
  static Status Create(int device, uint64_t bytes, CudaDeviceBuffer* out);
  ~CudaDeviceBuffer();
  CudaDeviceBuffer(CudaDeviceBuffer&& other) noexcept;
  CudaDeviceBuffer& operator=(CudaDeviceBuffer&& other) noexcept;
  CudaDeviceBuffer(const CudaDeviceBuffer&) = delete;
  CudaDeviceBuffer& operator=(const CudaDeviceBuffer&) = delete;
  void* get() const { return ptr_; }

 private:
  void Reset();
  void* ptr_ = nullptr;
  int device_ = 0;
};

// cudaMalloc-backed DeviceAllocator (the bindings use torch's allocator
// instead, so that the framework's memory accounting sees our slots).
class CudaDeviceAllocator final : public DeviceAllocator {
 public:
  explicit CudaDeviceAllocator(int device);
  ~CudaDeviceAllocator() override;
  Status Allocate(uint64_t bytes, int64_t* id, void** ptr) override;
  void Free(int64_t id) override;
  uint64_t allocated_bytes() const override { return allocated_; }
  uint64_t peak_bytes() const override { return peak_; }
  void ResetPeak() override { peak_ = allocated_; }

 private:
  int device_;
  std::unique_ptr<std::unordered_map<int64_t, std::pair<void*, uint64_t>>> blocks_;
  int64_t next_id_ = 0;
  uint64_t allocated_ = 0;
  uint64_t peak_ = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_CUDA_CUDA_RESOURCES_H_
