// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/disk_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#ifdef PINSTREAM_WITH_IO_URING
#include <liburing.h>
#include <sys/eventfd.h>
#endif

namespace pinstream {
namespace {

// O_DIRECT's alignment: the largest logical block size in use (4096 covers 512 too).
constexpr uint64_t kDirectAlign = 4096;
// The io_uring thread reads a chunk in pieces of at most this size (queue_depth of them
// in flight: 32 MiB at the default depth, as much as 4 threads reading 8 MiB chunks).
constexpr uint64_t kRingRead = 1ULL << 20;

uint8_t* AlignedIn(std::vector<uint8_t>* buf, uint64_t bytes, uint64_t align) {
  if (buf->size() < bytes + align) buf->resize(bytes + align);
  const auto p = reinterpret_cast<uintptr_t>(buf->data());
  return reinterpret_cast<uint8_t*>((p + align - 1) / align * align);
}

std::string Errno(const char* call, int err) { return std::string(call) + ": " + std::strerror(err); }

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
}

// Reads exactly `bytes` at `offset` unless the file ends first; `*got` is what was read.
int ReadFull(int fd, uint8_t* dst, uint64_t bytes, uint64_t offset, uint64_t* got) {
  *got = 0;
  while (*got < bytes) {
    const ssize_t n = pread(fd, dst + *got, bytes - *got, static_cast<off_t>(offset + *got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) break;  // end of file
    *got += static_cast<uint64_t>(n);
  }
  return 0;
}

}  // namespace

struct DiskReader::Ring {
#ifdef PINSTREAM_WITH_IO_URING
  struct ::io_uring ring;  // (the struct: DiskReader::io_uring() hides its name here)
#endif
  int depth = 0;
  int wake_fd = -1;   // an eventfd: Submit and the destructor wake the ring thread through it
  uint64_t wake = 0;  // where the ring thread's read of wake_fd lands

  void Wake() {
    const uint64_t one = 1;
    if (write(wake_fd, &one, sizeof(one)) < 0) {
      // EAGAIN only (the counter is full): the thread has a wake-up pending anyway
    }
  }
};

DiskReader::DiskReader(const Options& options) : options_(options) {
  options_.threads = std::max(1, options_.threads);
  options_.chunk_bytes = std::max<uint64_t>(kDirectAlign, options_.chunk_bytes / kDirectAlign * kDirectAlign);
  options_.queue_depth = std::max(1, std::min(options_.queue_depth, 1024));
  if (options_.io_uring) {
#ifdef PINSTREAM_WITH_IO_URING
    auto ring = std::make_unique<Ring>();
    ring->depth = options_.queue_depth;
    // the reads in flight and the wake-up read
    const int err = io_uring_queue_init(static_cast<unsigned>(ring->depth + 1), &ring->ring, 0);
    if (err < 0) {
      ring_why_ = Errno("io_uring_queue_init", -err);
    } else {
      ring->wake_fd = eventfd(0, EFD_CLOEXEC);
      if (ring->wake_fd < 0) {
        ring_why_ = Errno("eventfd", errno);
        io_uring_queue_exit(&ring->ring);
      } else {
        ring_ = std::move(ring);
      }
    }
#else
    ring_why_ = "PinStream was built without liburing";
#endif
  }
  for (int i = 0; i < options_.threads; ++i) threads_.emplace_back([this] { Work(); });
  if (ring_) ring_thread_ = std::thread([this] { RingWork(); });
}

DiskReader::~DiskReader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
  if (ring_) {
    ring_->Wake();
    ring_thread_.join();  // it finishes what was queued first
#ifdef PINSTREAM_WITH_IO_URING
    io_uring_queue_exit(&ring_->ring);  // cancels its last wake-up read
#endif
    close(ring_->wake_fd);
  }
  for (File& f : files_) {
    if (f.fd >= 0) close(f.fd);
  }
}

