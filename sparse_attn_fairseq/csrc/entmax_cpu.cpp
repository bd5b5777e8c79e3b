// Fused CPU kernels for the entmax family: alpha-entmax with one alpha per row, 1.5-entmax, sparsemax and softmax
// (alpha = 1), forward and backward, registered as the custom ops sparse_attn::entmax_forward / entmax_backward on
// (rows, n) float32 scores; row r takes alpha[(r / alpha_repeat) % alpha.size(0)].
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
// Rows are independent: at::parallel_for splits them over threads (a single decoding step stays on one thread).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <Python.h>
#include <torch/library.h>

#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace sparse_attn {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = Vec::size();
constexpr float kTol = 2e-6f;        // |sum p - 1| at which general-alpha Newton stops (the reference's float32 value)
constexpr int kMaxSteps = 60;        // never reached in practice: Newton from the left converges in 3-8 steps
constexpr float kPad = -4.0f;        // candidate-buffer padding: below any tau (tau >= -1), so never in the support
constexpr int64_t kGrainEntries = 1 << 15;  // rows per thread chunk: at least this many entries

inline int64_t padded(int64_t k) { return (k + kLanes - 1) / kLanes * kLanes; }

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

void check_inputs(const at::Tensor& x, const at::Tensor& alpha, const char* what) {
  TORCH_CHECK(x.dim() == 2, what, ": expected (rows, n) scores, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && alpha.scalar_type() == at::kFloat, what, ": float32 only");
  TORCH_CHECK(x.device().is_cpu() && alpha.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(alpha.dim() == 1 && alpha.size(0) >= 1, what, ": alpha must be one-dimensional, got ", alpha.sizes());
  TORCH_CHECK(x.size(1) < (int64_t(1) << 31), what, ": rows longer than 2^31 entries");
}

int64_t grain(int64_t n) { return std::max<int64_t>(1, kGrainEntries / std::max<int64_t>(n, 1)); }

// Row r takes alpha[(r / repeat) % A]: one alpha per row (repeat 1, A = rows), per head of (bsz, H, T) rows
// (A = H, repeat = T), or one for all (A = 1).
void check_alpha_layout(int64_t rows, const at::Tensor& alpha, int64_t repeat, const char* what) {
  TORCH_CHECK(repeat >= 1 && (alpha.size(0) == 1 || rows % (alpha.size(0) * repeat) == 0), what,
              ": ", rows, " rows do not split into alpha of ", alpha.size(0), " values repeated ", repeat, " times");
}

at::Tensor entmax_forward(const at::Tensor& scores, const at::Tensor& alpha, int64_t repeat, double masked_below) {
  check_inputs(scores, alpha, "sparse_attn::entmax_forward");
  check_alpha_layout(scores.size(0), alpha, repeat, "sparse_attn::entmax_forward");
  const at::Tensor x = scores.contiguous(), a = alpha.contiguous();
  at::Tensor p = at::empty_like(x);
  const int64_t rows = x.size(0), n = x.size(1);
  const float* xp = x.data_ptr<float>();
  const float* ap = a.data_ptr<float>();
  float* pp = p.data_ptr<float>();
  const float below = static_cast<float>(masked_below);
  const int64_t num_alpha = a.size(0);
  for (int64_t i = 0; i < num_alpha; ++i) {
    TORCH_CHECK(ap[i] >= 1.f && ap[i] <= 2.f, "sparse_attn::entmax_forward: alpha must lie in [1, 2], got ", ap[i]);
  }
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    Scratch s(n);
    for (int64_t r = begin; r < end; ++r) forward_row(xp + r * n, pp + r * n, n, ap[(r / repeat) % num_alpha], below, s);
  });
  return p;
}

// Returns dL/dscores and dL/dalpha per row (rows,): the caller sums the rows of each alpha.
std::tuple<at::Tensor, at::Tensor> entmax_backward(const at::Tensor& grad, const at::Tensor& probs,
                                                   const at::Tensor& alpha, int64_t repeat, bool alpha_grad) {
  check_inputs(probs, alpha, "sparse_attn::entmax_backward");
  check_alpha_layout(probs.size(0), alpha, repeat, "sparse_attn::entmax_backward");
  TORCH_CHECK(grad.sizes() == probs.sizes() && grad.scalar_type() == at::kFloat,
              "sparse_attn::entmax_backward: grad must match the weights");
  const at::Tensor g = grad.contiguous(), p = probs.contiguous(), a = alpha.contiguous();
  at::Tensor gz = at::empty_like(p);
  const int64_t rows = p.size(0), n = p.size(1), num_alpha = a.size(0);
  at::Tensor ga = at::zeros({rows}, a.options());
  const float *gp = g.data_ptr<float>(), *pp = p.data_ptr<float>(), *ap = a.data_ptr<float>();
  float *gzp = gz.data_ptr<float>(), *gap = ga.data_ptr<float>();
  at::parallel_for(0, rows, grain(n), [&](int64_t begin, int64_t end) {
    Scratch s(n);
    for (int64_t r = begin; r < end; ++r) {
      gap[r] = backward_row(gp + r * n, pp + r * n, gzp + r * n, n, ap[(r / repeat) % num_alpha], alpha_grad, s);
    }
  });
  return {gz, ga};
}

}  // namespace

TORCH_LIBRARY(sparse_attn, m) {
  m.def("entmax_forward(Tensor scores, Tensor alpha, int alpha_repeat, float masked_below) -> Tensor");
  m.def("entmax_backward(Tensor grad, Tensor probs, Tensor alpha, int alpha_repeat, bool alpha_grad) -> "
        "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sparse_attn, CPU, m) {
  m.impl("entmax_forward", &entmax_forward);
  m.impl("entmax_backward", &entmax_backward);
}

}  // namespace sparse_attn

// Importing the module (sparse_attn_fairseq._C) registers the ops above; it defines no Python functions.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sparse_attn::entmax_* custom ops", -1, nullptr};
  return PyModule_Create(&module);
}
