"""Threshold solver shared by sparsemax, 1.5-entmax and alpha-entmax (Correia et al., EMNLP 2019, section 3).

After shifting each row so its maximum is 0 and scaling by (alpha - 1), the weights are p_i = (z_i - tau)_+ ^ b with
b = 1 / (alpha - 1), and tau in [-1, 0) solves sum_i p_i = 1. We run Newton's method on

    G(tau) = (sum_i (z_i - tau)_+ ^ b) ^ (1 / b) - 1,

the b-norm of (z - tau)_+ minus one. G is convex and decreasing in tau (a norm of convex non-negative functions), so
Newton started at the lower bracket tau = -1 (where G >= 0) increases monotonically to the root, never overshooting.
Unlike Newton on sum_i p_i - 1 (which for alpha near 1 behaves like x^100 and needs ~log(d) damped steps), G is exactly
linear while the support is fixed and tied, so 3-6 passes reach float32 precision for any alpha in (1, 2] and any row
length; sparsemax (b = 1, G piecewise linear) is the exact active-set iteration.

Cost control (on the CPU, where reading the residuals is free; elsewhere every row takes FIXED_STEPS steps): a row
whose residual |sum p - 1| is below a loose bound takes one last Newton step and leaves the working
set (quadratic convergence puts it at the float precision); only unfinished rows are recomputed, in two scratch
buffers allocated once. One final full pass evaluates every row at its last tau exactly; rows that still miss the
strict tolerance (rare) are iterated to it separately. For general b, Newton steps compute d^(b-1) as
exp((b-1) log d) on d clamped at a small floor, 4x cheaper than pow and clear of the slow CPU paths for log(0) and
underflowing exp.
"""

from __future__ import annotations

import torch

from sparse_attn_fairseq.functional.host import reads_are_free

# Per compute dtype: strict tolerance on |sum p - 1|, loose bound after which one more step suffices, max steps.
_SETTINGS = {torch.float32: (2e-6, 1e-3, 40), torch.float64: (1e-13, 1e-7, 60)}
# Where reading is not free (a GPU), every row takes this many steps with no convergence test (which would
# synchronise). On the worst rows of tests/functional/test_entmax.py::test_fixed_step_solver_on_the_worst_rows
# (alpha 1.001-2, ties, logits up to 1e4, 1-16384 keys) 8 steps reach the tolerances in float32 and float64.
FIXED_STEPS = {torch.float32: 12, torch.float64: 12}
# Working set is compacted (rows gathered) once it falls below this fraction of the rows it was gathered from.
_COMPACT_BELOW = 0.8
# Problems of at most this many entries iterate on all rows: per-op overhead dominates there (one decoding step's
# rows), and gathering a working set costs more passes than it saves.
_DENSE_MAX_ENTRIES = 1 << 15


