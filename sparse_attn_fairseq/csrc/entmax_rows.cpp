// The row solver of the fused entmax kernels: alpha-entmax with one alpha per row, 1.5-entmax, sparsemax and softmax
// (alpha = 1), forward and backward, one row at a time (entmax_ops.cpp defines the ops and chooses between this and
// the lane solver of entmax_lanes.cpp).
//
// The math is the reference's (functional/_threshold.py, functional/_entmax_autograd.py; SPEC.md): after shifting a
// row so its maximum is 0 and scaling by (alpha - 1), p_i = (z_i - tau)_+^b with b = 1 / (alpha - 1), and tau in
// [-1, 0) solves sum_i p_i = 1. What changes is where it runs: one pass per row instead of a dozen tensor ops.
//   * Candidates: only entries with z_i > -1 can be in the support (tau >= -1); they are gathered once, and after
//     every Newton step the ones at or below the new tau (which only grows) are dropped.
//   * General b: Newton on G(tau) = ||(z - tau)_+||_b - 1 from a lower bound of tau (the 1.5-entmax threshold for
//     b <= 2, the integer exponent ceil(b) above; monotone, never overshoots) until |sum p - 1| <= 2e-6, the
//     reference's tolerance.
//   * b = 1 (sparsemax) and b = 2 (1.5-entmax): the threshold of a candidate support has a closed form; it is
//     exact once it lies below the support's smallest entry, otherwise a Newton step shrinks the support.
//   * Backward: u = p^(2 - alpha) on the support, g_bar = sum(u g) / sum(u), dL/dz = u (g - g_bar), and per row
//     dL/dalpha = (sum g p - g_bar) / (alpha - 1)^2 + (g_bar sum p log p - sum g p log p) / (alpha - 1).

#include "entmax_common.h"

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace sparse_attn {
namespace {

inline int64_t padded(int64_t k) { return (k + kLanes - 1) / kLanes * kLanes; }

inline float hmin(const Vec& v) {
  alignas(64) float lanes[kLanes];
  v.store(lanes);
  return *std::min_element(lanes, lanes + kLanes);
}

float row_max(const float* x, int64_t n) {
  Vec best(-INFINITY);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) best = at::vec::maximum(best, Vec::loadu(x + i));
  alignas(64) float lanes[kLanes];
  best.store(lanes);
  float m = *std::max_element(lanes, lanes + kLanes);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

#if defined(CPU_CAPABILITY_AVX2)
// Stream compaction of 8 lanes: for each movemask, the lane order that packs the selected lanes to the front.
struct CompressTable {
  alignas(32) int32_t perm[256][8];
  CompressTable() {
    for (int mask = 0; mask < 256; ++mask) {
      int j = 0;
      for (int lane = 0; lane < 8; ++lane) {
        if (mask >> lane & 1) perm[mask][j++] = lane;
      }
      while (j < 8) perm[mask][j++] = 0;
    }
  }
};
const CompressTable kCompress;

// Append the lanes of z above `above` (and their indices) at out[k..]; out needs 8 floats of room. Returns the new k.
inline int64_t append_above(__m256 z, __m256i index, float above, float* out, int32_t* out_idx, int64_t k) {
  const int mask = _mm256_movemask_ps(_mm256_cmp_ps(z, _mm256_set1_ps(above), _CMP_GT_OQ));  // no branch: faster
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.perm[mask]));
  _mm256_storeu_ps(out + k, _mm256_permutevar8x32_ps(z, perm));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out_idx + k), _mm256_permutevar8x32_epi32(index, perm));
  return k + __builtin_popcount(mask);
}
#endif


// Per-thread buffers: candidate values z, their column indices, and one work buffer (all padded to the lanes).
struct Scratch {
  std::vector<float> z, work;
  std::vector<int32_t> idx;
  explicit Scratch(int64_t n) : z(padded(n) + kLanes), work(padded(n) + kLanes), idx(padded(n) + kLanes) {}
};

void pad_candidates(Scratch& s, int64_t k) {
  for (int64_t j = k; j < padded(k); ++j) s.z[j] = kPad;
}

