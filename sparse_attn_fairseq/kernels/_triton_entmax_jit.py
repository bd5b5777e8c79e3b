"""Triton kernels of the entmax family (imported only when the triton kernel first runs; see triton_entmax.py).

Per row, s = x - max(x) <= 0 (masked keys -inf) and a1 = alpha - 1. The threshold is written as tau = -d0 in the
scaled units of Correia et al. (2019, section 3), so that with w = a1 s / d0

    p_i = d0^b (1 + w_i)_+^b,   b = 1 / a1,   and   sum_i p_i = 1  <=>  G(d0) = d0 R^a1 - 1 = 0,

where R = sum_i r_i, r_i = (1 + w_i)_+^b = exp((s_i / d0) log1p(w_i) / w_i) <= 1 (the row's maximum gives exactly 1).
The weights are then p = r / R. This form has no b anywhere: alpha = 1 (a1 = 0) is softmax exactly (w = 0, r =
exp(s), d0 stays 1), and alpha near 1 keeps float32 accuracy, since log1p(w) / w is computed to a few ulps (u - 1 is
exact for u = 1 + w) instead of raising (z - tau), with its absolute rounding error, to the power b = 1000.

G is convex and increasing in d0 (it is ||(z - tau)_+||_b - 1, convex and decreasing in tau), so Newton's method
from any d0 with G(d0) >= 0 decreases monotonically to the root: d0 <- d0 - (d0 R - R^(1 - a1)) / Q with
Q = sum_i (1 + w_i)_+^(b - 1) = sum_i r_i^(1 - a1). It starts from the smallest of a few power-mean bounds,
d0 <= |K|^(-a1) - a1 mean_K(s) for K = {a1 s > -t}, t = 1/8, 1/4, 1/2, and stops on the device when every row's step is below
``tol`` relative to d0, or after MAX_ITER steps. Sparsemax (b = 1) and 1.5-entmax (b = 2) use the powers
directly (Newton is then the exact active-set iteration).

Backward (closed form, never through the iterations): u = p^(2 - alpha) on the support, dL/dx = u (g - sum(u g) /
sum(u)); for alpha, per row sum_i g_i dp_i/dalpha in a form without the textbook formula's cancellation near
alpha = 1 (see _alpha_grad; 0 for rows with alpha exactly 1).

Layout: rows of n contiguous scores; alpha (per row) and the bool mask are read through the strides of three row
dims (D0, D1, D2) and the key dim, so broadcast masks (key padding (bsz, 1, 1, n)) and per-head alphas (H, 1, 1) are
never expanded in memory. Short rows are processed ROWS at a time ([ROWS, BLOCK] tiles); rows longer than the
largest tile loop over chunks of the row (the *_chunked kernels) instead of holding it in registers.
"""

import triton
import triton.language as tl

GENERAL, SPARSEMAX, ENTMAX15 = 0, 1, 2  # MODE
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _log1p_ratio(w):
    """log(1 + w) / w, 1 at w = 0; w in (-1, 0]. Goldberg's trick: u - 1 is exact, so the ratio is accurate near 0."""
    u = 1.0 + w
    exact_one = u == 1.0
    safe = tl.where(exact_one, 2.0, u)  # keeps the untaken branch finite
    return tl.where(exact_one, 1.0, tl.log(safe) / (safe - 1.0))


