// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Which units of a model live on disk when its host budget is smaller than
// the model (the disk tier). The units the device plan keeps resident go
// first: they are read once at load and need no host copy at all. Then
// streamed units, as few as cover what is left, spread evenly over the compute
// of the order they run in: each at the middle of one of k equal stretches of
// compute, so that between two disk units the read ring has the longest time
// to read the next one while the others compute.
#ifndef PINSTREAM_CORE_DISK_PLAN_H_
#define PINSTREAM_CORE_DISK_PLAN_H_

#include <cstdint>
#include <vector>

namespace pinstream {

struct DiskPlanUnit {
  uint64_t host_bytes = 0;  // what it holds in RAM unless it lives on disk
  bool movable = false;     // may live on disk
  bool resident = false;    // kept on the device by the plan
  // Its compute time, or anything in proportion (its weights' bytes); 0: its host_bytes.
  double compute = 0;
};

// Units (flags, in order) that go to disk so that `held` plus the host bytes
// of the units kept stays within `budget`. `*over`: what is still above the
// budget when every movable unit went (0 when the budget is met).
std::vector<bool> ChooseDiskUnits(const std::vector<DiskPlanUnit>& units, uint64_t held, uint64_t budget,
                                  uint64_t* over);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_DISK_PLAN_H_
