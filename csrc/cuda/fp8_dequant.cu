// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda/fp8_dequant.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/cuda_check.h"

namespace pinstream {

namespace {

constexpr int kThreads = 256;
constexpr int kCodesPerChunk = 16;  // one uint4 of codes

// fp32 multiply, round to nearest even, subnormals kept whatever -ftz says.
__device__ __forceinline__ float MulRn(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// Exact decode. Normal codes: move exponent and mantissa into fp32 position
// and rebias; subnormal codes: mantissa * 2^(1 - bias - mantissa_bits), exact.
template <Fp8Format F>
__device__ __forceinline__ float Decode(uint32_t code) {
  constexpr float kE4M3Subnormal = 0.001953125f;        // 2^-9
  constexpr float kE5M2Subnormal = 1.52587890625e-05f;  // 2^-16
  const uint32_t mag = code & 0x7Fu;
  const uint32_t sign = (code & 0x80u) << 24;
  uint32_t bits;
  if (F == Fp8Format::kE4M3) {
    if (mag == 0x7Fu) return __uint_as_float(kCanonicalNanFloat32);
    bits = mag >= 8u ? (mag << 20) + (120u << 23) : __float_as_uint(MulRn(__uint2float_rn(mag), kE4M3Subnormal));
  } else {
    if (mag > 0x7Cu) return __uint_as_float(kCanonicalNanFloat32);
    bits = mag == 0x7Cu ? 0x7F800000u
           : mag >= 4u  ? (mag << 21) + (112u << 23)
                        : __float_as_uint(MulRn(__uint2float_rn(mag), kE5M2Subnormal));
  }
  return __uint_as_float(bits | sign);
}

struct OutF32 {
  using Bits = uint32_t;
  __device__ __forceinline__ static uint32_t Convert(float x) {
    return isnan(x) ? kCanonicalNanFloat32 : __float_as_uint(x);
  }
};
struct OutF16 {
  using Bits = uint16_t;
  __device__ __forceinline__ static uint16_t Convert(float x) {
    return isnan(x) ? kCanonicalNanFloat16 : __half_as_ushort(__float2half_rn(x));
  }
};
struct OutBF16 {
  using Bits = uint16_t;
  __device__ __forceinline__ static uint16_t Convert(float x) {
    return isnan(x) ? kCanonicalNanBFloat16 : __bfloat16_as_ushort(__float2bfloat16_rn(x));
  }
};

__device__ __forceinline__ uint32_t CodeAt(const uint4& v, int j) {
  const uint32_t w = j < 4 ? v.x : j < 8 ? v.y : j < 12 ? v.z : v.w;
  return (w >> (8 * (j & 3))) & 0xFFu;
}

// Writes 16 outputs with 16-byte stores (dst is 16-byte aligned).
__device__ __forceinline__ void Store16(uint16_t* dst, const uint16_t (&r)[16]) {
  uint32_t w[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    w[k] = static_cast<uint32_t>(r[2 * k]) | (static_cast<uint32_t>(r[2 * k + 1]) << 16);
  }
  uint4* d = reinterpret_cast<uint4*>(dst);
  d[0] = make_uint4(w[0], w[1], w[2], w[3]);
  d[1] = make_uint4(w[4], w[5], w[6], w[7]);
}
__device__ __forceinline__ void Store16(uint32_t* dst, const uint32_t (&r)[16]) {
  uint4* d = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (int k = 0; k < 4; ++k) d[k] = make_uint4(r[4 * k], r[4 * k + 1], r[4 * k + 2], r[4 * k + 3]);
}

struct KernelArgs {
  const uint8_t* q;
  const float* scales;  // per row, one value (uniform), or null (factor 1)
  int64_t cols;
  int64_t n;  // rows * cols
  void* out;
  int64_t chunks;  // 16-code chunks done by the vector loop (0: unaligned)
  // Grid strides of the two loops in (rows, cols), so that each thread moves
  // its row cursor without dividing: chunk loop = threads * 16 elements,
  // scalar loop = threads elements.
  int64_t chunk_step_rows, chunk_step_cols;
  int64_t scalar_step_rows, scalar_step_cols;
};

// Row cursor of one thread: the row and column of its current element.
struct Cursor {
  int64_t row, col;
  __device__ __forceinline__ void Start(int64_t i, int64_t cols) {
    row = i / cols;
    col = i - row * cols;
  }
  __device__ __forceinline__ void Advance(int64_t step_rows, int64_t step_cols, int64_t cols) {
    row += step_rows;
    col += step_cols;
    if (col >= cols) {
      col -= cols;
      ++row;
    }
  }
};

template <typename Out, Fp8Format F, bool kPerRow>
__global__ void __launch_bounds__(kThreads) DequantKernel(KernelArgs a) {
  using Bits = typename Out::Bits;
  Bits* out = static_cast<Bits*>(a.out);
  const float uniform = kPerRow ? 0.0f : (a.scales != nullptr ? __ldg(a.scales) : 1.0f);
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  Cursor cur;

  if (tid < a.chunks) {
    if (kPerRow) cur.Start(tid * kCodesPerChunk, a.cols);
    const uint4* q4 = reinterpret_cast<const uint4*>(a.q);
    for (int64_t chunk = tid; chunk < a.chunks; chunk += threads) {
      const uint4 codes = __ldg(q4 + chunk);
      Bits r[kCodesPerChunk];
      float scale = kPerRow ? __ldg(a.scales + cur.row) : uniform;
      if (!kPerRow || a.cols - cur.col >= kCodesPerChunk) {
        // The whole chunk lies in one row.
#pragma unroll
        for (int j = 0; j < kCodesPerChunk; ++j) {
          r[j] = Out::Convert(MulRn(Decode<F>(CodeAt(codes, j)), scale));
        }
      } else {
        // The chunk crosses one or more row ends.
        int64_t row = cur.row, col = cur.col;
#pragma unroll
        for (int j = 0; j < kCodesPerChunk; ++j) {
          if (col == a.cols) {
            col = 0;
            scale = __ldg(a.scales + ++row);
          }
          r[j] = Out::Convert(MulRn(Decode<F>(CodeAt(codes, j)), scale));
          ++col;
        }
      }
      Store16(out + chunk * kCodesPerChunk, r);
      if (kPerRow) cur.Advance(a.chunk_step_rows, a.chunk_step_cols, a.cols);
    }
  }

  // Codes after the last full chunk (fewer than 16), or all of them when the
  // pointers are not 16-byte aligned.
  const int64_t first = a.chunks * kCodesPerChunk + tid;
  if (first < a.n) {
    if (kPerRow) cur.Start(first, a.cols);
    for (int64_t i = first; i < a.n; i += threads) {
      const float scale = kPerRow ? __ldg(a.scales + cur.row) : uniform;
      out[i] = Out::Convert(MulRn(Decode<F>(a.q[i]), scale));
      if (kPerRow) cur.Advance(a.scalar_step_rows, a.scalar_step_cols, a.cols);
    }
  }
}

template <typename Out, Fp8Format F, bool kPerRow>
void Launch(const KernelArgs& a, int blocks, cudaStream_t stream) {
  DequantKernel<Out, F, kPerRow><<<blocks, kThreads, 0, stream>>>(a);
}

template <typename Out>
void LaunchForOut(const Fp8DequantParams& p, const KernelArgs& a, int blocks, cudaStream_t stream) {
  const bool per_row = p.scale_layout == ScaleLayout::kPerRow;
  if (p.format == Fp8Format::kE4M3) {
    per_row ? Launch<Out, Fp8Format::kE4M3, true>(a, blocks, stream)
            : Launch<Out, Fp8Format::kE4M3, false>(a, blocks, stream);
  } else {
    per_row ? Launch<Out, Fp8Format::kE5M2, true>(a, blocks, stream)
            : Launch<Out, Fp8Format::kE5M2, false>(a, blocks, stream);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

Status LaunchDequantizeFp8(const Fp8DequantParams& p, cudaStream_t stream) {
  PINSTREAM_RETURN_IF_ERROR(ValidateDequantParams(p));
  const int64_t n = p.rows * p.cols;
  if (n == 0) return Status::Ok();

  int device = 0;
  int sms = 0;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));

  KernelArgs a{};
  a.q = p.q;
  a.scales = p.scale_layout == ScaleLayout::kNone ? nullptr : p.scales;
  a.cols = p.cols;
  a.n = n;
  a.out = p.out;
  a.chunks = Aligned16(p.q) && Aligned16(p.out) ? n / kCodesPerChunk : 0;

  // One thread per chunk (or per code when unaligned), at most 8 blocks of
  // 256 threads per SM (full occupancy); the loops stride over the rest.
  const int64_t work = a.chunks > 0 ? a.chunks : n;
  const int64_t max_blocks = static_cast<int64_t>(sms > 0 ? sms : 1) * 8;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > max_blocks) blocks = max_blocks;
  const int64_t threads = blocks * kThreads;
  a.chunk_step_rows = threads * kCodesPerChunk / p.cols;
  a.chunk_step_cols = threads * kCodesPerChunk % p.cols;
  a.scalar_step_rows = threads / p.cols;
  a.scalar_step_cols = threads % p.cols;

  switch (p.out_dtype) {
    case FloatDtype::kFloat32:
      LaunchForOut<OutF32>(p, a, static_cast<int>(blocks), stream);
      break;
    case FloatDtype::kFloat16:
      LaunchForOut<OutF16>(p, a, static_cast<int>(blocks), stream);
      break;
    case FloatDtype::kBFloat16:
      LaunchForOut<OutBF16>(p, a, static_cast<int>(blocks), stream);
      break;
  }
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

Status LaunchDequantizeE4M3(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, FloatDtype out_dtype,
                            void* out, cudaStream_t stream) {
  return LaunchDequantizeFp8(E4M3PerRowParams(q, scales, rows, cols, out_dtype, out), stream);
}

}  // namespace pinstream
