// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// PageMapping: host memory in whole pages of our own (an anonymous private
// mmap), returned to the OS the moment it is freed. Every host buffer
// PinStream allocates (pinned chunks registered in place, pageable fallbacks,
// the host engine's "device" arena) is one of these, so freed chunks never
// fragment the malloc heap across load/unload cycles and a dropped model's
// RSS comes back at once.
#ifndef PINSTREAM_CORE_PAGE_MAPPING_H_
#define PINSTREAM_CORE_PAGE_MAPPING_H_

#include <cstdint>

#include "core/status.h"

namespace pinstream {

class PageMapping {
 public:
  static constexpr uint64_t kPageBytes = 4096;

  PageMapping() = default;
  // Maps `bytes` rounded up to whole pages (one page for 0 bytes), zero-filled.
  // Fails with kOutOfMemory naming the size.
  static Status Map(uint64_t bytes, PageMapping* out);
  ~PageMapping();
  PageMapping(PageMapping&& other) noexcept;
  PageMapping& operator=(PageMapping&& other) noexcept;
  PageMapping(const PageMapping&) = delete;
  PageMapping& operator=(const PageMapping&) = delete;

  void* data() const { return data_; }
  // The bytes asked for, and the bytes mapped (whole pages).
  uint64_t size() const { return size_; }
  uint64_t mapped() const { return mapped_; }
  // Gives up ownership: the caller frees it with Unmap(data, mapped()).
  void* Release();
  static void Unmap(void* data, uint64_t mapped);

  static uint64_t RoundToPages(uint64_t bytes);

 private:
  void Reset();
  void* data_ = nullptr;
  uint64_t size_ = 0;
  uint64_t mapped_ = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_PAGE_MAPPING_H_
