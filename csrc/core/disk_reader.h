// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// DiskReader: reads byte ranges of files into caller memory on a pool of I/O
// threads, the first piece of the disk tier (blocks whose host copy lives in a
// file: the model's own safetensors file, or a spill file).
//
// A file is opened with O_DIRECT where the file system allows it: reads then
// bypass the page cache (a model streamed from disk every step would otherwise
// fill RAM with a second copy of itself, which the kernel must evict again).
// O_DIRECT needs the file offset, the length and the memory address aligned to
// the device's logical block size; a read that is not aligned goes through an
// aligned bounce buffer of the thread (its aligned span is read, the asked
// bytes copied out). Where O_DIRECT is refused (tmpfs, some network and
// overlay file systems: open() or a probe read at open fails with EINVAL) the
// file is read buffered, and how() says so and why.
//
// Each request is split into chunks the threads take in turn, so one large
// read uses every thread. Submit() never blocks on I/O; Wait() blocks until a
// request's chunks are done and gives its status (a short read: the file
// shrank, or the range is past its end; an I/O error names the call).
//
// With Options::io_uring, where PinStream was built with liburing
// (PINSTREAM_WITH_IO_URING) and the kernel lets this process set up a ring,
// the chunks of O_DIRECT files go to one io_uring thread instead: it cuts them
// into reads of at most 1 MiB and keeps up to `queue_depth` of them in flight,
// straight into the caller's memory where offset, length and address are
// aligned, else through an aligned bounce buffer per read (the asked bytes
// copied out). Buffered files stay with the thread pool. Where io_uring cannot
// be used, how() says why.
//
// Thread-safe: Submit and Wait may be called from any thread.
#ifndef PINSTREAM_CORE_DISK_READER_H_
#define PINSTREAM_CORE_DISK_READER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"

namespace pinstream {

// The disk tier reads a block in chunks of this size, which every thread (or the
// io_uring thread's reads) take a share of: the ring holds a few blocks in flight.
constexpr uint64_t kDiskTierChunkBytes = 2ULL << 20;

class DiskReader {
 public:
  struct Options {
    int threads = 4;
    bool direct = true;                 // try O_DIRECT
    uint64_t chunk_bytes = 8ULL << 20;  // a request is read in chunks of this size
    std::string why_buffered;           // said by how() when direct is false
    bool io_uring = false;              // read O_DIRECT files through io_uring where it works
    int queue_depth = 32;               // io_uring reads in flight at most
  };
  explicit DiskReader(const Options& options);
  DiskReader() : DiskReader(Options()) {}
  ~DiskReader();
  DiskReader(const DiskReader&) = delete;
  DiskReader& operator=(const DiskReader&) = delete;

  // Opens `path` for reading; `file` identifies it in Submit.
  Status Open(const std::string& path, int* file);
  uint64_t size(int file) const;
  bool direct(int file) const;
  // How the file is read: "io_uring, O_DIRECT (alignment 4096, queue depth 32)",
  // "O_DIRECT (alignment 4096)" (with why io_uring is not used where it was asked
  // for), or "buffered (...why...)".
  std::string how(int file) const;
  // Whether O_DIRECT files are read through io_uring (Options::io_uring, built with
  // liburing, and a ring could be set up); io_uring_why() says why not.
  bool io_uring() const { return ring_ != nullptr; }
  const std::string& io_uring_why() const { return ring_why_; }

  // Whether `file` is still the file opened: the same inode, size and
  // modification time, and the same bytes at a few sampled places. A file
  // replaced, truncated or rewritten since Open is a clear error naming it.
  Status Check(int file);
  // Takes the file as it is now as the one opened (after PinStream itself
  // wrote to it: a spill file that grew or was rewritten).
  Status Refresh(int file);

  struct Range {
    int file = -1;
    uint64_t offset = 0;
    uint64_t bytes = 0;
    void* dst = nullptr;
  };
  // Queues a read of `bytes` from `offset` of `file` into `dst`.
  Status Submit(int file, uint64_t offset, uint64_t bytes, void* dst, uint64_t* ticket);
  // Queues the reads of `ranges` as one request (one ticket).
  Status SubmitMany(const std::vector<Range>& ranges, uint64_t* ticket);
  // Whether the request is done (Wait then returns at once).
  bool Done(uint64_t ticket) const;
  // Blocks until the request is done; its status. A ticket is waited on once.
  Status Wait(uint64_t ticket);

  // Totals since construction: bytes read by finished requests, and the time
  // at least one request was in flight (what the disk rate is measured over);
  // request_ms / busy_ms is how many requests were in flight on average then.
  struct Totals {
    uint64_t bytes = 0;
    uint64_t requests = 0;
    double busy_ms = 0;
    double request_ms = 0;      // each finished request's time from Submit to done, summed
    uint64_t bounce_bytes = 0;  // held in bounce buffers (unaligned O_DIRECT reads), all threads
  };
  Totals totals() const;
  // Fault injection (tests): the next `count` chunks fail with an I/O error.
  void FailNextReads(int count);
  // Latency injection (tests): every chunk the thread pool reads takes at least
  // `microseconds` more, waited before it reads (a slow disk, for schedules that
  // must keep it busy, and for reads still to land when their caller moves on).
  void DelayReads(int microseconds);

 private:
  struct File {
    std::string path;
    int fd = -1;
    uint64_t size = 0;
    bool direct = false;
    uint64_t align = 1;
    std::string why_buffered;
    uint64_t inode = 0, device = 0;
    int64_t mtime_ns = 0;
    uint64_t sample = 0;  // checksum of the sampled pages at open
  };
  struct Chunk {
    uint64_t ticket;
    int file;
    uint64_t offset, bytes;
    uint8_t* dst;
  };
  struct Request {
    int pending = 0;
    uint64_t bytes = 0;
    Status status;
    std::chrono::steady_clock::time_point submitted;
  };

  struct Ring;  // the io_uring and its wake-up eventfd (disk_reader.cc)

  void Work();
  void RingWork();
  // Counts a finished chunk into its request (mu_ held).
  void FinishChunk(const Chunk& c, const Status& s);
  Status ReadChunk(const Chunk& c, std::vector<uint8_t>* bounce);
  static Status ShortRead(const std::string& path, const Chunk& c, uint64_t got_to);
  // Checksum of up to four 4 KiB pages spread over the file (its first and last included).
  static Status Sample(const File& f, uint64_t* sum);
  // A copy of `file`'s entry (the reads go on meanwhile); `what` names the call in the error.
  Status CopyOf(int file, const char* what, File* f) const;

  Options options_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::vector<File> files_;
  std::deque<Chunk> queue_;
  std::map<uint64_t, Request> requests_;
  uint64_t next_ticket_ = 1;
  bool stop_ = false;
  int fail_next_ = 0;
  int delay_us_ = 0;
  int in_flight_ = 0;  // requests queued and not finished
  std::chrono::steady_clock::time_point busy_since_;
  Totals totals_;
  std::vector<std::thread> threads_;
  std::unique_ptr<Ring> ring_;  // null: no io_uring (ring_why_ says why)
  std::string ring_why_;
  std::deque<Chunk> ring_queue_;  // chunks of O_DIRECT files for the io_uring thread
  std::thread ring_thread_;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_DISK_READER_H_