// z = scale * (x - m) for the entries with z > floor, compacted with their indices; returns their count.
int64_t gather_candidates(const float* x, int64_t n, float m, float scale, float floor, Scratch& s) {
  int64_t k = 0, i = 0;
#if defined(CPU_CAPABILITY_AVX2)
  const __m256 vm = _mm256_set1_ps(m), vscale = _mm256_set1_ps(scale);
  float* z_out = s.z.data();
  int32_t* idx_out = s.idx.data();
  __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (; i + 8 <= n; i += 8, index = _mm256_add_epi32(index, _mm256_set1_epi32(8))) {
    const __m256 z = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vscale);
    k = append_above(z, index, floor, z_out, idx_out, k);
  }
#endif
  for (; i < n; ++i) {
    const float zi = (x[i] - m) * scale;
    s.z[k] = zi;
    s.idx[k] = static_cast<int32_t>(i);
    k += zi > floor;
  }
  pad_candidates(s, k);
  return k;
}

// Keep the candidates above tau (tau only grows, so the others never return). Sets of at most two vectors are left
// as they are: compacting them costs more than it saves.
int64_t drop_below(Scratch& s, int64_t k, float tau) {
  if (k <= 2 * kLanes) return k;
  int64_t kept = 0, j = 0;
#if defined(CPU_CAPABILITY_AVX2)
  float* z = s.z.data();
  int32_t* idx = s.idx.data();
  for (; j + 8 <= k; j += 8) {  // writes never pass the block being read
    const __m256i index = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + j));
    kept = append_above(_mm256_loadu_ps(z + j), index, tau, z, idx, kept);
  }
#endif
  for (; j < k; ++j) {
    s.z[kept] = s.z[j];
    s.idx[kept] = s.idx[j];
    kept += s.z[j] > tau;
  }
  pad_candidates(s, kept);
  return kept;
}

inline Vec power_int(Vec d, int e) {  // d^e for e >= 0, by squaring
  Vec result(1.f);
  for (; e > 0; e >>= 1, d = d * d) {
    if (e & 1) result = result * d;
  }
  return result;
}

// Root of sum_j (z_j - tau)_+^e = 1 for an integer e (products only), by Newton from `tau` (at or below the root)
// until |S - 1| <= 1e-3; candidates below each iterate leave the working set.
float integer_root(Scratch& s, int64_t& k, int e, float tau) {
  const Vec zero(0.f);
  const float power = 1.f - 1.f / e;
  for (int step = 0; step < kMaxSteps; ++step) {
    Vec vS(0.f), vT(0.f);
    for (int64_t j = 0; j < k; j += kLanes) {
      const Vec d = at::vec::maximum(Vec::loadu(s.z.data() + j) - Vec(tau), zero);
      const Vec u = power_int(d, e - 1);
      vS += u * d;
      vT += u;
    }
    const float S = hsum(vS), T = hsum(vT);
    if (S - 1.f <= 1e-3f || T <= 0.f) break;
    tau += (S - std::exp(power * std::log(S))) / T;
    k = drop_below(s, k, tau);
  }
  return tau;
}

float solve_closed_form(Scratch& s, int64_t& k, float b);

// A lower bound of the threshold for exponent b, cheaply: with d = z - tau in [0, 1], d^e <= d^b for e >= b, so the
// root for e lies at or below the root for b. For b <= 2, e = 2 and the root has a closed form (no power at all);
// above, e = ceil(b) and Newton uses products only. Candidates below the bound leave.
float threshold_lower_bound(Scratch& s, int64_t& k, float b) {
  if (b <= 2.f) return solve_closed_form(s, k, 2.f);
  return integer_root(s, k, static_cast<int>(std::ceil(b)), -1.f);
}

