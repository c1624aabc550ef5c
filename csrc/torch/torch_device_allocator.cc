// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "torch/torch_device_allocator.h"

#include <c10/util/Exception.h>

#include <string>

#include "core/page_mapping.h"
#include "torch/live_bytes.h"

namespace pinstream {

TorchDeviceAllocator::TorchDeviceAllocator(at::Device device, uint64_t capacity)
    : device_(device), capacity_(capacity) {}

TorchDeviceAllocator::~TorchDeviceAllocator() {
  for (auto& kv : tensors_) Live().device -= kv.second.numel();
}

Status TorchDeviceAllocator::Allocate(uint64_t bytes, int64_t* id, void** ptr) {
  if (capacity_ != 0 && allocated_ + bytes > capacity_) {
    return Status::OutOfMemory(FormatBytes(bytes) + " requested with " + FormatBytes(capacity_ - allocated_) +
                               " of the " + FormatBytes(capacity_) + " device capacity free");
  }
  try {
    at::Tensor t;
    if (device_.is_cpu()) {
      // The host engine's "device": pages of our own, returned to the OS on free.
      PageMapping pages;
      PINSTREAM_RETURN_IF_ERROR(PageMapping::Map(bytes, &pages));
      const uint64_t mapped = pages.mapped();
      void* p = pages.Release();
      t = at::from_blob(
          p, {static_cast<int64_t>(bytes)}, [mapped](void* q) { PageMapping::Unmap(q, mapped); },
          at::TensorOptions().dtype(at::kByte));
    } else {
      t = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(device_));
    }
    *id = next_id_++;
    *ptr = t.data_ptr();
    tensors_.emplace(*id, std::move(t));
    Live().device += static_cast<int64_t>(bytes);
  } catch (const c10::OutOfMemoryError& e) {
    return Status::OutOfMemory("device allocation of " + FormatBytes(bytes) + " failed: " + e.what_without_backtrace());
  } catch (const c10::Error& e) {
    return Status::DeviceError(std::string("device allocation failed: ") + e.what_without_backtrace());
  }
  allocated_ += bytes;
  if (allocated_ > peak_) peak_ = allocated_;
  return Status::Ok();
}

void TorchDeviceAllocator::Free(int64_t id) {
  auto it = tensors_.find(id);
  if (it == tensors_.end()) return;
  allocated_ -= static_cast<uint64_t>(it->second.numel());
  Live().device -= it->second.numel();
  tensors_.erase(it);
}

}  // namespace pinstream