Status DiskReader::Open(const std::string& path, int* file) {
  File f;
  f.path = path;
  if (options_.direct) {
    f.fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (f.fd < 0 && errno != EINVAL)
      return Status::InvalidArgument("cannot open " + path + " (" + Errno("open", errno) + ")");
    if (f.fd < 0) f.why_buffered = "O_DIRECT refused by the file system (open: EINVAL)";
  } else {
    f.why_buffered = options_.why_buffered.empty() ? "O_DIRECT not asked for" : options_.why_buffered;
  }
  if (f.fd >= 0) {
    // A probe: some file systems accept O_DIRECT at open and refuse it at read.
    std::vector<uint8_t> buf;
    uint64_t got = 0;
    const int err = ReadFull(f.fd, AlignedIn(&buf, kDirectAlign, kDirectAlign), kDirectAlign, 0, &got);
    if (err == 0) {
      f.direct = true;
      f.align = kDirectAlign;
    } else {
      close(f.fd);
      f.fd = -1;
      if (err != EINVAL) return Status::InvalidArgument("cannot read " + path + " (" + Errno("pread", err) + ")");
      f.why_buffered = "O_DIRECT refused by the file system (pread: EINVAL)";
    }
  }
  if (f.fd < 0) {
    f.fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) return Status::InvalidArgument("cannot open " + path + " (" + Errno("open", errno) + ")");
  }
  struct stat st;
  if (fstat(f.fd, &st) != 0) {
    const int err = errno;
    close(f.fd);
    return Status::InvalidArgument("cannot stat " + path + " (" + Errno("fstat", err) + ")");
  }
  f.size = static_cast<uint64_t>(st.st_size);
  f.inode = static_cast<uint64_t>(st.st_ino);
  f.device = static_cast<uint64_t>(st.st_dev);
  f.mtime_ns = MtimeNs(st);
  Status sampled = Sample(f, &f.sample);
  if (!sampled.ok()) {
    close(f.fd);
    return sampled;
  }
  std::lock_guard<std::mutex> lock(mu_);
  files_.push_back(f);
  *file = static_cast<int>(files_.size()) - 1;
  return Status::Ok();
}

uint64_t DiskReader::size(int file) const {
  std::lock_guard<std::mutex> lock(mu_);
  return files_.at(file).size;
}

bool DiskReader::direct(int file) const {
  std::lock_guard<std::mutex> lock(mu_);
  return files_.at(file).direct;
}

std::string DiskReader::how(int file) const {
  std::lock_guard<std::mutex> lock(mu_);
  const File& f = files_.at(file);
  if (!f.direct) return "buffered (" + f.why_buffered + ")";
  const std::string align = "alignment " + std::to_string(f.align);
  if (ring_) return "io_uring, O_DIRECT (" + align + ", queue depth " + std::to_string(ring_->depth) + ")";
  if (options_.io_uring) return "O_DIRECT (" + align + "; io_uring not used: " + ring_why_ + ")";
  return "O_DIRECT (" + align + ")";
}

Status DiskReader::Sample(const File& f, uint64_t* sum) {
  constexpr uint64_t kPage = 4096;
  std::vector<uint8_t> buf;
  uint8_t* page = AlignedIn(&buf, kPage, kDirectAlign);
  const uint64_t last = f.size > kPage ? (f.size - 1) / kPage * kPage : 0;
  uint64_t h = 1469598103934665603ULL;  // FNV-1a over the sampled bytes
  for (uint64_t at : {uint64_t{0}, last / 3 / kPage * kPage, 2 * last / 3 / kPage * kPage, last}) {
    const uint64_t want = std::min(kPage, f.size - std::min(at, f.size));
    uint64_t got = 0;
    // an O_DIRECT descriptor reads whole aligned pages; the tail page may be short
    const int err = ReadFull(f.fd, page, f.direct ? kPage : want, at, &got);
    if (err != 0) return Status::InvalidArgument("cannot read " + f.path + " (" + Errno("pread", err) + ")");
    if (got < want) {
      return Status::FailedPrecondition(f.path + " ended at byte " + std::to_string(at + got) + " of " +
                                        std::to_string(f.size) + " (the file shrank or changed since it was opened)");
    }
    for (uint64_t i = 0; i < want; ++i) h = (h ^ page[i]) * 1099511628211ULL;
  }
  *sum = h;
  return Status::Ok();
}

