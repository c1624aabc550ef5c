// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "torch/live_bytes.h"

namespace pinstream {

LiveBytes& Live() {
  static LiveBytes live;
  return live;
}

}  // namespace pinstream
