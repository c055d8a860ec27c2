// Fused argmax of a level head's last linear layer (spec: sns_engine/ops/level_argmax.py).
//
//   idx[b] = argmax_k features[b] . weight[k] + bias[k]   (ties -> lowest k)
//   p_max[b] = 1 / sum_k exp(logit[b, k] - max_k logit[b, k])
//
// Grid: one block per kRows rows; the rows' features sit in shared memory. Each warp takes
// classes k = warp, warp + kWarps, ...: its lanes stride over F (coalesced weight reads), a
// shuffle reduction gives the logit, and every lane folds it into the warp's running
// (max, index, sum of exp) per row. The warps' states are then merged in warp order by one
// thread per row. The (B, K) logits never touch memory. Accumulation is float32.
//
// Pure CUDA (no torch headers): compiles standalone with nvcc. `sns_level_argmax_cuda` launches
// on a stream and returns a cudaError_t (cudaErrorInvalidValue when F is too wide for shared
// memory); `sns_level_argmax_host` folds the logits through the same ArgmaxState on the CPU, which
// is how the tests check the tie and log-sum-exp rules without a GPU.

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace sns {

constexpr int kArgmaxThreads = 256;
constexpr int kWarps = kArgmaxThreads / 32;
constexpr int kRows = 4;
constexpr int64_t kSharedBytes = 48 * 1024;

__host__ __device__ inline float to_float(float v) { return v; }
__host__ __device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Running argmax and sum of exp(logit - max) over the classes seen so far.
struct ArgmaxState {
  float max;
  int64_t index;  // -1: nothing seen yet
  float sum;

  __host__ __device__ static ArgmaxState empty() { return ArgmaxState{-INFINITY, -1, 0.0f}; }

  __host__ __device__ void merge(const ArgmaxState& o) {
    if (o.index < 0) return;
    if (index < 0) {
      *this = o;
      return;
    }
    const float top = fmaxf(max, o.max);
    sum = sum * expf(max - top) + o.sum * expf(o.max - top);
    if (o.max > max || (o.max == max && o.index < index)) index = o.index;
    max = top;
  }

  __host__ __device__ void add(float logit, int64_t k) { merge(ArgmaxState{logit, k, 1.0f}); }
};

template <typename TF, typename TW>
__global__ void level_argmax_kernel(const TF* __restrict__ features, const TW* __restrict__ weight,
                                    const TW* __restrict__ bias, int64_t rows, int64_t classes,
                                    int64_t width, int64_t* __restrict__ idx,
                                    float* __restrict__ p_max) {
  extern __shared__ float shared_features[];  // [kRows][width]
  __shared__ ArgmaxState warp_state[kWarps][kRows];
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int n_rows = static_cast<int>(rows - row0 < kRows ? rows - row0 : kRows);
  for (int64_t i = threadIdx.x; i < kRows * width; i += blockDim.x) {  // rows past the end: 0
    shared_features[i] = i < n_rows * width ? to_float(features[row0 * width + i]) : 0.0f;
  }
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  ArgmaxState state[kRows];
  for (int r = 0; r < kRows; ++r) state[r] = ArgmaxState::empty();
  for (int64_t k = warp; k < classes; k += kWarps) {
    float acc[kRows] = {};
    for (int64_t f = lane; f < width; f += 32) {
      const float w = to_float(weight[k * width + f]);
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r] += w * shared_features[r * width + f];
    }
    const float b = to_float(bias[k]);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
      }
      state[r].add(acc[r] + b, k);
    }
  }
  if (lane == 0) {
    for (int r = 0; r < kRows; ++r) warp_state[warp][r] = state[r];
  }
  __syncthreads();
  if (threadIdx.x < n_rows) {
    ArgmaxState total = ArgmaxState::empty();
    for (int w = 0; w < kWarps; ++w) total.merge(warp_state[w][threadIdx.x]);
    idx[row0 + threadIdx.x] = total.index;
    if (p_max != nullptr) p_max[row0 + threadIdx.x] = 1.0f / total.sum;
  }
}

template <typename TF, typename TW>
cudaError_t launch(const void* features, const void* weight, const void* bias, int64_t rows,
                   int64_t classes, int64_t width, int64_t* idx, float* p_max,
                   cudaStream_t stream) {
  const int64_t shared = kRows * width * static_cast<int64_t>(sizeof(float));
  if (shared > kSharedBytes - static_cast<int64_t>(sizeof(ArgmaxState)) * kWarps * kRows) {
    return cudaErrorInvalidValue;
  }
  const auto blocks = static_cast<unsigned>((rows + kRows - 1) / kRows);
  level_argmax_kernel<TF, TW><<<blocks, kArgmaxThreads, static_cast<size_t>(shared), stream>>>(
      static_cast<const TF*>(features), static_cast<const TW*>(weight),
      static_cast<const TW*>(bias), rows, classes, width, idx, p_max);
  return cudaGetLastError();
}

template <typename TF, typename TW>
void host_rows(const void* features, const void* weight, const void* bias, int64_t rows,
               int64_t classes, int64_t width, int64_t* idx, float* p_max) {
  const auto* f = static_cast<const TF*>(features);
  const auto* w = static_cast<const TW*>(weight);
  const auto* b = static_cast<const TW*>(bias);
  for (int64_t r = 0; r < rows; ++r) {
    ArgmaxState state = ArgmaxState::empty();
    for (int64_t k = 0; k < classes; ++k) {
      float acc = 0.0f;
      for (int64_t j = 0; j < width; ++j) {
        acc += to_float(f[r * width + j]) * to_float(w[k * width + j]);
      }
      state.add(acc + to_float(b[k]), k);
    }
    idx[r] = state.index;
    if (p_max != nullptr) p_max[r] = 1.0f / state.sum;
  }
}

}  // namespace sns

// features (rows, width) and weight (classes, width) / bias (classes,) are float32, or bfloat16
// where the flag is set; p_max may be null. Returns a cudaError_t.
extern "C" int sns_level_argmax_cuda(const void* features, int features_bf16, const void* weight,
                                     const void* bias, int weight_bf16, int64_t rows,
                                     int64_t classes, int64_t width, int64_t* idx, float* p_max,
                                     cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  using bf16 = __nv_bfloat16;
  const auto fn = features_bf16 ? (weight_bf16 ? sns::launch<bf16, bf16> : sns::launch<bf16, float>)
                                : (weight_bf16 ? sns::launch<float, bf16> : sns::launch<float, float>);
  return static_cast<int>(fn(features, weight, bias, rows, classes, width, idx, p_max, stream));
}

extern "C" int sns_level_argmax_host(const void* features, int features_bf16, const void* weight,
                                     const void* bias, int weight_bf16, int64_t rows,
                                     int64_t classes, int64_t width, int64_t* idx, float* p_max) {
  using bf16 = __nv_bfloat16;
  const auto fn = features_bf16
                      ? (weight_bf16 ? sns::host_rows<bf16, bf16> : sns::host_rows<bf16, float>)
                      : (weight_bf16 ? sns::host_rows<float, bf16> : sns::host_rows<float, float>);
  fn(features, weight, bias, rows, classes, width, idx, p_max);
  return 0;
}
