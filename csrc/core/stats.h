// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Counters of one runtime. Plain data; the runtime fills it.
#ifndef PINSTREAM_CORE_STATS_H_
#define PINSTREAM_CORE_STATS_H_

#include <cstdint>
#include <vector>

namespace pinstream {

struct Stats {
  uint64_t acquires = 0;
  uint64_t bytes_uploaded = 0;  // every host-to-device byte, resident loads too
  uint64_t uploads = 0;         // number of block uploads
  uint64_t hits = 0;            // acquires served without a new upload
  uint64_t misses = 0;          // acquires that had to start their own upload
  uint64_t prefetches = 0;      // uploads started ahead of need
  uint64_t upload_failures = 0;
  // slots filled from a resident coded block: a transform on the device, no upload
  uint64_t coded_refills = 0;
  double stall_ms = 0;   // compute queue waiting for uploads
  double upload_ms = 0;  // sum of copy-queue time of timed uploads
  uint64_t timed_upload_bytes = 0;
  uint64_t passes = 0;
  uint64_t relearns = 0;
  uint64_t skips = 0;
  double transform_ms = 0;       // copy-queue time of transforms (fp8 dequantize, exact decode)
  uint64_t transform_bytes = 0;  // device-layout bytes they wrote
  // the disk tier: blocks and bytes read into the read ring, the host's waits
  // for reads the compute needed now, and the time the disk was busy
  uint64_t disk_reads = 0;
  uint64_t disk_read_misses = 0;  // uploads that found their read not done (the host waited)
  // reads in flight when those waits began, the awaited one included, summed: over
  // disk_read_misses, how full the read ring kept the disk while the host waited
  uint64_t disk_miss_reads_in_flight = 0;
  uint64_t disk_bytes = 0;
  double disk_wait_ms = 0;
  double disk_busy_ms = 0;
  double disk_request_ms = 0;     // reads' times from submit to done, summed: / disk_busy_ms, reads in flight
  uint64_t disk_bytes_total = 0;  // every byte the reader delivered (loads included)
  // compute spans the engine timed (a block's use, or several nested), and the
  // look-ahead the measured times ask for (0 until measured)
  double compute_ms = 0;
  uint64_t compute_spans = 0;
  int suggested_prefetch = 0;
  // Per block: last upload time (ms, -1 when never timed) and upload count.
  std::vector<double> block_upload_ms;
  std::vector<uint64_t> block_uploads;
};

// Bytes the disk tier's reader delivered per second of busy disk time (GB/s; 0 before any).
inline double DiskGbps(const Stats& s) {
  return s.disk_busy_ms > 0 ? static_cast<double>(s.disk_bytes_total) / (s.disk_busy_ms * 1e6) : 0.0;
}

}  // namespace pinstream

#endif  // PINSTREAM_CORE_STATS_H_
