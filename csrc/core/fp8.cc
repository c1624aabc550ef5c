// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Built with -ffp-contract=off (CMakeLists.txt): every fp32 operation below is
// rounded on its own, as in the CUDA kernel.
#include "core/fp8.h"

#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace pinstream {

// x87 excess precision would round the fp32 divisions and products twice.
static_assert(FLT_EVAL_METHOD == 0, "fp8.cc needs fp32 arithmetic in fp32 (SSE2 or better)");

namespace {

constexpr float kE4M3Max = 448.0f;
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// m >> s rounded to nearest, ties to even (s >= 1).
uint32_t ShiftRightRne(uint32_t m, int s) {
  if (s >= 32) return 0;
  const uint32_t q = m >> s;
  const uint32_t rem = m & ((1u << s) - 1u);
  const uint32_t half = 1u << (s - 1);
  return (rem > half || (rem == half && (q & 1u))) ? q + 1u : q;
}

constexpr float Pow2(int e) {
  float r = 1.0f;
  for (; e > 0; --e) r *= 2.0f;
  for (; e < 0; ++e) r *= 0.5f;
  return r;
}

constexpr float E4M3Value(int code) {
  const int e = (code >> 3) & 0xF;
  const int m = code & 0x7;
  float mag = 0;
  if ((code & 0x7F) == 0x7F) {
    mag = kNan;
  } else if (e == 0) {
    mag = static_cast<float>(m) * Pow2(-9);
  } else {
    mag = static_cast<float>(8 + m) * Pow2(e - 10);
  }
  return (code & 0x80) ? -mag : mag;
}

constexpr float E5M2Value(int code) {
  const int e = (code >> 2) & 0x1F;
  const int m = code & 0x3;
  float mag = 0;
  if (e == 31) {
    mag = m == 0 ? std::numeric_limits<float>::infinity() : kNan;
  } else if (e == 0) {
    mag = static_cast<float>(m) * Pow2(-16);
  } else {
    mag = static_cast<float>(4 + m) * Pow2(e - 17);
  }
  return (code & 0x80) ? -mag : mag;
}

template <typename Fn>
constexpr std::array<float, 256> MakeTable(Fn value) {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) t[c] = value(c);
  return t;
}

constexpr std::array<float, 256> kE4M3Table = MakeTable([](int c) constexpr { return E4M3Value(c); });
constexpr std::array<float, 256> kE5M2Table = MakeTable([](int c) constexpr { return E5M2Value(c); });

// ---- narrowing stores (canonical NaN) ----

struct StoreF32 {
  using T = float;
  static float Convert(float x) { return std::isnan(x) ? FromBits(kCanonicalNanFloat32) : x; }
};
struct StoreF16 {
  using T = uint16_t;
  static uint16_t Convert(float x) { return FloatToHalf(x); }
};
struct StoreBF16 {
  using T = uint16_t;
  static uint16_t Convert(float x) { return FloatToBFloat16(x); }
};

// ---- element loads ----

// The loaders' conversions, inlined: through the exported functions every element
// costs a PLT call (and a spill of the running maximum), several times the work.
inline float BFloat16ToFloatInline(uint16_t bits) { return FromBits(static_cast<uint32_t>(bits) << 16); }

inline float HalfToFloatInline(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t e = (bits >> 10) & 0x1Fu;
  const uint32_t m = bits & 0x3FFu;
  if (e == 31) return FromBits(sign | 0x7F800000u | (m << 13));  // inf / NaN
  if (e == 0) {
    // m * 2^-24: exact, and a normal fp32 number.
    const float mag = static_cast<float>(m) * Pow2(-24);
    return sign ? -mag : mag;
  }
  return FromBits(sign | ((e + 112u) << 23) | (m << 13));
}

struct LoadF32 {
  using T = float;
  static float Get(float x) { return x; }
};
struct LoadF16 {
  using T = uint16_t;
  static float Get(uint16_t x) { return HalfToFloatInline(x); }
};
struct LoadBF16 {
  using T = uint16_t;
  static float Get(uint16_t x) { return BFloat16ToFloatInline(x); }
};