Status DiskReader::CopyOf(int file, const char* what, File* f) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (file < 0 || file >= static_cast<int>(files_.size())) {
    return Status::InvalidArgument(std::string(what) + ": file id " + std::to_string(file) + " was not opened");
  }
  *f = files_[file];
  return Status::Ok();
}

Status DiskReader::Check(int file) {
  File f;
  PINSTREAM_RETURN_IF_ERROR(CopyOf(file, "check", &f));
  auto changed = [&](const std::string& how) {
    return Status::FailedPrecondition(f.path + " changed since PinStream opened it (" + how +
                                      "); its weights can no longer be read from it. Reload the model");
  };
  struct stat st;
  if (stat(f.path.c_str(), &st) != 0) return changed("it is gone: " + Errno("stat", errno));
  if (static_cast<uint64_t>(st.st_ino) != f.inode || static_cast<uint64_t>(st.st_dev) != f.device) {
    return changed("it was replaced by another file");
  }
  if (static_cast<uint64_t>(st.st_size) != f.size) {
    return changed("size " + std::to_string(f.size) + " -> " + std::to_string(st.st_size) + " bytes");
  }
  if (MtimeNs(st) != f.mtime_ns) return changed("it was modified");
  uint64_t sum = 0;
  PINSTREAM_RETURN_IF_ERROR(Sample(f, &sum));
  if (sum != f.sample) return changed("its sampled bytes differ");
  return Status::Ok();
}

Status DiskReader::Refresh(int file) {
  File f;
  PINSTREAM_RETURN_IF_ERROR(CopyOf(file, "refresh", &f));
  struct stat st;
  if (fstat(f.fd, &st) != 0)
    return Status::InvalidArgument("cannot stat " + f.path + " (" + Errno("fstat", errno) + ")");
  f.size = static_cast<uint64_t>(st.st_size);
  f.mtime_ns = MtimeNs(st);
  PINSTREAM_RETURN_IF_ERROR(Sample(f, &f.sample));
  std::lock_guard<std::mutex> lock(mu_);
  files_[file].size = f.size;
  files_[file].mtime_ns = f.mtime_ns;
  files_[file].sample = f.sample;
  return Status::Ok();
}

Status DiskReader::Submit(int file, uint64_t offset, uint64_t bytes, void* dst, uint64_t* ticket) {
  return SubmitMany({Range{file, offset, bytes, dst}}, ticket);
}

Status DiskReader::SubmitMany(const std::vector<Range>& ranges, uint64_t* ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Range& r : ranges) {
    if (r.file < 0 || r.file >= static_cast<int>(files_.size())) {
      return Status::InvalidArgument("read: file id " + std::to_string(r.file) + " was not opened");
    }
    const File& f = files_[r.file];
    if (r.offset > f.size || r.bytes > f.size - r.offset) {
      return Status::InvalidArgument("read of " + std::to_string(r.bytes) + " bytes at " + std::to_string(r.offset) +
                                     " is past the end of " + f.path + " (" + std::to_string(f.size) + " bytes)");
    }
    if (r.bytes > 0 && r.dst == nullptr) return Status::InvalidArgument("read into a null buffer");
  }
  *ticket = next_ticket_++;
  Request& req = requests_[*ticket];
  req.submitted = std::chrono::steady_clock::now();
  bool ring = false, pool = false;
  for (const Range& r : ranges) {
    // O_DIRECT files go to the io_uring thread where there is one, the rest to the pool
    const File& f = files_[r.file];
    const bool to_ring = ring_ != nullptr && f.direct;
    // An O_DIRECT range that starts aligned in the file and in memory but ends
    // inside a page (a block of any size): its whole pages are read straight into
    // dst, only the last partial page through a bounce buffer.
    const bool aligned_start = f.direct && r.offset % f.align == 0 && reinterpret_cast<uintptr_t>(r.dst) % f.align == 0;
    const uint64_t whole = aligned_start && r.bytes > f.align ? r.bytes / f.align * f.align : r.bytes;
    for (uint64_t done = 0; done < r.bytes;) {
      const uint64_t n = std::min(options_.chunk_bytes, (done < whole ? whole : r.bytes) - done);
      (to_ring ? ring_queue_ : queue_)
          .push_back(Chunk{*ticket, r.file, r.offset + done, n, static_cast<uint8_t*>(r.dst) + done});
      ++req.pending;
      (to_ring ? ring : pool) = true;
      done += n;
    }
    req.bytes += r.bytes;
  }
  if (req.pending > 0) {
    if (in_flight_++ == 0) busy_since_ = std::chrono::steady_clock::now();
    if (pool) work_cv_.notify_all();
    if (ring) ring_->Wake();
  }
  return Status::Ok();
}

