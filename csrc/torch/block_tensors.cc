// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "torch/block_tensors.h"

#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "core/exact_block.h"
#include "torch/errors.h"

namespace pinstream {

// Tensors made under torch.inference_mode() (ComfyUI runs every prompt, loaders
// included, in it) have no counter: they report 0. Such a tensor keeps its
// disabled counter after set_data re-points it at a normal tensor
// (is_inference() is then false), so the counter itself is asked.
int64_t VersionOf(const at::Tensor& t) {
  const c10::VariableVersion& v = t.unsafeGetTensorImpl()->version_counter();
  return v.enabled() ? static_cast<int64_t>(v.current_version()) : 0;
}

bool IsInferenceWeight(const at::Tensor& t) { return !t.unsafeGetTensorImpl()->version_counter().enabled(); }

// set_data gives a weight the dispatch keys of its new data while it keeps its
// own version counter, so the alias must be of the weight's kind, whatever mode
// offload() or the forward runs in: an inference tensor for a weight made under
// inference mode (a normal alias would leave it a normal tensor without a
// counter, which torch's ops reject), a normal one otherwise.
at::Tensor AliasAs(const at::Tensor& bytes, int64_t offset, at::ScalarType dtype, at::IntArrayRef sizes,
                   at::IntArrayRef strides, bool inference) {
  const int64_t esize = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t start = bytes.storage_offset() + offset;
  TORCH_CHECK(start % esize == 0, "PinStream: internal error: misaligned tensor offset ", start);
  c10::InferenceMode guard(inference);
  at::Tensor t = at::empty({0}, bytes.options().dtype(dtype));
  t.set_(bytes.storage(), start / esize, sizes, strides);
  return t;
}

at::Tensor AliasOf(const PackedTensor& pt, const at::Tensor& bytes, int64_t offset) {
  return AliasAs(bytes, offset, pt.host_view.scalar_type(), pt.host_view.sizes(), pt.strides, pt.inference);
}

std::vector<int64_t> PackedStrides(const at::Tensor& t, bool contiguous) {
  if (!contiguous && t.is_non_overlapping_and_dense()) return t.strides().vec();
  std::vector<int64_t> strides(static_cast<size_t>(t.dim()));
  int64_t s = 1;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    strides[static_cast<size_t>(d)] = s;
    s *= std::max<int64_t>(t.size(d), 1);
  }
  return strides;
}

namespace {
// Re-points `param` at `view` (same sizes and strides by construction). Within
// one device type only the storage and offset change: cheaper than set_data,
// which also rebuilds dispatch keys and layout metadata.
void Repoint(at::Tensor& param, const at::Tensor& view) {
  if (param.device() == view.device() && param.dtype() == view.dtype()) {
    c10::TensorImpl* impl = param.unsafeGetTensorImpl();
    impl->set_storage_keep_dtype(view.storage());
    impl->set_storage_offset(view.storage_offset());
  } else {
    param.set_data(view);
  }
}
}  // namespace

void BlockTensors::CheckUnchanged() const {
  for (const PackedTensor& pt : tensors) {
    if (pt.param.scalar_type() == pt.host_view.scalar_type() && pt.param.sizes() == pt.host_view.sizes()) {
      continue;
    }
    const std::string who = pt.name.empty() ? std::string("a weight") : pt.name;
    if (pt.param.scalar_type() != pt.host_view.scalar_type()) {
      throw std::runtime_error(
          "PinStream: " + who + " was converted to " + std::string(c10::toString(pt.param.scalar_type())) +
          " while offloaded by PinStream (stored as " + std::string(c10::toString(pt.host_view.scalar_type())) +
          "); detach() the handle, convert, then offload again");
    }
    throw std::runtime_error("PinStream: " + who + " was replaced by a tensor of shape " + c10::str(pt.param.sizes()) +
                             " while offloaded by PinStream (stored as " + c10::str(pt.host_view.sizes()) +
                             "); detach() the handle, change it, then offload again");
  }
}

const std::vector<at::Tensor>& BlockTensors::ViewsAt(const DeviceLocation& loc, const TorchDeviceAllocator& allocator) {
  for (auto& entry : view_cache_) {
    if (entry.first == loc.allocation) return entry.second;
  }
  const at::Tensor& base = allocator.tensor(loc.allocation);
  const int64_t head = static_cast<int64_t>(loc.head_bytes);
  std::vector<at::Tensor> views;
  views.reserve(tensors.size());
  for (const PackedTensor& pt : tensors) {
    // a split block's tensors below its head are in the resident head
    const bool in_head = pt.offset < head;
    const at::Tensor& src = in_head ? allocator.tensor(loc.head_allocation) : base;
    views.push_back(AliasOf(pt, src, in_head ? pt.offset : pt.offset - head));
  }
  view_cache_.emplace_back(loc.allocation, std::move(views));
  return view_cache_.back().second;
}