bool IsAligned(const void* p, size_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

Status CheckShape(int64_t rows, int64_t cols, const char* what) {
  if (rows < 0 || cols < 0) {
    return Status::InvalidArgument(std::string(what) + ": shape [" + std::to_string(rows) + ", " +
                                   std::to_string(cols) + "] has a negative size");
  }
  if (cols != 0 && rows > std::numeric_limits<int64_t>::max() / cols) {
    return Status::InvalidArgument(std::string(what) + ": shape [" + std::to_string(rows) + ", " +
                                   std::to_string(cols) + "] has more than 2^63 elements");
  }
  return Status::Ok();
}

Status CheckPointer(const void* p, size_t alignment, const char* what, const char* name) {
  if (p == nullptr) {
    return Status::InvalidArgument(std::string(what) + ": " + name + " is null for a non-empty matrix");
  }
  if (!IsAligned(p, alignment)) {
    return Status::InvalidArgument(std::string(what) + ": " + name + " is not aligned to " + std::to_string(alignment) +
                                   " bytes (its element size); align the buffer offset");
  }
  return Status::Ok();
}

// Inlined into the quantization loop (a call through the PLT per code costs
// as much as the encoding itself).
inline uint8_t EncodeE4M3Inline(float x) {
  const uint32_t u = Bits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return sign | 0x7F;  // NaN
  if (a > 0x43E80000u) return sign | 0x7E;  // |x| > 464 or inf: saturate
  if (a >= 0x3C800000u) {                   // |x| >= 2^-6: e4m3 normal
    // Rebias the exponent (127 -> 7) and round the 23-bit mantissa to 3 bits
    // (RNE; a carry moves into the exponent). 464 rounds to 448 (0x7E).
    const uint32_t mant_odd = (a >> 20) & 1u;
    a += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu + mant_odd;
    return sign | static_cast<uint8_t>(a >> 20);
  }
  if (a < 0x00800000u) return sign;  // fp32 zero/subnormal: < 2^-126
  // e4m3 subnormal: code = RNE(|x| / 2^-9) in 0..8 (8 is the smallest normal).
  const int e = static_cast<int>(a >> 23) - 127;   // -126..-7
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;  // |x| = m * 2^(e-23)
  return sign | static_cast<uint8_t>(ShiftRightRne(m, 14 - e));
}

// Running error sums of QuantizeRows / MeasureQuantError.
struct ErrorSums {
  double max_abs = 0;
  double sum_abs = 0;
  int64_t count = 0;

  void Add(float original, float dequantized) {
    if (!std::isfinite(original)) return;
    const double e = std::fabs(static_cast<double>(original) - static_cast<double>(dequantized));
    if (e > max_abs || std::isnan(e)) max_abs = e;
    sum_abs += e;
    ++count;
  }
  QuantError Result() const {
    QuantError r;
    r.max_abs = max_abs;
    r.mean_abs = count > 0 ? sum_abs / static_cast<double>(count) : 0.0;
    r.count = count;
    return r;
  }
};

template <typename Load>
void QuantizeTyped(const typename Load::T* src, int64_t rows, int64_t cols, uint8_t* q, float* scales,
                   ErrorSums* sums) {
  for (int64_t r = 0; r < rows; ++r) {
    const typename Load::T* row = src + r * cols;
    uint8_t* qrow = q + r * cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) {
      const float a = std::fabs(Load::Get(row[c]));
      if (a <= FLT_MAX && a > amax) amax = a;  // NaN and inf fail the test
    }
    float scale = amax > 0.0f ? amax / kE4M3Max : 1.0f;
    // amax below 448 * 2^-149 (float denormals only) would give scale 0.
    if (scale == 0.0f) scale = std::numeric_limits<float>::denorm_min();
    scales[r] = scale;
    for (int64_t c = 0; c < cols; ++c) {
      const float x = Load::Get(row[c]);
      qrow[c] = EncodeE4M3Inline(x / scale);
      if (sums != nullptr) sums->Add(x, kE4M3Table[qrow[c]] * scale);
    }
  }
}

template <typename Load>
void MeasureTyped(const typename Load::T* src, int64_t rows, int64_t cols, const uint8_t* q, const float* scales,
                  ErrorSums* sums) {
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = scales[r];
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      sums->Add(Load::Get(src[i]), kE4M3Table[q[i]] * scale);
    }
  }
}