// Newton on G for general b: returns S = sum d^b at the final tau; work[j] = d_j^b for the k candidates left.
float solve_general(Scratch& s, int64_t& k, float b) {
  const Vec zero(0.f), b_minus_one(b - 1.f);
  const float power = 1.f - 1.f / b;
  float tau = threshold_lower_bound(s, k, b);  // Newton from below: every iterate stays below the root
  float S = 0.f;
  for (int step = 0; step < kMaxSteps; ++step) {
    Vec vS(0.f), vT(0.f);
    const Vec vtau(tau);
    for (int64_t j = 0; j < k; j += kLanes) {
      const Vec d = Vec::loadu(s.z.data() + j) - vtau;
      const Vec u = Vec::blendv(zero, fast_exp(fast_log(d) * b_minus_one), d > zero);  // d^(b-1)
      const Vec ud = u * at::vec::maximum(d, zero);
      ud.store(s.work.data() + j);
      vS += ud;
      vT += u;
    }
    S = hsum(vS);
    const float T = hsum(vT);
    if (std::fabs(S - 1.f) <= kTol || T <= 0.f) break;
    tau += (S - std::exp(power * std::log(S))) / T;
    k = drop_below(s, k, tau);
  }
  return S;
}

// b = 1 or 2: the support's closed-form threshold once it is exact, Newton steps until then. Returns tau.
float solve_closed_form(Scratch& s, int64_t& k, float b) {
  const Vec zero(0.f);
  float tau = -1.f;
  for (int step = 0; step < kMaxSteps; ++step) {
    Vec vz(0.f), vzz(0.f), vmin(INFINITY), vcount(0.f);
    const Vec vtau(tau);
    for (int64_t j = 0; j < k; j += kLanes) {  // sums over the support at tau (short sets keep dropped entries)
      const Vec z = Vec::loadu(s.z.data() + j);
      const Vec in = z > vtau;
      vz += Vec::blendv(zero, z, in);
      vzz += Vec::blendv(zero, z * z, in);
      vmin = at::vec::minimum(vmin, Vec::blendv(Vec(INFINITY), z, in));
      vcount += Vec::blendv(zero, Vec(1.f), in);
    }
    const double cnt = hsum(vcount), sz = hsum(vz), szz = hsum(vzz), zmin = hmin(vmin);
    double exact;  // threshold if the candidates were exactly the support
    bool valid;
    if (b == 1.f) {
      exact = (sz - 1.0) / cnt;
      valid = exact < zmin;
    } else {
      const double mean = sz / cnt, disc = mean * mean - (szz - 1.0) / cnt;
      exact = mean - std::sqrt(std::max(disc, 0.0));
      valid = disc >= 0.0 && exact < zmin;
    }
    if (valid) return static_cast<float>(exact);
    if (b == 1.f) {
      tau = static_cast<float>(exact);  // the active-set (Michelot) step: stays below the root
    } else {
      const double S = szz - 2.0 * tau * sz + cnt * tau * tau, T = sz - cnt * tau;  // sum d^2, sum d
      tau += static_cast<float>((S - std::sqrt(S)) / T);
    }
    k = drop_below(s, k, tau);
  }
  return tau;
}

// work[j] = (z_j - tau)_+^b for b in {1, 2}; returns their sum.
float closed_form_weights(Scratch& s, int64_t k, float tau, float b) {
  Vec total(0.f);
  for (int64_t j = 0; j < k; j += kLanes) {
    const Vec d = at::vec::maximum(Vec::loadu(s.z.data() + j) - Vec(tau), Vec(0.f));
    const Vec w = b == 2.f ? d * d : d;
    w.store(s.work.data() + j);
    total += w;
  }
  return hsum(total);
}

void softmax_row(const float* x, float* p, int64_t n, float m) {
  float total = 0.f;
  int64_t i = 0;
  Vec vt(0.f);
  for (; i + kLanes <= n; i += kLanes) {
    const Vec e = (Vec::loadu(x + i) - Vec(m)).exp();
    e.store(p + i);
    vt += e;
  }
  total = hsum(vt);
  for (; i < n; ++i) total += (p[i] = std::exp(x[i] - m));
  const Vec inv(1.f / total);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) (Vec::loadu(p + j) * inv).store(p + j);
  for (; j < n; ++j) p[j] *= 1.f / total;
}