bool DiskReader::Done(uint64_t ticket) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = requests_.find(ticket);
  return it == requests_.end() || it->second.pending == 0;
}

DiskReader::Totals DiskReader::totals() const {
  std::lock_guard<std::mutex> lock(mu_);
  Totals t = totals_;
  if (in_flight_ > 0) {
    t.busy_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - busy_since_).count();
  }
  return t;
}

void DiskReader::FailNextReads(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = count;
}

void DiskReader::DelayReads(int microseconds) {
  std::lock_guard<std::mutex> lock(mu_);
  delay_us_ = std::max(0, microseconds);
}

Status DiskReader::Wait(uint64_t ticket) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = requests_.find(ticket);
  if (it == requests_.end())
    return Status::InvalidArgument("wait: unknown or already waited ticket " + std::to_string(ticket));
  done_cv_.wait(lock, [&] { return it->second.pending == 0; });
  Status s = it->second.status;
  requests_.erase(it);
  return s;
}

void DiskReader::Work() {
  std::vector<uint8_t> bounce;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ and nothing left
    const Chunk c = queue_.front();
    queue_.pop_front();
    Status s;
    if (fail_next_ > 0) {
      --fail_next_;
      s = Status::DeviceError("reading " + files_[c.file].path + ": pread: Input/output error (injected)");
    }
    const int delay_us = delay_us_;
    const size_t held = bounce.size();
    lock.unlock();
    if (delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    if (s.ok()) s = ReadChunk(c, &bounce);
    lock.lock();
    totals_.bounce_bytes += bounce.size() - held;
    FinishChunk(c, s);
  }
}

void DiskReader::FinishChunk(const Chunk& c, const Status& s) {
  Request& r = requests_[c.ticket];
  if (!s.ok() && r.status.ok()) r.status = s;
  if (--r.pending == 0) {
    totals_.requests += 1;
    totals_.request_ms +=
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - r.submitted).count();
    if (r.status.ok()) totals_.bytes += r.bytes;
    if (--in_flight_ == 0) {
      totals_.busy_ms +=
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - busy_since_).count();
    }
    done_cv_.notify_all();
  }
}

Status DiskReader::ShortRead(const std::string& path, const Chunk& c, uint64_t got_to) {
  return Status::FailedPrecondition(path + " ended at byte " + std::to_string(got_to) + ", before the " +
                                    std::to_string(c.bytes) + " bytes asked for at " + std::to_string(c.offset) +
                                    " (the file shrank or changed since it was opened)");
}

