// 2-D convolution in NHWC/HWIO float32 on the CPU through oneDNN, as XLA FFI handlers: the
// forward pass, the gradient of the input and the gradient of the kernel.
//
// Why: XLA's CPU backend has no fast convolution kernels (general or depthwise, forward or
// backward); PyTorch calls oneDNN. skinjax/kernels/conv.py wraps these handlers in a custom_vjp
// and plugs them into skinjax.models.cpu_conv; lax.conv_general_dilated stays the reference.
//
// Every handler takes the same attributes: strides (2), padding (4: top, bottom, left, right, as
// lax's low/high pairs, so TF "SAME" asymmetric pads come through as they are) and groups (1, or
// the number of input channels for a depthwise convolution).
//
// Activations stay in the caller's NHWC layout (oneDNN's convolutions on AVX2/AVX-512 run nhwc
// natively); kernels are reordered from HWIO to whatever layout the chosen implementation wants,
// on every call, as they change every step.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <new>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace skinjax {
// The convolution runs in the XLA thread that calls it, with oneDNN's OpenMP team: one team at a
// time, so that two convolutions XLA starts at once (an input and a kernel gradient) do not put
// four busy threads on two cores; batch_norm.cc's sums take the same lock. See
// skinjax/kernels/conv.py for the thread counts.
std::mutex& ExecutionMutex() {
  static std::mutex mutex;
  return mutex;
}
}  // namespace skinjax

namespace {

using Dims = memory::dims;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;

dnnl::engine& CpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One convolution's geometry, read from the buffers' shapes and the attributes.
struct Geometry {
  int64_t n, h, w, c;          // input, NHWC
  int64_t kh, kw, o;           // kernel, HWIO (its I is c / groups)
  int64_t oh, ow;              // output
  int64_t groups;
  Dims strides, pad_l, pad_r;  // oneDNN's (top, left) and (bottom, right)
  bool bias = false;           // the forward pass adds one, the kernel gradient computes its own

  auto Key(int kind) const {
    return std::make_tuple(kind, n, h, w, c, kh, kw, o, groups, strides[0], strides[1], pad_l[0],
                           pad_l[1], pad_r[0], pad_r[1], bias);
  }
  memory::desc Bias() const { return {{o}, kF32, Tag::a}; }
  memory::desc Activations() const { return {{n, c, h, w}, kF32, Tag::nhwc}; }
  memory::desc Outputs() const { return {{n, o, oh, ow}, kF32, Tag::nhwc}; }
  // The caller's HWIO kernel; grouped as (G, O/G, I/G, KH, KW), HWIO is oneDNN's hwigo.
  memory::desc UserKernel() const {
    if (groups == 1) return {{o, c, kh, kw}, kF32, Tag::hwio};
    return {{groups, o / groups, c / groups, kh, kw}, kF32, Tag::hwigo};
  }
  memory::desc AnyKernel() const {
    if (groups == 1) return {{o, c, kh, kw}, kF32, Tag::any};
    return {{groups, o / groups, c / groups, kh, kw}, kF32, Tag::any};
  }
};

ffi::Error ReadGeometry(ffi::Span<const int64_t> x_dims, ffi::Span<const int64_t> k_dims,
                        ffi::Span<const int64_t> y_dims, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> padding, int64_t groups, Geometry* g) {
  if (x_dims.size() != 4 || k_dims.size() != 4 || y_dims.size() != 4 || strides.size() != 2 ||
      padding.size() != 4) {
    return ffi::Error::InvalidArgument("onednn conv: expects NHWC input, HWIO kernel, 2 strides "
                                       "and 4 pads");
  }
  *g = Geometry{x_dims[0], x_dims[1], x_dims[2], x_dims[3], k_dims[0], k_dims[1], k_dims[3],
                y_dims[1], y_dims[2], groups, {strides[0], strides[1]},
                {padding[0], padding[2]}, {padding[1], padding[3]}};
  if (groups < 1 || g->c % groups || g->o % groups || k_dims[2] * groups != g->c ||
      y_dims[0] != g->n || y_dims[3] != g->o) {
    return ffi::Error::InvalidArgument("onednn conv: inconsistent shapes or groups");
  }
  return ffi::Error::Success();
}

// A primitive with user-managed scratchpad: XLA may run two convolutions at once on two of its
// threads, and a library-managed scratchpad is shared between them in oneDNN's default build.
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g, dnnl::prop_kind prop) {
  if (g.bias) {
    return {CpuEngine(), prop, dnnl::algorithm::convolution_direct, g.Activations(), g.AnyKernel(),
            g.Bias(), g.Outputs(), g.strides, g.pad_l, g.pad_r, UserScratchpad()};
  }
  return {CpuEngine(), prop, dnnl::algorithm::convolution_direct, g.Activations(), g.AnyKernel(),
          g.Outputs(), g.strides, g.pad_l, g.pad_r, UserScratchpad()};
}

