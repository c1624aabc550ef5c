// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda/cuda_resources.h"

#include <sys/mman.h>

#include <utility>

#include "cuda/cuda_check.h"

namespace pinstream {

Status CudaStream::Create(int device, CudaStream* out) {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  *out = CudaStream();
  out->stream_ = s;
  return Status::Ok();
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

Status CudaEvent::Create(bool timing, CudaEvent* out) {
  cudaEvent_t e = nullptr;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(
      &e, timing ? cudaEventDefault : cudaEventDisableTiming));
  *out = CudaEvent();
  out->event_ = e;
  return Status::Ok();
}

CudaEvent::~CudaEvent() {
  if (event_ != nullptr) cudaEventDestroy(event_);
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
  if (this != &other) {
    if (event_ != nullptr) cudaEventDestroy(event_);
    event_ = std::exchange(other.event_, nullptr);
  }
  return *this;
}

namespace {
constexpr uint64_t kPage = 4096;

void* MapPages(uint64_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}
}  // namespace

Status PinnedHostBuffer::Make(uint64_t bytes, PinMode mode,
                              std::unique_ptr<HostBuffer>* out) {
  const uint64_t mapped = (bytes + kPage - 1) / kPage * kPage + (bytes == 0 ? kPage : 0);
  std::string why;
  if (mode == PinMode::kAuto || mode == PinMode::kRegister) {
    void* p = MapPages(mapped);
    if (p == nullptr) {
      return Status::OutOfMemory("mmap of " + FormatBytes(mapped) + " host bytes failed");
    }
    cudaError_t err = cudaHostRegister(p, mapped, cudaHostRegisterDefault);
    if (err == cudaSuccess) {
      out->reset(new PinnedHostBuffer(p, bytes, mapped, Kind::kRegistered,
                                      "cudaHostRegister"));
      return Status::Ok();
    }
    cudaGetLastError();  // clear the sticky-free error state
    munmap(p, mapped);
    why = std::string("cudaHostRegister: ") + cudaGetErrorString(err);
    if (mode == PinMode::kRegister) {
      return Status::OutOfMemory("pinning " + FormatBytes(mapped) + " failed (" + why + ")");
    }
  }
  if (mode == PinMode::kAuto || mode == PinMode::kHostAlloc) {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
    if (err == cudaSuccess) {
      out->reset(new PinnedHostBuffer(p, bytes, 0, Kind::kHostAlloc, "cudaHostAlloc"));
      return Status::Ok();
    }
    cudaGetLastError();
    why += std::string(why.empty() ? "" : "; ") + "cudaHostAlloc: " + cudaGetErrorString(err);
    if (mode == PinMode::kHostAlloc) {
      return Status::OutOfMemory("pinned allocation of " + FormatBytes(bytes) +
                                 " failed (" + why + ")");
    }
  }
  void* p = MapPages(mapped);
  if (p == nullptr) {
    return Status::OutOfMemory("mmap of " + FormatBytes(mapped) + " host bytes failed");
  }
  out->reset(new PinnedHostBuffer(p, bytes, mapped, Kind::kPageable,
                                  why.empty() ? "pageable" : "pageable (" + why + ")"));
  return Status::Ok();
}

PinnedHostBuffer::~PinnedHostBuffer() {
  switch (kind_) {
    case Kind::kRegistered:
      cudaHostUnregister(data_);
      munmap(data_, mapped_);
      break;
    case Kind::kHostAlloc:
      cudaFreeHost(data_);
      break;
    case Kind::kPageable:
      munmap(data_, mapped_);
      break;
  }
}

CudaDeviceAllocator::CudaDeviceAllocator(int device)
    : device_(device),
      blocks_(new std::unordered_map<int64_t, std::pair<void*, uint64_t>>()) {}

CudaDeviceAllocator::~CudaDeviceAllocator() {
  for (auto& kv : *blocks_) cudaFree(kv.second.first);
}

Status CudaDeviceAllocator::Allocate(uint64_t bytes, int64_t* id, void** ptr) {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
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
  cudaFree(it->second.first);
  allocated_ -= it->second.second;
  blocks_->erase(it);
}

}  // namespace pinstream
