// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// SpillFile: the file the disk tier writes a model's blocks into when their
// bytes cannot be read as they are from the model's own file. One file per
// runtime, in a cache directory on local disk, named after the process
// (pinstream-spill-<pid>-<n>.bin) so a file left by a process that died can be
// told from a live one's; removed when the SpillFile goes.
//
// Each block is appended at an offset aligned for O_DIRECT (4096), so a block
// is one aligned read. A full disk (ENOSPC), a quota or any other write error
// is a clear error naming the directory and how much was written; the caller
// keeps that block in RAM instead.
#ifndef PINSTREAM_CORE_SPILL_FILE_H_
#define PINSTREAM_CORE_SPILL_FILE_H_

#include <cstdint>
#include <string>

#include "core/status.h"

namespace pinstream {

class SpillFile {
 public:
  static constexpr uint64_t kAlignment = 4096;
  SpillFile() = default;
  ~SpillFile();
  SpillFile(const SpillFile&) = delete;
  SpillFile& operator=(const SpillFile&) = delete;

  // Creates a new file in `dir` (made if missing).
  Status Create(const std::string& dir);
  bool open() const { return fd_ >= 0; }
  // Writes `bytes` at the next aligned offset; `*offset` is where they are.
  Status Append(const void* data, uint64_t bytes, uint64_t* offset);
  // Rewrites `bytes` at `offset` (a block written before, same size).
  Status WriteAt(const void* data, uint64_t bytes, uint64_t offset);
  // Reads `bytes` at `offset` back (buffered).
  Status ReadAt(void* data, uint64_t bytes, uint64_t offset) const;
  // Flushes written data to the file and drops it from the page cache (the
  // disk tier reads it with O_DIRECT; the cached copy would only cost RAM).
  Status Flush();
  const std::string& path() const { return path_; }
  uint64_t size() const { return end_; }
  // Fault injection (tests): the next `count` writes fail as on a full disk.
  void FailNextWrites(int count) { fail_next_ = count; }

 private:
  Status Write(const void* data, uint64_t bytes, uint64_t offset);

  std::string path_;
  int fd_ = -1;
  uint64_t end_ = 0;
  int fail_next_ = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_SPILL_FILE_H_
