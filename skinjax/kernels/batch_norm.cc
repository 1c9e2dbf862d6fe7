// The two per-feature sums of BatchNorm's backward pass, as an XLA FFI handler:
// sum(dy) and sum(dy * (x - mean)) over every axis but the last (the features).
//
// Why: XLA's CPU backend computes sum(dy * (x - mean)) in a pass that first writes x - mean out
// as a whole extra activation, because the per-feature mean is computed in the same loop; on a
// bandwidth-bound CPU step that write and its read cost more than the sums. Here one pass reads
// x and dy once. skinjax.models.layers calls it on the CPU when the native kernels are on;
// its pure-JAX form is the reference and the fallback.
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

__attribute__((target_clones("avx512f", "avx2", "default")))
void ChunkSums(const float* __restrict x, const float* __restrict dy,
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

ffi::Error GradSums(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
                    ffi::ResultBuffer<ffi::F32> sum_dy, ffi::ResultBuffer<ffi::F32> sum_dy_centred) {
  const auto dims = x.dimensions();
  if (dims.size() == 0) return ffi::Error::InvalidArgument("x must have a feature axis");
  const int64_t features = dims.back();
  if (dy.element_count() != x.element_count() || mean.element_count() != features ||
      sum_dy->element_count() != features || sum_dy_centred->element_count() != features) {
    return ffi::Error::InvalidArgument("x, dy, mean and the sums disagree in shape");
  }
  const int64_t rows = features ? x.element_count() / features : 0;
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<float> partial;
  try {
    partial.resize(chunks * 2 * features);
  } catch (const std::exception& e) {  // an exception must not cross into XLA
    return ffi::Error::Internal(std::string("BatchNorm sums: ") + e.what());
  }
  const float* xs = x.typed_data();
  const float* dys = dy.typed_data();
  const float* means = mean.typed_data();
  {
    std::lock_guard<std::mutex> lock(skinjax::ExecutionMutex());
#pragma omp parallel for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t first = chunk * kRowsPerChunk;
      ChunkSums(xs + first * features, dys + first * features, means,
                std::min(kRowsPerChunk, rows - first), features,
                &partial[chunk * 2 * features], &partial[(chunk * 2 + 1) * features]);
    }
  }
  for (int64_t f = 0; f < features; ++f) {
    double total_dy = 0.0, total_dy_centred = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      total_dy += partial[chunk * 2 * features + f];
      total_dy_centred += partial[(chunk * 2 + 1) * features + f];
    }
    sum_dy->typed_data()[f] = static_cast<float>(total_dy);
    sum_dy_centred->typed_data()[f] = static_cast<float>(total_dy_centred);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    SkinjaxBatchNormGradSums, GradSums,
    ffi::Ffi::Bind()
        .Arg<ffi::Buffer<ffi::F32>>()    // x
        .Arg<ffi::Buffer<ffi::F32>>()    // dy
        .Arg<ffi::Buffer<ffi::F32>>()    // mean
        .Ret<ffi::Buffer<ffi::F32>>()    // sum of dy
        .Ret<ffi::Buffer<ffi::F32>>());  // sum of dy * (x - mean)
