// BatchNorm's per-feature sums over every axis but the last (the features), as XLA FFI handlers:
// - the statistics: sum(x - centre) and sum((x - centre)^2), called with centre 0 for the mean
//   and then with the mean for the variance (two passes, as Keras computes it);
// - the backward pass: sum(dy) and sum(dy * (x - mean)).
//
// Why: on a bandwidth-bound CPU step these sums are passes over whole activations. XLA's fused
// reductions read them at less than half the speed of one plain loop (11 against 25 GB/s on a
// 2-core AMD EPYC), and XLA computes sum(dy * (x - mean)) in a pass that first writes x - mean
// out as a whole extra activation, because the per-feature mean is computed in the same loop.
// skinjax.models.layers calls these on the CPU when the native kernels are on; their pure-JAX
// forms are the reference and the fallback.
//
// Reproducible: the rows are summed in fixed chunks, each chunk in one fixed order, and the
// chunks' sums are added in order in double precision, so the result does not depend on the
// number of threads or on their timing.

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace skinjax {
std::mutex& ExecutionMutex();  // onednn_conv.cc: one OpenMP team at a time
}  // namespace skinjax

namespace {

constexpr int64_t kRowsPerChunk = 256;

// sum(x - centre) and sum((x - centre)^2) over `rows` rows of `features`.
__attribute__((target_clones("avx512f", "avx2", "default")))
void ChunkMoments(const float* __restrict x, const float* __restrict centre, int64_t rows,
                  int64_t features, float* __restrict sum_centred, float* __restrict sum_squares) {
  std::fill(sum_centred, sum_centred + features, 0.0f);
  std::fill(sum_squares, sum_squares + features, 0.0f);
  for (int64_t row = 0; row < rows; ++row) {
    const float* x_row = x + row * features;
#pragma omp simd
    for (int64_t f = 0; f < features; ++f) {
      const float centred = x_row[f] - centre[f];
      sum_centred[f] += centred;
      sum_squares[f] += centred * centred;
    }
  }
}

// sum(dy) and sum(dy * (x - mean)) over `rows` rows of `features`.
__attribute__((target_clones("avx512f", "avx2", "default")))
void ChunkGradSums(const float* __restrict x, const float* __restrict dy,
                   const float* __restrict mean, int64_t rows, int64_t features,
                   float* __restrict sum_dy, float* __restrict sum_dy_centred) {
  std::fill(sum_dy, sum_dy + features, 0.0f);
  std::fill(sum_dy_centred, sum_dy_centred + features, 0.0f);
  for (int64_t row = 0; row < rows; ++row) {
    const float* x_row = x + row * features;
    const float* dy_row = dy + row * features;
#pragma omp simd
    for (int64_t f = 0; f < features; ++f) {
      sum_dy[f] += dy_row[f];
      sum_dy_centred[f] += dy_row[f] * (x_row[f] - mean[f]);
    }
  }
}

// Two per-feature sums over x's rows: `chunk_sums(first_row, rows, first, second)` sums rows
// [first_row, first_row + rows) into `first` and `second`; `vector` is the (features,) operand
// beside x (the centre, or the mean).
template <typename ChunkSums>
ffi::Error Sums(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& vector,
                ffi::Result<ffi::Buffer<ffi::F32>>& first,
                ffi::Result<ffi::Buffer<ffi::F32>>& second, ChunkSums chunk_sums) {
  const auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("x must have a feature axis");
  const int64_t features = dims.back();
  if (vector.element_count() != features || first->element_count() != features ||
      second->element_count() != features) {
    return ffi::Error::InvalidArgument("x, the per-feature vector and the sums disagree");
  }
  const int64_t rows = features ? x.element_count() / features : 0;
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<float> partial;
  try {
    partial.resize(chunks * 2 * features);
  } catch (const std::exception& e) {  // an exception must not cross into XLA
    return ffi::Error::Internal(std::string("BatchNorm sums: ") + e.what());
  }
  {
    std::lock_guard<std::mutex> lock(skinjax::ExecutionMutex());
#pragma omp parallel for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t first_row = chunk * kRowsPerChunk;
      chunk_sums(first_row, std::min(kRowsPerChunk, rows - first_row),
                 &partial[chunk * 2 * features], &partial[(chunk * 2 + 1) * features]);
    }
  }
  for (int64_t f = 0; f < features; ++f) {
    double total_first = 0.0, total_second = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      total_first += partial[chunk * 2 * features + f];
      total_second += partial[(chunk * 2 + 1) * features + f];
    }
    first->typed_data()[f] = static_cast<float>(total_first);
    second->typed_data()[f] = static_cast<float>(total_second);
  }
  return ffi::Error::Success();
}

ffi::Error Moments(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> centre,
                   ffi::ResultBuffer<ffi::F32> sum_centred,
                   ffi::ResultBuffer<ffi::F32> sum_squares) {
  const int64_t features = centre.element_count();
  return Sums(x, centre, sum_centred, sum_squares,
              [&](int64_t first_row, int64_t rows, float* first, float* second) {
                ChunkMoments(x.typed_data() + first_row * features, centre.typed_data(), rows,
                             features, first, second);
              });
}

ffi::Error GradSums(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
                    ffi::ResultBuffer<ffi::F32> sum_dy,
                    ffi::ResultBuffer<ffi::F32> sum_dy_centred) {
  if (dy.element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("x and dy disagree in shape");
  }
  const int64_t features = mean.element_count();
  return Sums(x, mean, sum_dy, sum_dy_centred,
              [&](int64_t first_row, int64_t rows, float* first, float* second) {
                ChunkGradSums(x.typed_data() + first_row * features,
                              dy.typed_data() + first_row * features, mean.typed_data(), rows,
                              features, first, second);
              });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxBatchNormMoments, Moments,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()    // x
        .Arg<ffi::Buffer<ffi::F32>>()    // centre
        .Ret<ffi::Buffer<ffi::F32>>()    // sum of x - centre
        .Ret<ffi::Buffer<ffi::F32>>());  // sum of (x - centre)^2
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxBatchNormGradSums, GradSums,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()    // x
        .Arg<ffi::Buffer<ffi::F32>>()    // dy
        .Arg<ffi::Buffer<ffi::F32>>()    // mean
        .Ret<ffi::Buffer<ffi::F32>>()    // sum of dy
        .Ret<ffi::Buffer<ffi::F32>>());  // sum of dy * (x - mean)
