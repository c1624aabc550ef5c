// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// FP8 transfer, host side: the CPU reference of "quantized transfer". Weight
// blocks cross the host-to-device link as one byte per element (fp8) plus one
// fp32 scale per output channel (row), and are expanded into the compute dtype
// on the device right after the upload (csrc/cuda/fp8_dequant.h). This file
// holds the exact definition of every step:
//
//   quantize   (once, at load; bf16/fp16/fp32 -> fp8 e4m3 + per-row scales)
//   dequantize (per upload; fp8 e4m3 or e5m2 -> fp32/fp16/bf16)
//   error      (per block; max and mean absolute error against the original)
//
// The CUDA kernel gives the same output bits as DequantizeFp8 below for every
// input (NaN included); the GPU test checks that. The host engine uses these
// functions directly.
//
// Formats (OCP FP8, as torch names them):
//   float8_e4m3fn  bias 7, 3 mantissa bits, no infinities, max +-448,
//                  NaN = 0x7F / 0xFF, smallest subnormal 2^-9.
//   float8_e5m2    bias 15, 2 mantissa bits, IEEE-like: +-inf = 0x7C / 0xFC,
//                  NaN = 0x7D..0x7F / 0xFD..0xFF, max 57344, subnormal 2^-16.
//                  Decoded only (stored checkpoints); we never produce it.
//
// Rounding and special values (one rule for every function here):
//   * every narrowing is round-to-nearest, ties-to-even, done with integer
//     arithmetic (no dependence on the FPU rounding mode or FTZ/DAZ flags);
//   * EncodeE4M3 SATURATES: any |x| that would round above 448, and +-inf,
//     become +-448. torch's `x.to(torch.float8_e4m3fn)` instead gives NaN for
//     |x| > 464 and for inf. For |x| <= 464 (and NaN) both agree bit for bit
//     (464 is the tie between 448 and the NaN pattern; it rounds to even,
//     448). Saturation equals NVIDIA's `__NV_SATFINITE` conversion mode;
//   * NaN in, NaN out. Encoders keep the sign of a NaN (0x7F or 0xFF, as
//     torch). Wide outputs of the dequantizer use ONE canonical quiet NaN per
//     dtype (sign and payload dropped): fp32 0x7FC00000, bf16 0x7FC0,
//     fp16 0x7E00, so the CPU and the GPU agree bit for bit;
//   * FloatToBFloat16 / FloatToHalf overflow to +-inf exactly like torch
//     (bf16: above the RNE midpoint of FLT_MAX; fp16: |x| >= 65520) and keep
//     subnormals (no flush to zero).
//
// Quantization (QuantizeRows), per row r of a row-major [rows, cols] matrix
// (a Linear weight [out_features, in_features]: one scale per output channel;
// conv weights: rows = out_channels, cols = the rest):
//     amax_r  = max |x| over the FINITE elements of the row (fp32)
//     scale_r = amax_r / 448.0f  (one fp32 division, RNE), or 1.0f when
//               amax_r == 0 (all-zero or all-non-finite rows); 2^-149
//               when the division underflows (fp32-subnormal rows only)
//     q       = EncodeE4M3(x / scale_r)  (fp32 division, RNE, not x * (1/s))
// Dequantization (DequantizeFp8), per element:
//     out     = Narrow(Decode(q) * scale_r)
// with ONE fp32 multiply rounded to nearest even (no fused multiply-add: there
// is nothing to fuse it with; the CUDA kernel uses mul.rn.f32 explicitly),
// then one RNE narrowing to the output dtype. Decode is exact. The fp32
// division and multiply are the only steps that follow the FPU state: under
// flush-to-zero (e.g. torch.set_flush_denormal(True) on the host, or a CUDA
// build with -ftz=true for __fmul_rn, which is why the kernel does not use it)
// results differ only where a product falls below 2^-126, i.e. for scales
// below about 2^-117, which real weights never have (a flushed quotient is
// below 2^-126 and encodes to zero either way).
//
// Error bound: for an element x of a row with scale s, away from saturation,
//     |Dequantize(Quantize(x)) - x| <= 2^-4 * |x| + 2^-10 * s
// up to fp32 rounding of the division and multiply (relative 2^-23 each):
// e4m3 normals have 3 mantissa bits, so half an ulp is at most 2^-4 of the
// value; below 2^-6 (subnormals) the step is 2^-9, half of it 2^-10, in units
// of s. Hence every element error is also <= amax_r * 2^-4 (times 1 + 2^-20).
#ifndef PINSTREAM_CORE_FP8_H_
#define PINSTREAM_CORE_FP8_H_

#include <cstdint>

#include "core/status.h"

