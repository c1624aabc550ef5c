// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// TorchDeviceAllocator: the DeviceAllocator the core uses under torch. Each
// allocation (a slot or a resident block) is a uint8 torch tensor: from torch's
// caching allocator on a CUDA device, so the framework's memory accounting
// (and ComfyUI's) sees it; pages of our own on the host engine's "device".
// Weights are then re-pointed at views of these tensors.
#ifndef PINSTREAM_TORCH_TORCH_DEVICE_ALLOCATOR_H_
#define PINSTREAM_TORCH_TORCH_DEVICE_ALLOCATOR_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <unordered_map>

#include "core/copy_engine.h"

namespace pinstream {

class TorchDeviceAllocator final : public DeviceAllocator {
 public:
  // capacity 0: no limit of our own (the device's applies).
  TorchDeviceAllocator(at::Device device, uint64_t capacity);
  ~TorchDeviceAllocator() override;

  Status Allocate(uint64_t bytes, int64_t* id, void** ptr) override;
  void Free(int64_t id) override;
  uint64_t allocated_bytes() const override { return allocated_; }
  uint64_t peak_bytes() const override { return peak_; }
  void ResetPeak() override { peak_ = allocated_; }
  void set_capacity(uint64_t bytes) { capacity_ = bytes; }
  // The tensor of allocation `id` (must be live).
  const at::Tensor& tensor(int64_t id) const { return tensors_.at(id); }

 private:
  at::Device device_;
  uint64_t capacity_;
  std::unordered_map<int64_t, at::Tensor> tensors_;
  int64_t next_id_ = 0;
  uint64_t allocated_ = 0;
  uint64_t peak_ = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_TORCH_TORCH_DEVICE_ALLOCATOR_H_
