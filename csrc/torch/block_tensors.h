// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// BlockTensors: the torch tensors of one registered unit and where they point.
// A weight is always the same TensorImpl the model holds (its Parameter); only
// its storage changes:
//   * at its packed host copy (`host_view`, in a pinned chunk) between uses,
//   * at its block's device copy (a resident allocation or a slot; a split
//     block's first tensors in the resident head) while on the device.
// Re-pointing swaps storage and offset in place (no Python per parameter).
// A weight changed in place on the device (its version counter moved) is
// copied back to its host copy before its device copy goes; untouched weights
// never are. Weights made under torch.inference_mode() have no version counter:
// they are never written back (PinStream's own patching writes into the host
// copy instead).
#ifndef PINSTREAM_TORCH_BLOCK_TENSORS_H_
#define PINSTREAM_TORCH_BLOCK_TENSORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/copy_engine.h"
#include "core/fp8.h"
#include "core/streaming_runtime.h"
#include "torch/torch_device_allocator.h"

namespace pinstream {

struct PackedTensor {
  at::Tensor param;      // the caller's tensor (same TensorImpl as its Parameter)
  std::string name;      // its name in the model, for error messages (may be empty)
  at::Tensor host_view;  // its bytes in the host chunk
  int64_t offset = 0;    // within the block
  int64_t nbytes = 0;
  // Its layout in the block: the weight's own strides when it is dense (a
  // transposed weight stays transposed, so kernels and results are the same
  // as unmanaged), else contiguous.
  std::vector<int64_t> strides;
  int job = -1;            // a coded block's tensor: its job in the block's transform
  int64_t version = 0;     // version counter when pointed at the device
  bool inference = false;  // made under torch.inference_mode(): no version counter
};

// The in-place-update counter of a weight (0 for one without a counter).
int64_t VersionOf(const at::Tensor& t);
bool IsInferenceWeight(const at::Tensor& t);

// A `dtype` tensor of `sizes` and `strides` over the bytes of `bytes` (uint8)
// from byte `offset` on, of the weight's kind (an inference tensor for a weight
// made under inference mode): the form a weight is re-pointed at.
at::Tensor AliasAs(const at::Tensor& bytes, int64_t offset, at::ScalarType dtype, at::IntArrayRef sizes,
                   at::IntArrayRef strides, bool inference);
// The same view of a packed tensor (its dtype, sizes, strides, kind).
at::Tensor AliasOf(const PackedTensor& pt, const at::Tensor& bytes, int64_t offset);
// The layout `t` keeps when packed: its strides when dense and
// non-overlapping (unless `contiguous` is asked), else row-major.
std::vector<int64_t> PackedStrides(const at::Tensor& t, bool contiguous);

class BlockTensors {
 public:
  std::vector<PackedTensor> tensors;
  int64_t bytes = 0;  // packed size (its device layout)
  bool streamable = true;
  bool fp8 = false;  // sent as fp8 codes + scales
  QuantError fp8_error;
  bool pinned = false;  // its host chunk (a coded block: its transfer bytes) is pinned
  int chunk = -1;       // index of its host chunk in the runtime
  // Sent in the exact coded form, which is its only host copy: between uses its
  // weights point at the shared placeholder (torch/placeholder.h).
  bool exact = false;
  const uint8_t* transfer = nullptr;  // a coded block's transfer bytes
  uint64_t transfer_bytes = 0;
  const BlockTransform* transform = nullptr;
  int transfer_buffer = -1;  // its transfer buffer (fp8, coded) in the runtime
  // Lives on disk (the disk tier): its bytes (a coded block's transfer bytes)
  // are `extents` of a file and nowhere in RAM; between uses its weights point
  // at the shared placeholder, as a coded block's do.
  // In host memory with `backed`: `extents` hold a copy of its bytes, which
  // were `backed_hash` (ContentHash) when it was read from there; a move to disk
  // writes nothing while they still are (changes that PinStream does not see,
  // such as a weight patched in place under inference mode, show in the hash).
  bool disk = false;
  bool backed = false;
  uint64_t backed_hash = 0;
  std::vector<DiskExtent> extents;
  uint64_t disk_bytes = 0;
  // Where each tensor's bytes are as stored in one of the model's own files
  // (runtime file index, offset); empty: nowhere known. Checked before use.
  std::vector<std::pair<int, int64_t>> source;

  bool on_device() const { return location_ >= 0; }

  // Fails (std::runtime_error naming the weight) when the caller converted or
  // replaced a weight while offloaded: its stored copy no longer fits it.
  void CheckUnchanged() const;
  // Points every tensor at the block's copy at `loc` (views cached per
  // allocation). No-op when already there.
  void PointAtDevice(const DeviceLocation& loc, const TorchDeviceAllocator& allocator);
  void PointAtHost();
  // Copies tensors changed in place on the device back to the host copy;
  // returns whether it did. (Not for coded blocks: nothing to write into.)
  bool WriteBackIfModified();
  // The values of tensor `k` on the host: its host view, or for a coded block
  // a new tensor decoded from the transfer bytes. Not for a disk block (see ValueFrom).
  at::Tensor HostValue(size_t k, int threads) const;
  // A new tensor with the values of tensor `k` from the block's bytes at
  // `bytes` (its layout, or a coded block's transfer bytes): how a disk
  // block's values are made from what was read.
  at::Tensor ValueFrom(size_t k, const uint8_t* bytes, int threads) const;
  // The bytes of the block ValueFrom(k) reads: [*lo, *hi).
  void RangeOf(size_t k, uint64_t* lo, uint64_t* hi) const;
  // The first weight whose storage is not where PinStream put it (code PinStream
  // does not manage moved it: module.to(), another patcher), or nullptr.
  const PackedTensor* Displaced() const;
  // Drops the cached device views (their allocations are about to go).
  void ClearViews() { view_cache_.clear(); }
  // At close: each weight gets its own ordinary memory again (a copy of its
  // host view, of its kind) when `restore_pageable`; host views are dropped.
  // A disk block's values come from `disk_bytes` (its bytes, read by the caller).
  void Detach(bool restore_pageable, const uint8_t* disk_bytes = nullptr);

 private:
  const std::vector<at::Tensor>& ViewsAt(const DeviceLocation& loc, const TorchDeviceAllocator& allocator);

  int64_t location_ = -1;  // allocation the tensors point at, -1 = host
  std::vector<std::pair<int64_t, std::vector<at::Tensor>>> view_cache_;
};

}  // namespace pinstream

#endif  // PINSTREAM_TORCH_BLOCK_TENSORS_H_
