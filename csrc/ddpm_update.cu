// The refine tick, the re-noise and the counter-based RNG as CUDA kernels.
//
// Same semantics as sns_engine/ops/update.py and sns_engine/ops/rng.py (the specs):
//   RNG: Philox4x32-10, key = (seed, member), counter = (pixel, level, step, stream), one normal
//        per pixel by Box-Muller on the first two words' top 24 bits (uniforms exact in float32:
//        u1 = (w0>>8 + 1)*2^-24 in (0, 1], u2 = (w1>>8)*2^-24 - 1/2, z = sqrt(-2 ln u1) cos(2pi u2)).
//   tick: per member, active phase 0 while counts[0] > 0, else 1 while counts[1] > 0, else idle;
//        for each frame its move contains (bit 1 x, bit 2 y) at level n > 0:
//        f <- c0[n] f - c1[n] eps + sigma[n] z (stream 0 for x, 1 for y), n -= 1; then
//        counts[phase] -= 1. Levels >= N + 1 read NaN coefficients (a loud, not a faulting, error).
//   renoise: f <- sqrt_ab[n] f + sqrt_1mab[n] z for members with n > 0.
//
// Grid: one block per member, threads striding over its pixels. Thread 0 reads the member's
// counters into shared memory before a single __syncthreads and writes them back at the end, so
// the in-place counter update is race-free in one launch.
//
// Pure CUDA (no torch headers): compiles standalone with nvcc. Each launcher `sns_*_cuda` takes
// device pointers and a stream and returns a cudaError_t. Its host twin `sns_*_host` runs the same
// __host__ __device__ element functions over host pointers on the CPU: that is how the tests check
// this file's arithmetic (exact Philox words, normals, the tick) on machines without a GPU.

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace sns {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr float kUniformScale = 5.9604644775390625e-08f;  // 2^-24
constexpr float kTwoPi = 6.2831854820251465f;             // 2 pi rounded to float32
constexpr int kThreads = 256;

struct Words {
  uint32_t w0, w1;
};

__host__ __device__ inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

// First two output words of Philox4x32-10(counter = (c0, c1, c2, c3), key = (k0, k1)).
__host__ __device__ inline Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                               uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, c0, hi0, lo0);
    mulhilo(kPhiloxM1, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Words{c0, c1};
}

__host__ __device__ inline float box_muller(Words w) {
  const float u1 = static_cast<float>((w.w0 >> 8) + 1u) * kUniformScale;
  const float u2 = static_cast<float>(w.w1 >> 8) * kUniformScale - 0.5f;
  return sqrtf(-2.0f * logf(u1)) * cosf(u2 * kTwoPi);
}

__host__ __device__ inline Words pixel_words(uint32_t seed, int64_t member, int32_t step,
                                             int32_t level, uint32_t stream, int64_t pixel) {
  return philox4x32_10(static_cast<uint32_t>(pixel), static_cast<uint32_t>(level),
                       static_cast<uint32_t>(step), stream, seed, static_cast<uint32_t>(member));
}

__host__ __device__ inline float load_eps(const void* eps, bool bf16, int64_t i) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(eps)[i])
              : static_cast<const float*>(eps)[i];
}

__host__ __device__ inline float coef(const float* table, int32_t level, int32_t levels) {
  return (level >= 0 && level < levels) ? table[level] : NAN;
}

// One frame of one member: f <- a f - c eps + s z over pixels begin, begin + stride, ...
// (no eps term when eps is null).
struct FrameUpdate {
  float* frame;
  const void* eps;
  bool eps_bf16;
  float a, c, s;
  uint32_t seed, stream;
  int64_t member;
  int32_t step, level;

  __host__ __device__ void run(int64_t numel, int64_t begin, int64_t stride) const {
    for (int64_t p = begin; p < numel; p += stride) {
      float value = a * frame[p];
      if (eps != nullptr) value -= c * load_eps(eps, eps_bf16, p);
      value += s * box_muller(pixel_words(seed, member, step, level, stream, p));
      frame[p] = value;
    }
  }
};

// What one tick does to one member, decided from its counters.
struct MemberTick {
  int32_t phase;  // -1: idle
  int32_t count;
  bool move_x, move_y;
  int32_t n_x, n_y;
};