// The io_uring thread: takes chunks of O_DIRECT files in turn, cuts each into reads of
// at most kRingRead bytes (its aligned span; straight into the caller's memory when the
// chunk is aligned, else each read into a bounce buffer of its own), keeps up to
// queue_depth reads in flight, and counts a chunk finished when its last read completes.
// A short read is asked again for the rest (a read at or past the end of the file gives
// 0: the file shrank); EAGAIN and EINTR are asked again as they were.
void DiskReader::RingWork() {
#ifdef PINSTREAM_WITH_IO_URING
  struct ::io_uring* ring = &ring_->ring;
  struct Active {
    Chunk c;
    File f;
    bool aligned = false;
    uint64_t next = 0, end = 0;  // the aligned span [next, end) not yet asked for
    int reads = 0;               // reads in flight
    bool issued = false;         // no more reads to ask for
    Status status;
  };
  struct Read {
    Active* a = nullptr;
    uint64_t at = 0, len = 0, got = 0;
    uint8_t* buf = nullptr;
  };
  const int depth = ring_->depth;
  std::vector<Read> reads(depth);
  std::vector<std::vector<uint8_t>> bounce(depth);  // read i's bounce buffer, made on first use
  std::vector<int> idle;
  for (int i = depth - 1; i >= 0; --i) idle.push_back(i);
  auto sqe = [&] {
    io_uring_sqe* e = io_uring_get_sqe(ring);
    if (e == nullptr) {  // the submission queue is full: hand it to the kernel first
      io_uring_submit(ring);
      e = io_uring_get_sqe(ring);
    }
    return e;
  };
  auto ask = [&](Read* r) {
    io_uring_sqe* e = sqe();
    io_uring_prep_read(e, r->a->f.fd, r->buf + r->got, static_cast<unsigned>(r->len - r->got), r->at + r->got);
    io_uring_sqe_set_data(e, r);
  };
  auto arm_wake = [&] {
    io_uring_sqe* e = sqe();
    io_uring_prep_read(e, ring_->wake_fd, &ring_->wake, sizeof(ring_->wake), 0);
    io_uring_sqe_set_data(e, nullptr);
  };
  arm_wake();
  Active* cur = nullptr;  // the chunk being cut into reads
  int in_flight = 0;
  std::vector<Active*> finished;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // Ask for reads while there is room.
    while (!idle.empty()) {
      if (cur != nullptr && !cur->status.ok()) {  // a read of it failed: ask for no more
        cur->issued = true;
        cur = nullptr;
      }
      if (cur == nullptr) {
        if (ring_queue_.empty()) break;
        const Chunk c = ring_queue_.front();
        ring_queue_.pop_front();
        if (fail_next_ > 0) {
          --fail_next_;
          FinishChunk(c, Status::DeviceError("reading " + files_[c.file].path +
                                             ": io_uring read (O_DIRECT): Input/output error (injected)"));
          continue;
        }
        cur = new Active;
        cur->c = c;
        cur->f = files_[c.file];
        const uint64_t a = cur->f.align;
        cur->aligned = c.offset % a == 0 && c.bytes % a == 0 && reinterpret_cast<uintptr_t>(c.dst) % a == 0;
        cur->next = c.offset / a * a;
        cur->end = (c.offset + c.bytes + a - 1) / a * a;
      }
      const int i = idle.back();
      idle.pop_back();
      Read& r = reads[i];
      r = Read{cur, cur->next, std::min(kRingRead, cur->end - cur->next), 0, nullptr};
      if (!cur->aligned) {
        const size_t held = bounce[i].size();
        r.buf = AlignedIn(&bounce[i], r.len, cur->f.align);
        totals_.bounce_bytes += bounce[i].size() - held;
      } else {
        r.buf = cur->c.dst + (r.at - cur->c.offset);
      }
      ask(&r);
      ++in_flight;
      ++cur->reads;
      cur->next += r.len;
      if (cur->next >= cur->end) {
        cur->issued = true;
        cur = nullptr;
      }
    }
    if (stop_ && in_flight == 0 && cur == nullptr && ring_queue_.empty()) break;
    lock.unlock();
    // Hand the reads to the kernel and wait for a completion (a read, or a wake-up).
    io_uring_submit_and_wait(ring, 1);
    unsigned head = 0, seen = 0;
    io_uring_cqe* cqe = nullptr;
    io_uring_for_each_cqe(ring, head, cqe) {
      ++seen;
      Read* r = static_cast<Read*>(io_uring_cqe_get_data(cqe));
      const int res = cqe->res;
      if (r == nullptr) {  // the wake-up: Submit queued chunks, or the reader is closing
        arm_wake();
        continue;
      }
      if (res == -EAGAIN || res == -EINTR) {
        ask(r);
        continue;
      }
      Active& a = *r->a;
      if (res < 0) {
        if (a.status.ok()) {
          a.status = Status::DeviceError("reading " + a.f.path + ": " + Errno("io_uring read (O_DIRECT)", -res));
        }
      } else {
        r->got += static_cast<uint64_t>(res);
        if (res > 0 && r->got < r->len) {  // short: ask for the rest
          ask(r);
          continue;
        }
        if (a.status.ok()) {
          const uint64_t lo = std::max(r->at, a.c.offset), hi = std::min(r->at + r->got, a.c.offset + a.c.bytes);
          if (!a.aligned && hi > lo) std::memcpy(a.c.dst + (lo - a.c.offset), r->buf + (lo - r->at), hi - lo);
          if (r->at + r->got < std::min(r->at + r->len, a.c.offset + a.c.bytes)) {
            a.status = ShortRead(a.f.path, a.c, r->at + r->got);
          }
        }
      }
      idle.push_back(static_cast<int>(r - reads.data()));
      --in_flight;
      if (--a.reads == 0 && (a.issued || !a.status.ok())) {
        if (&a == cur) cur = nullptr;
        finished.push_back(&a);
      }
    }
    io_uring_cq_advance(ring, seen);
    lock.lock();
    for (Active* a : finished) {
      FinishChunk(a->c, a->status);
      delete a;
    }
    finished.clear();
  }
