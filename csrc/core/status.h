// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Status: errors as values for the core. A Status is either OK or carries a
// code and a message that says what was asked, what was possible, and what to
// do. The core never throws and never exits; the bindings turn a non-OK Status
// into a Python exception.
#ifndef PINSTREAM_CORE_STATUS_H_
#define PINSTREAM_CORE_STATUS_H_

#include <string>
#include <utility>

namespace pinstream {

class Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,     // the caller asked for something impossible
    kOutOfMemory,         // device or pinned memory could not be allocated
    kFailedPrecondition,  // call made in the wrong state (e.g. before Plan)
    kDeviceError,         // a CUDA call or emulated copy failed
    kClosed,              // the runtime was closed
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) { return Status(Code::kInvalidArgument, std::move(msg)); }
  static Status OutOfMemory(std::string msg) { return Status(Code::kOutOfMemory, std::move(msg)); }
  static Status FailedPrecondition(std::string msg) { return Status(Code::kFailedPrecondition, std::move(msg)); }
  static Status DeviceError(std::string msg) { return Status(Code::kDeviceError, std::move(msg)); }
  static Status Closed(std::string msg) { return Status(Code::kClosed, std::move(msg)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

inline std::string Status::ToString() const {
  if (ok()) return "OK";
  const char* name = "error";
  switch (code_) {
    case Code::kInvalidArgument:
      name = "invalid argument";
      break;
    case Code::kOutOfMemory:
      name = "out of memory";
      break;
    case Code::kFailedPrecondition:
      name = "failed precondition";
      break;
    case Code::kDeviceError:
      name = "device error";
      break;
    case Code::kClosed:
      name = "closed";
      break;
    case Code::kOk:
      break;
  }
  return std::string(name) + ": " + message_;
}

// Formats a byte count as GiB with two decimals, e.g. "1.40 GiB".
std::string FormatBytes(unsigned long long bytes);

}  // namespace pinstream

#define PINSTREAM_RETURN_IF_ERROR(expr)      \
  do {                                       \
    ::pinstream::Status _ps_status = (expr); \
    if (!_ps_status.ok()) return _ps_status; \
  } while (0)

#endif  // PINSTREAM_CORE_STATUS_H_