// Everything one call needs besides the data: built once per shape (the descriptor's
// implementation search costs far more than the convolution of a small layer) and kept.
struct Plan {
  dnnl::primitive conv;
  memory::desc kernel_md;        // the layout the implementation wants
  memory::desc scratchpad_md;
  bool reorder_kernel = false;   // the wanted layout is not HWIO
  dnnl::reorder kernel_reorder;  // HWIO -> wanted (forward, input gradient) or back (kernel gradient)
};

enum Kind { kForward = 0, kInputGrad = 1, kKernelGrad = 2 };

Plan MakePlan(const Geometry& g, Kind kind) {
  Plan plan;
  auto user = g.UserKernel();
  auto& engine = CpuEngine();
  if (kind == kForward) {
    auto pd = ForwardDesc(g, dnnl::prop_kind::forward_inference);
    plan.conv = dnnl::convolution_forward(pd);
    plan.kernel_md = pd.weights_desc();
    plan.scratchpad_md = pd.scratchpad_desc();
  } else if (kind == kInputGrad) {
    auto hint = ForwardDesc(g, dnnl::prop_kind::forward_training);
    dnnl::convolution_backward_data::primitive_desc pd(
        engine, dnnl::algorithm::convolution_direct, g.Activations(), g.AnyKernel(), g.Outputs(),
        g.strides, g.pad_l, g.pad_r, hint, UserScratchpad());
    plan.conv = dnnl::convolution_backward_data(pd);
    plan.kernel_md = pd.weights_desc();
    plan.scratchpad_md = pd.scratchpad_desc();
  } else {
    auto hint = ForwardDesc(g, dnnl::prop_kind::forward_training);
    auto pd = g.bias ? dnnl::convolution_backward_weights::primitive_desc(
                           engine, dnnl::algorithm::convolution_direct, g.Activations(),
                           g.AnyKernel(), g.Bias(), g.Outputs(), g.strides, g.pad_l, g.pad_r,
                           hint, UserScratchpad())
                     : dnnl::convolution_backward_weights::primitive_desc(
                           engine, dnnl::algorithm::convolution_direct, g.Activations(),
                           g.AnyKernel(), g.Outputs(), g.strides, g.pad_l, g.pad_r, hint,
                           UserScratchpad());
    plan.conv = dnnl::convolution_backward_weights(pd);
    plan.kernel_md = pd.diff_weights_desc();
    plan.scratchpad_md = pd.scratchpad_desc();
  }
  plan.reorder_kernel = plan.kernel_md != user;
  if (plan.reorder_kernel) {
    plan.kernel_reorder = kind == kKernelGrad
                              ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                    engine, plan.kernel_md, engine, user))
                              : dnnl::reorder(dnnl::reorder::primitive_desc(
                                    engine, user, engine, plan.kernel_md));
  }
  return plan;
}

