// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "torch/placeholder.h"

#include <c10/core/InferenceMode.h>
#include <sys/mman.h>
#include <unistd.h>

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
int g_nan_fd = -2;    // a memfd of kNanChunk all-ones bytes; -1: none could be made

constexpr uint64_t kNanChunk = 1ULL << 20;

// The all-ones chunk every region maps (g_mu held): made once, -1 where the
// system has no memfd (then each region is memory of its own).
int NanChunk() {
  if (g_nan_fd != -2) return g_nan_fd;
  g_nan_fd = -1;
  const int fd = memfd_create("pinstream-placeholder", MFD_CLOEXEC);
  if (fd < 0) return -1;
  void* p = MAP_FAILED;
  if (ftruncate(fd, static_cast<off_t>(kNanChunk)) == 0) {
    p = mmap(nullptr, kNanChunk, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  }
  if (p == MAP_FAILED) {
    close(fd);
    return -1;
  }
  std::memset(p, 0xFF, kNanChunk);
  munmap(p, kNanChunk);
  g_nan_fd = fd;
  return fd;
}

// `bytes` (rounded up to whole chunks) of all-ones bytes that cost no memory of
// their own: the one chunk mapped again and again, copy-on-write, so a write into
// the region (a weight patched in place between uses) changes that region's pages,
// never the chunk the other regions map. Null where that cannot be done.
void* MapNanRegion(uint64_t bytes, uint64_t* mapped) {
  const int fd = NanChunk();
  if (fd < 0) return nullptr;
  const uint64_t size = (bytes + kNanChunk - 1) / kNanChunk * kNanChunk;
  void* base = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  for (uint64_t at = 0; at < size; at += kNanChunk) {
    void* p = mmap(static_cast<uint8_t*>(base) + at, kNanChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) {
      munmap(base, size);
      return nullptr;
    }
  }
  *mapped = size;
  return base;
}

at::Tensor Region(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_region.defined() || static_cast<uint64_t>(g_region.numel()) < bytes) {
    // a larger region; the smaller one lives on while weights still point at it
    uint64_t mapped = 0;
    void* p = MapNanRegion(bytes, &mapped);
    if (p == nullptr) {  // no memfd: memory of its own, every page written
      PageMapping pages;
      ThrowIfError(PageMapping::Map(bytes, &pages));
      std::memset(pages.data(), 0xFF, pages.mapped());
      mapped = pages.mapped();
      p = pages.Release();
    }
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