@triton.jit
def _row_weights(s, a1, inv_d0, MODE: tl.constexpr):
    """(r, q) elementwise: r = (1 + w)_+^b, q = (1 + w)_+^(b - 1), w = a1 s / d0; a1 and inv_d0 broadcast per row.

    Masked keys (s = -inf) are never in the support."""
    finite = s > float("-inf")
    w = tl.where(finite, tl.where(finite, s, 0.0) * (a1 * inv_d0), -2.0)  # masked keys: no support, never NaN
    support = w > -1.0
    if MODE == 1:  # sparsemax, b = 1
        y = tl.where(support, 1.0 + w, 0.0)
        return y, support.to(s.dtype)
    elif MODE == 2:  # 1.5-entmax, b = 2
        y = tl.where(support, 1.0 + w, 0.0)
        return y * y, y
    else:
        w_safe = tl.where(support, w, -0.5)
        e = tl.where(support, s, 0.0) * inv_d0 * _log1p_ratio(w_safe) * LOG2E  # log2 r <= 0
        r = tl.where(support, tl.exp2(e), 0.0)
        q = tl.where(support, tl.exp2(e * (1.0 - a1)), 0.0)
        return r, q


@triton.jit
def _power(x, exponent, MODE: tl.constexpr):
    """x^exponent for x >= 1 (R^(1 - a1) of the Newton step): 1 for sparsemax, sqrt for 1.5-entmax."""
    if MODE == 1:
        return x * 0.0 + 1.0
    elif MODE == 2:
        return tl.sqrt(x)
    else:
        return tl.exp2(exponent * tl.log2(x))


@triton.jit
def _newton_step(d0, R, Q, a1, live, MODE: tl.constexpr):
    """Newton on G(d0) = d0 R^a1 - 1: (d0 R - R^(1 - a1)) / Q (R, Q >= 1 on live rows); 0 on fully masked rows."""
    R_safe = tl.where(live, R, 1.0)
    step = (d0 * R_safe - _power(R_safe, 1.0 - a1, MODE)) / tl.where(live, Q, 1.0)
    return tl.where(live, step, 0.0)


@triton.jit
def _bound_terms(s, a1, t):
    """(|K|, sum_K a1 s) for K = {a1 s > -t}, per row of the tile."""
    finite = s > float("-inf")
    z = tl.where(finite, tl.where(finite, s, 0.0) * a1, float("-inf"))  # masked keys: never in K, never NaN
    inside = z > -t
    return tl.sum(inside.to(s.dtype), axis=1), tl.sum(tl.where(inside, z, 0.0), axis=1)


@triton.jit
def _start_bound(terms, a1, d0):
    """min(d0, |K|^(-a1) - mean_K(a1 s)) from terms = (|K|, sum_K a1 s): by the power-mean inequality, G >= 0 there
    (tau is below the root), so Newton may start from it. |K| >= 1 on rows with keys (the maximum is in K)."""
    count, total = terms
    k = tl.maximum(count, 1.0)
    return tl.minimum(d0, tl.exp2(-a1 * tl.log2(k)) - total / k)