def dot_last(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_i a_i b_i over the last dim as a batched matrix product (no full-size temporary); (..., 1)."""
    return torch.matmul(a.unsqueeze(-2), b.unsqueeze(-1)).squeeze(-1)


def _special(b) -> bool:
    """b = 1 (sparsemax) or b = 2 (1.5-entmax): moments without any power."""
    return isinstance(b, float) and b in (1.0, 2.0)


def _floor(b, dtype: torch.dtype):
    """Per-row floor f = max(exp(-69 / b), exp(-80 / (b - 1))) for the Newton-step evaluation.

    Clamping d at f instead of 0 keeps every number normal: log never sees 0, exp((b-1) log f) >= e^-80 never
    underflows, and f^b >= e^-69 ~ 1e-30 never goes subnormal in the product u * d. Both slow paths cost 10-40x a
    normal element on CPU (a subnormal in the S = u . d matmul made a step 30x slower). An entry below f adds at most
    e^-69 to S, negligible; its share of T is handled by _step_constants.
    """
    if isinstance(b, float):
        exponent = max(-69.0 / b, -80.0 / (b - 1.0) if b > 1.0 else float("-inf"))
        return float(torch.tensor(exponent, dtype=torch.float64).exp())
    return torch.maximum(-69.0 / b, -80.0 / (b - 1.0)).exp_().to(dtype)  # (rows, 1); b = 1 gives exp(-69)


def _clamp_floor(d: torch.Tensor, floor, out: torch.Tensor) -> torch.Tensor:
    """max(d, floor) written into ``out`` (which may be d)."""
    return torch.clamp_min(d, floor, out=out) if isinstance(floor, float) else torch.maximum(d, floor, out=out)


def _step_constants(b, dtype: torch.dtype, n: int, exact: bool = False):
    """Per-row constants of the floor-clamped step evaluation, computed once per solve: (floor, c, correct).

    c = floor^(b-1) is what each entry at the floor adds to T; ``correct`` says whether n c can exceed 5% of T
    (T >= 1; alpha above about 1.88 for n = 256), in which case the count of floor entries is subtracted. Otherwise
    the overestimated T only shortens the step: Newton stays below the root. ``exact`` always corrects (no host read).
    """
    if _special(b):
        return None
    floor = _floor(b, dtype)
    c = floor ** (b - 1.0)  # float or (rows, 1)
    correct = exact or (n * c > 0.05 if isinstance(c, float) else bool((n * c > 0.05).any()))
    return floor, c, correct


def _step_moments(z, tau, b, d: torch.Tensor, u: torch.Tensor | None, consts):
    """(S, T) at tau for a Newton step, using the scratch views d and u (same shape as z).

    General b: d is clamped at the floor instead of 0 (see _floor and _step_constants).
    """
    torch.sub(z, tau, out=d)
    if consts is None:  # b = 1 or b = 2: exact, no power
        d.clamp_min_(0.0)
        if b == 2.0:  # S = sum d^2, T = sum d
            return dot_last(d, d), d.sum(-1, keepdim=True)
        return d.sum(-1, keepdim=True), torch.sign(d, out=u).sum(-1, keepdim=True)  # S = sum d, T = |support|
    floor, c, correct = consts
    _clamp_floor(d, floor, out=d)
    torch.log(d, out=u).mul_(b - 1.0).exp_()  # u = d^(b-1)
    S, T = dot_last(u, d), u.sum(-1, keepdim=True)
    if correct:
        at_floor = d.shape[-1] - torch.sub(d, floor, out=u).sign_().sum(-1, keepdim=True)  # (rows, 1)
        T = (T - at_floor * c).clamp_min_(0.0)
    return S, T


def _exact_moments(z, tau, b, d: torch.Tensor, u: torch.Tensor | None):
    """Exact d = (z - tau)_+ (written into d) and S = sum d^b; u = d^(b-1) (written into u; None for b = 2).

    General b: u is exp((b-1) log max(d, floor)), so off the support it still holds floor^(b-1); the caller zeroes
    it with :func:`_zero_off_support` (bool masks are avoided: masked_fill / where cost ~15x a float pass on CPU).
    """
    torch.sub(z, tau, out=d).clamp_min_(0.0)
    if _special(b):  # sparsemax: u = d^0 is the support indicator, kept for backward
        return (dot_last(d, d), None) if b == 2.0 else (d.sum(-1, keepdim=True), torch.sign(d, out=u))
    _clamp_floor(d, _floor(b, z.dtype), out=u).log_().mul_(b - 1.0).exp_()
    return dot_last(u, d), u


def _zero_off_support(u: torch.Tensor, d: torch.Tensor, scratch: torch.Tensor) -> None:
    """u *= sign(d): exact zeros where d = 0, using ``scratch`` (same shape) for the indicator."""
    u.mul_(torch.sign(d, out=scratch))


def _newton_power(b):
    """1 - 1/b, the exponent of a Newton step (computed once per solve)."""
    return 1.0 - 1.0 / b


def _newton_step(S: torch.Tensor, T: torch.Tensor, power, empty: torch.Tensor) -> torch.Tensor:
    """Newton on G: tau += G / -G' = (S^(1/b) - 1) S^(1 - 1/b) / T = (S - S^power) / T; 0 for empty rows."""
    step = (S - S.pow(power)).div_(T.clamp_min(torch.finfo(S.dtype).tiny))
    return step.masked_fill_(empty, 0.0)


def _empty(S: torch.Tensor) -> torch.Tensor:
    """Fully masked rows: any other row has S >= 1 at every iterate (tau <= root); a fully masked row has S = 0, or
    at most n e^-80 in the floor-clamped evaluation."""
    return S < 0.5


def _residual(S: torch.Tensor, empty: torch.Tensor | None = None) -> torch.Tensor:
    """|S - 1|, 0 for fully masked rows (nothing to solve); ``empty`` is _empty(S) if already computed."""
    return (S - 1.0).abs_().masked_fill_(_empty(S) if empty is None else empty, 0.0)


def _take(b, idx: torch.Tensor):
    """Rows ``idx`` of a per-row exponent (a float is shared by all rows)."""
    return b[idx] if isinstance(b, torch.Tensor) and b.shape[0] > 1 else b


def _iterate(z, tau, b, stop: float, max_steps: int, d_buf, u_buf) -> None:
    """Newton steps on rows of z until |S - 1| <= stop, updating tau in place; finished rows leave the working set.

    A row leaves after the step taken at its first residual <= stop, so it ends one step past that residual.
    d_buf and u_buf are scratch buffers with at least as many rows as z.
    """
    consts, power = _step_constants(b, z.dtype, z.shape[-1]), _newton_power(b)
    if z.numel() <= _DENSE_MAX_ENTRIES:
        return _iterate_dense(z, tau, b, stop, max_steps, d_buf, u_buf, consts, power)
    idx = None  # (active,) rows of z in the working set once it has been compacted; None: all rows, in order
    zs, bs, ts = z, b, tau
    for _ in range(max_steps):
        m = zs.shape[0]
        S, T = _step_moments(zs, ts, bs, d_buf[:m], None if u_buf is None else u_buf[:m], consts)
        empty = _empty(S)
        ts.add_(_newton_step(S, T, power, empty))
        if idx is not None:
            tau.index_copy_(0, idx, ts)
        keep = (_residual(S, empty) > stop).squeeze(-1)  # (active,)
        n_keep = int(keep.sum())
        if n_keep == 0:
            return
        if n_keep < _COMPACT_BELOW * m:
            sel = keep.nonzero().squeeze(-1)  # (n_keep,) positions within the working set
            idx = sel if idx is None else idx[sel]
            zs, ts, bs, power = zs[sel], ts[sel], _take(bs, sel), _take(power, sel)
            if consts is not None:
                consts = (_take(consts[0], sel), _take(consts[1], sel), consts[2])


def _iterate_dense(z, tau, b, stop: float, max_steps: int, d, u, consts, power) -> None:
    """:func:`_iterate` on every row until all residuals are <= stop (rows past their root stay there: a Newton step
    from the root is 0 up to rounding)."""
    for _ in range(max_steps):
        S, T = _step_moments(z, tau, b, d, u, consts)
        empty = _empty(S)
        tau.add_(_newton_step(S, T, power, empty))
        if float(_residual(S, empty).max()) <= stop:
            return


def _iterate_fixed(z, tau, b, steps: int, d, u) -> None:
    """``steps`` Newton steps on every row, with no convergence test: the sync-free form of :func:`_iterate`."""
    consts, power = _step_constants(b, z.dtype, z.shape[-1], exact=True), _newton_power(b)
    for _ in range(steps):
        S, T = _step_moments(z, tau, b, d, u, consts)
        tau.add_(_newton_step(S, T, power, _empty(S)))


def solve_threshold(z: torch.Tensor, b):
    """Find tau with sum_i (z_i - tau)_+^b = 1 per row of z; ``z`` is used as scratch at the end (overwritten).

    Args:
        z: (..., n) float32 or float64, row maximum 0 (fully masked rows: all -inf or hugely negative).
        b: 1 / (alpha - 1): a float, or a tensor broadcastable to z.shape[:-1] + (1,).

    Returns:
        (d, S, u) at the final tau: d = (z - tau)_+ of z's shape, S = sum_i d_i^b of shape (..., 1) (0 for fully
        masked rows), u = d^(b-1) (the support indicator for b = 1; None for b = 2). d and u are fresh tensors.
    """
    tol, loose, max_steps = _SETTINGS[z.dtype]
    shape = z.shape
    rows = z.reshape(-1, shape[-1])  # (rows, n)
    b_rows = b.expand(shape[:-1] + (1,)).reshape(-1, 1) if isinstance(b, torch.Tensor) else b  # (rows, 1)
    tau = rows.new_full((rows.shape[0], 1), -1.0)  # (rows, 1)
    d = torch.empty_like(rows)  # scratch, then the results; 1.5-entmax needs no second buffer
    u = None if isinstance(b, float) and b == 2.0 else torch.empty_like(rows)
    free = reads_are_free(z)
    if free:
        _iterate(rows, tau, b_rows, loose, max_steps, d, u)
    else:
        _iterate_fixed(rows, tau, b_rows, FIXED_STEPS[z.dtype], d, u)
    S, u = _exact_moments(rows, tau, b_rows, d, u)
    if free:
        late = (_residual(S) > tol).squeeze(-1).nonzero().squeeze(-1)  # (n_late,) rows that missed the tolerance
        if late.numel():
            _finish_late_rows(rows, tau, b_rows, late, (d, S, u), tol, max_steps)
    if not _special(b):
        _zero_off_support(u, d, scratch=rows)  # z is no longer needed: reuse it
    return d.view(shape), S.view(shape[:-1] + (1,)), None if u is None else u.view(shape)


def _finish_late_rows(rows, tau, b_rows, late, outputs, tol: float, max_steps: int) -> None:
    """Fallback: iterate the rows in ``late`` to the strict tolerance and overwrite their (d, S, u) in place."""
    b_late, tau_late, z_late = _take(b_rows, late), tau[late], rows[late]
    scratch = torch.empty_like(z_late), None if outputs[2] is None and b_late == 2.0 else torch.empty_like(z_late)
    _iterate(z_late, tau_late, b_late, tol, max_steps, *scratch)
    S_late, u_late = _exact_moments(z_late, tau_late, b_late, *scratch)
    for full, part in zip(outputs, (scratch[0], S_late, u_late)):
        if full is not None:
            full.index_copy_(0, late, part)