const Plan& PlanFor(const Geometry& g, Kind kind) {
  static std::mutex mutex;
  static std::map<decltype(g.Key(0)), std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[g.Key(kind)];
  if (!plan) plan = std::make_unique<Plan>(MakePlan(g, kind));
  return *plan;
}

// A buffer that keeps its largest size: a call's scratchpad or reordered kernel. Kept per thread
// and reused, because a fresh (zeroed) allocation per call cost page faults and a memset of
// scratchpads of up to tens of MB, a large part of a small convolution's time.
class Workspace {
 public:
  void* Get(size_t bytes) {
    if (bytes > capacity_) {
      data_.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlignment, Rounded(bytes))));
      if (!data_) throw std::bad_alloc();
      capacity_ = Rounded(bytes);
    }
    return data_.get();
  }

 private:
  static constexpr size_t kAlignment = 64;
  static size_t Rounded(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t capacity_ = 0;
};

// The scratchpad and the kernel in the implementation's layout, for calls made by this thread.
struct CallMemory {
  memory Scratchpad(const Plan& plan) {
    static thread_local Workspace scratchpad;
    return memory(plan.scratchpad_md, CpuEngine(),
                  scratchpad.Get(plan.scratchpad_md.get_size()));
  }
  memory Kernel(const Plan& plan) {
    static thread_local Workspace kernel;
    return memory(plan.kernel_md, CpuEngine(), kernel.Get(plan.kernel_md.get_size()));
  }
};

using skinjax::ExecutionMutex;

template <typename F>
ffi::Error Guarded(F&& body) {
  try {
    std::lock_guard<std::mutex> lock(ExecutionMutex());
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
}

ffi::Error RunForward(Geometry g, const float* x, const float* kernel, const float* bias,
                      float* y) {
  g.bias = bias != nullptr;
  return Guarded([&] {
    const Plan& plan = PlanFor(g, kForward);
    auto& engine = CpuEngine();
    dnnl::stream stream(engine);
    CallMemory owned;
    memory user_kernel(g.UserKernel(), engine, const_cast<float*>(kernel));
    memory kernel_mem = user_kernel;
    if (plan.reorder_kernel) {
      kernel_mem = owned.Kernel(plan);
      plan.kernel_reorder.execute(stream, user_kernel, kernel_mem);
    }
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(g.Activations(), engine, const_cast<float*>(x))},
        {DNNL_ARG_WEIGHTS, kernel_mem},
        {DNNL_ARG_DST, memory(g.Outputs(), engine, y)},
        {DNNL_ARG_SCRATCHPAD, owned.Scratchpad(plan)}};
    if (bias) args.insert({DNNL_ARG_BIAS, memory(g.Bias(), engine, const_cast<float*>(bias))});
    plan.conv.execute(stream, args);
    stream.wait();
  });
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> padding, int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), strides,
                            padding, groups, &g);
      e.failure()) {
    return e;
  }
  return RunForward(g, x.typed_data(), kernel.typed_data(), nullptr, y->typed_data());
}

// The forward pass with the bias added by oneDNN, in the same pass over the output.
ffi::Error ForwardBias(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                       ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                       int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(), strides,
                            padding, groups, &g);
      e.failure()) {
    return e;
  }
  if (bias.element_count() != static_cast<size_t>(g.o)) {
    return ffi::Error::InvalidArgument("onednn conv: the bias must have one value per output");
  }
  return RunForward(g, x.typed_data(), kernel.typed_data(), bias.typed_data(), y->typed_data());
}