@triton.jit
def _row_offsets(rows, D1, D2, stride0, stride1, stride2):
    """Offset of each row's element in a tensor read through the strides of the three row dims."""
    i0 = (rows // (D1 * D2)).to(tl.int64)
    i1 = ((rows // D2) % D1).to(tl.int64)
    i2 = (rows % D2).to(tl.int64)
    return i0 * stride0 + i1 * stride1 + i2 * stride2


@triton.jit
def _load_rows(X, MASK, rows, cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK: tl.constexpr,
               F64: tl.constexpr):
    """Scores of a [ROWS, COLS] tile in the compute dtype, -inf where masked or out of range."""
    inside = (rows < n_rows)[:, None] & (cols < n)[None, :]
    x = tl.load(X + rows.to(tl.int64)[:, None] * n + cols[None, :], mask=inside, other=float("-inf"))
    x = x.to(tl.float64) if F64 else x.to(tl.float32)
    masked = (x <= masked_below) | (inside == 0)
    if HAS_MASK:
        flags = tl.load(MASK + mask_rows[:, None] + cols[None, :].to(tl.int64) * stride_mk, mask=inside, other=1)
        masked = masked | (flags != 0)
    return tl.where(masked, float("-inf"), x)


@triton.jit
def _alpha_minus_one(ALPHA, alpha_rows, row_ok, zeros, MODE: tl.constexpr):
    """alpha - 1 per row ([ROWS], the dtype of ``zeros``): 1 for sparsemax, 1/2 for 1.5-entmax, else read through
    the row strides; NaN where alpha is outside [1, 2] (or NaN), so that those rows come out NaN."""
    if MODE == 1:
        return zeros + 1.0
    elif MODE == 2:
        return zeros + 0.5
    else:
        alpha = tl.load(ALPHA + alpha_rows, mask=row_ok, other=1.5).to(zeros.dtype)
        valid = (alpha >= 1.0) & (alpha <= 2.0)
        return tl.where(valid, alpha - 1.0, float("nan"))


@triton.jit
def entmax_fwd(X, P, ALPHA, MASK, ITERS, n_rows, n, D1, D2,
               stride_a0, stride_a1, stride_a2, stride_m0, stride_m1, stride_m2, stride_mk,
               masked_below, tol,
               MODE: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
               COUNT_ITERS: tl.constexpr, MAX_ITER: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Weights of ROWS rows of at most BLOCK keys, each row held in registers."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    row_ok = rows < n_rows
    mask_rows = _row_offsets(rows, D1, D2, stride_m0, stride_m1, stride_m2)
    x = _load_rows(X, MASK, rows, cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK, F64)
    row_max = tl.max(x, axis=1)  # [ROWS]
    live = row_max > float("-inf")  # fully masked rows give zeros
    s = x - tl.where(live, row_max, 0.0)[:, None]  # [ROWS, BLOCK], <= 0
    alpha_rows = _row_offsets(rows, D1, D2, stride_a0, stride_a1, stride_a2)
    a1 = _alpha_minus_one(ALPHA, alpha_rows, row_ok, rows.to(x.dtype) * 0.0, MODE)
    solve = live & (a1 == a1)  # rows with keys and a valid alpha
    d0 = rows.to(x.dtype) * 0.0 + 1.0  # tau = -1: the classic bound
    d0 = _start_bound(_bound_terms(s, a1[:, None], 0.125), a1, d0)
    d0 = _start_bound(_bound_terms(s, a1[:, None], 0.25), a1, d0)
    d0 = _start_bound(_bound_terms(s, a1[:, None], 0.5), a1, d0)
    d0 = tl.where(solve, d0, 1.0)
    err = tl.max(d0, axis=0) * 0.0 + 1.0  # a scalar of the compute dtype
    steps = 0
    while (err > tol) & (steps < MAX_ITER):
        r, q = _row_weights(s, a1[:, None], (1.0 / d0)[:, None], MODE)
        step = _newton_step(d0, tl.sum(r, axis=1), tl.sum(q, axis=1), a1, solve, MODE)
        d0 = d0 - step
        err = tl.max(tl.abs(step) / d0, axis=0)
        steps += 1
    r, q = _row_weights(s, a1[:, None], (1.0 / d0)[:, None], MODE)
    R = tl.sum(r, axis=1)
    p = tl.where(live[:, None], r / tl.where(live, R, 1.0)[:, None], 0.0)
    p = tl.where((a1 == a1)[:, None], p, float("nan"))  # alpha outside [1, 2]: NaN, never silent numbers
    inside = row_ok[:, None] & (cols < n)[None, :]
    tl.store(P + rows.to(tl.int64)[:, None] * n + cols[None, :], p.to(P.dtype.element_ty), mask=inside)
    if COUNT_ITERS:
        tl.store(ITERS + rows, rows * 0 + steps, mask=row_ok)


@triton.jit
def _chunked_sums(X, MASK, rows, cols, n, n_rows, mask_rows, stride_mk, masked_below, shift, a1, d0, zeros,
                  HAS_MASK: tl.constexpr, F64: tl.constexpr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    """(R, Q) of a long row at d0, one chunk of BLOCK keys at a time."""
    R = zeros
    Q = zeros
    for start in range(0, n, BLOCK):
        s = _load_rows(X, MASK, rows, start + cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK,
                       F64) - shift
        r, q = _row_weights(s, a1[:, None], (1.0 / d0)[:, None], MODE)
        R += tl.sum(r, axis=1)
        Q += tl.sum(q, axis=1)
    return R, Q


@triton.jit
def entmax_fwd_chunked(X, P, ALPHA, MASK, ITERS, n_rows, n, D1, D2,
                       stride_a0, stride_a1, stride_a2, stride_m0, stride_m1, stride_m2, stride_mk,
                       masked_below, tol,
                       MODE: tl.constexpr, HAS_MASK: tl.constexpr, F64: tl.constexpr,
                       COUNT_ITERS: tl.constexpr, MAX_ITER: tl.constexpr, ROWS: tl.constexpr,
                       BLOCK: tl.constexpr):
    """:func:`entmax_fwd` for one row longer than a tile: each pass loops over chunks of BLOCK keys."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [1]
    cols = tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    mask_rows = _row_offsets(rows, D1, D2, stride_m0, stride_m1, stride_m2)
    row_max = tl.max(_load_rows(X, MASK, rows, cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK,
                                F64), axis=1)
    for start in range(BLOCK, n, BLOCK):
        chunk = _load_rows(X, MASK, rows, start + cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK,
                           F64)
        row_max = tl.maximum(row_max, tl.max(chunk, axis=1))
    live = row_max > float("-inf")
    shift = tl.where(live, row_max, 0.0)[:, None]
    alpha_rows = _row_offsets(rows, D1, D2, stride_a0, stride_a1, stride_a2)
    zeros = rows.to(row_max.dtype) * 0.0
    a1 = _alpha_minus_one(ALPHA, alpha_rows, row_ok, zeros, MODE)
    solve = live & (a1 == a1)
    c0, c1, c2, t0, t1, t2 = zeros, zeros, zeros, zeros, zeros, zeros
    for start in range(0, n, BLOCK):
        s = _load_rows(X, MASK, rows, start + cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK,
                       F64) - shift
        count, total = _bound_terms(s, a1[:, None], 0.125)
        c0, t0 = c0 + count, t0 + total
        count, total = _bound_terms(s, a1[:, None], 0.25)
        c1, t1 = c1 + count, t1 + total
        count, total = _bound_terms(s, a1[:, None], 0.5)
        c2, t2 = c2 + count, t2 + total
    d0 = _start_bound((c2, t2), a1, _start_bound((c1, t1), a1, _start_bound((c0, t0), a1, zeros + 1.0)))
    d0 = tl.where(solve, d0, 1.0)
    err = tl.max(d0, axis=0) * 0.0 + 1.0
    steps = 0
    while (err > tol) & (steps < MAX_ITER):
        R, Q = _chunked_sums(X, MASK, rows, cols, n, n_rows, mask_rows, stride_mk, masked_below, shift, a1, d0,
                             zeros, HAS_MASK, F64, MODE, BLOCK)
        step = _newton_step(d0, R, Q, a1, solve, MODE)
        d0 = d0 - step
        err = tl.max(tl.abs(step) / d0, axis=0)
        steps += 1
    R, _ = _chunked_sums(X, MASK, rows, cols, n, n_rows, mask_rows, stride_mk, masked_below, shift, a1, d0, zeros,
                         HAS_MASK, F64, MODE, BLOCK)
    scale = tl.where(live, 1.0 / tl.where(live, R, 1.0), 0.0)
    scale = tl.where(a1 == a1, scale, float("nan"))  # alpha outside [1, 2]: NaN
    for start in range(0, n, BLOCK):
        s = _load_rows(X, MASK, rows, start + cols, n, n_rows, mask_rows, stride_mk, masked_below, HAS_MASK,
                       F64) - shift
        r, q = _row_weights(s, a1[:, None], (1.0 / d0)[:, None], MODE)
        inside = row_ok[:, None] & (start + cols < n)[None, :]
        tl.store(P + rows.to(tl.int64)[:, None] * n + (start + cols)[None, :],
                 (r * scale[:, None]).to(P.dtype.element_ty), mask=inside)
    if COUNT_ITERS:
        tl.store(ITERS + rows, rows * 0 + steps, mask=row_ok)


@triton.jit
def _support_powers(p, a1, MODE: tl.constexpr):
    """u = p^(2 - alpha) = p^(1 - a1) on the support (p > 0), else 0."""
    if MODE == 1:
        return (p > 0.0).to(p.dtype)
    elif MODE == 2:
        return tl.sqrt(p)
    else:
        positive = p > 0.0
        return tl.where(positive, tl.exp2((1.0 - a1) * tl.log2(tl.where(positive, p, 1.0))), 0.0)


@triton.jit
def _load_tile(PTR, rows, cols, n, n_rows, F64: tl.constexpr):
    inside = (rows < n_rows)[:, None] & (cols < n)[None, :]
    x = tl.load(PTR + rows.to(tl.int64)[:, None] * n + cols[None, :], mask=inside, other=0.0)
    return x.to(tl.float64) if F64 else x.to(tl.float32)


@triton.jit
def _phi2(x):
    """(e^x - 1 - x) / x^2 for x >= 0: Taylor's polynomial below 1/2 (float64-accurate, no cancellation), else
    directly."""
    small = x < 0.5
    t = tl.where(small, x, 0.0)
    poly = 1.0 / 87178291200.0
    poly = poly * t + 1.0 / 6227020800.0
    poly = poly * t + 1.0 / 479001600.0
    poly = poly * t + 1.0 / 39916800.0
    poly = poly * t + 1.0 / 3628800.0
    poly = poly * t + 1.0 / 362880.0
    poly = poly * t + 1.0 / 40320.0
    poly = poly * t + 1.0 / 5040.0
    poly = poly * t + 1.0 / 720.0
    poly = poly * t + 1.0 / 120.0
    poly = poly * t + 1.0 / 24.0
    poly = poly * t + 1.0 / 6.0
    poly = poly * t + 0.5
    big = tl.where(small, 1.0, x)
    return tl.where(small, poly, (tl.exp(big) - 1.0 - big) / (big * big))


@triton.jit
def _alpha_terms(g, p, a1):
    """The five per-row sums of the alpha gradient (see _alpha_grad): g.p, g.h, g.(p nu), sum h, sum p nu, with
    h = p eta, eta = -log p, p nu = p eta^2 phi2(a1 eta); 0 off the support."""
    positive = p > 0.0
    eta = -tl.log(tl.where(positive, p, 1.0))
    h = p * eta
    p_nu = h * eta * _phi2(a1 * eta)
    return (tl.sum(g * p, axis=1), tl.sum(g * h, axis=1), tl.sum(g * p_nu, axis=1), tl.sum(h, axis=1),
            tl.sum(p_nu, axis=1))


@triton.jit
def _alpha_grad(Gp, Geta, Gnu, H, N, a1):
    """sum_i g_i dp_i/dalpha per row, in a form without cancellation near alpha = 1.

    The textbook (p - pt) / a1^2 + (h - pt H) / a1, pt = u / sum u, loses 1/a1^2 of the precision: with
    e = expm1(a1 eta) = a1 eta + a1^2 nu one has u = p (1 + e), sum u = 1 + E with E = a1 H + a1^2 N, and the 1/a1
    terms cancel exactly, leaving dp_i/dalpha = p_i [(N - nu_i) + a1 (eta_i N - nu_i H)] / (1 + E). (Float32 error
    measured at alpha 1.001: 2e-8 relative, against 8e-3 for the textbook form; from bf16 weights 5e-4 against
    28x.) 0 where alpha is 1 (softmax rows, as the reference) or the row is empty."""
    E = a1 * H + a1 * a1 * N
    return tl.where(a1 > 0.0, (N * Gp - Gnu + a1 * (N * Geta - H * Gnu)) / (1.0 + E), 0.0)


@triton.jit
def entmax_bwd(G, P, ALPHA, DX, DALPHA, n_rows, n, D1, D2, stride_a0, stride_a1, stride_a2,
               MODE: tl.constexpr, ALPHA_GRAD: tl.constexpr, F64: tl.constexpr,
               ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Gradients for the scores (and per row for alpha) of ROWS rows held in registers."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    g = _load_tile(G, rows, cols, n, n_rows, F64)
    p = _load_tile(P, rows, cols, n, n_rows, F64)
    alpha_rows = _row_offsets(rows, D1, D2, stride_a0, stride_a1, stride_a2)
    a1 = _alpha_minus_one(ALPHA, alpha_rows, row_ok, rows.to(p.dtype) * 0.0, MODE)
    u = _support_powers(p, a1[:, None], MODE)
    gbar = tl.sum(u * g, axis=1) / tl.maximum(tl.sum(u, axis=1), 1e-30)
    dx = u * (g - gbar[:, None])
    inside = row_ok[:, None] & (cols < n)[None, :]
    tl.store(DX + rows.to(tl.int64)[:, None] * n + cols[None, :], dx.to(DX.dtype.element_ty), mask=inside)
    if ALPHA_GRAD:
        Gp, Geta, Gnu, H, N = _alpha_terms(g, p, a1[:, None])
        tl.store(DALPHA + rows, _alpha_grad(Gp, Geta, Gnu, H, N, a1), mask=row_ok)


@triton.jit
def entmax_bwd_chunked(G, P, ALPHA, DX, DALPHA, n_rows, n, D1, D2, stride_a0, stride_a1, stride_a2,
                       MODE: tl.constexpr, ALPHA_GRAD: tl.constexpr,
                       F64: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """:func:`entmax_bwd` for one long row: a pass for the row sums, a pass writing the gradient."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    zeros = rows.to(tl.float64 if F64 else tl.float32) * 0.0
    alpha_rows = _row_offsets(rows, D1, D2, stride_a0, stride_a1, stride_a2)
    a1 = _alpha_minus_one(ALPHA, alpha_rows, row_ok, zeros, MODE)
    su, sug = zeros, zeros
    Gp, Geta, Gnu, H, N = zeros, zeros, zeros, zeros, zeros
    for start in range(0, n, BLOCK):
        g = _load_tile(G, rows, start + cols, n, n_rows, F64)
        p = _load_tile(P, rows, start + cols, n, n_rows, F64)
        u = _support_powers(p, a1[:, None], MODE)
        su += tl.sum(u, axis=1)
        sug += tl.sum(u * g, axis=1)
        if ALPHA_GRAD:
            terms = _alpha_terms(g, p, a1[:, None])
            Gp, Geta, Gnu, H, N = Gp + terms[0], Geta + terms[1], Gnu + terms[2], H + terms[3], N + terms[4]
    gbar = sug / tl.maximum(su, 1e-30)
    for start in range(0, n, BLOCK):
        g = _load_tile(G, rows, start + cols, n, n_rows, F64)
        p = _load_tile(P, rows, start + cols, n, n_rows, F64)
        u = _support_powers(p, a1[:, None], MODE)
        inside = row_ok[:, None] & (start + cols < n)[None, :]
        tl.store(DX + rows.to(tl.int64)[:, None] * n + (start + cols)[None, :],
                 (u * (g - gbar[:, None])).to(DX.dtype.element_ty), mask=inside)
    if ALPHA_GRAD:
        tl.store(DALPHA + rows, _alpha_grad(Gp, Geta, Gnu, H, N, a1), mask=row_ok)
