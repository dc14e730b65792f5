// The floor of the FuSe run path's forward loop shape, without torch: 8 samples, per
// 16-float chunk three masked loads at offsets -1, 0, +1 (two of them split a cache line),
// three FMAs, relu6 and a store, the sample loop inside the chunk loop as in
// csrc/fuse_conv_cpu_runs.cpp's forward_segment_batched.  Variants: 0 as the kernel;
// 1 unmasked loads and store; 2 masked loads, plain store; 3 aligned (non-split) loads;
// 4 no store (a dependency chain instead; not a floor).  Used for docs/perf-notes.md v15.
//
//   g++ -O3 -march=native -o /tmp/fuse_loop_floor bench/fuse_loop_floor.cpp
//   for p in 256 2352 23520; do taskset -c 0 /tmp/fuse_loop_floor 0 $p; done
//
// The second argument is the floats per sample (23520 = 480 channels of 7x7, the half
// variant's part at 960x7x7).
#include <immintrin.h>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <cstdint>
#include <cstring>
// Emulates the batched forward's inner loop: C_run floats per sample-run, 8 samples.
int main(int argc, char** argv) {
  int variant = atoi(argv[1]);
  const int64_t per = atoll(argv[2]);  // floats per sample run
  const int S = 8;
  const int64_t stride = per + 64;
  float* x = (float*)aligned_alloc(64, (S * stride + 128) * 4);
  float* out = (float*)aligned_alloc(64, (S * stride + 128) * 4);
  for (int64_t i = 0; i < S * stride + 128; ++i) { x[i] = (i % 17) * 0.1f; out[i] = 0; }
  x += 32; out += 32;
  const int64_t chunks = per / 16;
  uint16_t masks[3][49];
  for (int k = 0; k < 3; ++k) for (int q = 0; q < 49; ++q) masks[k][q] = (uint16_t)(0xFFFF ^ (1u << ((q * 3 + k) % 16)));
  __m512 w0 = _mm512_set1_ps(0.3f), w1 = _mm512_set1_ps(0.5f), w2 = _mm512_set1_ps(0.2f), bias = _mm512_set1_ps(0.1f);
  const __m512 six = _mm512_set1_ps(6.0f), zero = _mm512_setzero_ps();
  int reps = 2000;
  auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < reps; ++r) {
    int q = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i = c * 16;
      __mmask16 m0 = masks[0][q], m1 = masks[1][q], m2 = masks[2][q];
      if (++q == 49) q = 0;
      const float* xn = x + i; float* on = out + i;
      for (int n = 0; n < S; ++n, xn += stride, on += stride) {
        __m512 acc;
        if (variant == 0) {  // as the kernel: masked loads, masked store
          acc = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, xn - 1), bias);
          acc = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, xn), acc);
          acc = _mm512_fmadd_ps(w2, _mm512_maskz_loadu_ps(m2, xn + 1), acc);
          acc = _mm512_min_ps(six, _mm512_max_ps(zero, acc));
          _mm512_mask_storeu_ps(on, 0xFFFF, acc);
        } else if (variant == 1) {  // unmasked loads, plain store
          acc = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xn - 1), bias);
          acc = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xn), acc);
          acc = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xn + 1), acc);
          acc = _mm512_min_ps(six, _mm512_max_ps(zero, acc));
          _mm512_storeu_ps(on, acc);
        } else if (variant == 2) {  // masked loads, plain store
          acc = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, xn - 1), bias);
          acc = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, xn), acc);
          acc = _mm512_fmadd_ps(w2, _mm512_maskz_loadu_ps(m2, xn + 1), acc);
          acc = _mm512_min_ps(six, _mm512_max_ps(zero, acc));
          _mm512_storeu_ps(on, acc);
        } else if (variant == 3) {  // aligned loads only (no split), masked
          acc = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, xn), bias);
          acc = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, xn), acc);
          acc = _mm512_fmadd_ps(w2, _mm512_maskz_loadu_ps(m2, xn), acc);
          acc = _mm512_min_ps(six, _mm512_max_ps(zero, acc));
          _mm512_mask_storeu_ps(on, 0xFFFF, acc);
        } else if (variant == 4) {  // no store
          acc = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, xn - 1), bias);
          acc = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, xn), acc);
          acc = _mm512_fmadd_ps(w2, _mm512_maskz_loadu_ps(m2, xn + 1), acc);
          acc = _mm512_min_ps(six, _mm512_max_ps(zero, acc));
          bias = _mm512_add_ps(bias, _mm512_mul_ps(acc, zero));
        }
      }
    }
  }
  auto t1 = std::chrono::steady_clock::now();
  double s = std::chrono::duration<double>(t1 - t0).count();
  double per_chunk_ns = s / reps / (chunks * S) * 1e9;
  printf("variant %d per=%ld: %.2f ns per sample-chunk (%.1f cycles at 2.1GHz) sink %f\n", variant, (long)per, per_chunk_ns, per_chunk_ns * 2.1, out[5] + x[3] + _mm512_reduce_add_ps(bias));
}
