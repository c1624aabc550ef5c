// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda/cuda_resources.h"

#include <utility>

#include "cuda/cuda_check.h"

namespace pinstream {

CudaDeviceScope::CudaDeviceScope(int device) {
  if (cudaGetDevice(&previous_) != cudaSuccess) {
    cudaGetLastError();
    previous_ = -1;
  }
  if (previous_ != device) status_ = cudaSetDevice(device);
}

CudaDeviceScope::~CudaDeviceScope() {
  int now = -1;
  if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

Status CudaStream::Create(int device, CudaStream* out) {
  CudaDeviceScope scope(device);
  PINSTREAM_CUDA_RETURN_IF_ERROR(scope.status());
  cudaStream_t s = nullptr;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *out = CudaStream();
  out->stream_ = s;
  return Status::Ok();
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

CudaStream::CudaStream(CudaStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

Status CudaEvent::Create(int device, bool timing, CudaEvent* out) {
  CudaDeviceScope scope(device);
  PINSTREAM_CUDA_RETURN_IF_ERROR(scope.status());
  cudaEvent_t e = nullptr;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  *out = CudaEvent();
  out->event_ = e;
  return Status::Ok();
}

CudaEvent::~CudaEvent() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

Status PinnedHostBuffer::Make(uint64_t bytes, PinMode mode, std::unique_ptr<HostBuffer>* out) {
  std::string why;
  if (mode == PinMode::kAuto || mode == PinMode::kRegister) {
    PageMapping pages;
    PINSTREAM_RETURN_IF_ERROR(PageMapping::Map(bytes, &pages));
    cudaError_t err = cudaHostRegister(pages.data(), pages.mapped(), cudaHostRegisterDefault);
    if (err == cudaSuccess) {
      void* p = pages.data();
      out->reset(new PinnedHostBuffer(std::move(pages), p, bytes, Kind::kRegistered, "cudaHostRegister"));
      return Status::Ok();
    }
    cudaGetLastError();  // clear the error state
    why = std::string("cudaHostRegister: ") + cudaGetErrorString(err);
    if (mode == PinMode::kRegister) {
      return Status::OutOfMemory("pinning " + FormatBytes(pages.mapped()) + " failed (" + why + ")");
    }
  }
  if (mode == PinMode::kAuto || mode == PinMode::kHostAlloc) {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
    if (err == cudaSuccess) {
      out->reset(new PinnedHostBuffer(PageMapping(), p, bytes, Kind::kHostAlloc, "cudaHostAlloc"));
      return Status::Ok();
    }
    cudaGetLastError();
    why += std::string(why.empty() ? "" : "; ") + "cudaHostAlloc: " + cudaGetErrorString(err);
    if (mode == PinMode::kHostAlloc) {
      return Status::OutOfMemory("pinned allocation of " + FormatBytes(bytes) + " failed (" + why + ")");
    }
  }
  PageMapping pages;
  PINSTREAM_RETURN_IF_ERROR(PageMapping::Map(bytes, &pages));
  void* p = pages.data();
  out->reset(new PinnedHostBuffer(std::move(pages), p, bytes, Kind::kPageable,
                                  why.empty() ? "pageable" : "pageable (" + why + ")"));
  return Status::Ok();
}

PinnedHostBuffer::~PinnedHostBuffer() {
  switch (kind_) {
    case Kind::kRegistered:
      cudaHostUnregister(data_);
      break;  // pages_ unmaps
    case Kind::kHostAlloc:
      cudaFreeHost(data_);
      break;
    case Kind::kPageable:
      break;
  }
}

Status CudaDeviceBuffer::Create(int device, uint64_t bytes, CudaDeviceBuffer* out) {
  CudaDeviceScope scope(device);
  PINSTREAM_CUDA_RETURN_IF_ERROR(scope.status());
  void* p = nullptr;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
  out->Reset();
  out->ptr_ = p;
  out->device_ = device;
  return Status::Ok();
}

void CudaDeviceBuffer::Reset() {
  if (ptr_ != nullptr) {
    CudaDeviceScope scope(device_);
    cudaFree(ptr_);
  }
  ptr_ = nullptr;
}

CudaDeviceBuffer::~CudaDeviceBuffer() { Reset(); }

CudaDeviceBuffer::CudaDeviceBuffer(CudaDeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), device_(other.device_) {}

CudaDeviceBuffer& CudaDeviceBuffer::operator=(CudaDeviceBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    ptr_ = std::exchange(other.ptr_, nullptr);
    device_ = other.device_;
  }
  return *this;
}

CudaDeviceAllocator::CudaDeviceAllocator(int device)
    : device_(device), blocks_(new std::unordered_map<int64_t, std::pair<void*, uint64_t>>()) {}

CudaDeviceAllocator::~CudaDeviceAllocator() {
  CudaDeviceScope scope(device_);
  for (auto& kv : *blocks_) cudaFree(kv.second.first);
}

Status CudaDeviceAllocator::Allocate(uint64_t bytes, int64_t* id, void** ptr) {
  CudaDeviceScope scope(device_);
  PINSTREAM_CUDA_RETURN_IF_ERROR(scope.status());
  void* p = nullptr;
  Status s = PINSTREAM_CUDA_STATUS(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
  if (!s.ok()) {
    cudaGetLastError();
    return s;
  }
  *id = next_id_++;
  *ptr = p;
  (*blocks_)[*id] = {p, bytes};
  allocated_ += bytes;
  if (allocated_ > peak_) peak_ = allocated_;
  return Status::Ok();
}

void CudaDeviceAllocator::Free(int64_t id) {
  auto it = blocks_->find(id);
  if (it == blocks_->end()) return;
  CudaDeviceScope scope(device_);
  cudaFree(it->second.first);
  allocated_ -= it->second.second;
  blocks_->erase(it);
}

}  // namespace pinstream