namespace pinstream {

// A wide floating-point dtype: the source of quantization, or the output
// (compute) dtype of dequantization. Half types are raw uint16_t storage.
enum class FloatDtype {
  kFloat32,   // IEEE binary32, 4 bytes
  kFloat16,   // IEEE binary16, 2 bytes
  kBFloat16,  // bfloat16 (top 16 bits of binary32), 2 bytes
};

// Bytes per element of `dtype`.
inline int DtypeSize(FloatDtype dtype) { return dtype == FloatDtype::kFloat32 ? 4 : 2; }
// "float32", "float16" or "bfloat16" (torch's names), for messages.
const char* DtypeName(FloatDtype dtype);

// An 8-bit storage format.
enum class Fp8Format {
  kE4M3,  // torch.float8_e4m3fn: what we quantize to
  kE5M2,  // torch.float8_e5m2: stored checkpoints, decoded only
};
const char* Fp8FormatName(Fp8Format format);

// How DequantizeFp8 reads its scales.
enum class ScaleLayout {
  kPerRow,  // scales[r] for row r (rows floats): our quantization
  kScalar,  // scales[0] for every element (a "scaled fp8" checkpoint)
  kNone,    // no scales: factor 1.0f (a plain fp8 checkpoint; scales unused)
};

// ---- scalar conversions ----------------------------------------------------

// float -> e4m3 code. RNE, saturating (see above); NaN -> 0x7F | sign.
uint8_t EncodeE4M3(float x);
// e4m3 code -> float, exact. 0x7F/0xFF -> NaN (sign kept).
float DecodeE4M3(uint8_t code);
// e5m2 code -> float, exact. 0x7C/0xFC -> +-inf, 0x7D..0x7F/0xFD..0xFF -> NaN.
float DecodeE5M2(uint8_t code);
inline bool IsNanE4M3(uint8_t code) { return (code & 0x7F) == 0x7F; }

// float -> bfloat16 / binary16 bits, RNE, bit-exact with torch's
// `.to(torch.bfloat16)` / `.to(torch.float16)` for every non-NaN input.
// NaN -> the canonical NaN (bf16 0x7FC0, fp16 0x7E00).
uint16_t FloatToBFloat16(float x);
uint16_t FloatToHalf(float x);
// Exact widenings.
float BFloat16ToFloat(uint16_t bits);
float HalfToFloat(uint16_t bits);
// Element `i` of `data` (of `dtype`) as float, exact.
float LoadAsFloat(const void* data, FloatDtype dtype, int64_t i);

// Canonical quiet NaN bit patterns of the dequantizer's outputs.
constexpr uint32_t kCanonicalNanFloat32 = 0x7FC00000u;
constexpr uint16_t kCanonicalNanBFloat16 = 0x7FC0u;
constexpr uint16_t kCanonicalNanFloat16 = 0x7E00u;

// ---- blocks -----------------------------------------------------------------

// Quantization error of one tensor or block, measured in fp64 against the
// original values: |original - Decode(q) * scale| with the product in fp32
// (the value before narrowing to the compute dtype, so the report does not
// depend on it). Non-finite originals (NaN, inf) are not counted.
struct QuantError {
  double max_abs = 0;   // largest absolute error
  double mean_abs = 0;  // mean absolute error over `count` elements
  int64_t count = 0;    // elements measured

  // Combines the errors of two disjoint sets (e.g. the tensors of a block):
  // max of the maxima, count-weighted mean.
  void Merge(const QuantError& other);
};

// Quantizes a row-major [rows, cols] matrix `src` of `src_dtype` to e4m3 with
// one scale per row (definition above). Writes rows*cols codes to `q_out`
// (same layout) and rows floats to `scales_out`. When `error` is not null it
// receives the QuantError of this matrix. Rows are independent: callers may
// split a matrix into row ranges and quantize them in parallel.
// Fails (InvalidArgument) on negative sizes or null pointers with data.
Status QuantizeRows(const void* src, FloatDtype src_dtype, int64_t rows, int64_t cols, uint8_t* q_out,
                    float* scales_out, QuantError* error = nullptr);

// The QuantError of an existing quantization (e4m3 codes, per-row scales)
// against `original`, as QuantizeRows would report it.
Status MeasureQuantError(const void* original, FloatDtype original_dtype, int64_t rows, int64_t cols, const uint8_t* q,
                         const float* scales, QuantError* error);

// One dequantization: `rows` x `cols` fp8 codes, row-major, to `out` (same
// layout, `out_dtype`). The same struct drives the CUDA kernel, where every
// pointer is device memory.
struct Fp8DequantParams {
  const uint8_t* q = nullptr;
  Fp8Format format = Fp8Format::kE4M3;
  const float* scales = nullptr;  // see scale_layout; unused for kNone
  ScaleLayout scale_layout = ScaleLayout::kPerRow;
  int64_t rows = 0;
  int64_t cols = 0;
  FloatDtype out_dtype = FloatDtype::kBFloat16;
  void* out = nullptr;
};

// Checks sizes and pointers (shared by the CPU and CUDA paths). Fails with
// InvalidArgument saying which field is wrong.
Status ValidateDequantParams(const Fp8DequantParams& p);

// CPU reference dequantization: out = Narrow(Decode(q) * scale), definition
// above. Used by the host engine; the CUDA kernel matches it bit for bit.
Status DequantizeFp8(const Fp8DequantParams& p);

// Shorthand for our own blocks: e4m3 codes with per-row scales.
// The parameters of the common case: e4m3 codes with one scale per row.
inline Fp8DequantParams E4M3PerRowParams(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                                         FloatDtype out_dtype, void* out) {
  Fp8DequantParams p;
  p.q = q;
  p.format = Fp8Format::kE4M3;
  p.scales = scales;
  p.scale_layout = ScaleLayout::kPerRow;
  p.rows = rows;
  p.cols = cols;
  p.out_dtype = out_dtype;
  p.out = out;
  return p;
}

Status DequantizeRows(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, FloatDtype out_dtype,
                      void* out);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_FP8_H_