__host__ __device__ inline MemberTick plan_tick(const int32_t* counts, const int32_t* moves,
                                                int32_t n_x, int32_t n_y) {
  MemberTick t{-1, 0, false, false, n_x, n_y};
  t.phase = counts[0] > 0 ? 0 : (counts[1] > 0 ? 1 : -1);
  if (t.phase < 0) return t;
  t.count = counts[t.phase];
  const int32_t move = moves[t.phase];
  t.move_x = (move & 1) != 0 && n_x > 0;
  t.move_y = (move & 2) != 0 && n_y > 0;
  return t;
}

struct TickArgs {
  float *x, *y;
  const void *eps_x, *eps_y;
  bool eps_x_bf16, eps_y_bf16;
  int32_t *n_x, *n_y;
  const int32_t* moves;
  int32_t* counts;
  const int64_t* member;
  const int32_t* step;
  const float* coefs;  // (3, levels)
  int32_t levels;
  uint32_t seed;
  int64_t numel;

  __host__ __device__ MemberTick plan(int64_t b) const {
    return plan_tick(counts + 2 * b, moves + 2 * b, n_x[b], n_y[b]);
  }

  __host__ __device__ FrameUpdate frame(int64_t b, bool is_x, int32_t n) const {
    const int64_t row = b * numel;
    const bool bf16 = is_x ? eps_x_bf16 : eps_y_bf16;
    const char* eps = static_cast<const char*>(is_x ? eps_x : eps_y) + row * (bf16 ? 2 : 4);
    return FrameUpdate{(is_x ? x : y) + row, eps, bf16, coef(coefs, n, levels),
                       coef(coefs + levels, n, levels), coef(coefs + 2 * levels, n, levels),
                       seed, is_x ? 0u : 1u, member[b], step[b], n};
  }

  __host__ __device__ void pixels(int64_t b, const MemberTick& t, int64_t begin,
                                  int64_t stride) const {
    if (t.move_x) frame(b, true, t.n_x).run(numel, begin, stride);
    if (t.move_y) frame(b, false, t.n_y).run(numel, begin, stride);
  }

  __host__ __device__ void advance(int64_t b, const MemberTick& t) const {
    if (t.phase < 0) return;
    if (t.move_x) n_x[b] = t.n_x - 1;
    if (t.move_y) n_y[b] = t.n_y - 1;
    counts[2 * b + t.phase] = t.count - 1;
  }
};

__global__ void ddpm_tick_kernel(TickArgs args) {
  __shared__ MemberTick tick;
  const int64_t b = blockIdx.x;
  if (threadIdx.x == 0) tick = args.plan(b);
  __syncthreads();
  const MemberTick t = tick;
  args.pixels(b, t, threadIdx.x, blockDim.x);
  if (threadIdx.x == 0) args.advance(b, t);
}

struct RenoiseArgs {
  float* frame;
  const int32_t* level;
  const int64_t* member;
  const int32_t* step;
  const float *sqrt_ab, *sqrt_1mab;
  int32_t levels;
  uint32_t seed, stream;
  int64_t numel;

  __host__ __device__ void pixels(int64_t b, int64_t begin, int64_t stride) const {
    const int32_t n = level[b];
    if (n <= 0) return;
    FrameUpdate{frame + b * numel, nullptr, false, coef(sqrt_ab, n, levels), 0.0f,
                coef(sqrt_1mab, n, levels), seed, stream, member[b], step[b], n}
        .run(numel, begin, stride);
  }
};

__global__ void renoise_kernel(RenoiseArgs args) {
  args.pixels(blockIdx.x, threadIdx.x, blockDim.x);
}

struct NormalArgs {
  const int64_t* member;
  const int32_t *step, *level;
  uint32_t seed, stream;
  int64_t numel;
  int32_t *w0, *w1;
  float* z;

  __host__ __device__ void at(int64_t i) const {
    const int64_t b = i / numel;
    const Words w = pixel_words(seed, member[b], step[b], level[b], stream, i % numel);
    w0[i] = static_cast<int32_t>(w.w0);
    w1[i] = static_cast<int32_t>(w.w1);
    z[i] = box_muller(w);
  }
};

__global__ void philox_normal_kernel(NormalArgs args, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) args.at(i);
}

}  // namespace sns

using sns::kThreads;