template <typename Store>
void DequantizeTyped(const Fp8DequantParams& p) {
  const std::array<float, 256>& table = p.format == Fp8Format::kE4M3 ? kE4M3Table : kE5M2Table;
  auto* out = static_cast<typename Store::T*>(p.out);
  const float uniform = p.scale_layout == ScaleLayout::kScalar ? p.scales[0] : 1.0f;
  for (int64_t r = 0; r < p.rows; ++r) {
    const float scale = p.scale_layout == ScaleLayout::kPerRow ? p.scales[r] : uniform;
    const uint8_t* qrow = p.q + r * p.cols;
    typename Store::T* orow = out + r * p.cols;
    for (int64_t c = 0; c < p.cols; ++c) {
      const float product = table[qrow[c]] * scale;  // one RNE fp32 multiply
      orow[c] = Store::Convert(product);
    }
  }
}

}  // namespace

const char* DtypeName(FloatDtype dtype) {
  switch (dtype) {
    case FloatDtype::kFloat32:
      return "float32";
    case FloatDtype::kFloat16:
      return "float16";
    case FloatDtype::kBFloat16:
      return "bfloat16";
  }
  return "unknown dtype";
}

const char* Fp8FormatName(Fp8Format format) {
  switch (format) {
    case Fp8Format::kE4M3:
      return "float8_e4m3fn";
    case Fp8Format::kE5M2:
      return "float8_e5m2";
  }
  return "unknown fp8 format";
}

uint8_t EncodeE4M3(float x) { return EncodeE4M3Inline(x); }

float DecodeE4M3(uint8_t code) { return kE4M3Table[code]; }
float DecodeE5M2(uint8_t code) { return kE5M2Table[code]; }

