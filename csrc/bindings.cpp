// Torch bindings of the CUDA kernels in ddpm_update.cu and level_argmax.cu: the module
// sns_engine._C (wrapped in Python only by sns_engine/ops/cuda_ext.py). The only file here that
// includes torch headers; it is compiled only as part of the extension. Every function checks
// device, dtype, shape and contiguity (ValueError on the Python side), runs on the current CUDA
// stream (so CUDA graph capture works) and raises RuntimeError if a launch fails.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include <cstdint>
#include <tuple>
#include <vector>

extern "C" {
int sns_ddpm_tick_cuda(float* x, float* y, const void* eps_x, int eps_x_bf16, const void* eps_y,
                       int eps_y_bf16, int32_t* n_x, int32_t* n_y, const int32_t* moves,
                       int32_t* counts, const int64_t* member, const int32_t* step,
                       const float* coefs, int32_t levels, uint32_t seed, int64_t batch,
                       int64_t numel, cudaStream_t stream);
int sns_renoise_cuda(float* frame, const int32_t* level, const int64_t* member,
                     const int32_t* step, const float* sqrt_ab, const float* sqrt_1mab,
                     int32_t levels, uint32_t seed, uint32_t stream_id, int64_t batch,
                     int64_t numel, cudaStream_t stream);
int sns_philox_normal_cuda(const int64_t* member, const int32_t* step, const int32_t* level,
                           uint32_t seed, uint32_t stream_id, int64_t batch, int64_t numel,
                           int32_t* w0, int32_t* w1, float* z, cudaStream_t stream);
int sns_level_argmax_cuda(const void* features, int features_bf16, const void* weight,
                          const void* bias, int weight_bf16, int64_t rows, int64_t classes,
                          int64_t width, int64_t* idx, float* p_max, cudaStream_t stream);
}

namespace {

using at::Tensor;

// `t` is on `device`, contiguous, of one of `dtypes`, and of `shape` (-1: any size).
void check(const char* op, const char* name, const Tensor& t, std::vector<int64_t> shape,
           std::vector<at::ScalarType> dtypes, const at::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " is on ", t.device(),
                    " but the op runs on ", device, "; move it there");
  bool dtype_ok = false;
  for (const auto d : dtypes) dtype_ok = dtype_ok || t.scalar_type() == d;
  TORCH_CHECK_VALUE(dtype_ok, op, ": ", name, " has dtype ", t.scalar_type(), ", expected ",
                    dtypes);
  bool shape_ok = t.dim() == static_cast<int64_t>(shape.size());
  for (size_t i = 0; shape_ok && i < shape.size(); ++i) {
    shape_ok = shape[i] < 0 || shape[i] == t.size(static_cast<int64_t>(i));
  }
  TORCH_CHECK_VALUE(shape_ok, op, ": ", name, " has shape ", t.sizes(), ", expected ", shape,
                    " (-1: any)");
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " is not contiguous; pass .contiguous()");
}

void check_launch(const char* op, int err) {
  TORCH_CHECK(err == 0, op, ": CUDA launch failed: ", cudaGetErrorString(cudaError_t(err)));
}

uint32_t word(int64_t value) { return static_cast<uint32_t>(value & 0xFFFFFFFFLL); }

bool is_bf16(const Tensor& t) { return t.scalar_type() == at::kBFloat16; }

// The per-member noise keys: member ids (B,) int64, physical steps and levels (B,) int32.
void check_keys(const char* op, const Tensor& member, const Tensor& step, const Tensor& level,
                int64_t b, const at::Device& dev) {
  check(op, "member", member, {b}, {at::kLong}, dev);
  check(op, "step", step, {b}, {at::kInt}, dev);
  check(op, "level", level, {b}, {at::kInt}, dev);
}

void ddpm_tick(Tensor x, Tensor y, Tensor eps_x, Tensor eps_y, Tensor n_x, Tensor n_y,
               Tensor moves, Tensor counts, Tensor member, Tensor step, int64_t seed,
               Tensor coefs) {
  const char* op = "ddpm_tick";
  TORCH_CHECK_VALUE(x.is_cuda() && x.dim() == 4, op, ": x must be a (B, C, H, W) CUDA tensor");
  const at::Device dev = x.device();
  const int64_t b = x.size(0);
  const std::vector<int64_t> frame(x.sizes().begin(), x.sizes().end());
  check(op, "x", x, frame, {at::kFloat}, dev);
  check(op, "y", y, frame, {at::kFloat}, dev);
  check(op, "eps_x", eps_x, frame, {at::kFloat, at::kBFloat16}, dev);
  check(op, "eps_y", eps_y, frame, {at::kFloat, at::kBFloat16}, dev);
  check(op, "n_x", n_x, {b}, {at::kInt}, dev);
  check(op, "n_y", n_y, {b}, {at::kInt}, dev);
  check(op, "moves", moves, {b, 2}, {at::kInt}, dev);
  check(op, "counts", counts, {b, 2}, {at::kInt}, dev);
  check(op, "member", member, {b}, {at::kLong}, dev);
  check(op, "step", step, {b}, {at::kInt}, dev);
  check(op, "coefs", coefs, {3, -1}, {at::kFloat}, dev);
  const c10::cuda::CUDAGuard guard(dev);
  check_launch(op, sns_ddpm_tick_cuda(
                       x.data_ptr<float>(), y.data_ptr<float>(), eps_x.data_ptr(), is_bf16(eps_x),
                       eps_y.data_ptr(), is_bf16(eps_y), n_x.data_ptr<int32_t>(),
                       n_y.data_ptr<int32_t>(), moves.data_ptr<int32_t>(),
                       counts.data_ptr<int32_t>(), member.data_ptr<int64_t>(),
                       step.data_ptr<int32_t>(), coefs.data_ptr<float>(),
                       static_cast<int32_t>(coefs.size(1)), word(seed), b, b ? x[0].numel() : 0,
                       c10::cuda::getCurrentCUDAStream()));
}

