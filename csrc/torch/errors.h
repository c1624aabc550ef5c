// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// How the torch layer reports errors: C++ exceptions whose type says what
// kind of error it is. The binding maps them onto Python's (std::invalid_argument
// -> ValueError, std::out_of_range -> IndexError, OutOfMemoryError ->
// pinstream._C.OutOfMemoryError, a MemoryError; anything else -> RuntimeError).
// Every message starts with "PinStream: ". Safe to throw without the GIL.
#ifndef PINSTREAM_TORCH_ERRORS_H_
#define PINSTREAM_TORCH_ERRORS_H_

#include <stdexcept>
#include <string>

#include "core/status.h"

namespace pinstream {

// Device or pinned-memory exhaustion.
class OutOfMemoryError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws the exception for a non-OK `s`.
inline void ThrowIfError(const Status& s) {
  if (s.ok()) return;
  switch (s.code()) {
    case Status::Code::kInvalidArgument:
      throw std::invalid_argument("PinStream: " + s.message());
    case Status::Code::kOutOfMemory:
      throw OutOfMemoryError("PinStream: " + s.message());
    default:
      throw std::runtime_error("PinStream: " + s.ToString());
  }
}

}  // namespace pinstream

#endif  // PINSTREAM_TORCH_ERRORS_H_