// Gradient of the input: the output gradient dy and the kernel in, dx out (x's shape).
ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                     ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> strides,
                     ffi::Span<const int64_t> padding, int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(dx->dimensions(), kernel.dimensions(), dy.dimensions(), strides,
                            padding, groups, &g);
      e.failure()) {
    return e;
  }
  return Guarded([&] {
    const Plan& plan = PlanFor(g, kInputGrad);
    auto& engine = CpuEngine();
    dnnl::stream stream(engine);
    CallMemory owned;
    memory user_kernel(g.UserKernel(), engine, kernel.typed_data());
    memory kernel_mem = user_kernel;
    if (plan.reorder_kernel) {
      kernel_mem = owned.Kernel(plan);
      plan.kernel_reorder.execute(stream, user_kernel, kernel_mem);
    }
    plan.conv.execute(stream,
                      {{DNNL_ARG_DIFF_DST, memory(g.Outputs(), engine, dy.typed_data())},
                       {DNNL_ARG_WEIGHTS, kernel_mem},
                       {DNNL_ARG_DIFF_SRC, memory(g.Activations(), engine, dx->typed_data())},
                       {DNNL_ARG_SCRATCHPAD, owned.Scratchpad(plan)}});
    stream.wait();
  });
}

// The kernel gradient of a depthwise convolution larger than 3x3, which oneDNN 3.2 has no
// depthwise kernel for: its generic grouped one computes each 16-channel group as a dense 16x16
// convolution, 16x the work (5x5 layers of EfficientNet took 5-6 ms each for 15 MFLOP).
// dk[i][j][c] = sum over n, oh, ow of x[n][oh*sh + i - top][ow*sw + j - left][c] * dy[n][oh][ow][c].
// Threads split the channels, so each sum runs in one fixed order: bitwise reproducible.
using Lanes = float __attribute__((vector_size(64)));  // 16 floats: one AVX-512 register
constexpr int kLanes = 16;
constexpr int kMaxTaps = 7 * 7;

__attribute__((target_clones("avx512f", "avx2", "default")))
void DepthwiseKernelGradChannels(const float* x, const float* dy, float* dk, const Geometry& g,
                                 int64_t c0) {
  Lanes sums[kMaxTaps] = {};
  auto load = [](const float* p) {
    Lanes v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  };
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t oh = 0; oh < g.oh; ++oh) {
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.strides[0] + i - g.pad_l[0];
        if (ih < 0 || ih >= g.h) continue;
        const float* x_row = x + ((n * g.h + ih) * g.w) * g.c + c0;
        const float* dy_row = dy + ((n * g.oh + oh) * g.ow) * g.c + c0;
        for (int64_t ow = 0; ow < g.ow; ++ow) {
          const Lanes d = load(dy_row + ow * g.c);
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t iw = ow * g.strides[1] + j - g.pad_l[1];
            if (iw < 0 || iw >= g.w) continue;
            sums[i * g.kw + j] += load(x_row + iw * g.c) * d;
          }
        }
      }
    }
  }
  for (int64_t tap = 0; tap < g.kh * g.kw; ++tap) {
    __builtin_memcpy(dk + tap * g.c + c0, &sums[tap], sizeof(Lanes));
  }
}

bool HasDepthwiseKernelGrad(const Geometry& g) {
  return g.groups == g.c && g.o == g.c && g.c % kLanes == 0 && g.kh * g.kw > 9 &&
         g.kh * g.kw <= kMaxTaps;
}

void DepthwiseKernelGrad(const float* x, const float* dy, float* dk, const Geometry& g) {
  const int64_t blocks = g.c / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    DepthwiseKernelGradChannels(x, dy, dk, g, block * kLanes);
  }
}

ffi::Error RunKernelGrad(Geometry g, const float* x, const float* dy, float* dkernel,
                         float* dbias) {
  g.bias = dbias != nullptr;
  return Guarded([&] {
    if (!g.bias && HasDepthwiseKernelGrad(g)) {
      DepthwiseKernelGrad(x, dy, dkernel, g);
      return;
    }
    const Plan& plan = PlanFor(g, kKernelGrad);
    auto& engine = CpuEngine();
    dnnl::stream stream(engine);
    CallMemory owned;
    memory user_kernel(g.UserKernel(), engine, dkernel);
    memory kernel_mem = plan.reorder_kernel ? owned.Kernel(plan) : user_kernel;
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(g.Activations(), engine, const_cast<float*>(x))},
        {DNNL_ARG_DIFF_DST, memory(g.Outputs(), engine, const_cast<float*>(dy))},
        {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
        {DNNL_ARG_SCRATCHPAD, owned.Scratchpad(plan)}};
    if (dbias) args.insert({DNNL_ARG_DIFF_BIAS, memory(g.Bias(), engine, dbias)});
    plan.conv.execute(stream, args);
    if (plan.reorder_kernel) plan.kernel_reorder.execute(stream, kernel_mem, user_kernel);
    stream.wait();
  });
}

