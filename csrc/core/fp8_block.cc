// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/fp8_block.h"

#include <algorithm>
#include <cstring>

#include "core/parallel.h"

namespace pinstream {
namespace {
uint64_t Align16(uint64_t v) { return (v + 15) / 16 * 16; }
// Codes per work item: large enough to amortize a thread hand-off.
constexpr int64_t kItemElems = int64_t{1} << 22;
}  // namespace

uint64_t MakeFp8Transform(const std::vector<TransferTensor>& tensors, BlockTransform* out) {
  out->jobs.clear();
  uint64_t off = 0;
  for (const TransferTensor& t : tensors) {
    TransformJob job;
    job.dst_offset = t.offset;
    if (t.quantize) {
      job.kind = TransformJob::Kind::kDequantize;
      job.rows = t.rows;
      job.cols = t.cols;
      job.out_dtype = t.dtype;
      job.scales_offset = Align16(off);
      off = job.scales_offset + static_cast<uint64_t>(job.rows) * 4;
      job.src_offset = Align16(off);
      off = job.src_offset + static_cast<uint64_t>(job.rows * job.cols);
    } else {
      job.kind = TransformJob::Kind::kCopy;
      job.src_offset = Align16(off);
      job.bytes = t.bytes;
      off = job.src_offset + job.bytes;
    }
    out->jobs.push_back(job);
  }
  return off;
}

Status QuantizeFp8Block(const std::vector<TransferTensor>& tensors, const std::vector<const void*>& srcs,
                        const BlockTransform& transform, uint8_t* out, int threads, QuantError* error) {
  if (srcs.size() != tensors.size() || transform.jobs.size() != tensors.size()) {
    return Status::InvalidArgument("fp8 block: " + std::to_string(tensors.size()) + " tensors, " +
                                   std::to_string(srcs.size()) + " sources and " +
                                   std::to_string(transform.jobs.size()) + " jobs must agree");
  }
  struct Item {
    size_t tensor;
    int64_t row0, row1;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TransformJob& job = transform.jobs[i];
    if (job.kind == TransformJob::Kind::kCopy) {
      if (job.bytes > 0) std::memcpy(out + job.src_offset, srcs[i], job.bytes);
      continue;
    }
    const int64_t step = std::max<int64_t>(1, kItemElems / std::max<int64_t>(1, job.cols));
    for (int64_t r = 0; r < job.rows; r += step) items.push_back({i, r, std::min(job.rows, r + step)});
  }
  std::vector<QuantError> item_errors(items.size());
  std::vector<Status> item_status(items.size());
  ParallelFor(static_cast<int64_t>(items.size()), threads, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Item& it = items[static_cast<size_t>(k)];
      const TransformJob& job = transform.jobs[it.tensor];
      const int esize = DtypeSize(job.out_dtype);
      item_status[k] =
          QuantizeRows(static_cast<const uint8_t*>(srcs[it.tensor]) + it.row0 * job.cols * esize, job.out_dtype,
                       it.row1 - it.row0, job.cols, out + job.src_offset + it.row0 * job.cols,
                       reinterpret_cast<float*>(out + job.scales_offset) + it.row0, &item_errors[k]);
    }
  });
  QuantError block_error;
  for (size_t k = 0; k < items.size(); ++k) {
    PINSTREAM_RETURN_IF_ERROR(item_status[k]);
    block_error.Merge(item_errors[k]);
  }
  if (error != nullptr) *error = block_error;
  return Status::Ok();
}

}  // namespace pinstream
