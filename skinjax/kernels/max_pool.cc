// Max-pooling over H and W of NHWC float32 activations, and its gradient, as XLA FFI handlers:
// - forward: each output's maximum and its winner, the window position (row * window width +
//   column) of the first maximum in row-major order, as XLA's select-and-scatter picks it;
// - backward: each output's gradient added to the input pixel its winner names.
//
// Why: XLA's CPU backend has no fast pooling. skinjax.models.cpu_conv's pure-JAX pool (strided
// slices stacked, then their maximum) writes every window position out as a whole activation and
// scatters the gradient back through as many padded additions: about 140 ms of ResNet50's
// 224 px, batch-16 step for its one 3x3 stem pool, where these loops read and write each
// activation once. The pure-JAX pool stays the reference and the fallback.
//
// Padding: out-of-range taps never win (as if padded with -inf). Reproducible: each image's
// gradient is accumulated by one thread, in output order.

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace skinjax {
std::mutex& ExecutionMutex();  // onednn_conv.cc: one OpenMP team at a time
}  // namespace skinjax

namespace {

// The winner of a window with no tap inside the input: nothing gets its gradient.
constexpr uint8_t kNoWinner = 255;

struct Pooling {
  int64_t batch, height, width, features, out_height, out_width;
  int64_t window_h, window_w, stride_h, stride_w, pad_top, pad_left;

  // The input row (or column) of tap `i` of output row (or column) `o`.
  int64_t Row(int64_t out_row, int64_t i) const { return out_row * stride_h - pad_top + i; }
  int64_t Column(int64_t out_col, int64_t j) const { return out_col * stride_w - pad_left + j; }
};

ffi::ErrorOr<Pooling> Describe(ffi::Span<const int64_t> input_dims,
                               ffi::Span<const int64_t> output_dims,
                               ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                               ffi::Span<const int64_t> padding) {
  if (input_dims.size() != 4 || output_dims.size() != 4 || window.size() != 2 ||
      strides.size() != 2 || padding.size() != 4) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "max-pool: NHWC operands, 2 window sizes, 2 strides and 4 pads expected"));
  }
  Pooling p{input_dims[0], input_dims[1], input_dims[2], input_dims[3],
            output_dims[1], output_dims[2], window[0], window[1], strides[0], strides[1],
            padding[0], padding[2]};
  const bool consistent =
      output_dims[0] == p.batch && output_dims[3] == p.features && p.window_h > 0 &&
      p.window_w > 0 && p.window_h * p.window_w < kNoWinner && p.stride_h > 0 && p.stride_w > 0 &&
      p.out_height == (p.height + padding[0] + padding[1] - p.window_h) / p.stride_h + 1 &&
      p.out_width == (p.width + padding[2] + padding[3] - p.window_w) / p.stride_w + 1;
  if (!consistent) {
    return ffi::Unexpected(ffi::Error::InvalidArgument("max-pool: shapes and geometry disagree"));
  }
  return p;
}

// The window taps of output pixel (out_row, out_col) that fall inside the input: each one's
// offset in the image and its window position, in row-major window order. Returns how many.
struct Taps {
  int count = 0;
  std::array<int64_t, kNoWinner> offsets;
  std::array<uint8_t, kNoWinner> positions;
};

Taps InsideTaps(const Pooling& p, int64_t out_row, int64_t out_col) {
  Taps taps;
  for (int64_t i = 0; i < p.window_h; ++i) {
    const int64_t row = p.Row(out_row, i);
    if (row < 0 || row >= p.height) continue;
    for (int64_t j = 0; j < p.window_w; ++j) {
      const int64_t col = p.Column(out_col, j);
      if (col < 0 || col >= p.width) continue;
      taps.offsets[taps.count] = (row * p.width + col) * p.features;
      taps.positions[taps.count++] = static_cast<uint8_t>(i * p.window_w + j);
    }
  }
  return taps;
}