void forward_row(const float* x, float* p, int64_t n, float alpha, float masked_below, Scratch& s) {
  const float m = row_max(x, n);
  if (m > masked_below && alpha == 1.f) return softmax_row(x, p, n, m);
  std::fill(p, p + n, 0.f);
  if (!(m > masked_below)) return;  // every key masked: zeros
  const float b = 1.f / (alpha - 1.f);
  int64_t k = gather_candidates(x, n, m, alpha - 1.f, -1.f, s);
  float S;
  if (alpha == 2.f || alpha == 1.5f) {
    S = closed_form_weights(s, k, solve_closed_form(s, k, b), b);
  } else {
    S = solve_general(s, k, b);
  }
  const float inv = 1.f / S;
  for (int64_t j = 0; j < k; ++j) p[s.idx[j]] = s.work[j] * inv;
}

// Backward of one row: writes dL/dz into gz; returns dL/dalpha for the row (0 unless with_alpha and alpha > 1).
float backward_row(const float* g, const float* p, float* gz, int64_t n, float alpha, bool with_alpha, Scratch& s) {
  const int64_t k = gather_candidates(p, n, 0.f, 1.f, 0.f, s);  // the support: p (into z) and indices
  for (int64_t j = 0; j < k; ++j) s.work[j] = g[s.idx[j]];
  for (int64_t j = k; j < padded(k); ++j) s.z[j] = s.work[j] = 0.f;
  const Vec zero(0.f), expo(2.f - alpha);
  Vec su(0.f), sug(0.f), sgp(0.f), sgpl(0.f), spl(0.f);
  const bool general = alpha != 1.f && alpha != 1.5f && alpha != 2.f;
  for (int64_t j = 0; j < k; j += kLanes) {
    const Vec pv = Vec::loadu(s.z.data() + j), gv = Vec::loadu(s.work.data() + j);
    const Vec on = pv > zero;
    const Vec logp = (with_alpha || general) ? fast_log(pv) : zero;
    Vec u = alpha == 1.f ? pv : alpha == 2.f ? Vec(1.f) : alpha == 1.5f ? pv.sqrt() : fast_exp(logp * expo);
    u = Vec::blendv(zero, u, on);
    u.store(s.z.data() + j);  // u replaces p; p is only needed below for the alpha sums
    su += u;
    sug += u * gv;
    if (with_alpha) {
      const Vec plogp = Vec::blendv(zero, pv * logp, on);
      sgp += gv * pv;
      sgpl += gv * plogp;
      spl += plogp;
    }
  }
  const float u_sum = hsum(su);
  const float g_bar = u_sum > 0.f ? hsum(sug) / u_sum : 0.f;
  std::fill(gz, gz + n, 0.f);
  for (int64_t j = 0; j < k; ++j) gz[s.idx[j]] = s.z[j] * (s.work[j] - g_bar);
  if (!with_alpha || alpha == 1.f || u_sum == 0.f) return 0.f;
  const float am1 = alpha - 1.f;
  return (hsum(sgp) - g_bar) / (am1 * am1) + (g_bar * hsum(spl) - hsum(sgpl)) / am1;
}

}  // namespace

void entmax_forward_rows(const float* x, const bool* mask, float* p, int64_t rows, int64_t n, const float* alpha,
                         float masked_below) {
  Scratch s(n);
  std::vector<float> masked(mask ? n : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * n;
    if (mask) {  // masked keys become -inf in a copy of the row
      for (int64_t j = 0; j < n; ++j) masked[j] = mask[r * n + j] ? -INFINITY : row[j];
      row = masked.data();
    }
    forward_row(row, p + r * n, n, alpha[r], masked_below, s);
  }
}

void entmax_backward_rows(const float* g, const float* p, float* gz, float* galpha, int64_t rows, int64_t n,
                          const float* alpha, bool with_alpha) {
  Scratch s(n);
  for (int64_t r = 0; r < rows; ++r) {
    galpha[r] = backward_row(g + r * n, p + r * n, gz + r * n, n, alpha[r], with_alpha, s);
  }
}

}  // namespace sparse_attn