void BlockTensors::PointAtDevice(const DeviceLocation& loc, const TorchDeviceAllocator& allocator) {
  CheckUnchanged();
  if (location_ == loc.allocation) return;
  const std::vector<at::Tensor>& views = ViewsAt(loc, allocator);
  for (size_t i = 0; i < tensors.size(); ++i) {
    PackedTensor& pt = tensors[i];
    Repoint(pt.param, views[i]);
    pt.version = VersionOf(pt.param);
  }
  location_ = loc.allocation;
}

void BlockTensors::PointAtHost() {
  if (location_ < 0) return;
  for (PackedTensor& pt : tensors) Repoint(pt.param, pt.host_view);
  location_ = -1;
}

const PackedTensor* BlockTensors::Displaced() const {
  const std::vector<at::Tensor>* views = nullptr;
  if (location_ >= 0) {
    for (const auto& entry : view_cache_) {
      if (entry.first == location_) views = &entry.second;
    }
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const PackedTensor& pt = tensors[i];
    const at::Tensor& where = views != nullptr ? (*views)[i] : pt.host_view;
    const c10::TensorImpl* impl = pt.param.unsafeGetTensorImpl();
    if (impl->storage().data() != where.unsafeGetTensorImpl()->storage().data() ||
        impl->storage_offset() != where.storage_offset()) {
      return &pt;
    }
  }
  return nullptr;
}

at::Tensor BlockTensors::HostValue(size_t k, int threads) const {
  if (disk) throw std::logic_error("PinStream: internal error: HostValue of a block on disk");
  if (!exact) return tensors.at(k).host_view;
  return ValueFrom(k, transfer, threads);
}

at::Tensor BlockTensors::ValueFrom(size_t k, const uint8_t* bytes, int threads) const {
  const PackedTensor& pt = tensors.at(k);
  at::Tensor out = at::empty_strided(pt.host_view.sizes(), pt.strides,
                                     at::TensorOptions().dtype(pt.host_view.scalar_type()).device(at::kCPU));
  if (exact) {
    ThrowIfError(ReadExactTensor(bytes, transfer_bytes, transform->jobs.at(static_cast<size_t>(pt.job)), out.data_ptr(),
                                 threads));
  } else if (pt.nbytes > 0) {
    std::memcpy(out.data_ptr(), bytes + pt.offset, static_cast<size_t>(pt.nbytes));
  }
  return out;
}

void BlockTensors::RangeOf(size_t k, uint64_t* lo, uint64_t* hi) const {
  const PackedTensor& pt = tensors.at(k);
  *lo = static_cast<uint64_t>(pt.offset);
  *hi = *lo + static_cast<uint64_t>(pt.nbytes);
  if (!exact) return;
  const TransformJob& job = transform->jobs.at(static_cast<size_t>(pt.job));
  *lo = job.src_offset;
  *hi = *lo + (job.kind == TransformJob::Kind::kDecodeExact ? job.exact.bytes : job.bytes);
}

bool BlockTensors::WriteBackIfModified() {
  if (location_ < 0 || exact || disk) return false;
  bool dirty = false;
  for (const PackedTensor& pt : tensors) dirty |= VersionOf(pt.param) != pt.version;
  if (!dirty) return false;
  for (PackedTensor& pt : tensors) {
    pt.host_view.copy_(pt.param, /*non_blocking=*/false);
    pt.version = VersionOf(pt.param);
  }
  return true;
}

void BlockTensors::Detach(bool restore_pageable, const uint8_t* disk_bytes) {
  for (size_t k = 0; k < tensors.size(); ++k) {
    PackedTensor& pt = tensors[k];
    if (restore_pageable && (!disk || disk_bytes != nullptr)) {
      c10::InferenceMode guard(pt.inference);  // memory of the weight's kind (AliasAs)
      pt.param.set_data(disk ? ValueFrom(k, disk_bytes, 1) : exact ? HostValue(k, 1) : pt.host_view.clone());
    }
    pt.host_view = at::Tensor();
  }
  view_cache_.clear();
}

}  // namespace pinstream