// Gradient of the kernel: the input x and the output gradient dy in, dk out (HWIO).
ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dkernel, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding, int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(x.dimensions(), dkernel->dimensions(), dy.dimensions(), strides,
                            padding, groups, &g);
      e.failure()) {
    return e;
  }
  return RunKernelGrad(g, x.typed_data(), dy.typed_data(), dkernel->typed_data(), nullptr);
}

// The same, with the bias gradient (dy summed over everything but the channel) from oneDNN's
// same pass over dy.
ffi::Error KernelGradBias(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dkernel, ffi::ResultBuffer<ffi::F32> dbias,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding,
                          int64_t groups) {
  Geometry g;
  if (auto e = ReadGeometry(x.dimensions(), dkernel->dimensions(), dy.dimensions(), strides,
                            padding, groups, &g);
      e.failure()) {
    return e;
  }
  if (dbias->element_count() != static_cast<size_t>(g.o)) {
    return ffi::Error::InvalidArgument("onednn conv: the bias must have one value per output");
  }
  return RunKernelGrad(g, x.typed_data(), dy.typed_data(), dkernel->typed_data(),
                       dbias->typed_data());
}

}  // namespace

// Every handler: its buffers, then the attributes described at the top of the file.
#define SKINJAX_CONV_ATTRIBUTES(binding)                  \
  binding.Attr<ffi::Span<const int64_t>>("strides")       \
      .Attr<ffi::Span<const int64_t>>("padding")          \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxConvForward, Forward,
    SKINJAX_CONV_ATTRIBUTES(ffi::Ffi::Bind()
                                .Arg<ffi::Buffer<ffi::F32>>()     // x
                                .Arg<ffi::Buffer<ffi::F32>>()     // kernel
                                .Ret<ffi::Buffer<ffi::F32>>()));  // y
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxConvForwardBias, ForwardBias,
    SKINJAX_CONV_ATTRIBUTES(ffi::Ffi::Bind()
                                .Arg<ffi::Buffer<ffi::F32>>()     // x
                                .Arg<ffi::Buffer<ffi::F32>>()     // kernel
                                .Arg<ffi::Buffer<ffi::F32>>()     // bias
                                .Ret<ffi::Buffer<ffi::F32>>()));  // y
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxConvInputGrad, InputGrad,
    SKINJAX_CONV_ATTRIBUTES(ffi::Ffi::Bind()
                                .Arg<ffi::Buffer<ffi::F32>>()     // dy
                                .Arg<ffi::Buffer<ffi::F32>>()     // kernel
                                .Ret<ffi::Buffer<ffi::F32>>()));  // dx
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxConvKernelGrad, KernelGrad,
    SKINJAX_CONV_ATTRIBUTES(ffi::Ffi::Bind()
                                .Arg<ffi::Buffer<ffi::F32>>()     // x
                                .Arg<ffi::Buffer<ffi::F32>>()     // dy
                                .Ret<ffi::Buffer<ffi::F32>>()));  // dkernel
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxConvKernelGradBias, KernelGradBias,
    SKINJAX_CONV_ATTRIBUTES(ffi::Ffi::Bind()
                                .Arg<ffi::Buffer<ffi::F32>>()     // x
                                .Arg<ffi::Buffer<ffi::F32>>()     // dy
                                .Ret<ffi::Buffer<ffi::F32>>()     // dkernel
                                .Ret<ffi::Buffer<ffi::F32>>()));  // dbias
