// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// pinstream._C: the module definition and conversions between Python and the
// torch layer (csrc/torch). No policy lives here. Every method that touches a
// runtime releases the GIL before the runtime takes its own mutex (one lock
// order everywhere); the progress callback takes the GIL back only while it runs.
#include <torch/extension.h>

#include <memory>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

#include "core/disk_reader.h"
#include "core/exact_codec.h"
#include "core/pack_layout.h"
#include "torch/errors.h"
#include "torch/live_bytes.h"
#include "torch/torch_runtime.h"

namespace py = pybind11;

namespace pinstream {
namespace {

py::dict ToDict(const PlanInfo& p) {
  py::dict d;
  d["policy"] = p.policy;
  d["prefetch"] = p.prefetch;
  d["num_blocks"] = p.num_blocks;
  d["resident_blocks"] = p.resident_blocks;
  d["streamed_blocks"] = p.streamed_blocks;
  d["split_blocks"] = p.split_blocks;
  d["coded_blocks"] = p.coded_blocks;
  d["coded_block_bytes"] = p.coded_block_bytes;
  d["staging_bytes"] = p.staging_bytes;
  d["copy_ms_per_pass"] = p.copy_ms_per_pass;
  d["link_gbps"] = p.link_gbps;
  d["transform_gbps"] = p.transform_gbps;
  d["rates_measured"] = p.rates_measured;
  d["split_bytes"] = p.split_bytes;
  d["slot_count"] = p.slot_count;
  d["slot_bytes"] = p.slot_bytes;
  d["fixed_bytes"] = p.fixed_bytes;
  d["resident_block_bytes"] = p.resident_block_bytes;
  d["streamed_block_bytes"] = p.streamed_block_bytes;
  d["device_bytes"] = p.device_bytes;
  d["describe"] = p.describe;
  return d;
}

py::dict ToDict(const TorchRuntime::Pace& p) {
  py::dict d;
  d["disk_bytes"] = p.disk_bytes;
  d["compute_ms"] = p.compute_ms;
  d["disk_wait_ms"] = p.disk_wait_ms;
  d["disk_gbps"] = p.disk_gbps;
  d["disk_block_bytes"] = p.disk_block_bytes;
  d["passes"] = p.passes;
  d["host_budget_bytes"] = p.host_budget_bytes;
  return d;
}

py::dict ToDict(const RuntimeStats& s) {
  const Stats& c = s.core;
  py::dict d;
  d["engine"] = s.engine;
  d["device"] = s.device;
  d["acquires"] = c.acquires;
  d["bytes_uploaded"] = c.bytes_uploaded;
  d["uploads"] = c.uploads;
  d["hits"] = c.hits;
  d["misses"] = c.misses;
  d["prefetches"] = c.prefetches;
  d["upload_failures"] = c.upload_failures;
  d["coded_refills"] = c.coded_refills;
  d["stall_ms"] = c.stall_ms;
  d["upload_ms"] = c.upload_ms;
  d["timed_upload_bytes"] = c.timed_upload_bytes;
  d["upload_gbps"] = c.upload_ms > 0 ? static_cast<double>(c.timed_upload_bytes) / (c.upload_ms * 1e6) : 0.0;
  d["passes"] = c.passes;
  d["relearns"] = c.relearns;
  d["skips"] = c.skips;
  d["block_upload_ms"] = c.block_upload_ms;
  d["block_uploads"] = c.block_uploads;
  d["writebacks"] = s.writebacks;
  d["block_pinned"] = s.block_pinned;
  py::list errs;
  for (const QuantError& e : s.fp8_block_error) errs.append(py::make_tuple(e.max_abs, e.mean_abs));
  d["fp8_blocks"] = s.fp8_blocks;
  d["fp8_block_error"] = errs;
  d["fp8_max_abs_error"] = s.fp8_error.max_abs;
  d["fp8_mean_abs_error"] = s.fp8_error.mean_abs;
  d["exact_blocks"] = s.exact_blocks;
  d["exact_coded_tensors"] = s.exact_coded_tensors;
  d["exact_stored_tensors"] = s.exact_stored_tensors;
  d["exact_plain_bytes"] = s.exact_plain_bytes;
  d["exact_transfer_bytes"] = s.exact_transfer_bytes;
  d["exact_ratio"] = s.exact_plain_bytes > 0
                         ? static_cast<double>(s.exact_transfer_bytes) / static_cast<double>(s.exact_plain_bytes)
                         : 1.0;
  py::dict skips;
  for (const auto& kv : s.exact_skips) skips[py::str(kv.first)] = kv.second;
  d["exact_skips"] = skips;
  d["cache_dir"] = s.cache_dir;
  d["cache_hits"] = s.cache_hits;
  d["cache_misses"] = s.cache_misses;
  d["cache_stored"] = s.cache_stored;
  d["cache_rebuilt"] = s.cache_rebuilt;
  d["cache_error"] = s.cache_error;
  d["transform_ms"] = c.transform_ms;
  d["transform_bytes"] = c.transform_bytes;
  d["decode_gbps"] = c.transform_ms > 0 ? static_cast<double>(c.transform_bytes) / (c.transform_ms * 1e6) : 0.0;
  d["host_budget_bytes"] = s.host_budget_bytes;
  d["disk_blocks"] = s.disk_blocks;
  d["disk_block_bytes"] = s.disk_block_bytes;
  d["disk_over_bytes"] = s.disk_over_bytes;
  d["spill_path"] = s.spill_path;
  d["spill_bytes"] = s.spill_bytes;
  d["spill_error"] = s.spill_error;
  d["arrival_error"] = s.arrival_error;
  d["source_block_bytes"] = s.source_block_bytes;
  d["source_note"] = s.source_note;
  d["disk_how"] = s.disk_how;
  d["read_ring_bytes"] = s.read_ring_bytes;
  d["compute_ms"] = c.compute_ms;
  d["compute_spans"] = c.compute_spans;
  d["suggested_prefetch"] = c.suggested_prefetch;
  d["block_on_disk"] = s.block_on_disk;
  d["block_arriving"] = s.block_arriving;
  d["block_compute_ms"] = s.block_compute_ms;
  d["disk_reads"] = c.disk_reads;
  d["disk_read_misses"] = c.disk_read_misses;
  d["disk_miss_reads_in_flight"] = c.disk_miss_reads_in_flight;
  d["disk_bytes"] = c.disk_bytes;
  d["disk_bytes_total"] = c.disk_bytes_total;
  d["disk_wait_ms"] = c.disk_wait_ms;
  d["disk_busy_ms"] = c.disk_busy_ms;
  d["disk_request_ms"] = c.disk_request_ms;
  d["disk_gbps"] = DiskGbps(c);
  d["device_bytes"] = s.device_bytes;
  d["peak_device_bytes"] = s.peak_device_bytes;
  d["host_bytes"] = s.host_bytes;
  d["pinned_bytes"] = s.pinned_bytes;
  d["pageable_bytes"] = s.pageable_bytes;
  d["live_host_bytes"] = s.live_host_bytes;
  d["pin_how"] = s.pin_how;
  d["loaded"] = s.loaded;
  d["closed"] = s.closed;
  if (s.planned) d["plan"] = ToDict(s.plan);
  return d;
}

// A binding of the runtime's `get`: called without the GIL, its result given as a dict.
template <typename R, typename... Args>
auto DictOf(R (TorchRuntime::*get)(Args...)) {
  return [get](TorchRuntime& rt, Args... args) {
    R r;
    {
      py::gil_scoped_release nogil;
      r = (rt.*get)(args...);
    }
    return ToDict(r);
  };
}

std::vector<int> RegisterBlocks(TorchRuntime& rt, RegisterRequest req, const py::object& progress,
                                const py::object& policy, int64_t budget_bytes, int prefetch) {
  if (!progress.is_none()) {
    req.progress = [&progress](size_t done, size_t total) {
      py::gil_scoped_acquire gil;
      progress(done, total);
    };
  }
  if (!policy.is_none()) {
    req.plan = true;
    req.policy = policy.cast<std::string>();
    req.budget_bytes = budget_bytes;
    req.prefetch = prefetch;
  }
  py::gil_scoped_release nogil;
  return rt.RegisterBlocks(req);
}

// The residency a plan would choose for these sizes, without a runtime: True =
// wholly resident. With `tensor_bytes` (each block's tensor sizes) the blocks
// are packed and may be cut as registration packs them.
std::vector<bool> PlanResidency(const std::vector<uint64_t>& block_bytes, uint64_t fixed_bytes,
                                const std::string& policy, int64_t budget_bytes, int prefetch,
                                const std::vector<std::vector<uint64_t>>& tensor_bytes) {
  PlanRequest req;
  req.policy = ParsePolicy(policy);
  req.block_bytes = block_bytes;
  if (!tensor_bytes.empty()) {
    if (tensor_bytes.size() != block_bytes.size()) {
      throw std::invalid_argument("PinStream: tensor_bytes has " + std::to_string(tensor_bytes.size()) +
                                  " entries for " + std::to_string(block_bytes.size()) + " blocks");
    }
    req.block_bytes.clear();
    for (const auto& sizes : tensor_bytes) {
      BlockLayout l = LayoutBlock(sizes);
      req.block_bytes.push_back(l.bytes);
      req.block_cuts.push_back(l.Cuts());
    }
  }
  req.fixed_bytes = fixed_bytes;
  req.budget_bytes = budget_bytes < 0 ? PlanRequest::kUnlimited : static_cast<uint64_t>(budget_bytes);
  req.prefetch = prefetch;
  ResidencyPlan plan;
  ThrowIfError(ResidencyPlan::Make(req, &plan));
  std::vector<bool> out;
  for (int i = 0; i < plan.num_blocks(); ++i) out.push_back(plan.resident(i));
  return out;
}

py::tuple LayoutTuple(const ExactLayout& l) {
  return py::make_tuple(l.elem_bytes, l.count, l.num_chunks, l.lengths_offset, l.chunks_offset, l.stream_offset,
                        l.stream_words, l.raw_offset, l.bytes);
}

ExactLayout LayoutOf(const py::tuple& t) {
  if (t.size() != 9) throw std::invalid_argument("PinStream: an exact layout is a 9-tuple");
  ExactLayout l;
  l.elem_bytes = t[0].cast<int>();
  l.count = t[1].cast<int64_t>();
  l.num_chunks = t[2].cast<int64_t>();
  l.lengths_offset = t[3].cast<uint64_t>();
  l.chunks_offset = t[4].cast<uint64_t>();
  l.stream_offset = t[5].cast<uint64_t>();
  l.stream_words = t[6].cast<uint64_t>();
  l.raw_offset = t[7].cast<uint64_t>();
  l.bytes = t[8].cast<uint64_t>();
  return l;
}

// The exact codec on one host tensor (benchmarks, tests): (coded bytes, layout, top-byte entropy).
py::tuple ExactCodeTensor(const at::Tensor& t, int threads) {
  if (!t.device().is_cpu() || !t.is_contiguous() || (t.element_size() != 1 && t.element_size() != 2)) {
    throw std::invalid_argument("PinStream: exact_code takes a contiguous CPU tensor of 1- or 2-byte elements");
  }
  ExactCode code;
  at::Tensor out;
  {
    py::gil_scoped_release nogil;
    ThrowIfError(AnalyzeExact(t.data_ptr(), static_cast<int>(t.element_size()), t.numel(), threads, &code));
    out = at::empty({static_cast<int64_t>(code.layout.bytes)}, at::TensorOptions().dtype(at::kByte));
    ThrowIfError(EncodeExact(t.data_ptr(), code, out.data_ptr<uint8_t>(), threads));
  }
  return py::make_tuple(out, LayoutTuple(code.layout), code.top_entropy_bits);
}

at::Tensor ExactDecodeTensor(const at::Tensor& coded, const py::tuple& layout, int threads) {
  const ExactLayout l = LayoutOf(layout);
  if (!coded.device().is_cpu() || !coded.is_contiguous() || coded.scalar_type() != at::kByte) {
    throw std::invalid_argument("PinStream: exact_decode takes the contiguous CPU uint8 tensor exact_code gave");
  }
  at::Tensor out = at::empty({static_cast<int64_t>(l.plain_bytes())}, at::TensorOptions().dtype(at::kByte));
  py::gil_scoped_release nogil;
  ThrowIfError(DecodeExact(coded.data_ptr<uint8_t>(), static_cast<uint64_t>(coded.numel()), l, out.data_ptr<uint8_t>(),
                           threads));
  return out;
}

bool CudaBuilt() {
#ifdef PINSTREAM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace pinstream

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The disk tier's reader, for benchmarks and tests: a file's read rate with the
  // same threads, chunks and O_DIRECT the runtime uses.
  py::class_<pinstream::DiskReader>(m, "DiskReader")
      .def(py::init([](int threads, bool direct, uint64_t chunk_bytes, bool io_uring, int queue_depth) {
             pinstream::DiskReader::Options o;
             o.threads = threads;
             o.direct = direct;
             o.chunk_bytes = chunk_bytes;
             o.io_uring = io_uring;
             o.queue_depth = queue_depth;
             return std::make_unique<pinstream::DiskReader>(o);
           }),
           py::arg("threads") = 4, py::arg("direct") = true, py::arg("chunk_bytes") = 8ULL << 20,
           py::arg("io_uring") = false, py::arg("queue_depth") = 32)
      .def(
          "open",
          [](pinstream::DiskReader& r, const std::string& path) {
            int file = -1;
            pinstream::ThrowIfError(r.Open(path, &file));
            return file;
          },
          py::arg("path"))
      .def("size", &pinstream::DiskReader::size, py::arg("file"))
      .def("direct", &pinstream::DiskReader::direct, py::arg("file"))
      .def("how", &pinstream::DiskReader::how, py::arg("file"))
      .def(
          "read",
          [](pinstream::DiskReader& r, int file, uint64_t offset, const at::Tensor& dst) {
            if (!dst.is_cpu() || !dst.is_contiguous() || dst.scalar_type() != at::kByte) {
              throw std::invalid_argument("PinStream: read() needs a contiguous uint8 CPU tensor");
            }
            uint64_t ticket = 0;
            py::gil_scoped_release nogil;
            pinstream::ThrowIfError(
                r.Submit(file, offset, static_cast<uint64_t>(dst.numel()), dst.data_ptr(), &ticket));
            pinstream::ThrowIfError(r.Wait(ticket));
          },
          py::arg("file"), py::arg("offset"), py::arg("dst"), "Reads dst.numel() bytes at offset into dst (waits)");
  m.attr("DISK_TIER_CHUNK_BYTES") = pinstream::kDiskTierChunkBytes;
  m.def(
      "drop_page_cache",
      [](const std::string& path) {
        // clean pages of the file leave the page cache (no root needed), so the next
        // buffered read measures the disk
        const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw std::invalid_argument("PinStream: cannot open " + path);
        fdatasync(fd);
        const int err = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
        return err == 0;
      },
      py::arg("path"), "Asks the kernel to drop the file's pages from the page cache; whether it took the advice");
  using pinstream::TorchRuntime;
  using nogil = py::call_guard<py::gil_scoped_release>;
  m.doc() = "PinStream native runtime: streams weight blocks from pinned host memory to the device";
  py::register_exception<pinstream::OutOfMemoryError>(m, "OutOfMemoryError", PyExc_MemoryError);
  m.def("cuda_built", &pinstream::CudaBuilt, "True when the CUDA engine was compiled in");
  m.def("plan_residency", &pinstream::PlanResidency, py::arg("block_bytes"), py::arg("fixed_bytes"), py::arg("policy"),
        py::arg("budget_bytes"), py::arg("prefetch"), py::arg("tensor_bytes") = std::vector<std::vector<uint64_t>>(),
        "Which blocks a plan keeps wholly resident (True) for these sizes; with tensor_bytes "
        "(each block's tensor sizes) packed as registered, split blocks included (False)");
  m.def("exact_code", &pinstream::ExactCodeTensor, py::arg("tensor"), py::arg("threads") = 1,
        "(coded uint8 tensor, layout, top-byte entropy bits) of a contiguous CPU tensor of 1- or 2-byte elements");
  m.def("exact_decode", &pinstream::ExactDecodeTensor, py::arg("coded"), py::arg("layout"), py::arg("threads") = 1,
        "the stored bytes (uint8) of a tensor exact_code coded");
  m.def(
      "live_bytes",
      [] {
        pinstream::LiveBytes& live = pinstream::Live();
        py::dict d;
        d["host"] = live.host.load();
        d["pinned"] = live.pinned.load();
        d["device"] = live.device.load();
        d["runtimes"] = live.runtimes.load();
        return d;
      },
      "Bytes held by all PinStream runtimes in this process (host chunks, pinned, device)");
  py::class_<TorchRuntime>(m, "Runtime")
      .def(py::init([](const std::string& device, const std::string& engine, int prefetch, int64_t budget_bytes,
                       double link_gbps, double latency_us, int random_delay_us, uint64_t seed, bool poison,
                       int64_t device_capacity_bytes, const std::string& pin_mode, int64_t chunk_bytes, bool timing,
                       int64_t pin_cap_bytes, const std::string& cache_dir, int64_t host_budget_bytes,
                       const std::string& spill_dir, int read_ahead, int disk_threads, bool disk_direct,
                       bool adaptive_prefetch, const std::string& disk_why, bool disk_io_uring) {
             pinstream::RuntimeOptions o;
             o.device = device;
             o.engine = engine;
             o.prefetch = prefetch;
             o.budget_bytes = budget_bytes;
             o.link_gbps = link_gbps;
             o.latency_us = latency_us;
             o.random_delay_us = random_delay_us;
             o.seed = seed;
             o.poison = poison;
             o.device_capacity_bytes = device_capacity_bytes;
             o.pin_mode = pin_mode;
             o.chunk_bytes = chunk_bytes;
             o.timing = timing;
             o.pin_cap_bytes = pin_cap_bytes;
             o.cache_dir = cache_dir;
             o.host_budget_bytes = host_budget_bytes;
             o.spill_dir = spill_dir;
             o.read_ahead = read_ahead;
             o.disk_threads = disk_threads;
             o.disk_direct = disk_direct;
             o.adaptive_prefetch = adaptive_prefetch;
             o.disk_why = disk_why;
             o.disk_io_uring = disk_io_uring;
             py::gil_scoped_release nogil;
             return std::make_unique<TorchRuntime>(o);
           }),
           py::arg("device") = "cpu", py::arg("engine") = "auto", py::arg("prefetch") = 1, py::arg("budget_bytes") = -1,
           py::arg("link_gbps") = 0.0, py::arg("latency_us") = 0.0, py::arg("random_delay_us") = 0, py::arg("seed") = 0,
           py::arg("poison") = false, py::arg("device_capacity_bytes") = 0, py::arg("pin_mode") = "auto",
           py::arg("chunk_bytes") = 256LL << 20, py::arg("timing") = true, py::arg("pin_cap_bytes") = -1,
           py::arg("cache_dir") = "", py::arg("host_budget_bytes") = -1, py::arg("spill_dir") = "",
           py::arg("read_ahead") = 2, py::arg("disk_threads") = 4, py::arg("disk_direct") = true,
           py::arg("adaptive_prefetch") = false, py::arg("disk_why") = "", py::arg("disk_io_uring") = false)
      .def_property_readonly("engine", &TorchRuntime::engine_name)
      .def_property_readonly("device", &TorchRuntime::device_name)
      .def_property_readonly("num_blocks", &TorchRuntime::num_blocks, nogil())
      .def_property_readonly("device_bytes", &TorchRuntime::device_bytes, nogil(),
                             "device bytes held now (slots and resident blocks); no synchronization")
      .def_property_readonly("host_bytes", &TorchRuntime::host_bytes, nogil())
      .def_property_readonly("ram_bytes", &TorchRuntime::ram_bytes, nogil(), "host_bytes and the read ring's")
      .def_property_readonly("pinned_bytes", &TorchRuntime::pinned_bytes, nogil())
      .def_property_readonly("closed", &TorchRuntime::closed, nogil())
      .def_property_readonly("loaded", &TorchRuntime::loaded, nogil())
      .def_property_readonly("block_bytes", &TorchRuntime::block_bytes, nogil())
      .def_property_readonly("resident_blocks", &TorchRuntime::resident_blocks, nogil())
      .def(
          "register_blocks",
          [](TorchRuntime& rt, const std::vector<std::vector<at::Tensor>>& blocks, const std::vector<bool>& streamable,
             const py::object& progress, const std::vector<bool>& fp8,
             const std::vector<std::vector<std::string>>& names, const py::object& policy, int64_t budget_bytes,
             int prefetch, const std::vector<bool>& exact, const std::vector<std::string>& source_files,
             const std::vector<std::vector<std::pair<int, int64_t>>>& sources) {
            pinstream::RegisterRequest req;
            req.blocks = blocks;
            req.streamable = streamable;
            req.fp8 = fp8;
            req.exact = exact;
            req.names = names;
            req.source_files = source_files;
            req.sources = sources;
            return pinstream::RegisterBlocks(rt, std::move(req), progress, policy, budget_bytes, prefetch);
          },
          py::arg("blocks"), py::arg("streamable") = std::vector<bool>(), py::arg("progress") = py::none(),
          py::arg("fp8") = std::vector<bool>(), py::arg("names") = std::vector<std::vector<std::string>>(),
          py::arg("policy") = py::none(), py::arg("budget_bytes") = -1, py::arg("prefetch") = 1,
          py::arg("exact") = std::vector<bool>(), py::arg("source_files") = std::vector<std::string>(),
          py::arg("sources") = std::vector<std::vector<std::pair<int, int64_t>>>(),
          "Packs each block's tensors into pinned host memory and re-points them there (all or nothing). With "
          "`policy` the plan is made from the layout first and the memory pinned in the order it uploads; names "
          "(per block, per tensor) are used in error messages; `exact` blocks are held in the exact coded form only")
      .def(
          "register_block",
          [](TorchRuntime& rt, const std::vector<at::Tensor>& tensors, bool streamable) {
            pinstream::RegisterRequest req;
            req.blocks = {tensors};
            req.streamable = {streamable};
            return pinstream::RegisterBlocks(rt, std::move(req), py::none(), py::none(), -1, 1)[0];
          },
          py::arg("tensors"), py::arg("streamable") = true)
      .def("plan", pinstream::DictOf(&TorchRuntime::Plan), py::arg("policy") = "budget", py::arg("budget_bytes") = -1,
           py::arg("prefetch") = 1)
      .def("current_plan", pinstream::DictOf(&TorchRuntime::CurrentPlan),
           "The plan in force (the one register_blocks(policy=...) or plan() made)")
      .def("host_value", &TorchRuntime::HostValue, py::arg("block"), py::arg("index"), nogil(),
           "tensor `index` of `block` on the host: its host view, or decoded from a coded block's bytes")
      .def("write_host_values", &TorchRuntime::WriteHostValues, py::arg("block"), py::arg("values"), nogil(),
           "new values [(index, tensor)] for tensors of `block`: into its host copy, a coded block coded again")
      .def("load", &TorchRuntime::Load, nogil())
      .def("unload", &TorchRuntime::Unload, nogil())
      .def("warm", &TorchRuntime::Warm, nogil(),
           "While not loaded: read the blocks on disk its next pass starts with into its read ring")
      .def("set_host_budget", &TorchRuntime::SetHostBudget, py::arg("budget_bytes"),
           py::arg("pin_cap_bytes") = py::none(), py::arg("by_timing") = false, py::arg("read_through") = false,
           nogil(),
           "Between passes: units beyond the new host budget (-1: none) move to disk, units on disk come "
           "back while it allows (pinned within pin_cap_bytes when given; by_timing: placed by the blocks' timed "
           "compute where it is spread unlike their bytes; read_through: read by the next pass into their own "
           "buffers instead of now); returns the host bytes of weights held after")
      .def("begin_pass", &TorchRuntime::BeginPass, nogil())
      .def("check_placement", &TorchRuntime::CheckPlacement, nogil(),
           "raise when a weight was converted, replaced or moved by code PinStream does not manage")
      .def("acquire", &TorchRuntime::Acquire, py::arg("block"), nogil())
      .def(
          "release", [](TorchRuntime& rt, int block) { rt.Release(block, false); }, py::arg("block"), nogil())
      .def(
          "release_if_acquired", [](TorchRuntime& rt, int block) { rt.Release(block, true); }, py::arg("block"),
          nogil(), "release() for forward hooks: a block whose acquire failed is skipped")
      .def("end_pass", &TorchRuntime::EndPass, nogil())
      .def("touch", &TorchRuntime::Touch, py::arg("block"), nogil(),
           "acquire `block`, releasing the block touched before it (for hooks on a block's children)")
      .def("release_touched", &TorchRuntime::ReleaseTouched, py::arg("block"), nogil())
      .def("synchronize", &TorchRuntime::Synchronize, nogil())
      .def("stats", pinstream::DictOf(&TorchRuntime::GetStats))
      .def("pace", pinstream::DictOf(&TorchRuntime::GetPace),
           "the figures stats() has that deciding a move between RAM and disk needs, without waiting for "
           "pending timings")
      .def("reset_stats", &TorchRuntime::ResetStats, nogil())
      .def("close", &TorchRuntime::Close, py::arg("restore_pageable") = true, nogil())
      .def("fail_next_copies", &TorchRuntime::FailNextCopies, py::arg("count"), nogil())
      .def("delay_next_copies", &TorchRuntime::DelayNextCopies, py::arg("count"), py::arg("us"), nogil())
      .def("fail_next_host_allocations", &TorchRuntime::FailNextHostAllocations, py::arg("count"), nogil())
      .def("fail_next_spill_writes", &TorchRuntime::FailNextSpillWrites, py::arg("count"), nogil())
      .def("fail_next_disk_reads", &TorchRuntime::FailNextDiskReads, py::arg("count"), nogil())
      .def("set_device_capacity", &TorchRuntime::SetDeviceCapacity, py::arg("bytes"), nogil());
}