static sns::TickArgs tick_args(float* x, float* y, const void* eps_x, int eps_x_bf16,
                               const void* eps_y, int eps_y_bf16, int32_t* n_x, int32_t* n_y,
                               const int32_t* moves, int32_t* counts, const int64_t* member,
                               const int32_t* step, const float* coefs, int32_t levels,
                               uint32_t seed, int64_t numel) {
  return sns::TickArgs{x,      y,      eps_x,  eps_y, eps_x_bf16 != 0, eps_y_bf16 != 0, n_x, n_y,
                       moves,  counts, member, step,  coefs,           levels,          seed, numel};
}

extern "C" int sns_ddpm_tick_cuda(float* x, float* y, const void* eps_x, int eps_x_bf16,
                                  const void* eps_y, int eps_y_bf16, int32_t* n_x, int32_t* n_y,
                                  const int32_t* moves, int32_t* counts, const int64_t* member,
                                  const int32_t* step, const float* coefs, int32_t levels,
                                  uint32_t seed, int64_t batch, int64_t numel,
                                  cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  sns::ddpm_tick_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
      tick_args(x, y, eps_x, eps_x_bf16, eps_y, eps_y_bf16, n_x, n_y, moves,
                counts, member, step, coefs, levels, seed, numel));
  return static_cast<int>(cudaGetLastError());
}

extern "C" int sns_ddpm_tick_host(float* x, float* y, const void* eps_x, int eps_x_bf16,
                                  const void* eps_y, int eps_y_bf16, int32_t* n_x, int32_t* n_y,
                                  const int32_t* moves, int32_t* counts, const int64_t* member,
                                  const int32_t* step, const float* coefs, int32_t levels,
                                  uint32_t seed, int64_t batch, int64_t numel) {
  const sns::TickArgs args = tick_args(x, y, eps_x, eps_x_bf16, eps_y, eps_y_bf16, n_x, n_y, moves,
                                       counts, member, step, coefs, levels, seed, numel);
  for (int64_t b = 0; b < batch; ++b) {
    const sns::MemberTick t = args.plan(b);
    args.pixels(b, t, 0, 1);
    args.advance(b, t);
  }
  return 0;
}

extern "C" int sns_renoise_cuda(float* frame, const int32_t* level, const int64_t* member,
                                const int32_t* step, const float* sqrt_ab, const float* sqrt_1mab,
                                int32_t levels, uint32_t seed, uint32_t stream_id, int64_t batch,
                                int64_t numel, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  sns::renoise_kernel<<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(sns::RenoiseArgs{
      frame, level, member, step, sqrt_ab, sqrt_1mab, levels, seed, stream_id, numel});
  return static_cast<int>(cudaGetLastError());
}

extern "C" int sns_renoise_host(float* frame, const int32_t* level, const int64_t* member,
                                const int32_t* step, const float* sqrt_ab, const float* sqrt_1mab,
                                int32_t levels, uint32_t seed, uint32_t stream_id, int64_t batch,
                                int64_t numel) {
  const sns::RenoiseArgs args{frame, level,  member,    step, sqrt_ab, sqrt_1mab,
                              levels, seed, stream_id, numel};
  for (int64_t b = 0; b < batch; ++b) args.pixels(b, 0, 1);
  return 0;
}

extern "C" int sns_philox_normal_cuda(const int64_t* member, const int32_t* step,
                                      const int32_t* level, uint32_t seed, uint32_t stream_id,
                                      int64_t batch, int64_t numel, int32_t* w0, int32_t* w1,
                                      float* z, cudaStream_t stream) {
  const int64_t total = batch * numel;
  if (total == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  sns::philox_normal_kernel<<<blocks, kThreads, 0, stream>>>(
      sns::NormalArgs{member, step, level, seed, stream_id, numel, w0, w1, z}, total);
  return static_cast<int>(cudaGetLastError());
}

extern "C" int sns_philox_normal_host(const int64_t* member, const int32_t* step,
                                      const int32_t* level, uint32_t seed, uint32_t stream_id,
                                      int64_t batch, int64_t numel, int32_t* w0, int32_t* w1,
                                      float* z) {
  const sns::NormalArgs args{member, step, level, seed, stream_id, numel, w0, w1, z};
  for (int64_t i = 0; i < batch * numel; ++i) args.at(i);
  return 0;
}
