// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// What a coded weight points at between uses. A block sent in the exact coded
// form has no other host copy, yet a torch weight always needs storage of its
// size on a real device. Every such weight shares one host region filled with
// all-ones bytes (NaN in every float format), so reading a coded weight outside
// a forward gives NaN, never plausible values: PinStream decodes a weight's
// values on the host when they are asked for (state_dict, weight patches,
// detach). The region grows to the largest weight. Its pages are one 1 MiB
// chunk of shared memory mapped again and again (copy-on-write), so the
// placeholder of a model costs that 1 MiB once per process, not the size of its
// largest weight (hundreds of MiB in a 14B model), whatever the number of models.
#ifndef PINSTREAM_TORCH_PLACEHOLDER_H_
#define PINSTREAM_TORCH_PLACEHOLDER_H_

#include <ATen/ATen.h>

#include <vector>

namespace pinstream {

// A CPU tensor of `dtype`, `sizes` and `strides` (dense) over the shared region,
// of the weight's kind (an inference tensor when `inference`).
at::Tensor CodedPlaceholder(at::ScalarType dtype, at::IntArrayRef sizes, at::IntArrayRef strides, bool inference);

}  // namespace pinstream

#endif  // PINSTREAM_TORCH_PLACEHOLDER_H_