// One output pixel's maxima and winners over every feature. A later tap wins only if strictly
// greater, so a tie goes to the first.
__attribute__((target_clones("avx512f", "avx2", "default")))
void PoolPixel(const float* __restrict image, const Taps& taps, int64_t features,
               float* __restrict maximum, uint8_t* __restrict winner) {
  std::fill(maximum, maximum + features, -std::numeric_limits<float>::infinity());
  std::fill(winner, winner + features, kNoWinner);
  for (int t = 0; t < taps.count; ++t) {
    const float* tap = image + taps.offsets[t];
    const uint8_t position = taps.positions[t];
#pragma omp simd
    for (int64_t f = 0; f < features; ++f) {
      // The first tap always wins its place, -inf included, so every window with a tap inside
      // the input names one; the first NaN wins too, so that a NaN is not pooled away.
      const bool wins = tap[f] > maximum[f] || winner[f] == kNoWinner ||
                        (tap[f] != tap[f] && maximum[f] == maximum[f]);
      maximum[f] = wins ? tap[f] : maximum[f];
      winner[f] = wins ? position : winner[f];
    }
  }
}

// One output pixel's gradient added to its winners' pixels.
__attribute__((target_clones("avx512f", "avx2", "default")))
void ScatterPixel(const float* __restrict grad, const uint8_t* __restrict winner,
                  const Taps& taps, int64_t features, float* __restrict image_dx) {
  for (int t = 0; t < taps.count; ++t) {
    float* tap = image_dx + taps.offsets[t];
    const uint8_t position = taps.positions[t];
#pragma omp simd
    for (int64_t f = 0; f < features; ++f) {
      tap[f] += winner[f] == position ? grad[f] : 0.0f;
    }
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::U8> winner, ffi::Span<const int64_t> window,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  auto pooling = Describe(x.dimensions(), y->dimensions(), window, strides, padding);
  if (pooling.has_error()) return pooling.error();
  const Pooling& p = *pooling;
  std::lock_guard<std::mutex> lock(skinjax::ExecutionMutex());
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t out_row = 0; out_row < p.out_height; ++out_row) {
      const float* image = x.typed_data() + n * p.height * p.width * p.features;
      for (int64_t out_col = 0; out_col < p.out_width; ++out_col) {
        const int64_t pixel = ((n * p.out_height + out_row) * p.out_width + out_col) * p.features;
        PoolPixel(image, InsideTaps(p, out_row, out_col), p.features, y->typed_data() + pixel,
                  winner->typed_data() + pixel);
      }
    }
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::Buffer<ffi::F32> grad, ffi::Buffer<ffi::U8> winner,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::Span<const int64_t> window,
                    ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  auto pooling = Describe(dx->dimensions(), grad.dimensions(), window, strides, padding);
  if (pooling.has_error()) return pooling.error();
  const Pooling& p = *pooling;
  if (winner.element_count() != grad.element_count()) {
    return ffi::Error::InvalidArgument("max-pool: gradient and winners disagree in shape");
  }
  const int64_t image_size = p.height * p.width * p.features;
  const int64_t out_image_size = p.out_height * p.out_width * p.features;
  std::lock_guard<std::mutex> lock(skinjax::ExecutionMutex());
  // Windows overlap within an image, so one thread owns each image's gradient.
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < p.batch; ++n) {
    float* image_dx = dx->typed_data() + n * image_size;
    std::fill(image_dx, image_dx + image_size, 0.0f);
    for (int64_t out_row = 0; out_row < p.out_height; ++out_row) {
      for (int64_t out_col = 0; out_col < p.out_width; ++out_col) {
        const int64_t pixel = n * out_image_size + (out_row * p.out_width + out_col) * p.features;
        ScatterPixel(grad.typed_data() + pixel, winner.typed_data() + pixel,
                     InsideTaps(p, out_row, out_col), p.features, image_dx);
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxMaxPoolForward, Forward,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()     // x, NHWC
        .Ret<ffi::Buffer<ffi::F32>>()     // the maxima
        .Ret<ffi::Buffer<ffi::U8>>()      // their window positions
        .Attr<ffi::Span<const int64_t>>("window")
        .Attr<ffi::Span<const int64_t>>("strides")
        .Attr<ffi::Span<const int64_t>>("padding"));  // top, bottom, left, right
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxMaxPoolBackward, Backward,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()     // the outputs' gradient
        .Arg<ffi::Buffer<ffi::U8>>()      // the forward pass's winners
        .Ret<ffi::Buffer<ffi::F32>>()     // the input's gradient
        .Attr<ffi::Span<const int64_t>>("window")
        .Attr<ffi::Span<const int64_t>>("strides")
        .Attr<ffi::Span<const int64_t>>("padding"));
