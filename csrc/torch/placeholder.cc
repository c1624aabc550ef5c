// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "torch/placeholder.h"

#include <c10/core/InferenceMode.h>

#include <cstring>
#include <memory>
#include <mutex>

#include "core/page_mapping.h"
#include "torch/block_tensors.h"
#include "torch/errors.h"

namespace pinstream {
namespace {

std::mutex g_mu;
at::Tensor g_region;  // uint8 over the current (largest) region

at::Tensor Region(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_region.defined() || static_cast<uint64_t>(g_region.numel()) < bytes) {
    // a larger region; the smaller one lives on while weights still point at it
    PageMapping pages;
    ThrowIfError(PageMapping::Map(bytes, &pages));
    std::memset(pages.data(), 0xFF, pages.mapped());
    const uint64_t mapped = pages.mapped();
    void* p = pages.Release();
    g_region = at::from_blob(
        p, {static_cast<int64_t>(mapped)}, [mapped](void* q) { PageMapping::Unmap(q, mapped); },
        at::TensorOptions().dtype(at::kByte));
  }
  return g_region;
}

}  // namespace

at::Tensor CodedPlaceholder(at::ScalarType dtype, at::IntArrayRef sizes, at::IntArrayRef strides, bool inference) {
  int64_t span = 1;  // elements from the first to the last, dense
  for (size_t d = 0; d < sizes.size(); ++d) {
    if (sizes[d] == 0) span = 0;
    if (span != 0) span += (sizes[d] - 1) * strides[d];
  }
  const uint64_t bytes = static_cast<uint64_t>(std::max<int64_t>(span, 1)) * c10::elementSize(dtype);
  return AliasAs(Region(bytes), 0, dtype, sizes, strides, inference);
}

}  // namespace pinstream