#endif
}

Status DiskReader::ReadChunk(const Chunk& c, std::vector<uint8_t>* bounce) {
  File f;
  {
    std::lock_guard<std::mutex> lock(mu_);
    f = files_[c.file];
  }
  auto short_read = [&](uint64_t got_to) { return ShortRead(f.path, c, got_to); };
  uint64_t got = 0;
  if (!f.direct) {
    const int err = ReadFull(f.fd, c.dst, c.bytes, c.offset, &got);
    if (err != 0) return Status::DeviceError("reading " + f.path + ": " + Errno("pread", err));
    return got == c.bytes ? Status::Ok() : short_read(c.offset + got);
  }
  // O_DIRECT: straight into dst when everything is aligned, else the aligned span
  // through the bounce buffer, a chunk at a time.
  const uint64_t a = f.align;
  if (c.offset % a == 0 && c.bytes % a == 0 && reinterpret_cast<uintptr_t>(c.dst) % a == 0) {
    const int err = ReadFull(f.fd, c.dst, c.bytes, c.offset, &got);
    if (err != 0) return Status::DeviceError("reading " + f.path + ": " + Errno("pread (O_DIRECT)", err));
    return got == c.bytes ? Status::Ok() : short_read(c.offset + got);
  }
  const uint64_t begin = c.offset / a * a;
  const uint64_t end = (c.offset + c.bytes + a - 1) / a * a;
  // the bounce buffer grows to what a read needs (a block's last page: one page),
  // not to a whole chunk: its pages stay in RSS as long as the thread
  const uint64_t step = std::min(options_.chunk_bytes + a, end - begin);
  uint8_t* buf = AlignedIn(bounce, step, a);
  for (uint64_t at = begin; at < end; at += step) {
    const uint64_t span = std::min(step, end - at);
    const int err = ReadFull(f.fd, buf, span, at, &got);
    if (err != 0) return Status::DeviceError("reading " + f.path + ": " + Errno("pread (O_DIRECT)", err));
    // the part of [at, at + got) inside the asked range
    const uint64_t lo = std::max(at, c.offset), hi = std::min(at + got, c.offset + c.bytes);
    if (hi > lo) std::memcpy(c.dst + (lo - c.offset), buf + (lo - at), hi - lo);
    if (at + got < std::min(at + span, c.offset + c.bytes)) return short_read(at + got);
  }
  return Status::Ok();
}

}  // namespace pinstream
