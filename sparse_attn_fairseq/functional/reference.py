"""Float64 naive reference implementations, used by the tests as oracles (slow; never used in models).

Each one follows the textbook algorithm: bisection on the threshold for alpha-entmax (Blondel et al., AISTATS 2019),
sort-based sparsemax (Martins & Astudillo, ICML 2016) and 1.5-entmax (Peters et al., ACL 2019), explicit loops for the
adaptive-span mask (Sukhbaatar et al., ACL 2019). Masked entries give 0; fully masked rows give zeros.
"""

from __future__ import annotations

import torch

from sparse_attn_fairseq.functional.masking import masked_score_threshold


def _prepare(scores: torch.Tensor, mask: torch.Tensor | None, dim: int):
    """Float64 copy with the normalised dim last, masked entries -inf; also the bool 'row fully masked' (..., 1)."""
    threshold = masked_score_threshold(scores.dtype)
    x = scores.detach().to(torch.float64)
    masked = x <= threshold
    if mask is not None:
        masked = masked | mask.expand(scores.shape)
    x = x.masked_fill(masked, float("-inf")).movedim(dim, -1)  # (..., n)
    dead = masked.movedim(dim, -1).all(dim=-1, keepdim=True)  # (..., 1)
    return x.masked_fill(dead, 0.0), dead


def softmax_reference(scores, mask=None, dim=-1):
    """exp(z - max) / sum exp(z - max); fully masked rows give zeros."""
    x, dead = _prepare(scores, mask, dim)
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return (e / e.sum(-1, keepdim=True)).masked_fill(dead, 0.0).movedim(-1, dim)


def entmax_bisect_reference(scores, alpha, mask=None, dim=-1, n_iter: int = 200):
    """p = [(alpha-1) z - tau]_+^(1/(alpha-1)), tau by ``n_iter`` bisection steps on [max - 1, max - n^(1-alpha)].

    ``alpha`` is a float or a tensor broadcastable to the scores with size 1 along ``dim``; alpha = 1 rows use softmax.
    """
    x, dead = _prepare(scores, mask, dim)
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if a.ndim:
        a = a.reshape((1,) * (scores.ndim - a.ndim) + tuple(a.shape)).movedim(dim, -1)  # (..., 1)
    am1 = torch.where(a == 1.0, torch.ones_like(a), a - 1.0)
    z = (x - x.max(dim=-1, keepdim=True).values) * am1  # (..., n), row max 0
    n = (x > float("-inf")).sum(-1, keepdim=True).clamp_min(1).to(torch.float64)
    lo, hi = torch.full_like(z[..., :1], -1.0), -(n ** (-am1))
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        total = ((z - mid).clamp_min(0) ** (1.0 / am1)).sum(-1, keepdim=True)
        lo, hi = torch.where(total >= 1, mid, lo), torch.where(total >= 1, hi, mid)
    p = (z - lo).clamp_min(0) ** (1.0 / am1)
    p = p / p.sum(-1, keepdim=True)
    p = torch.where(a == 1.0, softmax_reference(x, dim=-1), p)
    return p.masked_fill(dead, 0.0).movedim(-1, dim)


def sparsemax_reference(scores, mask=None, dim=-1):
    """Sort-based sparsemax: k = max{j : 1 + j z_(j) > sum_{i<=j} z_(i)}, tau = (sum_{i<=k} z_(i) - 1) / k."""
    x, dead = _prepare(scores, mask, dim)
    z = x - x.max(dim=-1, keepdim=True).values
    zs = z.sort(dim=-1, descending=True).values
    zs = torch.where(zs == float("-inf"), torch.full_like(zs, -1e300), zs)
    j = torch.arange(1, z.shape[-1] + 1, dtype=torch.float64)
    csum = zs.cumsum(-1)
    k = ((1 + j * zs) > csum).sum(-1, keepdim=True)  # support size
    tau = (csum.gather(-1, k - 1) - 1) / k
    return (z - tau).clamp_min(0).masked_fill(dead, 0.0).movedim(-1, dim)


def entmax15_reference(scores, mask=None, dim=-1):
    """Sort-based 1.5-entmax on z / 2: tau_j = mean_j - sqrt((1 - j (msq_j - mean_j^2)) / j), k = #{tau_j <= z_(j)}."""
    x, dead = _prepare(scores, mask, dim)
    z = (x - x.max(dim=-1, keepdim=True).values) / 2
    zs = z.sort(dim=-1, descending=True).values
    zs = torch.where(zs == float("-inf"), torch.full_like(zs, -1e300), zs)
    j = torch.arange(1, z.shape[-1] + 1, dtype=torch.float64)
    mean = zs.cumsum(-1) / j
    msq = (zs**2).cumsum(-1) / j
    delta = ((1 - j * (msq - mean**2)) / j).clamp_min(0)
    tau_j = mean - delta.sqrt()
    k = (tau_j <= zs).sum(-1, keepdim=True)
    tau = tau_j.gather(-1, k - 1)
    return ((z - tau).clamp_min(0) ** 2).masked_fill(dead, 0.0).movedim(-1, dim)


def span_mask_reference(span, ramp, tgt_len, src_len, causal=False, query_offset=0, key_offset=0):
    """Loops over (head, query, key): m = clamp((R + z - x) / R, 0, 1), x = |i - j| or i - j (0 if negative)."""
    span = span.detach().to(torch.float64)
    static = span.ndim == 1
    spans = span[None, :, None].expand(1, span.shape[0], tgt_len) if static else span
    out = torch.zeros(spans.shape + (src_len,), dtype=torch.float64)
    for b in range(spans.shape[0]):
        for h in range(spans.shape[1]):
            for i in range(tgt_len):
                for j in range(src_len):
                    x = (query_offset + i) - (key_offset + j)
                    if causal and x < 0:
                        continue
                    m = (ramp + float(spans[b, h, i]) - abs(x)) / ramp
                    out[b, h, i, j] = min(1.0, max(0.0, m))
    return out[0] if static else out
