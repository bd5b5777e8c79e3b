"""Threshold solver shared by sparsemax, 1.5-entmax and alpha-entmax (Correia et al., EMNLP 2019, section 3).

After shifting each row so its maximum is 0 and scaling by (alpha - 1), the weights are p_i = (z_i - tau)_+ ^ b with
b = 1 / (alpha - 1), and tau in [-1, 0) solves sum_i p_i = 1. We run Newton's method on

    G(tau) = (sum_i (z_i - tau)_+ ^ b) ^ (1 / b) - 1,

the b-norm of (z - tau)_+ minus one. G is convex and decreasing in tau (a norm of convex non-negative functions), so
Newton started at the lower bracket tau = -1 (where G >= 0) increases monotonically to the root, never overshooting.
Unlike Newton on sum_i p_i - 1 (which for alpha near 1 behaves like x^100 and needs ~log(d) damped steps), G is exactly
linear when the support is fixed and all entries tie, so 3-6 full-row passes reach float32 precision for any alpha in
(1, 2] and any row length; sparsemax (b = 1, G piecewise linear) terminates exactly once the support stops changing.
The weights are finally divided by their sum, so rows sum to 1 to rounding.
"""

from __future__ import annotations

import torch

# (tolerance on |sum p - 1|, maximum Newton steps) per compute dtype. The bound on steps is a safety net: measured
# worst cases are 6 steps (float32) and 8 steps (float64) on rows of up to 4096 keys, logits up to 1e4.
_SOLVER_SETTINGS = {torch.float32: (2e-6, 30), torch.float64: (1e-13, 50)}


def _moments(d: torch.Tensor, b: torch.Tensor | float, u: torch.Tensor | None):
    """S = sum_i d_i^b and T = sum_i d_i^(b-1) over the support d_i > 0; returns (S, T, u) with u = d^(b-1) or None.

    ``u`` (a full-size buffer, reused across steps) is only materialised for general b; b = 1 and b = 2 need none.
    """
    if isinstance(b, float) and b == 1.0:  # sparsemax: S = sum d, T = |support|
        return d.sum(-1, keepdim=True), (d > 0).sum(-1, keepdim=True, dtype=d.dtype), None
    if isinstance(b, float) and b == 2.0:  # 1.5-entmax: S = sum d^2, T = sum d
        return torch.linalg.vecdot(d, d).unsqueeze(-1), d.sum(-1, keepdim=True), None
    u = torch.pow(d, b - 1.0, out=u) if u is not None else torch.pow(d, b - 1.0)  # (..., n)
    if isinstance(b, torch.Tensor) and bool((b == 1.0).any()):
        u.mul_(d > 0)  # pow(0, 0) = 1 would count entries outside the support of alpha = 2 rows
    return torch.linalg.vecdot(u, d).unsqueeze(-1), u.sum(-1, keepdim=True), u


def solve_threshold(z: torch.Tensor, b: torch.Tensor | float):
    """Newton on G(tau) from tau = -1 for rows z (max 0, scaled by alpha - 1). Overwrites nothing in ``z``.

    Args:
        z: (..., n) float32 or float64, row maximum 0 (fully masked rows: all -inf or hugely negative).
        b: 1 / (alpha - 1), a float or a tensor of shape (..., 1).

    Returns:
        (d, S, u): d = (z - tau)_+ at the final tau, S = sum_i d_i^b (0 for fully masked rows) and u = d^(b-1) for
        general b (None when b is 1.0 or 2.0).
    """
    tol, max_steps = _SOLVER_SETTINGS[z.dtype]
    inv_b = 1.0 / b
    tau = z.new_full(z.shape[:-1] + (1,), -1.0)  # (..., 1)
    d, u = torch.empty_like(z), None
    for _ in range(max_steps):
        torch.sub(z, tau, out=d).clamp_min_(0.0)  # (..., n)
        S, T, u = _moments(d, b, u)
        residual = (S - 1.0).abs_()
        residual.masked_fill_(S == 0, 0.0)  # fully masked rows have nothing to solve
        if residual.numel() == 0 or float(residual.max()) <= tol:
            break
        # Newton on G: tau += G / -G' = (S^(1/b) - 1) * S^(1 - 1/b) / T = (S - S^(1 - 1/b)) / T.
        tau.add_((S - S.pow(1.0 - inv_b)).div_(T.clamp_min_(torch.finfo(z.dtype).tiny)))
    return d, S, u
