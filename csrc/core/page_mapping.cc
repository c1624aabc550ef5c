// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/page_mapping.h"

#include <sys/mman.h>

#include <utility>

namespace pinstream {

uint64_t PageMapping::RoundToPages(uint64_t bytes) {
  return bytes == 0 ? kPageBytes : (bytes + kPageBytes - 1) / kPageBytes * kPageBytes;
}

Status PageMapping::Map(uint64_t bytes, PageMapping* out) {
  const uint64_t mapped = RoundToPages(bytes);
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return Status::OutOfMemory("mapping " + FormatBytes(mapped) + " of host memory failed");
  }
  out->Reset();
  out->data_ = p;
  out->size_ = bytes;
  out->mapped_ = mapped;
  return Status::Ok();
}

void PageMapping::Unmap(void* data, uint64_t mapped) {
  if (data != nullptr) munmap(data, mapped);
}

void PageMapping::Reset() {
  Unmap(data_, mapped_);
  data_ = nullptr;
  size_ = mapped_ = 0;
}

void* PageMapping::Release() {
  void* p = data_;
  data_ = nullptr;
  size_ = mapped_ = 0;
  return p;
}

PageMapping::~PageMapping() { Reset(); }

PageMapping::PageMapping(PageMapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

PageMapping& PageMapping::operator=(PageMapping&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

}  // namespace pinstream
