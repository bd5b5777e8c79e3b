// alpha-entmax for short rows, a vector of rows at a time: lane l of every vector holds row l's entry, so one Newton
// pass costs one log and one exp per key for kLanes rows together, and the per-pass scalar work of the row-by-row
// solver (horizontal sums, the step's power, the convergence test) is done once for all of them. A decoding step
// normalises hundreds of rows of ~20 keys with a learned alpha per head: there that scalar work was most of the time.
//   * Start: the largest lower bound mean_K(z) - |K|^(-1/b) over K = {z > t} for the levels t below. By the power-mean
//     inequality sum_K (z - tau)_+^b >= |K| (mean_K z - tau)^b, which is 1 at that tau, so sum_i p_i >= 1 there.
//   * Halley's method on G(tau) = ||(z - tau)_+||_b - 1 in every lane until |sum p - 1| <= kTol (the row solver's
//     test): one division per key more than Newton's, and a group of rows needs 3 passes where Newton needs 3-4. A
//     lane that is done keeps its tau, so its sums stay as they were. No key ever leaves the working set, so a step
//     past the root costs a pass (the next step on the convex G comes back from the right), never a wrong support.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "entmax_common.h"

namespace sparse_attn {
namespace {

constexpr float kBoundLevels[] = {-1.f, -0.75f, -0.5f, -0.25f, -0.1f};
constexpr int kNumLevels = sizeof(kBoundLevels) / sizeof(float);

inline int lane_bits(const Vec& mask) {  // bit l set where lane l of a comparison result is true
#if defined(CPU_CAPABILITY_AVX2)
  return _mm256_movemask_ps(mask);
#else
  alignas(64) float lanes[kLanes];
  mask.store(lanes);
  int bits = 0;
  for (int64_t l = 0; l < kLanes; ++l) {
    uint32_t word;
    std::memcpy(&word, lanes + l, sizeof(word));
    bits |= static_cast<int>(word != 0) << l;
  }
  return bits;
#endif
}

constexpr int kAllLanes = (1 << kLanes) - 1;

// The lower bound of tau above, per lane, from the shifted and scaled scores z (column j at z + j * kLanes).
Vec lower_bound(const float* z, int64_t n, const Vec& alpha_minus_one) {
  const Vec zero(0.f), one(1.f);
  Vec sums[kNumLevels], counts[kNumLevels];
  for (int t = 0; t < kNumLevels; ++t) sums[t] = counts[t] = zero;
  for (int64_t j = 0; j < n; ++j) {
    const Vec zj = Vec::loadu(z + j * kLanes);
    for (int t = 0; t < kNumLevels; ++t) {
      const Vec in = zj > Vec(kBoundLevels[t]);
      sums[t] += Vec::blendv(zero, zj, in);
      counts[t] += Vec::blendv(zero, one, in);
    }
  }
  Vec tau(-1.f);  // the bound for K = {the maximum}
  for (int t = 0; t < kNumLevels; ++t) {
    const Vec bound = sums[t] / counts[t] - fast_exp(zero - alpha_minus_one * fast_log(counts[t]));
    tau = Vec::blendv(tau, at::vec::maximum(tau, bound), counts[t] > zero);
  }
  return tau;
}

struct Sums {  // over a lane's support: S = sum d^b, T = sum d^(b-1), U = sum d^(b-2)
  Vec S, T, U;
};

// d^b into w and the key's terms of the sums, for the key at z (d = z - tau); skipped when no lane has the key in
// its support.
inline void accumulate(const float* z, float* w, const Vec& tau, const Vec& b_minus_one, Sums& sums) {
  const Vec zero(0.f), d = Vec::loadu(z) - tau, positive = d > zero;
  if (!lane_bits(positive)) {
    zero.store(w);
    return;
  }
  const Vec u = Vec::blendv(zero, fast_exp(fast_log(d) * b_minus_one), positive);
  const Vec ud = u * d;
  ud.store(w);
  sums.S += ud;
  sums.T += u;
  sums.U += Vec::blendv(zero, u / d, positive);
}

// Halley's step on G, from Newton's: G = N - 1 with N = S^(1/b), G' = -N T / S, G'' = (b - 1) N (U S - T^2) / S^2.
// Newton's step is -G / G' = S (N - 1) / (N T); Halley's divides it by 1 - G G'' / (2 G'^2) =
// 1 - (N - 1)(b - 1)(U S - T^2) / (2 N T^2), which is <= 1 left of the root (G is convex and U S >= T^2), where
// Newton falls short; the divisor is kept >= 1/2 (a step at most twice Newton's) for robustness.
inline Vec halley_step(const Sums& sums, const Vec& alpha_minus_one, const Vec& b_minus_one) {
  const Vec one(1.f), N = fast_exp(alpha_minus_one * fast_log(sums.S)), T2 = sums.T * sums.T;
  const Vec newton = sums.S * (N - one) / (N * sums.T);
  const Vec shrink = (N - one) * b_minus_one * (sums.U * sums.S - T2) / (Vec(2.f) * N * T2);
  return newton / at::vec::maximum(one - shrink, Vec(0.5f));
}

// Halley on G in every lane from tau; w (laid out as z) receives d^b, and the sums S = sum d^b are returned.
Vec solve_lanes(const float* z, float* w, int64_t n, const Vec& alpha_minus_one, Vec tau) {
  const Vec zero(0.f), one(1.f), tol(kTol), b_minus_one = one / alpha_minus_one - one;
  Sums sums{zero, zero, zero};
  for (int step = 0; step < kMaxSteps; ++step) {
    sums = Sums{zero, zero, zero};
    for (int64_t j = 0; j < n; ++j) accumulate(z + j * kLanes, w + j * kLanes, tau, b_minus_one, sums);
    const Vec done = ((sums.S - one).abs() <= tol) | (sums.T <= zero);
    if (lane_bits(done) == kAllLanes) break;
    tau = Vec::blendv(tau + halley_step(sums, alpha_minus_one, b_minus_one), tau, done);
  }
  return sums.S;
}

}  // namespace

void entmax_forward_lanes(const float* x, const bool* mask, float* p, int64_t rows, int64_t n, const float* alpha,
                          float masked_below) {
  alignas(64) float z[kLaneMaxKeys * kLanes], w[kLaneMaxKeys * kLanes], lane_alpha[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {  // transpose; lanes past `rows` repeat the last row, and are dropped
    const int64_t row = std::min(l, rows - 1);
    lane_alpha[l] = alpha[row];
    for (int64_t j = 0; j < n; ++j) z[j * kLanes + l] = mask && mask[row * n + j] ? -INFINITY : x[row * n + j];
  }
  Vec m(-INFINITY);
  for (int64_t j = 0; j < n; ++j) m = at::vec::maximum(m, Vec::loadu(z + j * kLanes));
  const Vec live = m > Vec(masked_below), pad(kPad), alpha_minus_one = Vec::loadu(lane_alpha) - Vec(1.f);
  for (int64_t j = 0; j < n; ++j) {  // z = (alpha - 1)(x - max), at least kPad (masked keys: never in the support)
    const Vec zj = at::vec::maximum((Vec::loadu(z + j * kLanes) - m) * alpha_minus_one, pad);
    // a fully masked row solves a one-hot row instead (and is written as zeros)
    Vec::blendv(j == 0 ? Vec(0.f) : pad, zj, live).store(z + j * kLanes);
  }
  const Vec S = solve_lanes(z, w, n, alpha_minus_one, lower_bound(z, n, alpha_minus_one));
  alignas(64) float inverse[kLanes];
  (Vec(1.f) / S).store(inverse);
  const int live_bits = lane_bits(live);
  for (int64_t l = 0; l < rows; ++l) {
    float* out = p + l * n;
    if (!(live_bits >> l & 1)) {
      std::fill(out, out + n, 0.f);
      continue;
    }
    for (int64_t j = 0; j < n; ++j) out[j] = w[j * kLanes + l] * inverse[l];
  }
}

}  // namespace sparse_attn