void renoise(Tensor frame, Tensor level, Tensor member, Tensor step, int64_t seed,
             Tensor sqrt_ab, Tensor sqrt_1mab, int64_t stream_id) {
  const char* op = "renoise";
  TORCH_CHECK_VALUE(frame.is_cuda() && frame.dim() == 4, op,
                    ": frame must be a (B, C, H, W) CUDA tensor");
  const at::Device dev = frame.device();
  const int64_t b = frame.size(0);
  check(op, "frame", frame, std::vector<int64_t>(frame.sizes().begin(), frame.sizes().end()),
        {at::kFloat}, dev);
  check_keys(op, member, step, level, b, dev);
  check(op, "sqrt_ab", sqrt_ab, {-1}, {at::kFloat}, dev);
  check(op, "sqrt_1mab", sqrt_1mab, {sqrt_ab.size(0)}, {at::kFloat}, dev);
  const c10::cuda::CUDAGuard guard(dev);
  check_launch(op, sns_renoise_cuda(frame.data_ptr<float>(), level.data_ptr<int32_t>(),
                                    member.data_ptr<int64_t>(), step.data_ptr<int32_t>(),
                                    sqrt_ab.data_ptr<float>(), sqrt_1mab.data_ptr<float>(),
                                    static_cast<int32_t>(sqrt_ab.size(0)), word(seed),
                                    word(stream_id), b, b ? frame[0].numel() : 0,
                                    c10::cuda::getCurrentCUDAStream()));
}

std::tuple<Tensor, Tensor, Tensor> philox_normal(Tensor member, Tensor step, Tensor level,
                                                 int64_t seed, int64_t stream_id, int64_t numel) {
  const char* op = "philox_normal";
  TORCH_CHECK_VALUE(member.is_cuda() && member.dim() == 1, op,
                    ": member must be a (B,) CUDA tensor");
  const at::Device dev = member.device();
  const int64_t b = member.size(0);
  check_keys(op, member, step, level, b, dev);
  const c10::cuda::CUDAGuard guard(dev);
  Tensor w0 = at::empty({b, numel}, member.options().dtype(at::kInt));
  Tensor w1 = at::empty_like(w0);
  Tensor z = at::empty({b, numel}, member.options().dtype(at::kFloat));
  check_launch(op, sns_philox_normal_cuda(member.data_ptr<int64_t>(), step.data_ptr<int32_t>(),
                                          level.data_ptr<int32_t>(), word(seed), word(stream_id),
                                          b, numel, w0.data_ptr<int32_t>(),
                                          w1.data_ptr<int32_t>(), z.data_ptr<float>(),
                                          c10::cuda::getCurrentCUDAStream()));
  return {w0, w1, z};
}

std::tuple<Tensor, Tensor> level_argmax(Tensor features, Tensor weight, Tensor bias,
                                        bool want_prob) {
  const char* op = "level_argmax";
  TORCH_CHECK_VALUE(features.is_cuda() && features.dim() == 2, op,
                    ": features must be a (B, F) CUDA tensor");
  const at::Device dev = features.device();
  const int64_t rows = features.size(0), width = features.size(1);
  check(op, "features", features, {rows, width}, {at::kFloat, at::kBFloat16}, dev);
  check(op, "weight", weight, {-1, width}, {at::kFloat, at::kBFloat16}, dev);
  check(op, "bias", bias, {weight.size(0)}, {weight.scalar_type()}, dev);
  TORCH_CHECK_VALUE(weight.size(0) > 0, op, ": weight has no rows (K = 0)");
  const c10::cuda::CUDAGuard guard(dev);
  Tensor idx = at::empty({rows}, features.options().dtype(at::kLong));
  Tensor p_max = at::empty({want_prob ? rows : 0}, features.options().dtype(at::kFloat));
  const int err = sns_level_argmax_cuda(
      features.data_ptr(), is_bf16(features), weight.data_ptr(), bias.data_ptr(), is_bf16(weight),
      rows, weight.size(0), width, idx.data_ptr<int64_t>(),
      want_prob ? p_max.data_ptr<float>() : nullptr, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK_VALUE(err != cudaErrorInvalidValue, op, ": F = ", width,
                    " is too wide for the kernel's shared memory (at most ~3000 float32 features)");
  check_launch(op, err);
  return {idx, p_max};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sns_engine CUDA kernels (csrc/): refine tick, re-noise, Philox normals, level argmax";
  m.def("ddpm_tick", &ddpm_tick, "One refine tick for the whole batch, in place");
  m.def("renoise", &renoise, "Forward diffusion of each member to its level, in place");
  m.def("philox_normal", &philox_normal, "Philox words (w0, w1) and normals for (B, numel)");
  m.def("level_argmax", &level_argmax, "Argmax (and max probability) of a linear layer's logits");
}