uint16_t FloatToBFloat16(float x) {
  const uint32_t u = Bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return kCanonicalNanBFloat16;
  const uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

uint16_t FloatToHalf(float x) {
  const uint32_t u = Bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return kCanonicalNanFloat16;
  if (a >= 0x477FF000u) return sign | 0x7C00u;  // |x| >= 65520: inf
  if (a >= 0x38800000u) {                       // |x| >= 2^-14: normal
    const uint32_t mant_odd = (a >> 13) & 1u;
    a += (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + mant_odd;
    return sign | static_cast<uint16_t>(a >> 13);
  }
  if (a < 0x00800000u) return sign;  // fp32 zero/subnormal
  // fp16 subnormal: RNE(|x| / 2^-24) in 0..0x400 (0x400 is the smallest normal).
  const int e = static_cast<int>(a >> 23) - 127;  // -126..-15
  const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  return sign | static_cast<uint16_t>(ShiftRightRne(m, -1 - e));
}

float BFloat16ToFloat(uint16_t bits) { return BFloat16ToFloatInline(bits); }

float HalfToFloat(uint16_t bits) { return HalfToFloatInline(bits); }

float LoadAsFloat(const void* data, FloatDtype dtype, int64_t i) {
  switch (dtype) {
    case FloatDtype::kFloat32:
      return static_cast<const float*>(data)[i];
    case FloatDtype::kFloat16:
      return HalfToFloat(static_cast<const uint16_t*>(data)[i]);
    case FloatDtype::kBFloat16:
      return BFloat16ToFloat(static_cast<const uint16_t*>(data)[i]);
  }
  return kNan;
}

void QuantError::Merge(const QuantError& other) {
  if (other.max_abs > max_abs || std::isnan(other.max_abs)) max_abs = other.max_abs;
  const int64_t total = count + other.count;
  mean_abs = total > 0 ? (mean_abs * static_cast<double>(count) + other.mean_abs * static_cast<double>(other.count)) /
                             static_cast<double>(total)
                       : 0.0;
  count = total;
}

Status QuantizeRows(const void* src, FloatDtype src_dtype, int64_t rows, int64_t cols, uint8_t* q_out,
                    float* scales_out, QuantError* error) {
  const char* what = "QuantizeRows";
  PINSTREAM_RETURN_IF_ERROR(CheckShape(rows, cols, what));
  if (rows > 0) PINSTREAM_RETURN_IF_ERROR(CheckPointer(scales_out, 4, what, "scales_out"));
  ErrorSums sums;
  if (rows > 0 && cols > 0) {
    PINSTREAM_RETURN_IF_ERROR(CheckPointer(src, DtypeSize(src_dtype), what, "src"));
    PINSTREAM_RETURN_IF_ERROR(CheckPointer(q_out, 1, what, "q_out"));
  }
  ErrorSums* s = error != nullptr ? &sums : nullptr;
  switch (src_dtype) {
    case FloatDtype::kFloat32:
      QuantizeTyped<LoadF32>(static_cast<const float*>(src), rows, cols, q_out, scales_out, s);
      break;
    case FloatDtype::kFloat16:
      QuantizeTyped<LoadF16>(static_cast<const uint16_t*>(src), rows, cols, q_out, scales_out, s);
      break;
    case FloatDtype::kBFloat16:
      QuantizeTyped<LoadBF16>(static_cast<const uint16_t*>(src), rows, cols, q_out, scales_out, s);
      break;
  }
  if (error != nullptr) *error = sums.Result();
  return Status::Ok();
}

Status MeasureQuantError(const void* original, FloatDtype original_dtype, int64_t rows, int64_t cols, const uint8_t* q,
                         const float* scales, QuantError* error) {
  const char* what = "MeasureQuantError";
  PINSTREAM_RETURN_IF_ERROR(CheckShape(rows, cols, what));
  if (error == nullptr) return Status::InvalidArgument("MeasureQuantError: error is null");
  ErrorSums sums;
  if (rows > 0 && cols > 0) {
    PINSTREAM_RETURN_IF_ERROR(CheckPointer(original, DtypeSize(original_dtype), what, "original"));
    PINSTREAM_RETURN_IF_ERROR(CheckPointer(q, 1, what, "q"));
    PINSTREAM_RETURN_IF_ERROR(CheckPointer(scales, 4, what, "scales"));
    switch (original_dtype) {
      case FloatDtype::kFloat32:
        MeasureTyped<LoadF32>(static_cast<const float*>(original), rows, cols, q, scales, &sums);
        break;
      case FloatDtype::kFloat16:
        MeasureTyped<LoadF16>(static_cast<const uint16_t*>(original), rows, cols, q, scales, &sums);
        break;
      case FloatDtype::kBFloat16:
        MeasureTyped<LoadBF16>(static_cast<const uint16_t*>(original), rows, cols, q, scales, &sums);
        break;
    }
  }
  *error = sums.Result();
  return Status::Ok();
}

Status ValidateDequantParams(const Fp8DequantParams& p) {
  const char* what = "fp8 dequantize";
  PINSTREAM_RETURN_IF_ERROR(CheckShape(p.rows, p.cols, what));
  if (p.rows == 0 || p.cols == 0) return Status::Ok();
  PINSTREAM_RETURN_IF_ERROR(CheckPointer(p.q, 1, what, "q"));
  PINSTREAM_RETURN_IF_ERROR(CheckPointer(p.out, DtypeSize(p.out_dtype), what, "out"));
  if (p.scale_layout != ScaleLayout::kNone) {
    PINSTREAM_RETURN_IF_ERROR(CheckPointer(p.scales, 4, what, "scales"));
  }
  const auto q_begin = reinterpret_cast<uintptr_t>(p.q);
  const auto out_begin = reinterpret_cast<uintptr_t>(p.out);
  const auto n = static_cast<uintptr_t>(p.rows * p.cols);
  if (q_begin < out_begin + n * DtypeSize(p.out_dtype) && out_begin < q_begin + n) {
    return Status::InvalidArgument("fp8 dequantize: q and out overlap; dequantize from a separate staging buffer");
  }
  return Status::Ok();
}

Status DequantizeFp8(const Fp8DequantParams& p) {
  PINSTREAM_RETURN_IF_ERROR(ValidateDequantParams(p));
  if (p.rows == 0 || p.cols == 0) return Status::Ok();
  switch (p.out_dtype) {
    case FloatDtype::kFloat32:
      DequantizeTyped<StoreF32>(p);
      break;
    case FloatDtype::kFloat16:
      DequantizeTyped<StoreF16>(p);
      break;
    case FloatDtype::kBFloat16:
      DequantizeTyped<StoreBF16>(p);
      break;
  }
  return Status::Ok();
}

Status DequantizeRows(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, FloatDtype out_dtype,
                      void* out) {
  return DequantizeFp8(E4M3PerRowParams(q, scales, rows, cols, out_dtype, out));
}

}  // namespace pinstream
