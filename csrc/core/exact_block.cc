// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/exact_block.h"

#include <cstring>

namespace pinstream {
namespace {
uint64_t Align16(uint64_t v) { return (v + 15) / 16 * 16; }
}  // namespace

uint64_t MakeExactTransform(const std::vector<ExactTensor>& tensors, BlockTransform* out) {
  out->jobs.clear();
  uint64_t off = 0;
  for (const ExactTensor& t : tensors) {
    TransformJob job;
    job.dst_offset = t.offset;
    job.src_offset = Align16(off);
    if (t.code != nullptr) {
      job.kind = TransformJob::Kind::kDecodeExact;
      job.exact = t.code->layout;
      off = job.src_offset + job.exact.bytes;
    } else {
      job.kind = TransformJob::Kind::kCopy;
      job.bytes = t.bytes;
      off = job.src_offset + t.bytes;
    }
    out->jobs.push_back(job);
  }
  return off;
}

Status EncodeExactTensor(const void* data, const ExactTensor& tensor, const TransformJob& job, uint8_t* transfer,
                         int threads) {
  if (job.kind == TransformJob::Kind::kDecodeExact) {
    if (tensor.code == nullptr) return Status::InvalidArgument("exact block: a coded job without its code");
    return EncodeExact(data, *tensor.code, transfer + job.src_offset, threads);
  }
  if (tensor.bytes > 0) std::memcpy(transfer + job.src_offset, data, tensor.bytes);
  return Status::Ok();
}

Status ReadExactTensor(const uint8_t* transfer, uint64_t transfer_bytes, const TransformJob& job, void* out,
                       int threads) {
  if (job.src_offset > transfer_bytes) return Status::InvalidArgument("exact block: tensor outside the block");
  if (job.kind == TransformJob::Kind::kDecodeExact) {
    return DecodeExact(transfer + job.src_offset, transfer_bytes - job.src_offset, job.exact, out, threads);
  }
  if (job.bytes > transfer_bytes - job.src_offset)
    return Status::InvalidArgument("exact block: tensor outside the block");
  if (job.bytes > 0) std::memcpy(out, transfer + job.src_offset, job.bytes);
  return Status::Ok();
}

std::string ExactSkipReason(bool floating, int elem_bytes, int64_t count) {
  if (!floating || (elem_bytes != 1 && elem_bytes != 2)) {
    return "not a 16- or 8-bit float (exact coding takes bf16, fp16 and fp8)";
  }
  if (count < kExactMinElements) return "fewer than 4096 elements";
  return "";
}

}  // namespace pinstream
