"""Autograd Functions for the entmax family, with closed-form backward (Correia et al., EMNLP 2019, section 3).

The solver's iterations are never differentiated. On the support, with u_i = p_i^(2 - alpha) (u = 1 for sparsemax,
u = sqrt(p) for 1.5-entmax), dL/dz = u * (g - sum(u g) / sum(u)), and for a learned alpha
dp_i/dalpha = (p_i - pt_i) / (alpha - 1)^2 + (h_i - pt_i sum_j h_j) / (alpha - 1), pt = u / sum(u), h = -p log p.
Every Function works on the last dimension in float32 (float64 stays float64) and returns float32 weights.
"""

from __future__ import annotations

import torch

from sparse_attn_fairseq.functional._threshold import dot_last, solve_threshold
from sparse_attn_fairseq.functional.masking import compute_dtype, dead_rows, fill_masked


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _scaled_rows(scores: torch.Tensor, mask: torch.Tensor | None, alpha_minus_one) -> torch.Tensor:
    """z = (alpha - 1) * (scores - row max), masked entries -inf, as a fresh compute-dtype tensor.

    Shifting before scaling keeps logits of magnitude 1e4 exact in float32. Fully masked rows are shifted by 0.
    """
    x = fill_masked(scores.to(compute_dtype(scores.dtype)), mask)  # (..., n); no copy for float32 without mask
    row_max = x.amax(dim=-1, keepdim=True)  # (..., 1)
    z = x - row_max.masked_fill_(dead_rows(row_max, scores.dtype), 0.0)  # (..., n) fresh
    if not (isinstance(alpha_minus_one, float) and alpha_minus_one == 1.0):
        z.mul_(alpha_minus_one)
    return z


def support_mean(u: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """g_bar = sum(u g) / sum(u) per row, (..., 1); 0 for a row with empty support (fully masked), not 0/0."""
    u_sum = u.sum(-1, keepdim=True).clamp_min_(_tiny(u))  # (..., 1)
    return dot_last(u, grad).div_(u_sum)


def support_grad(u: torch.Tensor, grad: torch.Tensor, g_bar: torch.Tensor | None = None) -> torch.Tensor:
    """dL/dz = u * (g - g_bar): the one backward of the whole entmax family (u = p^(2 - alpha))."""
    g_bar = support_mean(u, grad) if g_bar is None else g_bar
    return (grad - g_bar).mul_(u)


class SparsemaxFunction(torch.autograd.Function):
    """sparsemax(z) = argmin_{p in simplex} ||p - z||^2 (Martins & Astudillo, 2016); forward(scores, mask) -> (p, s).

    s = sign(p), the support indicator (u = p^0), is a by-product of the solver kept for backward.
    """

    @staticmethod
    def forward(scores: torch.Tensor, mask: torch.Tensor | None):
        d, total, support = solve_threshold(_scaled_rows(scores, mask, 1.0), 1.0)
        return d.div_(total.clamp_min_(_tiny(d))), support  # (..., n) twice

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad, _grad_support):
        (support,) = ctx.saved_tensors
        return support_grad(support, grad), None


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax (Peters, Niculae, Martins, ACL 2019): p = ((z / 2 - tau)_+)^2; forward(scores, mask) -> (p, u).

    u = sqrt(p) = (z / 2 - tau)_+ is kept for backward: recomputing it as p.sqrt() costs 20x more than a pass, because
    sqrt of the many exact zeros takes a slow path on CPU.
    """

    @staticmethod
    def forward(scores: torch.Tensor, mask: torch.Tensor | None):
        d, total, _ = solve_threshold(_scaled_rows(scores, mask, 0.5), 2.0)
        u = d.mul_(total.clamp_min_(_tiny(d)).rsqrt_())  # (..., n), normalised so that sum u^2 = 1
        return u * u, u

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad, _grad_u):
        (u,) = ctx.saved_tensors
        return support_grad(u, grad), None


class EntmaxAlphaFunction(torch.autograd.Function):
    """alpha-entmax p = ((alpha - 1) z - tau)_+^(1 / (alpha - 1)) for 1 < alpha <= 2.

    forward(scores, alpha, mask) -> (p, u): alpha is a float or a tensor broadcastable to scores.shape[:-1] + (1,)
    (already validated, in the compute dtype); u = p^(2 - alpha) is a non-differentiable by-product kept for backward.
    """

    @staticmethod
    def forward(scores, alpha, mask):
        alpha_minus_one = alpha - 1.0
        d, total, u = solve_threshold(_scaled_rows(scores, mask, alpha_minus_one), 1.0 / alpha_minus_one)
        return d.mul_(u).div_(total.clamp_min_(_tiny(d))), u  # (..., n) twice

    @staticmethod
    def setup_context(ctx, inputs, output):
        p, u = output
        ctx.mark_non_differentiable(u)
        alpha = inputs[1]
        ctx.save_for_backward(p, u, alpha if isinstance(alpha, torch.Tensor) else None)

    @staticmethod
    def backward(ctx, grad, _grad_u):
        p, u, alpha = ctx.saved_tensors
        g_bar = support_mean(u, grad)  # (..., 1)
        buf = torch.empty_like(grad)  # scratch for p log p, then the scores gradient: one full-size allocation
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            grad_alpha = _alpha_grad(p, grad, g_bar, alpha, buf).sum_to_size(alpha.shape)
        grad_scores = torch.sub(grad, g_bar, out=buf).mul_(u) if ctx.needs_input_grad[0] else None
        return grad_scores, grad_alpha, None


def _alpha_grad(p, grad, g_bar, alpha, buf):
    """Per-row sum_i g_i dp_i/dalpha = (sum g p - g_bar) / (a-1)^2 + (sum g h - g_bar sum h) / (a-1); (..., 1).

    h = -p log p is computed in ``buf`` (log of a clamped p: log(0) takes a ~30x slow path on CPU).
    """
    alpha_minus_one = alpha - 1.0
    p_log_p = torch.clamp_min(p, _tiny(p), out=buf).log_().mul_(p)  # (..., n) = -h, 0 where p = 0
    g_p = dot_last(grad, p)  # (..., 1)
    g_h = dot_last(grad, p_log_p).neg_()  # (..., 1)
    h_sum = p_log_p.sum(-1, keepdim=True).neg_()  # (..., 1)
    return (g_p - g_bar) / alpha_minus_one**2 + (g_h - g_bar * h_sum) / alpha_minus_one
