// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/spill_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace pinstream {
namespace {
std::atomic<uint64_t> g_files{0};

std::string Errno(int err) { return std::strerror(err); }
}  // namespace

SpillFile::~SpillFile() {
  if (fd_ >= 0) {
    close(fd_);
    unlink(path_.c_str());
  }
}

Status SpillFile::Create(const std::string& dir) {
  if (dir.empty()) return Status::InvalidArgument("the disk tier needs a spill directory; none was given");
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::InvalidArgument("cannot make the spill directory " + dir + " (" + Errno(errno) + ")");
  }
  for (int attempt = 0; attempt < 100; ++attempt) {
    const std::string path =
        dir + "/pinstream-spill-" + std::to_string(getpid()) + "-" + std::to_string(g_files.fetch_add(1)) + ".bin";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      fd_ = fd;
      path_ = path;
      end_ = 0;
      return Status::Ok();
    }
    if (errno != EEXIST) {
      return Status::InvalidArgument("cannot create a spill file in " + dir + " (" + Errno(errno) + ")");
    }
  }
  return Status::InvalidArgument("cannot create a spill file in " + dir + " (every name taken)");
}

Status SpillFile::Write(const void* data, uint64_t bytes, uint64_t offset) {
  if (fd_ < 0) return Status::FailedPrecondition("spill file is not open");
  if (fail_next_ > 0) {
    --fail_next_;
    return Status::OutOfMemory("no space left for the spill file " + path_ + " (" + Errno(ENOSPC) +
                               ", injected) after " + std::to_string(end_) + " bytes");
  }
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = pwrite(fd_, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : ENOSPC;
      const std::string why =
          (err == ENOSPC || err == EDQUOT ? "no space left for the spill file " : "cannot write the spill file ") +
          path_ + " (" + Errno(err) + ") after " + std::to_string(end_) + " bytes";
      return err == ENOSPC || err == EDQUOT ? Status::OutOfMemory(why) : Status::DeviceError(why);
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status SpillFile::Append(const void* data, uint64_t bytes, uint64_t* offset) {
  const uint64_t at = (end_ + kAlignment - 1) / kAlignment * kAlignment;
  PINSTREAM_RETURN_IF_ERROR(Write(data, bytes, at));
  // the file ends on a whole page: the last block's aligned read stays inside it
  const uint64_t end = (at + bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (end > at + bytes && ftruncate(fd_, static_cast<off_t>(end)) != 0) {
    return Status::OutOfMemory("no space left for the spill file " + path_ + " (" + Errno(errno) + ")");
  }
  *offset = at;
  end_ = end;
  return Status::Ok();
}

Status SpillFile::WriteAt(const void* data, uint64_t bytes, uint64_t offset) {
  if (offset + bytes > end_) return Status::InvalidArgument("spill rewrite past the end of " + path_);
  return Write(data, bytes, offset);
}

Status SpillFile::ReadAt(void* data, uint64_t bytes, uint64_t offset) const {
  auto* p = static_cast<uint8_t*>(data);
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = pread(fd_, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return Status::DeviceError("cannot read the spill file " + path_ + " (" + Errno(n < 0 ? errno : EIO) + ")");
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status SpillFile::Flush() {
  if (fd_ < 0) return Status::Ok();
  if (fdatasync(fd_) != 0) {
    return Status::DeviceError("cannot flush the spill file " + path_ + " (" + Errno(errno) + ")");
  }
  posix_fadvise(fd_, 0, 0, POSIX_FADV_DONTNEED);  // advice only: a failure changes nothing
  return Status::Ok();
}

}  // namespace pinstream
