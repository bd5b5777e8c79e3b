// Vector math shared by the fused entmax kernels (entmax_rows.cpp, entmax_lanes.cpp): ATen's float vector type,
// a horizontal sum, inlined log/exp; and the solvers' entry points (entmax_ops.cpp calls them).
#pragma once

#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <cstdint>

namespace sparse_attn {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr float kTol = 2e-6f;        // |sum p - 1| at which general-alpha Newton stops (the reference's float32 value)
constexpr int kMaxSteps = 60;        // never reached in practice: Newton from the left converges in 3-8 steps
constexpr float kPad = -4.0f;        // candidate-buffer padding: below any tau (tau >= -1), so never in the support

inline float hsum(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX2)
  const __m256 x = v;
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  return _mm_cvtss_f32(_mm_add_ss(sum, _mm_movehdup_ps(sum)));
#else
  alignas(64) float lanes[kLanes];
  v.store(lanes);
  float total = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) total += lanes[i];
  return total;
#endif
}

#if defined(CPU_CAPABILITY_AVX2)
// Natural log and exp for x > 0 (Cephes' single-precision polynomials, ~1 ulp on the ranges used here); inlined,
// they cost about half of a call into Sleef's, and the solver spends most of its time in them.
inline Vec fast_log(const Vec& v) {
  const __m256 one = _mm256_set1_ps(1.f);
  __m256 x = _mm256_max_ps(v, _mm256_set1_ps(1.17549435e-38f));  // smallest normal: no denormals, no log(0)
  __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  x = _mm256_or_ps(_mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x807fffff))), _mm256_set1_ps(0.5f));
  const __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);  // mantissa in [.5, 1)
  e = _mm256_sub_ps(e, _mm256_and_ps(one, small));
  x = _mm256_add_ps(_mm256_sub_ps(x, one), _mm256_and_ps(x, small));  // x - 1 in [sqrt(.5) - 1, sqrt(2) - 1)
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  for (float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                  2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f}) {
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
  }
  y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(x, y));
}

inline Vec fast_exp(const Vec& v) {  // exp(v) for v <= 0; below -87 it is flushed to 0
  const __m256 x0 = _mm256_max_ps(v, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x0, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(.5f)));
  __m256 x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x0);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f}) {
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
  }
  y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.f));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(y, _mm256_castsi256_ps(scale));
  return _mm256_and_ps(result, _mm256_cmp_ps(v, _mm256_set1_ps(-87.f), _CMP_GE_OQ));
}
#else
inline Vec fast_log(const Vec& v) { return at::vec::maximum(v, Vec(1.17549435e-38f)).log(); }
inline Vec fast_exp(const Vec& v) { return v.exp(); }
#endif

// Rows of at most this many keys with a general alpha are solved a vector of rows at a time (entmax_lanes.cpp).
constexpr int64_t kLaneMaxKeys = 64;

// The solvers, on `rows` consecutive rows of n float32 scores at x, row r with alpha[r] in [1, 2]. A mask (null or
// one bool per score, true = masked) and scores at or below masked_below mask keys; a fully masked row gets zeros.
// Row solver (entmax_rows.cpp): any n and alpha.
void entmax_forward_rows(const float* x, const bool* mask, float* p, int64_t rows, int64_t n, const float* alpha,
                         float masked_below);
// Lane solver (entmax_lanes.cpp): 1 <= rows <= kLanes, n <= kLaneMaxKeys, alpha in (1, 2].
void entmax_forward_lanes(const float* x, const bool* mask, float* p, int64_t rows, int64_t n, const float* alpha,
                          float masked_below);
// Backward (entmax_rows.cpp): dL/dscores into gz and dL/dalpha per row into galpha (0 unless with_alpha).
void entmax_backward_rows(const float* g, const float* p, float* gz, float* galpha, int64_t rows, int64_t n,
                          const float* alpha, bool with_alpha);

}  // namespace sparse_attn
